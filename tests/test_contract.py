"""The Remote contract: one set of assertions run against every backend.

Each backend serves the same tree, reached the way users reach it: a local
path, SFTP to the real sshd with the agent (on the host's stock python3) and
without it (an sftp-only account), HTTP index pages, an HTTPS release
manifest (real TLS), Dropbox (the unmodified SDK against the local TLS
server), and a named remote of each type from a remotes file. A new backend
is done when it passes this module.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import blake3
import pytest

from fitsync import sshconn
from fitsync.errors import FitsyncError, NotFound, VerificationFailed
from fitsync.options import RemoteOptions
from fitsync.remotes import open_remote
from fitsync.remotes.base import Capability, ReadOnlyRemote
from dropbox_fixture import shared_server
from http_fixture import HttpFixture, TlsMaterial
from sshd_fixture import home, sshd  # noqa: F401  (fixtures: one sshd per module, a client HOME)

BIG = random.Random(21).randbytes(400_000)  # crosses the 64/128/256 KiB read sizes of every backend
FILES = {
    "a.bin": BIG,
    "empty.dat": b"",
    "sub.txt": b"a file whose name sorts between a directory and its files\n",
    "sub/b c.bin": b"hello " * 1000,
    "sub/deeper/c.txt": b"c" * 10,
}
MTIME = 1_700_000_000.0
SOURCES = ["local", "local-named", "sftp-agent", "sftp-only", "sftp-named", "http-index", "https-manifest",
           "https-named", "dropbox", "dropbox-named"]
WRITABLE = ["local", "local-named", "sftp-agent", "sftp-only", "sftp-named", "dropbox", "dropbox-named"]
# Writable backends whose interrupted copies keep their bytes (Capability.RESUMES).
# Dropbox does not: an upload session dies with the client that held it.
RESUMING = ["local", "local-named", "sftp-agent", "sftp-only", "sftp-named"]


def _write_tree(root: Path) -> None:
    for rel, data in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (MTIME, MTIME))


def _config(tmp_path: Path, monkeypatch, text: str) -> None:
    config = tmp_path / "remotes.toml"
    config.write_text(text)
    config.chmod(0o600)
    monkeypatch.setenv("FITSYNC_CONFIG", str(config))


class Backend:
    """One backend serving FILES: ``remote`` and what the suite may expect of it."""

    def __init__(self, name: str, remote, *, outside: Path | None = None, address: str = "",
                 root: Path | None = None):
        self.name = name
        self.remote = remote
        self.address = address or remote.url  # as a user types it on the command line
        self.root = root  # where the tree is on this machine (None: only through the backend)
        self.outside = outside  # a file beside the tree that no path may reach
        self.writable = name in WRITABLE


@contextlib.contextmanager
def _backend(name: str, request, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FITSYNC_CONFIG", str(tmp_path / "no-remotes.toml"))
    base = tmp_path / "served"
    root = base / "tree"
    if not name.startswith("dropbox"):
        _write_tree(root)
    outside = base / "outside.txt"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(b"secret beside the tree\n")
    stack = contextlib.ExitStack()
    address = ""
    with stack:
        if name == "local":
            remote = open_remote(address := str(root))
        elif name == "local-named":
            _config(tmp_path, monkeypatch, f'[lustre]\ntype = "file"\npath = "{base}"\n')
            remote = open_remote(address := "lustre:tree")
        elif name.startswith("sftp"):
            server = request.getfixturevalue("sshd")
            request.getfixturevalue("home")
            port = server.sftp_only_port if name == "sftp-only" else server.port
            if name == "sftp-named":
                _config(tmp_path, monkeypatch, f'[mountain]\ntype = "sftp"\nhost = "127.0.0.1"\nport = {port}\n'
                                               f'key_file = "{server.client_key}"\npath = "{base}"\n')
                remote = open_remote(address := "mountain:tree")
            else:
                remote = open_remote(address := f"sftp://127.0.0.1:{port}{root}")
            stack.callback(sshconn.close_all)
        elif name == "http-index":
            srv = stack.enter_context(HttpFixture(str(base), "ranges"))
            remote = open_remote(f"{srv.url}/tree/", RemoteOptions(retries=1))
        elif name.startswith("https"):
            _release_manifest(root)
            tls = TlsMaterial(str(tmp_path / "tls"))
            srv = stack.enter_context(HttpFixture(str(base), "ranges", tls=tls))
            if name == "https-named":
                _config(tmp_path, monkeypatch, f'[dr1]\ntype = "https"\nurl = "{srv.url}/"\n'
                                               f'ca_bundle = "{tls.ca_file}"\n')
                remote = open_remote("dr1:tree")
            else:
                remote = open_remote(f"{srv.url}/tree/", RemoteOptions(ca_bundle=tls.ca_file, retries=1))
        else:  # dropbox
            server = shared_server()
            server.reset()
            stack.callback(server.reset)
            for rel, data in FILES.items():
                server.put_file("/served/tree/" + rel, data, mtime=MTIME)
            monkeypatch.setenv("FITSYNC_DROPBOX_TOKEN", "good-token")
            if name == "dropbox-named":
                _config(tmp_path, monkeypatch, f'[vast]\ntype = "dropbox"\npath = "/served"\n'
                                               f'access_token_env = "FITSYNC_DROPBOX_TOKEN"\n'
                                               f'ca_bundle = "{server.ca_file}"\n')
                remote = open_remote("vast:tree")
            else:
                remote = open_remote("dropbox:/served/tree", RemoteOptions(ca_bundle=server.ca_file, retries=1))
            outside = None  # nothing of this machine's is reachable through Dropbox at all
        stack.callback(remote.close)
        yield Backend(name, remote, outside=outside, address=address,
                      root=None if name.startswith("dropbox") else root)


def _release_manifest(root: Path) -> None:
    from fitsync.engine.entries import build_entries
    from fitsync.formats.manifest import DEFAULT_NAME, write_atomically, write_jsonl
    from fitsync.remotes.local import LocalRemote

    local = LocalRemote(str(root))
    entries, errors = build_entries(local, list(local.list()), fits_fields=False)
    assert not errors
    write_atomically(str(root / DEFAULT_NAME), lambda out: write_jsonl(out, entries))


@pytest.fixture(params=SOURCES)
def backend(request, tmp_path, monkeypatch):
    with _backend(request.param, request, tmp_path, monkeypatch) as b:
        yield b


@pytest.fixture(params=WRITABLE)
def destination(request, tmp_path, monkeypatch):
    with _backend(request.param, request, tmp_path, monkeypatch) as b:
        yield b


def _served(backend: Backend) -> dict:
    """FILES as the backend lists them: a release also lists its manifest."""
    listed = {e.path: e for e in backend.remote.list()}
    listed.pop("fitsync-manifest.jsonl", None)
    return listed


# -- as a source ----------------------------------------------------------------------

def test_the_listing_is_complete_exact_and_sorted(backend):
    entries = list(backend.remote.list())
    paths = [e.path for e in entries]
    assert paths == sorted(paths), "listings come in the manifest's order (plain string order of paths)"
    listed = _served(backend)
    assert {p: e.size for p, e in listed.items()} == {p: len(d) for p, d in FILES.items()}


def test_mtimes_are_exact_to_the_declared_resolution(backend):
    resolution = backend.remote.mtime_resolution
    for path, entry in _served(backend).items():
        assert abs(entry.mtime - MTIME) <= resolution, (path, entry.mtime, resolution)


def test_stat_agrees_with_the_listing_and_a_missing_file_is_not_found(backend):
    for path, data in FILES.items():
        assert backend.remote.stat(path).size == len(data)
    with pytest.raises(NotFound) as caught:
        backend.remote.stat("sub/no-such-file.fits")
    assert caught.value.exit_code == 2 and "no-such-file.fits" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("offset,length", [
    (0, 400_000), (0, 1), (65_530, 20), (131_000, 2_000), (262_143, 2), (399_990, 10),
    (399_990, 100),  # across the end of the file: what there is
    (400_000, 10),  # at the end: nothing
])
def test_ranged_reads_return_exactly_the_bytes_asked(backend, offset, length):
    assert backend.remote.read_range("a.bin", offset, length) == BIG[offset:offset + length]


def test_many_ranges_come_back_in_order(backend):
    ranges = [(0, 10), (65_536, 4096), (100, 50), (399_000, 1000), (200_000, 70_000)]
    got = list(backend.remote.read_ranges("a.bin", ranges))
    assert got == [BIG[o:o + n] for o, n in ranges]


def test_whole_files_read_and_digest_exactly(backend):
    for path, data in FILES.items():
        with backend.remote.open_read(path) as f:
            assert f.read() == data
    assert backend.remote.digest("a.bin") == blake3.blake3(BIG).hexdigest()
    assert backend.remote.digest("empty.dat") == blake3.blake3(b"").hexdigest()


@pytest.mark.parametrize("hostile", ["../outside.txt", "/etc/passwd", "sub/../../outside.txt", "sub/\x00x"])
def test_hostile_names_are_refused_and_reach_nothing(backend, hostile):
    with pytest.raises(FitsyncError) as caught:
        data = backend.remote.read_range(hostile, 0, 100)
        assert backend.outside is None or data != backend.outside.read_bytes()[:100]
    assert caught.value.exit_code in (2, 3)
    with pytest.raises(FitsyncError):
        backend.remote.stat(hostile)


def test_declared_capabilities_hold(backend):
    caps = backend.remote.capabilities
    assert Capability.READ_RANGE in caps
    assert (Capability.WRITE in caps) == backend.writable
    if not backend.writable:
        with pytest.raises(ReadOnlyRemote):
            backend.remote.write_atomic("new.bin", [b"x"])
        with pytest.raises(ReadOnlyRemote):
            backend.remote.delete("a.bin")


def test_the_declared_attributes_are_there_and_typed(backend):
    """What the engine asks of every remote, read without probing: digests
    computed where the data is (a subset of those digest() can give when
    Capability.DIGEST is declared), refused names as (path, reason), the lock."""
    remote = backend.remote
    list(remote.list())
    assert isinstance(remote.remote_digests, frozenset)
    assert all(isinstance(path, str) and isinstance(reason, str) for path, reason in remote.rejected_names)
    if Capability.DIGEST in remote.capabilities:
        for algo in remote.remote_digests & {"blake3", "sha256"}:
            assert remote.digest("a.bin", algo) == new_hasher_hex(algo, FILES["a.bin"])
    if Capability.LOCK in remote.capabilities:
        remote.lock()
        remote.unlock()
    else:
        with pytest.raises(NotImplementedError):
            remote.lock()


def test_where_the_tree_lies_and_what_it_stages_are_declared(backend, tmp_path):
    """The engine chooses pull or push, staging, links and the nesting check
    from these alone, never from a backend's class."""
    remote = backend.remote
    root = remote.local_root()
    assert (root is not None) == (Capability.LOCAL in remote.capabilities)
    if root is not None:
        assert (Path(root) / "a.bin").read_bytes() == FILES["a.bin"]
    remote.configure(follow_links=False, replaces_other_types=False, fsync=False)  # every backend takes it
    list(remote.list())
    assert remote.symlinks() == [] or Capability.LINKS in remote.capabilities
    if Capability.STAGED in remote.capabilities:
        assert root is not None and Capability.WRITE in remote.capabilities
        state = Path(remote.state_dir("tmp"))
        assert state.is_dir() and str(state).startswith(root)
        (state / "leftover").write_bytes(b"x")
        remote.clear_state("tmp")
        assert not (state / "leftover").exists()
        remote.tidy_state_dir()
    else:
        with pytest.raises(NotImplementedError):
            remote.state_dir("tmp")


def new_hasher_hex(algo: str, data: bytes) -> str:
    from fitsync.hashes import new_hasher

    hasher = new_hasher(algo)
    hasher.update(data)
    return hasher.hexdigest()


# -- as a destination -------------------------------------------------------------------

def test_an_atomic_write_lands_whole_with_its_mtime(destination):
    remote = destination.remote
    data = os.urandom(300_000)
    remote.write_atomic("new/dir/n.bin", [data[:1000], data[1000:]], mtime=MTIME + 60,
                        expected_digest=blake3.blake3(data).hexdigest())
    with remote.open_read("new/dir/n.bin") as f:
        assert f.read() == data
    entry = remote.stat("new/dir/n.bin")
    assert entry.size == len(data) and abs(entry.mtime - (MTIME + 60)) <= max(remote.mtime_resolution, 1e-6)
    assert "new/dir/n.bin" in {e.path for e in remote.list()}


def test_a_failed_verification_leaves_nothing_and_keeps_the_old_file(destination):
    remote = destination.remote
    before = sorted(e.path for e in remote.list())
    with pytest.raises(VerificationFailed):
        remote.write_atomic("fresh.bin", [b"new bytes"], expected_digest=blake3.blake3(b"other").hexdigest())
    with pytest.raises(VerificationFailed):
        remote.write_atomic("sub.txt", [b"replacement"], expected_digest=blake3.blake3(b"other").hexdigest())
    assert sorted(e.path for e in remote.list()) == before
    with remote.open_read("sub.txt") as f:
        assert f.read() == FILES["sub.txt"]


def test_a_source_that_fails_mid_write_leaves_nothing(destination):
    remote = destination.remote

    def chunks():
        yield b"first part"
        raise OSError("the source went away")

    with pytest.raises((OSError, FitsyncError)):
        remote.write_atomic("broken.bin", chunks())
    assert "broken.bin" not in {e.path for e in remote.list()}


def test_delete_removes_just_that_file(destination):
    remote = destination.remote
    remote.delete("sub/deeper/c.txt")
    listed = {e.path for e in remote.list()}
    assert "sub/deeper/c.txt" not in listed and "sub/b c.bin" in listed and "a.bin" in listed
    with pytest.raises(NotFound):
        remote.stat("sub/deeper/c.txt")


@pytest.mark.parametrize("hostile", ["../outside.txt", "sub/../../outside.txt"])
def test_hostile_names_are_never_written_or_deleted(destination, hostile):
    with pytest.raises(FitsyncError):
        destination.remote.write_atomic(hostile, [b"overwritten"])
    with pytest.raises(FitsyncError):
        destination.remote.delete(hostile)
    if destination.outside is not None:
        assert destination.outside.read_bytes() == b"secret beside the tree\n"


def test_resuming_is_declared_where_it_holds(destination):
    assert (Capability.RESUMES in destination.remote.capabilities) == (destination.name in RESUMING)


@pytest.mark.parametrize("name", RESUMING)
def test_a_copy_killed_midway_resumes_after_the_bytes_it_kept(name, request, tmp_path, monkeypatch):
    """SIGKILL `fitsync mirror` while it copies a large file in, then run it
    again: nothing is left under the final name meanwhile, the rerun sends
    only what had not been kept, and the result is the source's bytes."""
    import json
    import signal
    import subprocess
    import sys
    import time

    data = random.Random(7).randbytes(64 << 20)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.fits").write_bytes(data)
    with _backend(name, request, tmp_path, monkeypatch) as b:
        command = [sys.executable, "-m", "fitsync", "mirror", str(src), b.address, "--jobs=1", "--json"]
        part_dir, final = b.root / ".fitsync" / "partial", b.root / "big.fits"
        first = subprocess.Popen(command + ["--bwlimit=24M"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline, killed_at = time.monotonic() + 60, 0
        while time.monotonic() < deadline and first.poll() is None and not killed_at:
            for part in part_dir.glob("*.part") if part_dir.is_dir() else ():
                with contextlib.suppress(FileNotFoundError):
                    if part.stat().st_size >= 24 << 20:
                        assert not final.exists(), "the final name appeared before the copy was done"
                        first.send_signal(signal.SIGKILL)
                        killed_at = part.stat().st_size
            time.sleep(0.005)
        first.wait(30)
        assert killed_at, f"the copy was not seen in {part_dir} in time: {first.stderr.read().decode()[-2000:]}"
        assert not final.exists()
        again = subprocess.run(command + ["--itemize"], capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        report = json.loads(again.stdout)
        assert [f["built"] for f in report["files"]] == ["resumed"], report["files"]
        assert report["bytes_reused"] >= 8 << 20, report  # at least the first checkpoint was kept
        assert report["bytes_transferred"] + report["bytes_reused"] == len(data), report
        assert blake3.blake3(final.read_bytes()).digest() == blake3.blake3(data).digest()
        assert not part_dir.exists() or not list(part_dir.iterdir()), "the kept part outlived the copy it served"
