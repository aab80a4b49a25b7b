"""End to end: `fitsync mirror/compare/manifest/audit` with sftp:// locations
against a real sshd, with the agent and on an sftp-only account."""

from __future__ import annotations

import json
import os

import blake3
import pytest

from conftest import read_tree, write_tree
from fitsync import sshconn
from fitsync.remotes import open_remote
from fitsync.remotes import sftp as sftp_mod
from fitsync.remotes import sftp_io
from sshd_fixture import blake3_host, home, host_python, sshd  # noqa: F401  (one sshd per module, a client HOME)


@pytest.fixture
def wire_reads(monkeypatch):
    """Counts file bytes read over SFTP (instrumentation around the real reader)."""
    counted = {"bytes": 0}
    real = sftp_io.read_pipelined

    def counting(*args, **kwargs):
        for data in real(*args, **kwargs):
            counted["bytes"] += len(data)
            yield data
    monkeypatch.setattr(sftp_io, "read_pipelined", counting)
    return counted


FILES = {
    "run001/events.fits": b"SIMPLE  =" + os.urandom(40_000),
    "run001/irfs.fits": os.urandom(123_457),
    "run002/events.fits": os.urandom(2_000_000),
    "index.json": b"{}\n",
}


def summary_of(result) -> dict:
    """The JSON summary at the end of stdout (a dry run itemizes before it)."""
    out = result.out
    return json.loads(out[out.index("\n{") + 1:] if not out.startswith("{") else out)


def sftp_url(sshd, path, port=None):
    return f"sftp://127.0.0.1:{port or sshd.port}{path}"


@pytest.mark.parametrize("account", ["agent", "sftp-only"])
def test_pull_new_dry_run_delete(sshd, home, tmp_path, cli, account):
    port = sshd.port if account == "agent" else sshd.sftp_only_port
    remote, local = tmp_path / "remote", tmp_path / "local"
    write_tree(remote, FILES)
    result = cli("mirror", sftp_url(sshd, remote, port), local, "--json")
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["files_new"] == len(FILES) and summary["bytes_transferred"] == sum(map(len, FILES.values()))
    assert read_tree(local) == FILES
    assert os.stat(local / "index.json").st_mtime == os.stat(remote / "index.json").st_mtime
    # again: nothing to do
    again = cli("mirror", sftp_url(sshd, remote, port), local, "--json").json()
    assert again["files_unchanged"] == len(FILES) and again["bytes_transferred"] == 0
    # the remote changes; a dry run reports and touches nothing
    os.unlink(remote / "index.json")
    write_tree(remote, {"run003/new.fits": b"n" * 5000}, mtime=1_700_000_100.0)
    dry = cli("mirror", sftp_url(sshd, remote, port), local, "--delete", "--dry-run", "--json")
    assert dry.code == 0 and summary_of(dry)["dry_run"] is True and summary_of(dry)["files_new"] == 1
    assert read_tree(local) == FILES
    real = cli("mirror", sftp_url(sshd, remote, port), local, "--delete", "--json")
    assert real.code == 0 and real.json()["files_deleted"] == 1
    assert read_tree(local) == read_tree(remote)


@pytest.mark.parametrize("account", ["agent-blake3", "agent-stock", "sftp-only"])
def test_large_new_files_are_checked_against_the_hosts_own_digest(sshd, home, tmp_path, cli, monkeypatch, account):
    """With the agent on a host with blake3, a large new file is written
    around the page cache and checked against the BLAKE3 the host computed
    of its own data; a stock host (no blake3) or an sftp-only one cannot
    make that digest, so the copy is read back instead."""
    from fitsync import directio
    from fitsync.engine import transfer

    if account == "agent-blake3":
        sshconn.close_all()
        monkeypatch.setenv("FITSYNC_SSH_PYTHON", host_python(sshd.dir, ("blake3", "xxhash")))

    monkeypatch.setattr(directio, "MIN_SIZE", 100_000)
    at_source, read_back = [], []
    real_digest, real_verify = sftp_mod.SftpRemote.digest, transfer._verify_file
    monkeypatch.setattr(sftp_mod.SftpRemote, "digest",
                        lambda self, path, algo="blake3": at_source.append(path) or real_digest(self, path, algo))
    monkeypatch.setattr(transfer, "_verify_file", lambda part, *rest: read_back.append(part) or real_verify(part, *rest))
    port = sshd.sftp_only_port if account == "sftp-only" else sshd.port
    remote, local = tmp_path / "remote", tmp_path / "local"
    write_tree(remote, FILES)
    result = cli("mirror", sftp_url(sshd, remote, port), local, "--json")
    assert result.code == 0, result.err
    assert read_tree(local) == FILES
    large = sorted(p for p, data in FILES.items() if len(data) >= directio.MIN_SIZE)
    if account == "agent-blake3":
        assert sorted(at_source) == large and len(read_back) == len(FILES) - len(large)
    else:
        assert at_source == [] and len(read_back) == len(FILES)


@pytest.mark.parametrize("account", ["agent", "sftp-only"])
def test_push_update_delete(sshd, home, tmp_path, cli, account):
    port = sshd.port if account == "agent" else sshd.sftp_only_port
    local, remote = tmp_path / "local", tmp_path / "remote"
    write_tree(local, FILES)
    result = cli("mirror", local, sftp_url(sshd, remote, port), "--json")
    assert result.code == 0, result.err
    assert read_tree(remote) == FILES
    # a changed file and a remote extra
    changed = dict(FILES, **{"run002/events.fits": os.urandom(2_000_000)})
    write_tree(local, {"run002/events.fits": changed["run002/events.fits"]}, mtime=1_700_000_500.0)
    write_tree(remote, {"stale.txt": b"old"})
    result = cli("mirror", local, sftp_url(sshd, remote, port), "--delete", "--json")
    assert result.code == 0, result.err
    assert result.json()["files_deleted"] == 1
    assert read_tree(remote) == changed
    assert abs(os.stat(remote / "run002/events.fits").st_mtime - 1_700_000_500.0) < 1.0
    assert not list((remote / ".fitsync" / "tmp").glob("*"))  # no temp file left behind


def test_remote_to_remote(sshd, home, tmp_path, cli):
    a, b = tmp_path / "siteA", tmp_path / "siteB"
    write_tree(a, FILES)
    result = cli("mirror", sftp_url(sshd, a), f"testhost:{b}", "--json")
    assert result.code == 0, result.err
    assert read_tree(b) == FILES


def test_compare_and_manifest_run_remotely_without_reading_data(blake3_host, tmp_path, cli, wire_reads):
    sshd = blake3_host
    a, b = tmp_path / "a", tmp_path / "b"
    write_tree(a, FILES)
    twisted = dict(FILES, **{"run001/irfs.fits": os.urandom(123_457)})  # same size and mtime, new bytes
    write_tree(b, twisted)
    plain = cli("compare", sftp_url(sshd, a), sftp_url(sshd, b))
    assert plain.code == 0  # sizes and mtimes agree
    deep = cli("compare", sftp_url(sshd, a), f"testhost:{b}", "--checksum", "--json")
    assert deep.code == 1, deep.err
    assert "run001/irfs.fits" in json.dumps(deep.json())
    manifest = cli("manifest", sftp_url(sshd, a), "--no-fits")
    assert manifest.code == 0, manifest.err
    digests = {}
    for line in manifest.out.splitlines():
        record = json.loads(line)
        if "path" in record:
            digests[record["path"]] = record.get("blake3")
    assert digests == {p: blake3.blake3(d).hexdigest() for p, d in FILES.items()}
    assert wire_reads["bytes"] == 0  # every digest was computed by the agent, next to the data
    out = tmp_path / "m.jsonl"
    out.write_text(manifest.out)
    audit = cli("audit", sftp_url(sshd, b), f"--manifest={out}")
    assert audit.code == 1 and "run001/irfs.fits" in audit.out + audit.err
    assert wire_reads["bytes"] == 0


def test_cli_errors_are_one_line_with_exit_codes(sshd, home, tmp_path, cli):
    (tmp_path / "home" / ".ssh" / "known_hosts").write_text("")
    result = cli("mirror", sftp_url(sshd, tmp_path), tmp_path / "dst")
    assert result.code == 4 and "--accept-new-host-key" in result.err
    assert len(result.err.strip().splitlines()) == 1
    accepted = cli("mirror", sftp_url(sshd, tmp_path / "absent"), tmp_path / "dst", "--accept-new-host-key")
    assert accepted.code == 2
    recorded, error = accepted.err.strip().splitlines()  # TOFU says what it recorded; the error is one line
    assert "recorded new host key" in recorded and "absent" in error


# -- deltas through the agent ----------------------------------------------------------------

def fits_file(n_data: int, obj: str = "PKS 2155-304", extra_cards: int = 0) -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    1",
             f"NAXIS1  = {n_data:20d}", f"OBJECT  = '{obj}'"] + [f"HISTORY {i}" for i in range(extra_cards)]
    header = "".join(c.ljust(80) for c in cards + ["END"])
    header = header.ljust(-(-len(header) // 2880) * 2880).encode()
    return header + os.urandom(n_data) + b"\0" * (-n_data % 2880)


def edited(data: bytes, n_data: int) -> bytes:
    """The OBJECT value changed, one extra header record, 64 KiB overwritten mid-data."""
    head = "".join(c.ljust(80) for c in [
        "SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    1",
        f"NAXIS1  = {n_data:20d}", "OBJECT  = 'PKS 2155-305'"] + [f"HISTORY {i}" for i in range(40)] + ["END"])
    grown = head.ljust(5760).encode()
    body = bytearray(data[2880:])
    middle = len(body) // 2
    body[middle:middle + 65536] = os.urandom(65536)
    return grown + bytes(body)


def fitsync_on_host(sshd) -> str:
    """The favourable host: fitsync importable there (with what it needs)."""
    src = os.path.dirname(os.path.dirname(sftp_mod.__file__)).rsplit("/fitsync", 1)[0]
    return f"env PYTHONPATH={src} {host_python(sshd.dir, ('blake3', 'xxhash', 'numpy'))}"


@pytest.mark.parametrize("host", ["stock", "fitsync"])
@pytest.mark.parametrize("direction", ["pull", "push", "remote-to-remote"])
def test_changed_fits_file_moves_only_the_difference(sshd, home, tmp_path, cli, monkeypatch, direction, host):
    """A stock host's agent (STDLIB sums) and one with fitsync (FAST sums)
    move the same small delta in every direction."""
    if host == "fitsync":
        sshconn.close_all()
        monkeypatch.setenv("FITSYNC_SSH_PYTHON", fitsync_on_host(sshd))
    n = 6_000_000
    old = fits_file(n)
    new = edited(old, n)
    newer, older = tmp_path / "new", tmp_path / "old"
    write_tree(newer, {"obs/run.fits": new}, mtime=1_700_000_900.0)
    write_tree(older, {"obs/run.fits": old})
    if direction == "pull":
        result = cli("mirror", sftp_url(sshd, newer), older, "--json")
    elif direction == "push":
        result = cli("mirror", newer, sftp_url(sshd, older), "--json")
    else:  # both agents sign fixed blocks; only unmatched blocks are relayed
        result = cli("mirror", sftp_url(sshd, newer), f"testhost:{older}", "--json")
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["files_updated"] == 1
    assert summary["bytes_transferred"] < 200_000, summary  # two headers' blocks + the 64 KiB edit
    assert summary["bytes_reused"] > n - 200_000
    assert (older / "obs/run.fits").read_bytes() == new
    assert os.stat(older / "obs/run.fits").st_mtime == 1_700_000_900.0
    probe = open_remote(sftp_url(sshd, newer))
    assert probe.agent_info()["signature"] == ("stdlib" if host == "stock" else "fitsync")
    assert probe.block_signature("obs/run.fits").sums.name == ("stdlib" if host == "stock" else "fast")
    probe.close()

def test_incomplete_fits_source_never_replaces_a_remote_copy_by_relayed_delta(sshd, home, tmp_path, cli):
    """Remote to remote, the source still being written: its first HDU is
    whole (its blocks match DST's copy, so the delta is relayed) and its
    extension is cut short. The header check through ranges refuses it
    before the patch."""
    extension = "".join(c.ljust(80) for c in [
        "XTENSION= 'IMAGE   '", "BITPIX  =                    8", "NAXIS   =                    1",
        "NAXIS1  =              1000000", "PCOUNT  =                    0", "GCOUNT  =                    1", "END"])
    extension = extension.ljust(2880).encode()
    old = fits_file(3_000_000) + extension + os.urandom(1_000_000) + b"\0" * (-1_000_000 % 2880)
    cut = old[: -100 * 2880]  # the extension's last records not written yet
    newer, older = tmp_path / "new", tmp_path / "old"
    write_tree(newer, {"obs/run.fits": cut}, mtime=1_700_000_900.0)
    write_tree(older, {"obs/run.fits": old})
    result = cli("mirror", sftp_url(sshd, newer), f"testhost:{older}", "--json", "--retries=0")
    assert result.code == 3, result.err
    assert "incomplete" in result.err
    assert result.json()["bytes_reused"] == 0
    assert (older / "obs/run.fits").read_bytes() == old


def test_remote_signature_equals_local_signature(sshd, home, tmp_path, monkeypatch):
    from fitsync.remotes import open_remote
    from fitsync.signature import signature_of_file
    from fitsync.sums import STDLIB

    data = fits_file(1_000_000)
    write_tree(tmp_path / "r", {"x.fits": data, "y.bin": os.urandom(70_000)})
    remote = open_remote(sftp_url(sshd, tmp_path / "r"))
    assert remote.agent_info()["signature"] == "stdlib"  # the remote python has no fitsync on its path
    for name in ("x.fits", "y.bin"):
        assert remote.block_signature(name) == signature_of_file(tmp_path / "r" / name, sums=STDLIB)
        assert remote.block_signature(name, digest=False) == \
            signature_of_file(tmp_path / "r" / name, digest=False, sums=STDLIB)
    # a host with fitsync installed: the agent uses its compiled code, same bytes
    sshconn.close_all()
    monkeypatch.setenv("FITSYNC_SSH_PYTHON", fitsync_on_host(sshd))
    fast = open_remote(sftp_url(sshd, tmp_path / "r"))
    assert fast.agent_info()["signature"] == "fitsync"
    assert fast.block_signature("x.fits") == signature_of_file(tmp_path / "r" / "x.fits")
    like = tmp_path / "like.fits"
    like.write_bytes(data[:500_000] + bytes(1000) + data[501_000:])
    for digest in (True, False):  # by difference too, with and without the whole-file digest
        assert fast.block_signature("x.fits", like=str(like), digest=digest) == \
            signature_of_file(tmp_path / "r" / "x.fits", digest=digest)


# -- a connection killed in the middle of a mirror ---------------------------------------------

def kill_when_growing(sshd, directory, pattern, final, threshold=4 << 20):
    """Start a thread that kills every SSH session once a temporary file matching
    ``pattern`` under ``directory`` passes ``threshold`` bytes; it records whether
    ``final`` ever existed before that (it must not)."""
    import threading
    import time
    seen = {"killed": False, "final_early": False}

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen["killed"]:
            for part in directory.glob(pattern) if directory.exists() else ():
                try:
                    size = part.stat().st_size
                except FileNotFoundError:
                    continue
                if size >= threshold:
                    seen["final_early"] = final.exists()
                    sshd.kill_sessions()
                    seen["killed"] = True
                    return
            time.sleep(0.002)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, seen


@pytest.mark.parametrize("direction", ["pull", "push"])
def test_connection_killed_mid_mirror_is_retried_and_verified(sshd, home, tmp_path, cli, direction):
    # Large enough that the kill (seen at the first 8 MiB direct-write buffer,
    # then a `ps` to find the sessions) lands mid-transfer: with 64 MiB the
    # loopback copy sometimes finished first and nothing was lost to retry.
    data = os.urandom(192 << 20)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"big.fits": data, "small.txt": b"small"})
    # Both directions keep what arrived in .fitsync/partial/ (Capability.RESUMES).
    thread, seen = kill_when_growing(sshd, dst / ".fitsync" / "partial", "*.part", dst / "big.fits",
                                     threshold=24 << 20)
    if direction == "pull":
        result = cli("mirror", sftp_url(sshd, src), dst, "--json", "--retries=3")
    else:
        result = cli("mirror", src, sftp_url(sshd, dst), "--json", "--retries=3")
    thread.join(70)
    assert seen["killed"], "the transfer ended before the connection could be killed"
    assert not seen["final_early"]
    assert result.code == 0, result.err
    assert "lost" in result.err  # the retry is reported
    assert read_tree(dst) == {"big.fits": data, "small.txt": b"small"}
    report = json.loads(result.out)
    if direction == "pull":  # the reader went on at its byte on a new connection: nothing read twice
        assert report["bytes_transferred"] == len(data) + 5, report
    else:  # the retry went on after the bytes kept: at least the 8 MiB checkpoint before the 24 MiB seen
        assert report["bytes_reused"] >= 8 << 20, report
        assert report["bytes_transferred"] + report["bytes_reused"] == len(data) + 5, report
        for made in (dst / ".fitsync", dst / ".fitsync" / "partial"):  # private, as in a local destination
            assert made.stat().st_mode & 0o077 == 0, oct(made.stat().st_mode)
    assert not list((dst / ".fitsync" / "partial").glob("*")) if (dst / ".fitsync" / "partial").exists() else True
    assert not list((dst / ".fitsync" / "tmp").glob("*.part")) if (dst / ".fitsync" / "tmp").exists() else True


# -- resumed uploads (remotes/sftp_resume.py) -------------------------------------------------

def _plant_kept_upload(src, dst, name: str, kept: bytes, record: bytes | None = None, symlink_to=None):
    """What an interrupted upload of ``src/name`` into ``dst`` would have left."""
    from fitsync.engine.plan import Action, Item
    from fitsync.engine.push import _upload_key
    from fitsync.remotes.local import LocalRemote

    source = LocalRemote(str(src))
    key = _upload_key(source, Item(name, Action.NEW, "", source.stat(name)))
    partial = dst / ".fitsync" / "partial"
    partial.mkdir(parents=True, mode=0o700)
    if symlink_to is not None:
        (partial / f"{key}.part").symlink_to(symlink_to)
    else:
        (partial / f"{key}.part").write_bytes(kept)
    (partial / f"{key}.upto").write_bytes(record if record is not None else b"%020d\n" % len(kept))
    return partial


@pytest.mark.parametrize("case", ["wrong-bytes", "record-past-part", "malformed-record", "symlinked-part"])
def test_kept_upload_bytes_are_used_only_when_they_hold(sshd, home, tmp_path, cli, case):
    """A kept part is resumed only as far as its record and its length agree,
    never through a symlink, and bytes that turn out wrong are caught by the
    agent's check of the whole file: the file is sent again, never installed."""
    data = os.urandom(40 << 20)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"big.fits": data})
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"v" * (16 << 20))
    kept = {"wrong-bytes": os.urandom(16 << 20), "record-past-part": data[:8 << 20],
            "malformed-record": data[:16 << 20], "symlinked-part": b""}[case]
    record = {"record-past-part": b"%020d\n" % (16 << 20), "malformed-record": b"16777216\n"}.get(case)
    partial = _plant_kept_upload(src, dst, "big.fits", kept, record,
                                 symlink_to=victim if case == "symlinked-part" else None)
    result = cli("mirror", src, sftp_url(sshd, dst), "--json")
    assert result.code == 0, result.err
    assert (dst / "big.fits").read_bytes() == data
    assert victim.read_bytes() == b"v" * (16 << 20)
    report = json.loads(result.out)
    assert report["bytes_reused"] == 0 and report["bytes_transferred"] == len(data), report
    assert not list(partial.iterdir())


def test_kept_upload_bytes_of_this_version_are_not_sent_again(sshd, home, tmp_path, cli):
    data = os.urandom(40 << 20)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"big.fits": data})
    partial = _plant_kept_upload(src, dst, "big.fits", data[:24 << 20] + os.urandom(1 << 20),
                                 record=b"%020d\n" % (24 << 20))  # bytes past the record were never acknowledged
    result = cli("mirror", src, sftp_url(sshd, dst), "--json")
    assert result.code == 0, result.err
    assert (dst / "big.fits").read_bytes() == data
    report = json.loads(result.out)
    assert report["bytes_reused"] == 24 << 20 and report["bytes_transferred"] == len(data) - (24 << 20), report
    assert not list(partial.iterdir())


def test_a_source_rewritten_with_its_old_size_and_mtime_is_sent_whole(sshd, home, tmp_path, cli):
    """cp -p, tar x or touch -r can give new bytes the old size and mtime. On
    an sftp-only host nothing re-reads a file before its rename, so the part
    kept from the old bytes must not be continued: the key holds the local
    inode and ctime too."""
    old, new = os.urandom(40 << 20), os.urandom(40 << 20)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"big.fits": old})
    partial = _plant_kept_upload(src, dst, "big.fits", old[:24 << 20])
    stat = (src / "big.fits").stat()
    (src / "next.fits").write_bytes(new)
    os.replace(src / "next.fits", src / "big.fits")
    os.utime(src / "big.fits", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = cli("mirror", src, sftp_url(sshd, dst, sshd.sftp_only_port), "--json")
    assert result.code == 0, result.err
    assert (dst / "big.fits").read_bytes() == new
    assert json.loads(result.out)["bytes_reused"] == 0
    assert not list(partial.iterdir())


def test_an_existing_state_directory_gets_a_private_partial(sshd, home, tmp_path, cli):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"big.fits": os.urandom(20 << 20)})
    (dst / ".fitsync").mkdir(parents=True)
    (dst / ".fitsync").chmod(0o755)  # as an older fitsync or a umask of 022 left it
    result = cli("mirror", src, sftp_url(sshd, dst))
    assert result.code == 0, result.err
    assert (dst / ".fitsync" / "partial").stat().st_mode & 0o077 == 0
