"""``mirror --inplace`` killed at random points (issue 26): 200 SIGKILLs of
the installed ``fitsync`` while it updates a 64 MiB FITS file in place, with
a header edit, a grown header and overwritten data. After each, recovery
leaves the file exactly the old or the new version (bytes and mtime), it
passes a FITS audit, and a rerun makes it the new one. A second test kills
the recovery itself while it rolls a file back."""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import time
from pathlib import Path

import blake3
import pytest

import fitsync
from test_local_update import FITSYNC, NEW_MTIME, OLD_MTIME, fresh_destination, run, three_versions

TRIALS = 200
EDITS = ("header", "grown", "data")


def b3(path: Path) -> str:
    return blake3.blake3(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("inplace-kill")
    found = three_versions(root / "v", os.urandom(64 << 20))
    return root, found, {name: b3(path) for name, path in found.items()}


def journals(dst: Path) -> list:
    return list((dst / ".fitsync").glob("inplace/*.journal"))


def update_command(source: Path, dst: Path) -> list:
    return [FITSYNC, "mirror", source.parent, dst, "--inplace", "--quiet"]


def killed_after(command: list, delay: float) -> None:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def calibrated_seconds(versions) -> dict:
    """How long an uninterrupted update of each edit takes here (the median of three)."""
    root, found, _ = versions
    times: dict = {}
    for edit in EDITS:
        runs = []
        for _ in range(3):
            fresh_destination(root / "calibrate", found["old"])
            started = time.monotonic()
            subprocess.run(update_command(found[edit], root / "calibrate"), check=True)
            runs.append(time.monotonic() - started)
        times[edit] = statistics.median(runs)
    return times


def assert_old_or_new(target: Path, digests: dict, edit: str) -> str:
    """The file is one of the two versions, with that version's mtime."""
    got = b3(target)
    assert got in (digests["old"], digests[edit]), "the file is neither the old nor the new version"
    which = "old" if got == digests["old"] else "new"
    assert os.stat(target).st_mtime == (OLD_MTIME if which == "old" else NEW_MTIME), which
    return which


def test_two_hundred_kills_leave_the_old_or_the_new_version(versions):
    root, found, digests = versions
    seconds = calibrated_seconds(versions)
    rng = random.Random(26)
    dst = root / "dst"
    mid_update = mixed = kept_new = 0
    for trial in range(TRIALS):
        edit = EDITS[trial % 3]
        target = fresh_destination(dst, found["old"])
        killed_after(update_command(found[edit], dst), rng.uniform(0.02, seconds[edit] * 1.1))
        if journals(dst):
            mid_update += 1
            mixed += b3(target) not in (digests["old"], digests[edit])
        if trial % 20 == 0:  # the command users run after a crash, now and then
            run("recover", dst, "--quiet")
        else:
            fitsync.recover(dst)
        assert not journals(dst)
        kept_new += assert_old_or_new(target, digests, edit) == "new"
        audited = fitsync.audit(dst, fits=True)
        assert audited.clean and len(audited.fits) == 1
        fitsync.mirror(found[edit].parent, dst, inplace=True, raise_on_failure=True)
        assert b3(target) == digests[edit] and os.stat(target).st_mtime == NEW_MTIME
        assert not journals(dst) and not list((dst / ".fitsync").glob("tmp/*"))
    # The kills landed everywhere: before, during and after the writes.
    assert mid_update >= 15, f"only {mid_update} of {TRIALS} kills interrupted an update"
    assert mixed >= 5, f"only {mixed} kills left a file mixed for recovery to repair"
    assert 0 < kept_new < TRIALS


def test_a_recovery_killed_while_it_rolls_back_finishes_on_the_next_run(versions):
    """Kill ``fitsync recover`` while it restores a grown header's 64 MiB of
    old bytes; the next recovery still ends with the old version."""
    root, found, digests = versions
    rng = random.Random(2026)
    dst = root / "dst-rollback"
    interrupted_rollbacks = 0
    for attempt in range(60):
        target = fresh_destination(dst, found["old"])
        for _ in range(20):  # a kill in the middle of the grown header's writes
            killed_after(update_command(found["grown"], dst), rng.uniform(0.15, 0.45))
            if journals(dst) and b3(target) not in (digests["old"], digests["grown"]):
                break
            fitsync.recover(dst)
            target = fresh_destination(dst, found["old"])
        else:
            pytest.fail("no kill landed in the middle of an update in place")
        before = b3(target)
        killed_after([FITSYNC, "recover", dst, "--quiet"], rng.uniform(0.05, 0.3))
        if journals(dst) and b3(target) != before:
            interrupted_rollbacks += 1
        fitsync.recover(dst)
        assert not journals(dst)
        assert assert_old_or_new(target, digests, "grown") == "old"
        if interrupted_rollbacks >= 3:
            break
    assert interrupted_rollbacks >= 3, f"only {interrupted_rollbacks} kills landed inside a roll-back"
