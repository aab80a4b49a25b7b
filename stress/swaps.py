"""Swap trials: while ``fitsync mirror`` runs as root, replace a destination
directory, the state directory, a state subdirectory, a temporary, the lock
or a final file with a symlink into a canary directory, at a random moment.
Whatever the mirror then does (refuse files, fail, succeed), the canary must
be byte-for-byte, mode and mtime unchanged, the source too, and the run must
end with a documented exit code and no traceback.

Shared by tests/test_reliability_swaps.py (the CI subset) and
stress/swap_trials.py (500 trials by hand).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import STATE_DIR, fits_bytes, fitsync_cmd, fitsync_env, snapshot, write_file

MIB = 1 << 20
DIRS = ("night1", "night2", "night3", "calib")
ATTACKS = ("directory", "state", "state-tmp", "state-partial", "state-inplace", "temporary", "lock", "file")
MODES = ((), ("--delete",), ("--inplace",), ("--no-whole-file",), ("--checksum", "--delete"))
DOCUMENTED_EXITS = {0, 3}  # done; some files failed (refused)


@dataclass
class SwapTrial:
    attack: str
    mode: tuple
    at: float                 # seconds after the lock appeared
    exit_code: int
    swapped: bool             # the swap happened while the run was still going
    target: str = ""          # what was replaced, relative to DST
    problems: list = field(default_factory=list)


def build_trees(base: Path, rng: random.Random) -> tuple[Path, Path, Path]:
    """SRC; DST as it was before (older versions, stale files); a canary whose
    names match the tree's, so that a write through a symlink would land on
    one of its files and a clear of a state directory would empty one of its."""
    src, template, canary = base / "src", base / "dst-template", base / "canary"
    for i, d in enumerate(DIRS):
        for j in range(6):
            size = rng.choice((3000, 40_000, 300_000, 2 * MIB))
            data = fits_bytes(rng, size)
            write_file(src / d / f"f{j}.fits", data, 1_700_000_000 + i * 10 + j)
            if j < 3:  # an older version: a delta, an in-place update
                old = bytearray(data)
                old[len(old) // 2: len(old) // 2 + 100] = bytes(100)
                write_file(template / d / f"f{j}.fits", bytes(old), 1_600_000_000)
            write_file(canary / d / f"f{j}.fits", b"canary " + d.encode() + bytes([j]), 1_500_000_000)
        write_file(template / d / "stale.txt", b"delete me", 1_600_000_000)
        write_file(canary / d / "stale.txt", b"canary stale", 1_500_000_000)
    for sub in ("tmp", "partial", "inplace"):
        write_file(canary / sub / "keep", b"canary " + sub.encode(), 1_500_000_000)
    write_file(canary / "victim.txt", b"must stay", 1_500_000_000)
    return src, template, canary


def fingerprint(root: Path) -> dict:
    """snapshot() plus each entry's mode and kind: a chmod, a new entry or a
    removed directory in the canary counts too."""
    out = dict(snapshot(root))
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out["mode:" + str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns if not path.is_dir() else 0)
    return out


def _targets(dst: Path, attack: str, canary: Path, rng: random.Random) -> list[tuple[Path, Path]]:
    """(entry to replace, what its symlink points to) for an attack; empty
    when nothing of that kind exists at this moment."""
    state = dst / STATE_DIR
    if attack == "directory":
        d = rng.choice(DIRS)
        return [(dst / d, canary / d)]
    if attack == "state":
        return [(state, canary)]
    if attack.startswith("state-"):
        sub = attack.split("-", 1)[1]
        return [(state / sub, canary / sub)]
    if attack == "lock":
        return [(state / "lock", canary / "victim.txt")]
    if attack == "file":
        d = rng.choice(DIRS)
        return [(dst / d / f"f{rng.randrange(6)}.fits", canary / d / "f0.fits")]
    # "temporary": whatever the run has in flight, in the state directory or beside the final names
    found = [p for p in dst.rglob("*") if p.is_file() and not p.is_symlink()
             and (STATE_DIR in p.parts or p.name.startswith("."))]
    return [(rng.choice(found), canary / "victim.txt")] if found else []


def swap(target: Path, link_to: Path) -> bool:
    """Move ``target`` aside (if it exists) and put a symlink in its place."""
    try:
        if os.path.lexists(target):
            os.rename(target, target.with_name(target.name + ".swapped-away"))
        os.symlink(link_to, target)
        return True
    except OSError:  # the run renamed or removed it first: a race we lost, not a failure
        return False


def run_trial(src: Path, template: Path, canary: Path, work: Path, rng: random.Random, attack: str,
              mode: tuple, window: float) -> SwapTrial:
    dst = work / "dst"
    if dst.exists() or dst.is_symlink():
        shutil.rmtree(dst)
    shutil.copytree(template, dst, copy_function=shutil.copy2)
    src_before, canary_before = snapshot(src), fingerprint(canary)
    at = rng.uniform(0, window * 0.8)  # counted from the lock: the run has already started
    proc = subprocess.Popen(fitsync_cmd("mirror", src, dst, *mode), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=fitsync_env(), stdin=subprocess.DEVNULL)
    swapped, target = _swap_during(proc, dst, canary, rng, attack, at)
    out, err = proc.communicate(timeout=300)
    trial = SwapTrial(attack, mode, at, proc.returncode, swapped, target)
    if fingerprint(canary) != canary_before:
        trial.problems.append(f"canary changed: {_difference(canary_before, fingerprint(canary))}")
    if snapshot(src) != src_before:
        trial.problems.append("source changed")
    if proc.returncode not in DOCUMENTED_EXITS:
        trial.problems.append(f"exit {proc.returncode}: {err.strip()[-300:]}")
    if "Traceback" in err:
        trial.problems.append("traceback: " + err.strip()[-300:])
    return trial


def _swap_during(proc, dst: Path, canary: Path, rng: random.Random, attack: str, at: float) -> tuple[bool, str]:
    lock = dst / STATE_DIR / "lock"
    started = time.monotonic()
    while proc.poll() is None and not lock.exists() and time.monotonic() - started < 60:
        time.sleep(0.0005)
    deadline = time.monotonic() + at
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    swapped, name = False, ""
    for target, link_to in _targets(dst, attack, canary, rng):
        swapped, name = swap(target, link_to) and proc.poll() is None, str(target.relative_to(dst))
    return swapped, name


def _difference(before: dict, after: dict) -> list:
    keys = sorted(set(before) | set(after))
    return [k for k in keys if before.get(k) != after.get(k)][:5]


def calibrate(src: Path, template: Path, work: Path) -> dict:
    """Each mode's run time without a swap: the window the swaps are spread over."""
    windows = {}
    for mode in MODES:
        dst = work / "dst"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(template, dst, copy_function=shutil.copy2)
        started = time.monotonic()
        subprocess.run(fitsync_cmd("mirror", src, dst, *mode), capture_output=True, env=fitsync_env(), check=True)
        windows[mode] = time.monotonic() - started
    return windows


def run_swap_trials(base: Path, trials: int, seed: int = 0, attacks: tuple = ATTACKS) -> dict:
    rng = random.Random(seed)
    src, template, canary = build_trees(base, rng)
    windows = calibrate(src, template, base)
    results = []
    for i in range(trials):
        attack, mode = attacks[i % len(attacks)], MODES[(i // len(attacks)) % len(MODES)]
        results.append(run_trial(src, template, canary, base, rng, attack, mode, windows[mode]))
    return summarize(results)


def summarize(results: list[SwapTrial]) -> dict:
    by_attack = {}
    for r in results:
        row = by_attack.setdefault(r.attack, {"trials": 0, "swapped_mid_run": 0, "exit_3": 0, "violations": 0})
        row["trials"] += 1
        row["swapped_mid_run"] += r.swapped
        row["exit_3"] += r.exit_code == 3
        row["violations"] += bool(r.problems)
    return {"trials": len(results), "swapped_mid_run": sum(r.swapped for r in results), "by_attack": by_attack,
            "violations": [(r.attack, r.target, r.mode, round(r.at, 3), r.problems) for r in results if r.problems]}
