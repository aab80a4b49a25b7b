"""SftpRemote and sshconn against a real OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fitsync import sshauth, sshconn
from fitsync.errors import (AuthenticationFailed, HostKeyRejected, NotFound, TransferFailed, UsageError,
                            VerificationFailed)
from fitsync.options import RemoteOptions
from fitsync.remotes import Capability, open_remote
from fitsync.remotes import sftp_agent, sftp_io
from fitsync.remotes.sftp import parse_ssh_location
from sshd_fixture import SshServer, home, keygen, sshd, use_client_home  # noqa: F401 (fixtures)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "remote"
    files = {"a.txt": b"hello\n", "sub/b.bin": os.urandom(3_000_001), "sub/deep/c.fits": b"SIMPLE  =" * 400,
             "empty": b""}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / ".fitsync").mkdir()
    (root / ".fitsync" / "ignored").write_bytes(b"state")
    os.symlink("/etc/passwd", root / "link")  # never followed out of the root
    return root, files


def url(sshd, root, port=None):
    return f"sftp://127.0.0.1:{port or sshd.port}{root}"


# -- locations ------------------------------------------------------------------------

def test_location_forms():
    assert parse_ssh_location("sftp://bob@example.org:2222/data/x") == ("bob", "example.org", 2222, "/data/x")
    assert parse_ssh_location("sftp://example.org/~/rel") == (None, "example.org", None, "rel")
    assert parse_ssh_location("sftp://example.org") == (None, "example.org", None, ".")
    assert parse_ssh_location("sftp://[::1]:22/d") == (None, "::1", 22, "/d")
    assert parse_ssh_location("alice@mountain:data/night") == ("alice", "mountain", None, "data/night")
    assert parse_ssh_location("mountain:/abs") == (None, "mountain", None, "/abs")
    with pytest.raises(UsageError):
        parse_ssh_location("no-colon-here")


@settings(max_examples=200, deadline=None)
@given(user=st.none() | st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
       host=st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
       port=st.none() | st.integers(1, 65535),
       path=st.from_regex(r"(/[A-Za-z0-9._ -]{1,10}){1,4}", fullmatch=True))
def test_sftp_url_roundtrip(user, host, port, path):
    text = "sftp://" + (f"{user}@" if user else "") + host + (f":{port}" if port else "") + path
    assert parse_ssh_location(text) == (user, host, port, path)
    scp = (f"{user}@" if user else "") + f"{host}:{path}"
    assert parse_ssh_location(scp) == (user, host, None, path)


# -- reading and writing, with and without the agent ---------------------------------------

@pytest.fixture(params=["agent", "sftp-only"])
def remote(request, sshd, home, tree):
    root, files = tree
    port = sshd.port if request.param == "agent" else sshd.sftp_only_port
    r = open_remote(url(sshd, root, port))
    yield r, root, files, request.param
    r.close()


def test_list_stat_read(remote):
    r, root, files, kind = remote
    entries = {e.path: e for e in r.list()}
    assert sorted(entries) == sorted(files)  # no .fitsync, no symlink
    for rel, data in files.items():
        assert entries[rel].size == len(data)
        expected_mtime = os.stat(root / rel).st_mtime
        tolerance = 1e-6 if kind == "agent" else 1.0
        assert abs(entries[rel].mtime - expected_mtime) < tolerance
        assert r.stat(rel).size == len(data)
    big = files["sub/b.bin"]
    with r.open_read("sub/b.bin") as f:
        assert f.read() == big
    assert r.read_range("sub/b.bin", 1000, 5) == big[1000:1005]
    ranges = [(0, 10), (len(big) - 3, 100), (500_000, 700_000), (len(big) + 10, 5), (7, 0)]
    assert list(r.read_ranges("sub/b.bin", ranges)) == [big[o:o + n] for o, n in ranges]
    assert r.digest("sub/b.bin") == blake3.blake3(big).hexdigest()
    assert r.digest("sub/b.bin", "sha256") == hashlib.sha256(big).hexdigest()
    expect = {Capability.SIGNATURE, Capability.DIGEST, Capability.PATCH}
    assert (expect <= r.capabilities) == (kind == "agent")


def test_write_atomic_and_delete(remote):
    r, root, files, kind = remote
    data = os.urandom(1_500_000)
    r.write_atomic("new/dir/x.bin", [data[:7], data[7:]], mtime=1_600_000_000.25,
                   expected_digest=blake3.blake3(data).hexdigest())
    target = root / "new/dir/x.bin"
    assert target.read_bytes() == data
    assert abs(os.stat(target).st_mtime - 1_600_000_000.25) < (1e-6 if kind == "agent" else 1.0)
    assert not any((root / ".fitsync" / "tmp").iterdir())
    r.write_atomic("a.txt", [b"replaced"])  # overwrite
    assert (root / "a.txt").read_bytes() == b"replaced"
    r.delete("new/dir/x.bin")
    assert not (root / "new").exists()  # emptied directories are pruned
    r.delete("does/not/exist")  # deleting what is gone is fine


def test_write_atomic_refuses_mismatched_digest(remote):
    r, root, files, kind = remote
    with pytest.raises(VerificationFailed):
        r.write_atomic("bad.bin", [b"abc"], expected_digest=blake3.blake3(b"abd").hexdigest())
    assert not (root / "bad.bin").exists()
    assert not any((root / ".fitsync" / "tmp").iterdir())


def test_missing_paths(remote, sshd):
    r, root, files, kind = remote
    with pytest.raises(NotFound):
        r.stat("nope.fits")
    with pytest.raises(NotFound):
        r.read_range("nope.fits", 0, 10)
    with pytest.raises(NotFound):
        r.open_read("nope.fits")
    missing = open_remote(url(sshd, root / "absent"))
    assert not missing.exists()
    with pytest.raises(NotFound):
        list(missing.list())


@pytest.mark.parametrize("kind", ["agent", "sftp-only"])
def test_a_relative_root_is_under_the_login_directory_and_a_file_is_no_tree(sshd, home, tree, kind):
    import pwd

    root, files = tree
    login_dir = pwd.getpwuid(os.getuid()).pw_dir  # the server's, not the client's HOME
    port = sshd.port if kind == "agent" else sshd.sftp_only_port
    r = open_remote(f"sftp://127.0.0.1:{port}/~/{os.path.relpath(root, login_dir)}")
    assert r.root == str(root)
    assert r.exists() and sorted(e.path for e in r.list()) == sorted(files)
    assert not open_remote(url(sshd, root / "a.txt", port)).exists()  # a file, not a directory


def test_permission_denied_on_remote_side(sshd, home, tree):
    root, files = tree
    r = open_remote(url(sshd, root, sshd.readonly_port))  # sftp-server -R refuses writes
    assert r.read_range("a.txt", 0, 5) == b"hello"
    with pytest.raises(TransferFailed, match="permission denied"):
        r.write_atomic("blocked.txt", [b"x"])
    with pytest.raises(TransferFailed, match="permission denied"):
        r.delete("a.txt")
    assert not (root / "blocked.txt").exists() and (root / "a.txt").exists()


def test_sftp_only_warns_once(sshd, home, tree, caplog):
    root, files = tree
    caplog.set_level(logging.WARNING, logger="fitsync.remotes.sftp")
    for _ in range(2):
        r = open_remote(url(sshd, root, sshd.sftp_only_port))
        assert Capability.PATCH not in r.capabilities
        assert r.mtime_resolution == 1.0
    warnings = [rec for rec in caplog.records if "cannot run the fitsync agent" in rec.getMessage()]
    assert len(warnings) == 1


def test_agent_cache_is_verified_before_use(sshd, home, tree):
    root, files = tree
    r = open_remote(url(sshd, root))
    assert Capability.DIGEST in r.capabilities
    payload = sftp_agent.agent_payload()
    digest = hashlib.sha256(payload).hexdigest()
    from fitsync import __version__
    cached = Path(r.agent_info()["home"]) / ".cache" / "fitsync" / f"agent-{__version__}-{digest[:16]}.py"
    assert cached.read_bytes() == payload
    cached.write_bytes(b"import os; os.system('touch /tmp/fitsync-pwned')\n")  # tampered cache
    r.close()
    r2 = open_remote(url(sshd, root))
    assert r2.digest("a.txt") == blake3.blake3(b"hello\n").hexdigest()
    assert cached.read_bytes() == payload  # replaced by the verified copy
    r2.close()


def test_agent_without_blake3_or_xxhash_agrees_on_hashlib(sshd, home, tree, monkeypatch):
    root, files = tree
    monkeypatch.setenv("FITSYNC_AGENT_AVOID", "blake3,xxhash")
    r = open_remote(url(sshd, root))
    hashes = r.agent_info()["hashes"]
    assert "blake3" not in hashes and "xxh3_128" not in hashes
    assert r.digest_algo() == "sha256"
    assert r.digest("sub/b.bin", "sha256") == hashlib.sha256(files["sub/b.bin"]).hexdigest()
    # an upload is still verified remotely, by sha256 instead of BLAKE3
    data = os.urandom(100_000)
    r.write_atomic("up.bin", [data], expected_digest=blake3.blake3(data).hexdigest())
    assert (root / "up.bin").read_bytes() == data


def test_aes_gcm_is_chosen_when_the_server_offers_it(remote):
    """One OpenSSL call per packet instead of AES-CTR plus HMAC (sshconn.AEAD_CIPHERS)."""
    r = remote[0]
    r.stat("a.txt")
    transport = r.connection().transport
    assert (transport.local_cipher, transport.remote_cipher) == ("aes128-gcm@openssh.com",) * 2


def test_parallel_readers_share_one_connection(sshd, home, tree):
    root, files = tree
    r = open_remote(url(sshd, root))
    other = open_remote(f"testhost:{root}")
    assert r.connection() is other.connection()
    results, errors = {}, []

    def read(i):
        try:
            with r.open_read("sub/b.bin") as f:
                results[i] = f.read()
        except Exception as exc:  # reported below
            errors.append(exc)
    threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(v == files["sub/b.bin"] for v in results.values()) and len(results) == 4
    assert r.connection() is other.connection()


def _settled(conn, started: int) -> None:
    """Wait until ``started`` SFTP channels were opened ahead on ``conn`` and none is still opening."""
    deadline = time.monotonic() + 20
    while (conn._spares_started < started or conn._spares_opening) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert conn._spares_started == started and not conn._spares_opening


def test_channels_for_the_workers_are_opened_ahead_and_adopted(sshd, home, tree, monkeypatch):
    """Every channel costs a start of the account's shell on the server, so
    the calling thread's and each --jobs worker's SFTP channel are opened side
    by side as the connection comes up; threads adopt them instead of opening."""
    root, files = tree
    sshconn.close_all()  # a connection of this test's own
    r = open_remote(url(sshd, root), RemoteOptions(jobs=2))
    assert r.stat("a.txt").size == len(files["a.txt"])
    conn = r.connection()
    _settled(conn, 3)
    opened = []
    real_open = conn._open_sftp
    monkeypatch.setattr(conn, "_open_sftp", lambda: opened.append(1) or real_open())
    results = []

    def read(i):
        results.append(r.read_range("sub/b.bin", 0, 100))

    spares = len(conn._spares)  # the calling thread's stat went to the agent: it may have taken none
    assert spares >= 2
    for n_threads, expect_opened in ((spares, 0), (1, 1)):  # each thread adopts one, then there is none
        threads = [threading.Thread(target=read, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(opened) == expect_opened
    assert results == [files["sub/b.bin"][:100]] * (spares + 1)


def test_one_agent_starts_however_early_it_is_asked_for(sshd, home, tree, monkeypatch):
    """The first agent starts in the background as the connection comes up; a
    thread asking for one meanwhile waits for it rather than starting another.
    That agent's hello is where the host's capabilities come from: reading
    them (the engine does per file) asks nothing of the host again."""
    root, _ = tree
    started = []

    class CountedAgent(sftp_agent.AgentClient):
        def __init__(self, *args, **kwargs):
            started.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sftp_agent, "AgentClient", CountedAgent)
    sshconn.close_all()
    r = open_remote(url(sshd, root))
    caps = r.capabilities
    assert {Capability.SIGNATURE, Capability.PATCH, Capability.DIGEST, Capability.RESUMES} <= caps
    for _ in range(100):
        assert r.capabilities == caps
    assert "sha256" in r.remote_digests and r.mtime_resolution == 1e-9
    assert r.digest("a.txt")
    with r.using_agent() as agent:
        assert agent is not None
    assert len(started) == 1


# -- host keys and authentication ---------------------------------------------------------

def test_unknown_host_key_is_refused_then_accepted_on_request(sshd, home, tree):
    root, _ = tree
    known = home / ".ssh" / "known_hosts"
    known.write_text("")
    with pytest.raises(HostKeyRejected, match="--accept-new-host-key"):
        open_remote(url(sshd, root)).stat("a.txt")
    r = open_remote(url(sshd, root), RemoteOptions(accept_new_host_key=True))
    assert r.stat("a.txt").size == 6
    assert known.read_text() == sshd.host_key_line(sshd.port)
    sshconn.close_all()
    assert open_remote(url(sshd, root)).stat("a.txt").size == 6  # recorded: no flag needed now


def test_changed_host_key_is_always_refused(sshd, home, tree, tmp_path):
    root, _ = tree
    other = keygen(tmp_path / "other_host_key")
    kind, blob = Path(str(other) + ".pub").read_text().split()[:2]
    known = home / ".ssh" / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    for options in ({}, RemoteOptions(accept_new_host_key=True)):
        with pytest.raises(HostKeyRejected, match="CHANGED"):
            open_remote(url(sshd, root), options).stat("a.txt")
    assert known.read_text() == f"[127.0.0.1]:{sshd.port} {kind} {blob}\n"


def test_wrong_key_fails_authentication(sshd, home, tree, tmp_path):
    root, _ = tree
    stranger = keygen(tmp_path / "stranger")
    (home / ".ssh" / "config").write_text(f"Host *\n  IdentityFile {stranger}\n")
    os.unlink(home / ".ssh" / "id_ed25519")
    with pytest.raises(AuthenticationFailed, match="authentication to"):
        open_remote(url(sshd, root)).stat("a.txt")


def test_encrypted_key_passphrase_from_environment(sshd, home, tree, tmp_path, monkeypatch):
    root, _ = tree
    locked = tmp_path / "locked_key"
    shutil.copy(sshd.client_key, locked)
    import subprocess
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", "s3cret", "-f", str(locked)], check=True,
                   stdin=subprocess.DEVNULL)
    (home / ".ssh" / "config").write_text(f"Host locked\n  HostName 127.0.0.1\n  Port {sshd.port}\n"
                                          f"  IdentityFile {locked}\n")
    with pytest.raises(AuthenticationFailed):  # stdin is not a terminal: no prompt, no key
        open_remote(f"locked:{root}").stat("a.txt")
    monkeypatch.setenv("FITSYNC_SSH_PASSPHRASE", "s3cret")
    assert open_remote(f"locked:{root}").stat("a.txt").size == 6


@pytest.fixture
def password_server(tmp_path, monkeypatch):
    """A throwaway system account that may log in by password only (its own
    sshd; needs root to create the account, as in CI), owning a small tree
    outside pytest's private temporary directory."""
    if os.geteuid() != 0:
        pytest.skip("creating a system account with a password needs root (CI runs as root)")
    user = f"fspw{os.getpid() % 100000}"
    password = "c0rrect-h0rse-" + os.urandom(4).hex()
    account_home = Path(tempfile.mkdtemp(prefix="fitsync-password-"))
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(account_home), "--shell", "/bin/sh", user],
                   check=True)
    server = None
    try:
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)
        root = account_home / "data"
        (root / "night").mkdir(parents=True)
        (root / "night" / "obs.fits").write_bytes(b"SIMPLE  =" * 100)
        subprocess.run(["chown", "-R", f"{user}:", str(account_home)], check=True)
        server = SshServer(tmp_path / "sshd", extra=f"Match User {user}\n  PasswordAuthentication yes\n"
                                                     f"  AuthenticationMethods password").start()
        use_client_home(server, tmp_path / "client", monkeypatch)
        yield server, user, password, root
    finally:
        sshconn.close_all()
        if server is not None:
            server.stop()
        subprocess.run(["pkill", "-KILL", "-u", user], check=False)
        subprocess.run(["userdel", "--force", user], check=False, capture_output=True)
        shutil.rmtree(account_home, ignore_errors=True)


def test_password_from_the_environment_logs_in_and_a_wrong_one_is_one_line(password_server, monkeypatch, cli):
    server, user, password, root = password_server
    location = f"sftp://{user}@127.0.0.1:{server.port}{root}"
    with pytest.raises(AuthenticationFailed, match=sshauth.PASSWORD_ENV):  # no terminal to ask on
        open_remote(location).stat("night/obs.fits")
    monkeypatch.setenv(sshauth.PASSWORD_ENV, password)
    assert open_remote(location).stat("night/obs.fits").size == 900
    sshconn.close_all()
    monkeypatch.setenv(sshauth.PASSWORD_ENV, password + "-wrong")
    result = cli("compare", location, root)
    assert result.code == 4 and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1 and user in result.err
    assert f"password from {sshauth.PASSWORD_ENV}" in result.err
    assert password not in result.err + result.out, "a secret is never printed"


def test_proxyjump_through_a_gateway(sshd, home, tree):
    root, files = tree
    with open(home / ".ssh" / "config", "a") as f:
        f.write(f"Host behind\n  HostName 127.0.0.1\n  Port {sshd.port}\n  ProxyJump testhost\n")
    r = open_remote(f"behind:{root}")
    assert r.read_range("sub/b.bin", 0, 100) == files["sub/b.bin"][:100]
    assert r.connection().via is not None


# -- dropped connections ------------------------------------------------------------------

@pytest.fixture
def big_file(tree):
    root, files = tree
    data = os.urandom(24 << 20)
    (root / "big.bin").write_bytes(data)
    return root, data


@pytest.mark.parametrize("lanes", [1, 3])
def test_read_resumes_after_connection_killed(sshd, home, big_file, caplog, monkeypatch, lanes):
    root, data = big_file
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("FITSYNC_SSH_CONNECTIONS", str(lanes))
    monkeypatch.setattr(sftp_io, "STRIPE_SIZE", 1 << 20)  # many stripes, so lanes interleave
    monkeypatch.setattr(sftp_io, "STRIPED_MIN_BYTES", 1 << 20)
    r = open_remote(url(sshd, root, sshd.sftp_only_port), RemoteOptions(retries=3))
    got = bytearray()
    with r.open_read("big.bin") as f:
        got += f.read(4 << 20)
        assert sshd.kill_sessions() > 0
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            got += chunk
    assert bytes(got) == data
    assert any("lost during read" in rec.getMessage() for rec in caplog.records)
    if lanes > 1:  # the stream really was striped over several connections
        assert r.lane_connection(2) is not r.connection()


def test_striped_read_equals_file(sshd, home, big_file, monkeypatch):
    root, data = big_file
    monkeypatch.setattr(sftp_io, "STRIPE_SIZE", 3 << 20)
    monkeypatch.setattr(sftp_io, "STRIPED_MIN_BYTES", 1 << 20)
    r = open_remote(url(sshd, root))
    with r.open_read("big.bin") as f:
        assert f.read(1) == data[:1]
        assert f.read(5 << 20) == data[1:1 + (5 << 20)]
        f.seek(len(data) - (7 << 20))
        assert f.read() == data[-(7 << 20):]
    with r.open_read("big.bin") as f:
        f.read(100)
    # abandoned half-way: lane threads stop
    assert not [t for t in threading.enumerate() if t.name.startswith("sftp-lane")]


def test_write_interrupted_leaves_no_file_under_final_name(sshd, home, big_file):
    root, data = big_file
    r = open_remote(url(sshd, root), RemoteOptions(retries=1))

    def chunks():
        for i in range(0, len(data), 1 << 20):
            if i == 8 << 20:
                sshd.kill_sessions()
            yield data[i:i + (1 << 20)]
    with pytest.raises(sshconn.ConnectionFailed):
        r.write_atomic("copy.bin", chunks(), expected_digest=blake3.blake3(data).hexdigest())
    assert not (root / "copy.bin").exists()
    r.write_atomic("copy.bin", [data], expected_digest=blake3.blake3(data).hexdigest())  # the retry
    assert (root / "copy.bin").read_bytes() == data


def test_a_write_whose_connection_died_before_it_began_starts_again(sshd, home, big_file):
    """Sessions killed between two files: the next write finds the dead
    connection before its first chunk, reconnects and lands whole."""
    root, data = big_file
    r = open_remote(url(sshd, root), RemoteOptions(retries=1))
    assert r.exists()
    for i in range(3):
        sshd.kill_sessions()
        r.write_atomic(f"after{i}.bin", iter([data]), expected_digest=blake3.blake3(data).hexdigest())
        assert (root / f"after{i}.bin").read_bytes() == data


def test_gives_up_with_one_line_error_when_server_is_gone(tmp_path, home):
    server = SshServer(tmp_path / "short").start()
    (home / ".ssh" / "known_hosts").write_text(server.host_key_line())
    (home / ".ssh" / "config").write_text(f"Host *\n  IdentityFile {server.client_key}\n")
    r = open_remote(url(server, tmp_path), RemoteOptions(retries=1))
    assert r.exists()
    server.kill_sessions()
    server.stop()
    with pytest.raises((TransferFailed, sshconn.ConnectionFailed)) as info:
        list(r.list())
    assert "\n" not in str(info.value)


# -- signatures by difference ------------------------------------------------------------------

def _fits(n_data: int, obj: str = "A", history: int = 0) -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    1",
             f"NAXIS1  = {n_data:20d}", f"OBJECT  = '{obj}'"] + [f"HISTORY {i}" for i in range(history)]
    head = "".join(c.ljust(80) for c in cards + ["END"])
    return head.ljust(-(-len(head) // 2880) * 2880).encode()


def _with_data(header: bytes, data: bytes) -> bytes:
    return header + data + b"\0" * (-len(data) % 2880)


@pytest.fixture
def sig_pair(sshd, home, tmp_path):
    """(remote, remote dir, local dir): put the new version remotely, the old locally."""
    (tmp_path / "r").mkdir()
    (tmp_path / "l").mkdir()
    return open_remote(url(sshd, tmp_path / "r")), tmp_path / "r", tmp_path / "l"


_DATA = os.urandom(8 << 20)
_OVERWRITTEN = _DATA[:4 << 20] + os.urandom(65536) + _DATA[(4 << 20) + 65536:]


@pytest.mark.parametrize("old, new, most", [
    (_with_data(_fits(len(_DATA)), _DATA), _with_data(_fits(len(_DATA), "B"), _DATA), 2_000),
    (_with_data(_fits(len(_DATA)), _DATA), _with_data(_fits(len(_DATA), history=40), _DATA), 2_000),
    (_with_data(_fits(len(_DATA)), _DATA), _with_data(_fits(len(_DATA)), _OVERWRITTEN), 20_000),
    (_DATA[:6 << 20], _DATA, 70_000),  # not FITS, appended to: only the tail's sums
    (os.urandom(1 << 20), _DATA, 10 ** 9),  # nothing in common: everything, still right
], ids=["header-value", "header-grown", "data-overwritten", "appended", "unrelated"])
def test_signature_by_difference_is_exact_and_small(sig_pair, old, new, most):
    from fitsync.signature import signature_of_file as core_signature_of_file
    from fitsync.sums import STDLIB

    def signature_of_file(path, **kw):  # the host's python3 has no fitsync: its agent makes STDLIB sums
        return core_signature_of_file(path, sums=STDLIB, **kw)

    remote, rdir, ldir = sig_pair
    (rdir / "f.fits").write_bytes(new)
    (ldir / "f.fits").write_bytes(old)
    full = signature_of_file(rdir / "f.fits")
    strong_digest = full.sums.strong
    with remote.using_agent() as agent:
        before = agent.received
        got = sftp_agent.signature_by_difference(agent, remote.remote_path("f.fits"), str(ldir / "f.fits"),
                                               sums=STDLIB)
        wire = agent.received - before
    assert got == full
    assert wire < min(most, len(full.to_bytes()) + 10_000), (wire, len(full.to_bytes()))
    # where the local file holds each block (the hint recipes take): those bytes have the block's sums
    local = old
    for i in np.flatnonzero(got.like_offsets >= 0).tolist():
        at, length = int(got.like_offsets[i]), int(full.block_lengths()[i])
        assert strong_digest(local[at:at + length]) == full.strong_of(i)
    if most < 10 ** 9:  # the files share most blocks: most are placed
        assert (got.like_offsets >= 0).mean() > 0.7  # (appended: 6 of 8 MiB)
    # the basis side of a push: the same sums without the whole-file digest
    assert remote.block_signature("f.fits", like=str(ldir / "f.fits"), digest=False) == \
        signature_of_file(rdir / "f.fits", digest=False)
    assert remote.block_signature("f.fits", digest=False) == signature_of_file(rdir / "f.fits", digest=False)
    assert remote.block_signature("f.fits", like=str(ldir / "f.fits")) == full


def test_remote_destination_lock(sshd, home, tree):
    from fitsync.errors import Locked

    root, _ = tree
    first = open_remote(url(sshd, root))
    second = open_remote(f"testhost:{root}")
    first.lock()
    assert (root / ".fitsync" / "lock").read_text().split()[0] == str(os.getpid())
    with pytest.raises(Locked, match="locked by fitsync pid"):  # our own pid is alive: not stale
        second.lock()
    first.unlock()
    assert not (root / ".fitsync" / "lock").exists()
    # a lock left by a dead process of this host is reclaimed
    dead = subprocess.Popen(["true"])
    dead.wait()
    (root / ".fitsync" / "lock").write_text(f"{dead.pid} {socket.gethostname()} 0")
    second.lock()
    second.unlock()
    # a lock of another host is not touched
    (root / ".fitsync" / "lock").write_text("123 some-other-host 0")
    with pytest.raises(Locked, match="some-other-host"):
        second.lock()
    assert (root / ".fitsync" / "lock").read_text() == "123 some-other-host 0"
