"""A destination that fights back, sources that change shape, deletes that must
not reach the wrong files: the installed ``fitsync`` run as root, as from cron."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_tree, write_tree
from http_fixture import HttpFixture

FITSYNC = str(Path(sys.executable).with_name("fitsync"))


def run(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    result = subprocess.run([FITSYNC, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    assert "Traceback" not in result.stderr, result.stderr
    return result


def snapshot(root: Path) -> dict:
    """Every entry under root with its kind, bytes or link target (a canary's fingerprint)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_file():
            out[rel] = ("file", path.read_bytes())
        else:
            out[rel] = ("dir", None)
    return out


@pytest.fixture
def canary(tmp_path):
    write_tree(tmp_path / "canary", {"victim.txt": b"must stay", "tmp/keep": b"k", "partial/keep": b"p"})
    return tmp_path / "canary"


def test_a_planted_partial_is_never_written_through(tmp_path, canary):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"obs.fits": os.urandom(200_000)})
    before = snapshot(canary)
    # The partial's name is derived from the source file's identity: predictable, hence plantable.
    from fitsync.engine.plan import Action, Item
    from fitsync.engine.transfer import identity_key
    from fitsync.remotes.local import LocalRemote

    entry = next(LocalRemote(str(src)).list())
    key = identity_key(Item("obs.fits", Action.NEW, "", entry))
    (dst / ".fitsync" / "partial").mkdir(parents=True, mode=0o700)
    (dst / ".fitsync").chmod(0o700)
    for suffix in (".part", ".journal"):
        (dst / ".fitsync" / "partial" / f"{key}{suffix}").symlink_to(canary / "victim.txt")
    result = run("mirror", src, dst)
    assert result.returncode == 0, result.stderr
    assert snapshot(canary) == before
    assert not (dst / "obs.fits").is_symlink() and (dst / "obs.fits").read_bytes() == (src / "obs.fits").read_bytes()


def test_a_symlinked_state_directory_is_refused(tmp_path, canary):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"a.fits": b"a" * 100})
    dst.mkdir()
    (dst / ".fitsync").symlink_to(canary)
    before = snapshot(canary)
    result = run("mirror", src, dst)
    assert result.returncode == 2 and "is a symlink" in result.stderr
    assert snapshot(canary) == before


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_lock_that_is_not_a_file_is_one_line_not_a_hang(tmp_path, kind):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"a.fits": b"a"})
    (dst / ".fitsync").mkdir(parents=True, mode=0o700)
    lock = dst / ".fitsync" / "lock"
    os.mkfifo(lock) if kind == "fifo" else lock.mkdir()
    started = time.monotonic()
    result = run("mirror", src, dst, timeout=20)
    assert time.monotonic() - started < 10
    assert result.returncode == 2 and "remove it and run again" in result.stderr


def test_nesting_is_refused_both_ways(tmp_path):
    write_tree(tmp_path / "archive", {"new/a.fits": b"a", "old.fits": b"o"})
    inner = run("mirror", tmp_path / "archive" / "new", tmp_path / "archive", "--delete")
    assert inner.returncode == 2 and "inside the destination" in inner.stderr
    outer = run("mirror", tmp_path / "archive", tmp_path / "archive" / "new" / "copy")
    assert outer.returncode == 2 and "inside the source" in outer.stderr
    (tmp_path / "alias").symlink_to(tmp_path / "archive")
    assert run("mirror", tmp_path / "alias" / "new", tmp_path / "archive", "--delete").returncode == 2
    assert read_tree(tmp_path / "archive") == {"new/a.fits": b"a", "old.fits": b"o"}


def test_an_empty_source_does_not_empty_the_destination(tmp_path):
    (tmp_path / "mnt").mkdir()  # an unmounted mount point
    write_tree(tmp_path / "dst", {f"{i}.fits": b"x" for i in range(20)})
    refused = run("mirror", tmp_path / "mnt", tmp_path / "dst", "--delete")
    assert refused.returncode == 2 and "--allow-empty-source" in refused.stderr
    assert len(read_tree(tmp_path / "dst")) == 20
    write_tree(tmp_path / "mnt", {"0.fits": b"x"})
    capped = run("mirror", tmp_path / "mnt", tmp_path / "dst", "--delete", "--max-delete=5")
    assert capped.returncode == 3 and "more than --max-delete=5" in capped.stderr
    assert len(read_tree(tmp_path / "dst")) == 20
    assert run("mirror", tmp_path / "mnt", tmp_path / "dst", "--delete", "--max-delete=19").returncode == 0
    assert sorted(read_tree(tmp_path / "dst")) == ["0.fits"]
    (tmp_path / "mnt" / "0.fits").unlink()
    assert run("mirror", tmp_path / "mnt", tmp_path / "dst", "--delete", "--allow-empty-source").returncode == 0
    assert read_tree(tmp_path / "dst") == {}


def test_a_type_change_converges(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"x/a.fits": b"a", "y": b"file"})
    run("mirror", src, dst)
    (src / "x" / "a.fits").unlink()
    (src / "x").rmdir()
    (src / "y").unlink()
    write_tree(src, {"x": b"now a file", "y/b.fits": b"now a directory"})
    kept = run("mirror", src, dst)
    assert kept.returncode == 3 and "run with --delete to replace it" in kept.stderr
    assert run("mirror", src, dst, "--delete").returncode == 0
    assert read_tree(dst) == {"x": b"now a file", "y/b.fits": b"now a directory"}
    assert run("mirror", src, dst, "--delete", "--json").returncode == 0


def test_modes_are_kept_and_never_widened(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"private/key.fits": b"k" * 100, "public.fits": b"p"})
    (src / "private" / "key.fits").chmod(0o600)
    (src / "private").chmod(0o700)
    (src / "public.fits").chmod(0o644)
    os.chown(src / "private" / "key.fits", 65534, 65534)
    assert run("mirror", src, dst).returncode == 0
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(dst / "private" / "key.fits") == 0o600 and mode(dst / "private") == 0o700
    assert mode(dst / "public.fits") == 0o644
    assert (dst / "private" / "key.fits").stat().st_uid == 65534  # root keeps ownership
    with open(src / "private" / "key.fits", "ab") as f:
        f.write(b"more")
    assert run("mirror", src, dst).returncode == 0  # a delta update
    assert mode(dst / "private" / "key.fits") == 0o600


def test_names_are_escaped_in_every_report(tmp_path):
    hostile = "bad\x1b[2Kname.fits"
    write_tree(tmp_path / "a", {hostile: b"1", "ok.fits": b"2"})
    write_tree(tmp_path / "b", {"ok.fits": b"2"})
    compared = run("compare", tmp_path / "a", tmp_path / "b")
    assert "\x1b" not in compared.stdout and "bad\\x1b[2Kname.fits" in compared.stdout
    run("manifest", tmp_path / "a", f"--output={tmp_path / 'm.jsonl'}")
    audited = run("audit", tmp_path / "b", f"--manifest={tmp_path / 'm.jsonl'}")
    assert audited.returncode == 1 and "\x1b" not in audited.stdout + audited.stderr
    assert "missing  bad\\x1b[2Kname.fits" in audited.stdout


def test_non_utf8_names_in_a_manifest(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    (root / "ok.fits").write_bytes(b"ok")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.fits"), "wb") as f:
        f.write(b"x")
    for fmt in ("jsonl", "b3sum", "sha256sum"):
        result = run("manifest", root, f"--format={fmt}", f"--output={tmp_path / ('m.' + fmt)}",
                     env={"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
        assert result.returncode == 3 and "the name is not UTF-8" in result.stderr, result.stderr
        assert "ok.fits" in (tmp_path / f"m.{fmt}").read_text()


def test_a_bad_port_in_the_remotes_file(tmp_path):
    config = tmp_path / "remotes.toml"
    config.write_text('[obs]\ntype = "sftp"\nhost = "127.0.0.1"\nport = "s3cr3t-typo"\n')
    config.chmod(0o600)
    result = run("mirror", "obs:/data", tmp_path / "d", env={"FITSYNC_CONFIG": str(config)})
    assert result.returncode == 2 and "port" in result.stderr and "s3cr3t" not in result.stderr


def test_an_endless_manifest_line_is_refused_early(tmp_path):
    with open(tmp_path / "huge.jsonl", "w") as f:
        f.write('{"format": "fitsync-manifest", "version": 1, "files": 1}\n{"path": "')
        f.write("a" * (70 << 20))
    write_tree(tmp_path / "t", {"a": b"1"})
    result = run("audit", tmp_path / "t", f"--manifest={tmp_path / 'huge.jsonl'}")
    assert result.returncode == 2 and "longer than 64 MiB" in result.stderr


def test_http_passwords_stay_out_of_argv(tmp_path):
    write_tree(tmp_path / "site" / "rel", {"a.fits": b"A" * 1000})
    with HttpFixture(str(tmp_path / "site"), login=("survey", "pa55")) as server:
        in_url = server.url.replace("http://", "http://survey:pa55@") + "/rel/"
        refused = run("mirror", in_url, tmp_path / "d1")
        assert refused.returncode == 2 and "~/.netrc" in refused.stderr and "pa55" not in refused.stderr
        assert run("mirror", in_url, tmp_path / "d1", "--allow-password-in-url").returncode == 0
        home = tmp_path / "home"
        home.mkdir()
        (home / ".netrc").write_text("machine 127.0.0.1 login survey password pa55\n")
        (home / ".netrc").chmod(0o600)
        from_netrc = run("mirror", server.url + "/rel/", tmp_path / "d2", env={"HOME": str(home)})
        assert from_netrc.returncode == 0, from_netrc.stderr
        config = tmp_path / "remotes.toml"
        config.write_text(f'[dr1]\ntype = "https"\nurl = "{server.url}/rel/"\nusername = "survey"\n'
                          'password_env = "DR1_PASSWORD"\n')
        named = run("mirror", "dr1:", tmp_path / "d3", env={"FITSYNC_CONFIG": str(config), "DR1_PASSWORD": "pa55"})
        assert named.returncode == 0, named.stderr
    for d in ("d1", "d2", "d3"):
        assert read_tree(tmp_path / d) == {"a.fits": b"A" * 1000}


def test_ctrl_c_stops_the_run_within_seconds(tmp_path):
    write_tree(tmp_path / "src", {f"{i:05d}.fits": b"x" * 4096 for i in range(3000)})
    proc = subprocess.Popen([FITSYNC, "mirror", str(tmp_path / "src"), str(tmp_path / "dst"), "--bwlimit=2M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30  # Ctrl-C once copying is under way (a loaded machine starts slower)
    while time.monotonic() < deadline and not any((tmp_path / "dst").glob("*.fits")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - started < 3, err
    assert "Traceback" not in err and "run the same command again" in err
    copied = read_tree(tmp_path / "dst")
    assert 0 < len(copied) < 3000 and all(v == b"x" * 4096 for v in copied.values())
    assert run("mirror", tmp_path / "src", tmp_path / "dst").returncode == 0
    assert len(read_tree(tmp_path / "dst")) == 3000
    assert hashlib.sha256(b"".join(read_tree(tmp_path / "dst").values())).hexdigest() == hashlib.sha256(
        b"".join(read_tree(tmp_path / "src").values())).hexdigest()


def test_fsync_syncs_each_file_and_its_directory(tmp_path):
    """--fsync, observed with strace: one fsync per file before its rename, one per directory after."""
    write_tree(tmp_path / "src", {"a.fits": b"a" * 1000, "night/b.fits": b"b" * 1000})
    traced = subprocess.run(["strace", "-f", "-e", "trace=fsync,rename,renameat,renameat2", "-o",
                             str(tmp_path / "trace"), FITSYNC, "mirror", str(tmp_path / "src"), str(tmp_path / "dst"),
                             "--fsync", "-q"], capture_output=True, text=True)
    assert traced.returncode == 0, traced.stderr
    calls = [line for line in (tmp_path / "trace").read_text().splitlines() if "fsync(" in line or "rename" in line]
    assert sum("fsync(" in line for line in calls) == 4  # two files, then their two directories
    assert read_tree(tmp_path / "dst") == read_tree(tmp_path / "src")
    plain = subprocess.run(["strace", "-f", "-e", "trace=fsync", "-o", str(tmp_path / "trace2"), FITSYNC, "mirror",
                            str(tmp_path / "src"), str(tmp_path / "dst2"), "-q"], capture_output=True, text=True)
    assert plain.returncode == 0 and "fsync(" not in (tmp_path / "trace2").read_text()


def _claimed_bomb(path: Path, claimed: int) -> None:
    """A 1 KB tar whose header says its member unpacks to ``claimed`` bytes
    (a sparse or compressed bomb looks the same to the header check)."""
    import tarfile

    info = tarfile.TarInfo("zeros.fits")
    info.size = claimed
    path.write_bytes(info.tobuf(format=tarfile.PAX_FORMAT) + bytes(1024))


def test_extract_is_bounded_and_never_overwrites_mirrored_files(tmp_path):
    import io
    import tarfile

    src = tmp_path / "src"
    src.mkdir()
    _claimed_bomb(src / "bomb.tar", 8 << 30)  # 8 GiB claimed by a 2 KB archive
    with tarfile.open(src / "clash.tar", "w") as tar:
        info = tarfile.TarInfo("data.fits")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"tar's"))
    (src / "data.fits").write_bytes(b"the mirror's own file")
    with tarfile.open(src / "good.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("good/inside.fits")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"good"))
    result = run("mirror", src, tmp_path / "dst", "--extract")
    assert result.returncode == 3, result.stderr
    assert "bomb.tar" in result.stderr and "--extract-max" in result.stderr
    assert "clash.tar" in result.stderr and "would overwrite data.fits" in result.stderr
    dst = tmp_path / "dst"
    assert (dst / "good" / "inside.fits").read_bytes() == b"good"  # one bad archive does not stop the others
    assert (dst / "data.fits").read_bytes() == b"the mirror's own file" and not (dst / "zeros.fits").exists()
    (tmp_path / "one").mkdir()
    with tarfile.open(tmp_path / "one" / "three.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("three.fits")
        info.size = 3 << 20
        tar.addfile(info, io.BytesIO(bytes(3 << 20)))
    capped = run("mirror", tmp_path / "one" / "three.tgz", tmp_path / "small", "--extract", "--extract-max=1M")
    assert capped.returncode == 3 and not (tmp_path / "small" / "three.fits").exists()
    allowed = run("mirror", tmp_path / "one" / "three.tgz", tmp_path / "small", "--extract")  # 3 MiB: within the default
    assert allowed.returncode == 0 and (tmp_path / "small" / "three.fits").stat().st_size == 3 << 20


def _swap_for_symlink(directory: Path, canary: Path) -> None:
    """What an attacker (or an unlucky script) does while the mirror runs."""
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(canary)


def test_a_directory_swapped_mid_run_receives_nothing(tmp_path, canary):
    import fitsync
    from fitsync.events import FileFinished

    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {f"night/{i:03d}.fits": b"n" * 100 for i in range(30)})
    write_tree(dst, {"night/old.txt": b"old"})
    before = snapshot(canary)
    swapped = []

    def swap_after_first(event):
        if isinstance(event, FileFinished) and not swapped:
            swapped.append(event.path)
            _swap_for_symlink(dst / "night", canary)

    result = fitsync.mirror(src, dst, jobs=1, retries=0, progress=swap_after_first)
    assert snapshot(canary) == before  # not one byte went through the symlink
    assert result.files_failed == 29 and result.exit_code == 3
    assert all("symlink" in f["reason"] for f in result.failures)


def test_deletes_after_a_swap_stay_in_the_tree(tmp_path, canary):
    import fitsync
    from fitsync.events import FileFinished

    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"keep.fits": b"k"})
    write_tree(dst, {"keep.fits": b"k", "a.txt": b"gone", **{f"sub/victim{i}.txt": b"x" for i in range(3)}})
    write_tree(canary, {f"victim{i}.txt": b"canary's own" for i in range(3)})
    before = snapshot(canary)

    def swap_after_first_delete(event):  # a.txt goes first (path order), then sub/...
        if isinstance(event, FileFinished) and event.path == "a.txt":
            _swap_for_symlink(dst / "sub", canary)

    result = fitsync.mirror(src, dst, delete=True, progress=swap_after_first_delete)
    assert snapshot(canary) == before  # deletes through the symlinked directory were refused
    assert not (dst / "a.txt").exists() and result.files_deleted == 1
    assert result.files_failed == 3 and all("symlink" in f["reason"] for f in result.failures)


def test_a_file_that_cannot_fit_is_refused_before_filling_the_disk(tmp_path):
    """A 70 MiB file onto a 32 MiB file system: refused up front, no partial left, the rest copied."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(small)], check=True)
    try:
        write_tree(tmp_path / "src", {"big.fits": os.urandom(70 << 20), "night.log": b"log"})
        result = run("mirror", tmp_path / "src", small / "dst", "--no-fits-check")
        assert result.returncode == 3 and "needs 73,400,320 bytes" in result.stderr
        assert read_tree(small / "dst") == {"night.log": b"log"}
        assert os.statvfs(small).f_bfree * os.statvfs(small).f_frsize > 30 << 20  # the disk was not filled
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_sparse_files_stay_sparse(tmp_path):
    """256 MiB with 1 MiB of data: the copy takes about what the source takes (rsync --sparse), and is equal."""
    import blake3

    src = tmp_path / "src"
    src.mkdir()
    with open(src / "mostly-holes.dat", "wb") as f:
        f.truncate(256 << 20)
        f.seek(100 << 20)
        f.write(os.urandom(1 << 20))
    result = run("mirror", src, tmp_path / "dst", "--json")
    assert result.returncode == 0, result.stderr
    copy = tmp_path / "dst" / "mostly-holes.dat"
    assert copy.stat().st_size == 256 << 20 and copy.stat().st_blocks * 512 <= 2 << 20
    digest = lambda p: blake3.blake3(p.read_bytes(), max_threads=blake3.blake3.AUTO).hexdigest()  # noqa: E731
    assert digest(copy) == digest(src / "mostly-holes.dat")
