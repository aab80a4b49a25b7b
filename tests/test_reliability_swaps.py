"""Swaps (issue "Hardening", CI subset): while the installed fitsync mirrors as
root, a destination directory, the state directory or one of its
subdirectories, a temporary, the lock or a final file is replaced by a
symlink into a canary directory. The canary must come through unchanged,
whatever the run then does. stress/swap_trials.py runs 500 of these; the
trial itself is stress/swaps.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))

from swaps import ATTACKS, fingerprint, run_swap_trials, swap  # noqa: E402

TRIALS = 4 * len(ATTACKS)


def test_symlinks_planted_mid_run_never_reach_the_canary(tmp_path):
    summary = run_swap_trials(tmp_path, TRIALS, seed=7)
    print(json.dumps(summary, indent=1))
    assert summary["violations"] == [], summary
    assert summary["trials"] == TRIALS
    # Swaps that came after the run ended would test nothing.
    assert summary["swapped_mid_run"] >= TRIALS // 3, summary


def test_the_checker_sees_a_write_through_a_planted_link(tmp_path):
    """The canary fingerprint itself: a write, a chmod or a removal shows."""
    canary = tmp_path / "canary"
    (canary / "tmp").mkdir(parents=True)
    (canary / "victim.txt").write_bytes(b"must stay")
    before = fingerprint(canary)
    state = tmp_path / "dst" / ".fitsync"
    state.mkdir(parents=True)
    assert swap(state, canary)
    (state / "victim.txt").write_bytes(b"written through")  # what a careless tool would do
    assert fingerprint(canary) != before
    victim = canary / "victim.txt"
    victim.write_bytes(b"must stay")
    os.utime(victim, ns=(before["mode:victim.txt"][1],) * 2)
    assert fingerprint(canary) == before
    (state / "victim.txt").chmod(0o600)  # through the link, as os.chmod(path) does
    assert fingerprint(canary) != before


def _planted(tmp_path):
    """A destination whose temporary has just been swapped for a link to a canary file."""
    from fitsync.remotes.local import LocalRemote

    canary = tmp_path / "canary"
    canary.mkdir()
    victim = canary / "victim.txt"
    victim.write_bytes(b"must stay")
    os.chmod(victim, 0o640)
    dst = LocalRemote(str(tmp_path / "dst"))
    (tmp_path / "dst").mkdir()
    part = Path(dst.state_dir("partial")) / "0123.part"
    return dst, part, victim, fingerprint(canary), canary


def test_a_temporary_swapped_for_a_link_before_install_is_refused(tmp_path):
    from fitsync.errors import UnsafePath

    dst, part, victim, before, canary = _planted(tmp_path)
    part.write_bytes(b"verified bytes")
    swap(part, victim)
    try:
        dst.install(str(part), "night/a.fits", 1_700_000_000.0)
    except UnsafePath:
        pass
    else:
        raise AssertionError("a temporary swapped for a symlink was installed")
    assert fingerprint(canary) == before  # no utime, chmod or rename reached it
    assert not (tmp_path / "dst" / "night" / "a.fits").exists()


def test_a_swapped_state_directory_takes_no_create_truncate_or_unlink_outside(tmp_path):
    from fitsync.errors import UnsafePath
    from fitsync.remotes.local import open_state_file, unlink_quietly
    from fitsync.remotes.statefiles import truncate_state_file

    dst, part, victim, before, canary = _planted(tmp_path)
    (canary / "partial").mkdir()
    (canary / "partial" / "0123.part").write_bytes(b"canary partial")
    before = fingerprint(canary)
    swap(tmp_path / "dst" / ".fitsync", canary)
    for attempt in (lambda: open_state_file(str(part), "wb"), lambda: truncate_state_file(str(part), 0)):
        try:
            attempt()
        except UnsafePath:
            pass
        else:
            raise AssertionError("went through the swapped state directory")
    unlink_quietly(str(part))
    assert fingerprint(canary) == before


def test_an_archive_is_never_unpacked_through_a_directory_swapped_between_members(tmp_path, monkeypatch):
    """--extract installs members as mirrored files are installed: a directory
    swapped for a symlink after the archive was planned stops the members below it."""
    import io
    import tarfile

    from fitsync import extract
    from fitsync.errors import UnsafePath

    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "b.fits").write_bytes(b"canary")
    before = fingerprint(canary)
    dst = tmp_path / "dst"
    (dst / "sub").mkdir(parents=True)
    with tarfile.open(dst / "night.tar", "w") as tar:
        for name in ("sub/a.fits", "sub/b.fits"):
            info = tarfile.TarInfo(name)
            info.size = 6
            tar.addfile(info, io.BytesIO(b"member"))
    real_write = extract._write_member

    def swap_before_the_second(dst_remote, tar, member, target):
        if target == "sub/b.fits":
            swap(dst / "sub", canary)
        return real_write(dst_remote, tar, member, target)

    monkeypatch.setattr(extract, "_write_member", swap_before_the_second)
    try:
        extract.extract_one(str(dst), "night.tar")
    except UnsafePath as exc:
        assert "symlink" in str(exc)
    else:
        raise AssertionError("unpacked through a directory swapped for a symlink")
    assert fingerprint(canary) == before
    assert (dst / "sub.swapped-away" / "a.fits").read_bytes() == b"member"
