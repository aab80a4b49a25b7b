"""The local mirror: what moves, verification, atomicity, resume, lock, errors."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import read_tree, write_tree

SRC_FILES = {
    "night1/a.fits": os.urandom(300_000),
    "night1/b.txt": b"log line\n" * 100,
    "night2/c.bin": os.urandom(50_000),
    "empty.dat": b"",
}


@pytest.fixture
def trees(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, SRC_FILES)
    return src, dst


def test_first_mirror_copies_everything_and_preserves_mtimes(trees, cli):
    src, dst = trees
    result = cli("mirror", src, dst, "--json")
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["files_new"] == 4 and summary["files_failed"] == 0
    assert summary["bytes_transferred"] == sum(map(len, SRC_FILES.values()))
    assert read_tree(dst) == SRC_FILES
    for rel in SRC_FILES:
        assert os.stat(dst / rel).st_mtime_ns == os.stat(src / rel).st_mtime_ns
    assert not (dst / ".fitsync").exists(), "no state left behind after a clean run"


def test_json_summary_has_the_documented_fields(trees, cli):
    src, dst = trees
    summary = cli("mirror", src, dst, "--json").json()
    for key in ("files_total", "files_new", "files_updated", "files_repaired", "files_unchanged", "files_deleted",
                "files_failed", "bytes_total", "bytes_transferred", "bytes_reused", "seconds", "failures"):
        assert key in summary


def test_second_run_is_a_no_op(trees, cli):
    src, dst = trees
    cli("mirror", src, dst)
    summary = cli("mirror", src, dst, "--json").json()
    assert summary["files_unchanged"] == 4 and summary["bytes_transferred"] == 0


def test_changed_file_is_updated_by_delta(trees, cli):
    src, dst = trees
    cli("mirror", src, dst)
    data = bytearray(SRC_FILES["night1/a.fits"])
    data[150_000:150_010] = b"0123456789"
    (src / "night1/a.fits").write_bytes(bytes(data))
    summary = cli("mirror", src, dst, "--json", "--itemize", "--no-whole-file").json()
    assert summary["files_updated"] == 1
    assert summary["bytes_transferred"] < 40_000, "only the changed block(s) travel"
    assert summary["bytes_reused"] > 250_000
    assert (dst / "night1/a.fits").read_bytes() == bytes(data)


def test_checksum_repairs_corrupt_copy_with_same_size_and_mtime(trees, cli):
    src, dst = trees
    cli("mirror", src, dst)
    victim = dst / "night2/c.bin"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cli("mirror", src, dst, "--json").json()["files_repaired"] == 0, "size+mtime alone cannot see it"
    summary = cli("mirror", src, dst, "--checksum", "--json").json()
    assert summary["files_repaired"] == 1
    assert victim.read_bytes() == SRC_FILES["night2/c.bin"]


def test_delete_removes_extra_files_only_with_flag(trees, cli):
    src, dst = trees
    cli("mirror", src, dst)
    write_tree(dst, {"stale/old.fits": b"old"})
    assert cli("mirror", src, dst, "--json").json()["files_deleted"] == 0
    assert (dst / "stale/old.fits").exists()
    assert cli("mirror", src, dst, "--delete", "--json").json()["files_deleted"] == 1
    assert not (dst / "stale").exists()
    assert read_tree(dst) == SRC_FILES


def test_dry_run_changes_nothing_and_itemizes(trees, cli):
    src, dst = trees
    cli("mirror", src, dst)
    write_tree(src, {"new.fits": b"N" * 10})
    write_tree(dst, {"extra.txt": b"x"})
    before = read_tree(dst)
    result = cli("mirror", src, dst, "--dry-run", "--delete")
    assert result.code == 0
    assert ">f+++++++++ new.fits" in result.out.splitlines()
    assert "*deleting   extra.txt" in result.out.splitlines()
    assert "would copy 10 B of new files" in result.err
    assert read_tree(dst) == before


def test_itemize_speaks_rsyncs_format_and_the_log_says_why(trees, cli, tmp_path):
    src, dst = trees
    result = cli("mirror", src, dst, "--itemize", f"--log-file={tmp_path / 'log'}")
    lines = result.out.splitlines()
    names = [line.split(" ", 1)[1] for line in lines]
    assert ">f+++++++++ night1/a.fits" in lines and names == sorted(names)  # path order, whatever finished first
    assert "cd+++++++++ night1/" in lines  # the directory made for it, before its files
    assert "new        night1/a.fits  (not in destination)" in (tmp_path / "log").read_text()
    assert cli("mirror", src, dst, "-i").out == ""  # unchanged files only with -ii, as in rsync
    assert ".f          night1/a.fits" in cli("mirror", src, dst, "-ii").out.splitlines()
    write_tree(src, {"night1/a.fits": b"changed, and longer than before"}, mtime=1_800_000_000.0)
    assert cli("mirror", src, dst, "--itemize-changes").out.splitlines() == [">f.st...... night1/a.fits (rewritten)"]


def test_source_is_never_modified(trees, cli):
    src, dst = trees
    before = {p: (src / p).stat().st_mtime_ns for p in SRC_FILES}
    cli("mirror", src, dst, "--checksum", "--delete")
    assert read_tree(src) == SRC_FILES
    assert {p: (src / p).stat().st_mtime_ns for p in SRC_FILES} == before


def test_manifest_mismatch_is_repaired(trees, cli, tmp_path):
    src, dst = trees
    manifest = tmp_path / "m.jsonl"
    assert cli("manifest", src, f"--output={manifest}").code == 0
    cli("mirror", src, dst)
    victim = dst / "night1/b.txt"
    st = victim.stat()
    victim.write_bytes(b"LOG LINE\n" * 100)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    summary = cli("mirror", src, dst, f"--manifest={manifest}", "--json").json()
    assert summary["files_repaired"] == 1
    assert victim.read_bytes() == SRC_FILES["night1/b.txt"]


def test_resume_reuses_a_validated_partial_and_discards_a_bad_one(tmp_path, cli):
    from fitsync.engine import transfer
    from fitsync.engine.plan import Action, Item
    from fitsync.remotes.local import LocalRemote

    big = os.urandom(3 * transfer.CHUNK + 12345)
    write_tree(tmp_path / "src", {"big.fits": big})
    src, dst = LocalRemote(str(tmp_path / "src")), LocalRemote(str(tmp_path / "dst"))
    os.makedirs(dst.root)
    item = Item("big.fits", Action.NEW, "", src.stat("big.fits"))
    # Simulate an interrupted first run: two full chunks written and journalled.
    part_dir = dst.state_dir("partial")
    key = transfer.identity_key(item)
    import xxhash

    with open(os.path.join(part_dir, key + ".part"), "wb") as p, open(os.path.join(part_dir, key + ".journal"), "wb") as j:
        for i in range(2):
            chunk = big[i * transfer.CHUNK:(i + 1) * transfer.CHUNK]
            p.write(chunk)
            j.write(xxhash.xxh3_128_digest(chunk))
    moved = transfer.pull_new(src, dst, item)
    assert moved.reused == 2 * transfer.CHUNK
    assert moved.transferred == len(big) - 2 * transfer.CHUNK
    assert (tmp_path / "dst/big.fits").read_bytes() == big

    # A partial whose bytes went stale (second chunk damaged) is reused only up to the damage.
    os.unlink(tmp_path / "dst/big.fits")
    with open(os.path.join(part_dir, key + ".part"), "wb") as p, open(os.path.join(part_dir, key + ".journal"), "wb") as j:
        for i in range(2):
            chunk = big[i * transfer.CHUNK:(i + 1) * transfer.CHUNK]
            j.write(xxhash.xxh3_128_digest(chunk))
            p.write(chunk if i == 0 else b"\0" * len(chunk))
    moved = transfer.pull_new(src, dst, item)
    assert moved.reused == transfer.CHUNK
    assert (tmp_path / "dst/big.fits").read_bytes() == big


def test_killed_mirror_leaves_no_partial_file_and_rerun_completes(tmp_path):
    """SIGKILL in the middle of a copy, then run again."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = {f"f{i:02d}.bin": os.urandom(4 << 20) for i in range(12)}
    write_tree(src, files)
    cmd = [sys.executable, "-m", "fitsync", "mirror", str(src), str(dst), "--jobs=1", "--quiet"]
    proc = subprocess.Popen(cmd)
    import time

    deadline = time.time() + 20
    while time.time() < deadline and len(list(dst.glob("f*.bin"))) < 3:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    for path in dst.glob("f*.bin"):
        assert path.read_bytes() == files[path.name], f"{path.name} is partial under its final name"
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert read_tree(dst) == files


def test_lock_refuses_a_second_mirror_and_reclaims_a_stale_one(trees, cli):
    src, dst = trees
    state = dst / ".fitsync"
    state.mkdir(parents=True)
    (state / "lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")
    result = cli("mirror", src, dst)
    assert result.code == 5
    assert f"locked by PID {os.getpid()} on host {socket.gethostname()}" in result.err
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state / "lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    assert cli("mirror", src, dst).code == 0
    assert read_tree(dst) == SRC_FILES


@pytest.mark.parametrize("case", ["missing-src", "dst-inside-src", "dst-is-file"])
def test_bad_locations_give_one_line_errors(tmp_path, cli, case):
    src = tmp_path / "src"
    write_tree(src, {"a": b"a"})
    if case == "missing-src":
        args, word = (tmp_path / "nope", tmp_path / "dst"), "does not exist"
    elif case == "dst-inside-src":
        args, word = (src, src / "copy"), "inside the source"
    else:
        (tmp_path / "file").write_text("x")
        args, word = (src, tmp_path / "file"), "not a directory"
    result = cli("mirror", *args)
    assert result.code == 2
    assert word in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def _as_unprivileged(cmd):
    """When we are root (CI), drop the capabilities that bypass file permissions,
    so that a mode-0 file is really unreadable to the command."""
    if os.geteuid() != 0:
        return cmd
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *cmd]


def test_unreadable_source_file_fails_that_file_only(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"good.txt": b"good", "bad.txt": b"bad"})
    write_tree(dst, {"extra.txt": b"extra"})
    (src / "bad.txt").chmod(0)
    cmd = _as_unprivileged([sys.executable, "-m", "fitsync", "mirror", str(src), str(dst), "--json", "--delete"])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["files_failed"] == 1 and summary["failures"][0]["path"] == "bad.txt"
    assert "ermission denied" in summary["failures"][0]["reason"]
    assert (dst / "good.txt").read_bytes() == b"good", "the rest of the run goes on"
    assert (dst / "extra.txt").exists(), "nothing is deleted after a failure"
    assert "Traceback" not in proc.stderr


def test_unwritable_destination_is_a_one_line_error(tmp_path):
    src, ro = tmp_path / "src", tmp_path / "ro"
    write_tree(src, {"a.txt": b"a"})
    ro.mkdir()
    ro.chmod(0o555)
    cmd = _as_unprivileged([sys.executable, "-m", "fitsync", "mirror", str(src), str(ro / "dst")])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "not writable" in proc.stderr and "Traceback" not in proc.stderr
