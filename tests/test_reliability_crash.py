"""Crash consistency (issue 9, CI subset): SIGKILL `fitsync mirror` at random
moments, then check what is on disk, re-run, and audit against a manifest of
the source. 4 trials for each of 5 scenarios here; stress/crash_trials.py runs
hundreds. The invariants are checked in stress/harness.py (check_after_crash,
crash_trial)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))

from harness import SCENARIOS, check_after_crash, run_crash_trials, snapshot, write_file  # noqa: E402

TRIALS = 4


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sigkill_at_random_moments_never_leaves_partial_files(scenario, tmp_path):
    summary = run_crash_trials(scenario, tmp_path, TRIALS, seed=1)
    print(json.dumps(summary, indent=1))
    assert summary["violations"] == [], summary
    assert summary["failures"] == 0
    assert summary["reruns_completed"] == TRIALS and summary["audits_passed"] == TRIALS
    # A run that was never interrupted would test nothing.
    assert summary["killed_while_working"] >= 1, summary


def test_the_checker_sees_a_partial_or_mixed_file(tmp_path):
    """check_after_crash itself: a truncated or spliced file under its final name is reported."""
    old, new = tmp_path / "old", tmp_path / "new"
    write_file(old / "a.bin", b"A" * 1000, 1.0)
    write_file(new / "a.bin", b"B" * 1000, 2.0)
    dst = tmp_path / "dst"
    for content, bad in ((b"A" * 1000, False), (b"B" * 1000, False), (b"B" * 500, True), (b"B" * 500 + b"A" * 500, True)):
        write_file(dst / "a.bin", content, 2.0 if content == b"B" * 1000 else 1.0)
        assert bool(check_after_crash(dst, snapshot(old), snapshot(new))) is bad
    write_file(dst / "a.bin", b"B" * 1000, 1.0)
    assert check_after_crash(dst, snapshot(old), snapshot(new)), "new content with the old mtime is reported"
