"""Fault injection (issue 9): a full disk, permissions, bit rot, sources that
change while they are read, and two mirrors racing for one destination.

Everything runs the real `fitsync` (a child process, or Mirror in this process
where a hook must act at an exact moment of a read) on real files; tmpfs
mounts and capability drops need root, which CI has.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))

from harness import (  # noqa: E402
    STATE_DIR,
    copy_tree,
    fits_bytes,
    fitsync_cmd,
    fitsync_env,
    flip_random_bits,
    make_manifest,
    run_fitsync,
    snapshot,
    state_bytes,
    write_file,
)

from fitsync.remotes.local import LocalRemote  # noqa: E402
from fitsync.engine.mirror import Mirror, MirrorOptions  # noqa: E402
from fitsync.engine.transfer import CHUNK  # noqa: E402

MIB = 1 << 20


def _as_unprivileged(cmd):
    """As root (CI), drop the capabilities that bypass file permissions."""
    if os.geteuid() != 0:
        return cmd
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *cmd]


def _json(proc) -> dict:
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


# -- disk full ------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs; unmounted in teardown."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"these tests mount a tmpfs and need root (as CI has): {proc.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _grow(mount_point: Path, size: str = "96m") -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)


@pytest.fixture
def src_over_8m(tmp_path):
    src = tmp_path / "src"
    rng = random.Random(7)
    for i in range(5):
        write_file(src / f"f{i}.bin", rng.randbytes(3_000_000), 1_700_000_000.0)
    write_file(src / "big.bin", rng.randbytes(20 * MIB), 1_700_000_000.0)
    return src


def test_disk_full_mid_run_is_a_clear_per_file_error_and_a_rerun_completes(small_fs, src_over_8m, tmp_path):
    dst = small_fs / "dst"
    proc = run_fitsync("mirror", src_over_8m, dst, "--json")
    assert proc.returncode == 3, proc.stderr
    summary = _json(proc)
    assert summary["files_failed"] >= 1
    assert all("No space left on device" in f["reason"] for f in summary["failures"]), summary["failures"]
    src_snap = snapshot(src_over_8m)
    for rel, version in snapshot(dst).items():
        assert version == src_snap[rel], f"{rel} under its final name is not the source's version"
    tmp = dst / STATE_DIR / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), "temporary files are cleaned up"
    _grow(small_fs)
    manifest = tmp_path / "m.jsonl"
    make_manifest(src_over_8m, manifest)
    again = run_fitsync("mirror", src_over_8m, dst, "--json")
    assert again.returncode == 0, again.stderr
    assert snapshot(dst) == src_snap
    assert run_fitsync("audit", dst, f"--manifest={manifest}", "--quiet").returncode == 0
    assert not (dst / STATE_DIR).exists()


def test_disk_full_keeps_only_resumable_partial_bytes(small_fs, src_over_8m):
    dst = small_fs / "dst"
    run_fitsync("mirror", src_over_8m, dst, "--json")
    state = state_bytes(dst)
    assert state["partial_bytes"] == state["reusable_bytes"], state
    parts = list((dst / STATE_DIR).rglob("*.part")) if (dst / STATE_DIR).exists() else []
    assert all(p.stat().st_size > 0 for p in parts), "no empty partial files"


def test_full_destination_before_the_run_is_a_one_line_error(small_fs, src_over_8m):
    (small_fs / "filler").write_bytes(b"\0" * (8 * MIB - 4096))
    with open(small_fs / "filler2", "wb") as f:  # fill the last pages
        try:
            f.write(b"\0" * MIB)
        except OSError:
            pass
    proc = run_fitsync("mirror", src_over_8m, small_fs)
    assert "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert proc.returncode in (2, 3), proc.stderr
    assert "No space left" in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3


# -- permissions -----------------------------------------------------------------------------

@pytest.fixture
def permission_trees(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_file(src / "ro/a.txt", b"new version", 1_700_000_100.0)
    write_file(src / "ok/b.txt", b"fine", 1_700_000_000.0)
    write_file(src / "ok/unreadable.txt", b"secret", 1_700_000_000.0)
    write_file(src / "ok/c.txt", b"after the failures", 1_700_000_000.0)
    (src / "ok/unreadable.txt").chmod(0)
    write_file(dst / "ro/a.txt", b"old", 1_700_000_000.0)
    write_file(src / "ok/locked.txt", b"new", 1_700_000_100.0)
    write_file(dst / "ok/locked.txt", b"old", 1_700_000_000.0)
    (dst / "ok/locked.txt").chmod(0o444)  # a read-only file in a writable directory
    (dst / "ro").chmod(0o555)
    yield src, dst
    (dst / "ro").chmod(0o755)


def _mirror_unprivileged(src, dst):
    return subprocess.run(_as_unprivileged(fitsync_cmd("mirror", src, dst, "--json")), capture_output=True,
                          text=True, env=fitsync_env(), timeout=120)


def test_read_only_destination_and_unreadable_source_fail_per_file(permission_trees):
    src, dst = permission_trees
    proc = _mirror_unprivileged(src, dst)
    assert proc.returncode == 3, proc.stderr
    summary = _json(proc)
    assert sorted(f["path"] for f in summary["failures"]) == ["ok/unreadable.txt", "ro/a.txt"]
    assert all("ermission denied" in f["reason"] for f in summary["failures"])
    assert (dst / "ok/b.txt").read_bytes() == b"fine" and (dst / "ok/c.txt").read_bytes() == b"after the failures"
    assert (dst / "ro/a.txt").read_bytes() == b"old", "the read-only copy is left as it was"
    assert not (dst / "ok/unreadable.txt").exists()
    assert (dst / "ok/locked.txt").read_bytes() == b"new", "replaced by rename, as rsync does"


def test_permission_failure_names_the_destination_file_not_a_temporary(permission_trees):
    src, dst = permission_trees
    summary = _json(_mirror_unprivileged(src, dst))
    reason = next(f["reason"] for f in summary["failures"] if f["path"] == "ro/a.txt")
    assert ".fitsync" not in reason and str(dst / "ro") in reason, reason


# -- bit rot ----------------------------------------------------------------------------------

def _rot_tree(root: Path, rng: random.Random) -> None:
    for i in range(3):
        write_file(root / f"fits/obs{i}.fits", fits_bytes(rng, 2_000_000), 1_700_000_000.0)
    for i in range(2):
        write_file(root / f"raw/r{i}.bin", rng.randbytes(3 * MIB), 1_700_000_000.0)
    for i in range(10):
        write_file(root / f"small/s{i}.txt", rng.randbytes(rng.randint(1, 30_000)), 1_700_000_000.0)


@pytest.mark.parametrize("how", ["--checksum", "--manifest"])
def test_bit_rot_is_detected_by_audit_and_repaired_block_by_block(tmp_path, how):
    rng = random.Random(f"rot{how}")
    src, dst, manifest = tmp_path / "src", tmp_path / "dst", tmp_path / "m.jsonl"
    _rot_tree(src, rng)
    copy_tree(src, dst)
    make_manifest(src, manifest)
    corrupt, bound = flip_random_bits(src, dst, 60, rng)
    assert corrupt
    audit = run_fitsync("audit", dst, f"--manifest={manifest}", "--json")
    assert audit.returncode == 1
    found = {c["path"] for c in _json(audit)["manifest"]["corrupt"]}
    assert found == corrupt, "audit detects every corrupted file, and only those"
    flag = "--checksum" if how == "--checksum" else f"--manifest={manifest}"
    repair = run_fitsync("mirror", src, dst, flag, "--json", "--no-whole-file")
    assert repair.returncode == 0, repair.stderr
    summary = _json(repair)
    assert summary["files_repaired"] == len(corrupt)
    assert summary["bytes_transferred"] <= bound, (summary["bytes_transferred"], bound)
    assert snapshot(dst) == snapshot(src)
    assert run_fitsync("audit", dst, f"--manifest={manifest}", "--quiet").returncode == 0


# -- sources that change while they are read -----------------------------------------------

class HookedSource(LocalRemote):
    """A local source whose reads call ``hook(path, attempt)`` once the first
    chunk has been read (open_read) or before the first range (read_ranges):
    the moment another program rewrites the file under fitsync."""

    def __init__(self, root, hook):
        super().__init__(str(root))
        self.hook = hook
        self.attempts = 0

    def open_read(self, path):
        stream = super().open_read(path)
        self.attempts += 1
        source, attempt = self, self.attempts

        class Reader:
            fired = False

            def read(self, n=-1):
                data = stream.read(n)
                if not Reader.fired and stream.tell() >= CHUNK:
                    Reader.fired = True
                    source.hook(path, attempt)
                return data

            def seekable(self):
                return False

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                stream.close()

        return Reader()

    def read_ranges(self, path, ranges):
        self.attempts += 1
        self.hook(path, self.attempts)
        return super().read_ranges(path, ranges)


def _rewrite(path: Path, data: bytes, keep_mtime: bool = False) -> None:
    st = path.stat()
    with open(path, "r+b") as f:  # in place, as an appending or patching writer would
        f.write(data)
        f.truncate(len(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _run_mirror(src_remote, dst: Path, retries: int = 3):
    return Mirror(src_remote, LocalRemote(str(dst)), MirrorOptions(retries=retries, retry_delay=0.01, jobs=1)).run()


@pytest.fixture
def big_source(tmp_path):
    src = tmp_path / "src"
    rng = random.Random(11)
    write_file(src / "growing.bin", rng.randbytes(20 * MIB), 1_700_000_000.0)
    write_file(src / "other.txt", b"unchanged", 1_700_000_000.0)
    return src, rng


@pytest.mark.parametrize("change", ["modify", "truncate"])
def test_source_changed_while_read_is_retried_and_the_copy_is_the_final_version(big_source, tmp_path, change):
    src, rng = big_source
    target = src / "growing.bin"
    changed = target.read_bytes()
    changed = changed[:5 * MIB] if change == "truncate" else changed[:-100] + rng.randbytes(100)

    def hook(path, attempt):
        if path == "growing.bin" and attempt == 1:
            time.sleep(0.01)  # an mtime the listing cannot have seen
            _rewrite(target, changed)

    source = HookedSource(src, hook)
    result = _run_mirror(source, tmp_path / "dst")
    assert result.files_failed == 0, result.failures
    assert source.attempts >= 2, "the changed file was read again"
    assert (tmp_path / "dst/growing.bin").read_bytes() == changed
    assert abs((tmp_path / "dst/growing.bin").stat().st_mtime_ns - target.stat().st_mtime_ns) < 1000, \
        "the copy carries the final version's mtime (to the microsecond: Entry.mtime is a float)"


def test_source_that_never_stops_changing_fails_and_nothing_lands(big_source, tmp_path):
    src, rng = big_source
    target = src / "growing.bin"

    def hook(path, attempt):
        if path == "growing.bin":
            time.sleep(0.01)
            _rewrite(target, rng.randbytes(20 * MIB))

    result = _run_mirror(HookedSource(src, hook), tmp_path / "dst", retries=2)
    assert result.files_failed == 1 and result.failures[0]["path"] == "growing.bin"
    assert "changed" in result.failures[0]["reason"]
    assert not (tmp_path / "dst/growing.bin").exists(), "never recorded as a verified copy"
    assert (tmp_path / "dst/other.txt").read_bytes() == b"unchanged"


def test_source_changed_between_signature_and_ranges_is_caught_by_verification(big_source, tmp_path):
    src, rng = big_source
    dst = tmp_path / "dst"
    copy_tree(src, dst)
    target = src / "growing.bin"
    edited = bytearray(target.read_bytes())
    edited[MIB:MIB + 10] = b"0123456789"
    write_file(target, bytes(edited), 1_700_000_500.0)
    final = bytearray(edited)
    final[10 * MIB:10 * MIB + 10] = b"abcdefghij"

    def hook(path, attempt):
        if attempt == 1:
            time.sleep(0.01)
            _rewrite(target, bytes(final))

    source = HookedSource(src, hook)
    result = _run_mirror(source, dst)
    assert result.files_failed == 0, result.failures
    assert (dst / "growing.bin").read_bytes() == bytes(final)


def test_source_rewritten_with_its_mtime_restored_is_not_recorded_as_verified(big_source, tmp_path):
    src, rng = big_source
    target = src / "growing.bin"
    original = target.read_bytes()
    # Head (already read) and tail (not yet read) both change: the copy would be a mix.
    final = b"H" * 100 + original[100:-100] + b"T" * 100

    def hook(path, attempt):
        if path == "growing.bin" and attempt == 1:
            _rewrite(target, final, keep_mtime=True)

    result = _run_mirror(HookedSource(src, hook), tmp_path / "dst")
    copy = tmp_path / "dst/growing.bin"
    if result.files_failed == 0:
        assert copy.read_bytes() == final, "a mix of two versions was recorded as a verified copy"
    else:
        assert not copy.exists()


# -- two mirrors, one destination -----------------------------------------------------------

@pytest.fixture
def slow_source(tmp_path):
    src = tmp_path / "src"
    rng = random.Random(3)
    for i in range(6):
        write_file(src / f"big{i}.bin", rng.randbytes(24 * MIB), 1_700_000_000.0)
    return src


def _start_mirror(src, dst):
    return subprocess.Popen(fitsync_cmd("mirror", src, dst, "--jobs=1"), env=fitsync_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the first mirror ended early: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)


def test_second_mirror_exits_at_once_saying_who_holds_the_lock(slow_source, tmp_path):
    dst = tmp_path / "dst"
    first = _start_mirror(slow_source, dst)
    try:
        _wait_for(dst / STATE_DIR / "lock", first)
        started = time.monotonic()
        second = run_fitsync("mirror", slow_source, dst, timeout=60)
        took = time.monotonic() - started
        still_running = first.poll() is None
    finally:
        first_code = first.wait(timeout=300)
    assert still_running, "the first mirror finished before the second started; the test proved nothing"
    assert second.returncode == 5, second.stderr
    assert f"locked by PID {first.pid} on host {socket.gethostname()}" in second.stderr
    assert took < 5.0, f"the second mirror took {took:.1f} s to give up"
    assert first_code == 0
    assert snapshot(dst) == snapshot(slow_source)


def test_lock_of_a_sigkilled_mirror_is_reclaimed(slow_source, tmp_path):
    dst = tmp_path / "dst"
    first = _start_mirror(slow_source, dst)
    _wait_for(dst / STATE_DIR / "lock", first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (dst / STATE_DIR / "lock").read_text().split()[0] == str(first.pid), "the dead mirror's lock is left"
    again = run_fitsync("mirror", slow_source, dst, "--json")
    assert again.returncode == 0, again.stderr
    assert snapshot(dst) == snapshot(slow_source)


def test_two_mirrors_starting_together_never_both_hold_the_lock(tmp_path, monkeypatch):
    from fitsync import lock as lock_module

    state = tmp_path / "state"
    state.mkdir()
    real_fdopen = os.fdopen

    def slow_fdopen(*args, **kwargs):  # widen the window between create and write
        time.sleep(0.2)
        return real_fdopen(*args, **kwargs)

    monkeypatch.setattr(lock_module.os, "fdopen", slow_fdopen)
    winners, errors = [], []

    def contender():
        try:
            lock_module.DirectoryLock(str(state)).acquire()
            winners.append(1)
        except lock_module.Locked:
            errors.append(1)

    threads = [threading.Thread(target=contender) for _ in range(2)]
    threads[0].start()
    time.sleep(0.05)
    threads[1].start()
    for t in threads:
        t.join()
    assert len(winners) == 1, f"{len(winners)} mirrors hold the lock at once"


# -- what a failed or killed copy leaves behind ---------------------------------------------

class CorruptFirstRead(LocalRemote):
    """A remote-like source (not LOCAL) that lists each file's BLAKE3, as a
    release manifest does, and garbles one byte of the first download: a
    transfer corrupted in transit."""

    capabilities = frozenset({"read_range"})

    def __init__(self, root, digests):
        super().__init__(str(root))
        self.digests, self.opens = digests, 0

    def list(self):
        from fitsync.remotes.base import Entry

        for e in super().list():
            yield Entry(e.path, e.size, e.mtime, {"blake3": self.digests[e.path]})

    def open_read(self, path):
        import io

        self.opens += 1
        stream = super().open_read(path)
        if self.opens > 1:
            return stream
        data = bytearray(stream.read())
        stream.close()
        data[100] ^= 1
        return io.BytesIO(bytes(data))


def test_a_download_corrupted_in_transit_is_fetched_again_not_resumed(tmp_path):
    from fitsync.hashes import file_digest

    src = tmp_path / "src"
    write_file(src / "f.bin", random.Random(5).randbytes(20 * MIB), 1_700_000_000.0)
    source = CorruptFirstRead(src, {"f.bin": file_digest(str(src / "f.bin"))})
    result = _run_mirror(source, tmp_path / "dst", retries=3)
    assert result.files_failed == 0, result.failures
    assert (tmp_path / "dst/f.bin").read_bytes() == (src / "f.bin").read_bytes()


def test_leftovers_of_killed_runs_are_removed_by_the_next_clean_run(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_file(src / "a.txt", b"a", 1_700_000_000.0)
    write_file(dst / ".fitsync/tmp/0123456789abcdef.delta", b"x" * 10_000, 1_700_000_000.0)
    write_file(dst / ".fitsync/partial/fedcba9876543210.part", b"y" * 10_000, 1_700_000_000.0)
    write_file(dst / ".fitsync/partial/fedcba9876543210.journal", b"", 1_700_000_000.0)
    proc = run_fitsync("mirror", src, dst)
    assert proc.returncode == 0, proc.stderr
    assert not (dst / STATE_DIR).exists(), sorted(p.name for p in (dst / STATE_DIR).rglob("*"))


def test_repair_reuses_an_intact_final_short_block():
    from fitsync.delta import fetch_recipe
    from fitsync.signature import signature_of_buffer

    source = random.Random(9).randbytes(16_553)  # blocks of 5,760: two full, then 5,033 bytes
    sig = signature_of_buffer(source)
    basis = bytearray(source)
    basis[9_383] ^= 0x10  # damage inside the second block only
    recipe = fetch_recipe(sig, bytes(basis))
    starts, lengths = sig.layout()
    assert recipe.source_ranges() == [(int(starts[1]), int(lengths[1]))], recipe.source_ranges()
