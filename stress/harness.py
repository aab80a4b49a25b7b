"""Fault-injection harness shared by tests/test_reliability_*.py (the CI subset)
and the long runs in stress/ (by hand).

A *scenario* is a source tree, a destination template (what DST holds before
the run) and the mirror flags. A *crash trial* copies the template to a fresh
DST, starts ``python -m fitsync mirror SRC DST`` as a separate process,
SIGKILLs it at a random moment, then checks what is on disk:

  * every file under its final name in DST is byte-for-byte either the version
    DST held before the run or the source's version (never partial, never a
    mix), and the source's version carries the source's mtime;
  * the source is untouched (content and mtime of every file);
  * a re-run with the same flags completes (exit 0) and leaves DST equal to SRC;
  * ``fitsync audit DST --manifest=<manifest of SRC>`` passes.

It also measures what the re-run could reuse from the killed run (validated
prefixes of partial downloads) and what the killed run had received but the
re-run had to fetch again ("re-sent").
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import blake3

import fitsync

STATE_DIR = ".fitsync"
MIB = 1 << 20


# -- running fitsync as a separate process ---------------------------------------

def fitsync_env() -> dict:
    """The environment for a child ``python -m fitsync``: it imports the same
    fitsync as this process (an installed one in CI, the work tree by hand)."""
    env = dict(os.environ)
    package_parent = str(Path(fitsync.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


def fitsync_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "fitsync", *map(str, args)]


def run_fitsync(*args, timeout: float = 300, env: dict | None = None, prefix=()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *fitsync_cmd(*args)], capture_output=True, text=True, timeout=timeout,
                          env=env or fitsync_env(), stdin=subprocess.DEVNULL)


# -- trees -------------------------------------------------------------------------

def fits_bytes(rng: random.Random, data_len: int) -> bytes:
    """A complete single-HDU FITS file (BITPIX 8) with ``data_len`` random data bytes."""
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    1",
             f"NAXIS1  = {data_len:>20}", "END"]
    header = b"".join(c.ljust(80).encode("ascii") for c in cards)
    header += b" " * (-len(header) % 2880)
    data = rng.randbytes(data_len)
    return header + data + b"\0" * (-data_len % 2880)


def write_file(path: Path, data: bytes, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def digest_of(path: Path) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """{relpath: (blake3, size, mtime_ns)} of every file, fitsync's state dir excluded."""
    out = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != STATE_DIR]
        for name in filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                out[rel] = ("symlink:" + os.readlink(full), 0, st.st_mtime_ns)
            else:
                out[rel] = (digest_of(full), st.st_size, st.st_mtime_ns)
    return out


def copy_tree(src: Path, dst: Path) -> None:
    """Copy with mtimes (what DST held before the run)."""
    if dst.exists():
        shutil.rmtree(dst)
    if src.exists():
        shutil.copytree(src, dst, copy_function=shutil.copy2)


def state_bytes(dst: Path) -> dict:
    """What a killed run left in DST/.fitsync: partial downloads (and how much of
    each its journal still vouches for), delta temporaries, other files."""
    from fitsync.engine.transfer import _validated_prefix  # the resume logic's own measure

    state = dst / STATE_DIR
    found = {"partial_bytes": 0, "reusable_bytes": 0, "tmp_bytes": 0, "files": 0}
    if not state.exists():
        return found
    for path in state.rglob("*"):
        if not path.is_file():
            continue
        found["files"] += 1
        if path.suffix == ".part":
            found["partial_bytes"] += path.stat().st_size
            found["reusable_bytes"] += _validated_prefix(str(path), str(path.with_suffix(".journal")))
        elif path.parent.name == "tmp":
            found["tmp_bytes"] += path.stat().st_size
    return found


# -- scenarios ---------------------------------------------------------------------

SCALES = {
    # big: > 2 chunks of 8 MiB, so a killed copy leaves a journal-validated prefix.
    "ci": {"big": 18 * MIB, "fits": 2, "fits_len": 1_500_000, "small": 8},
    "stress": {"big": 40 * MIB, "fits": 4, "fits_len": 3_000_000, "small": 40},
}
SCENARIOS = ("new", "delta", "repair", "manifest", "delete")
OLD_MTIME = 1_700_000_000.0
NEW_MTIME = 1_700_100_000.0


@dataclass
class Scenario:
    name: str
    src: Path
    dst_template: Path
    flags: list
    manifest: Path  # manifest of SRC, outside both trees
    # How the mirror names SRC and DST: a URL prefix put before the local path,
    # e.g. "sftp://127.0.0.1:2222" (the test sshd serves this machine's files,
    # so the trial still inspects them as local paths); env for the child.
    src_prefix: str = ""
    dst_prefix: str = ""
    env: dict | None = None

    def mirror_args(self, dst: Path, *more) -> list:
        return ["mirror", f"{self.src_prefix}{self.src}", f"{self.dst_prefix}{dst}", *self.flags, *more]

    @property
    def dst_is_local(self) -> bool:
        return not self.dst_prefix


def build_source(root: Path, rng: random.Random, scale: dict) -> None:
    write_file(root / "big/raw.bin", rng.randbytes(scale["big"]), OLD_MTIME)
    for i in range(scale["fits"]):
        write_file(root / f"night{i % 2}/obs_{i:03d}.fits", fits_bytes(rng, scale["fits_len"]), OLD_MTIME)
    for i in range(scale["small"]):
        write_file(root / f"logs/d{i % 3}/f{i:03d}.txt", rng.randbytes(rng.randint(0, 120_000)), OLD_MTIME)


def _edit(path: Path, rng: random.Random, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "patch":
        for _ in range(3):
            at = rng.randrange(max(1, len(data) - 64))
            data[at:at + 64] = rng.randbytes(64)
    elif how == "append":
        data += rng.randbytes(rng.randint(1, 50_000))
    elif how == "truncate":
        del data[len(data) // 2:]
    write_file(path, bytes(data), NEW_MTIME)


def _fits_patch(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    at = 2880 + rng.randrange(len(data) - 2880 - 100)
    data[at:at + 100] = rng.randbytes(100)
    write_file(path, bytes(data), NEW_MTIME)


def flip_bits_keep_stat(path: Path, rng: random.Random, flips: int = 1) -> list[int]:
    """Flip ``flips`` random bits in place; size and mtime stay as they were. Returns the offsets."""
    st = path.stat()
    offsets = []
    with open(path, "r+b") as f:
        for _ in range(flips):
            at = rng.randrange(st.st_size)
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ (1 << rng.randrange(8))]))
            offsets.append(at)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return offsets


def affected_block_bytes(src_file: Path, offsets: list[int]) -> int:
    """Bytes of the source's signature blocks that hold a flipped byte: all a repair may move."""
    import numpy as np

    from fitsync.signature import signature_of_file

    starts, lengths = signature_of_file(str(src_file)).layout()
    hit = {int(np.searchsorted(starts, at, side="right")) - 1 for at in offsets}
    return int(sum(int(lengths[i]) for i in hit))


def flip_random_bits(src: Path, dst: Path, flips: int, rng: random.Random) -> tuple[set, int]:
    """``flips`` bit flips in random destination files (weighted by size);
    returns (paths whose content now differs, bytes a block-level repair may move)."""
    files = sorted(p for p in dst.rglob("*") if p.is_file() and p.stat().st_size and STATE_DIR not in p.parts)
    weights = [p.stat().st_size for p in files]
    touched: dict[Path, list[int]] = {}
    for victim in rng.choices(files, weights=weights, k=flips):
        touched.setdefault(victim, []).extend(flip_bits_keep_stat(victim, rng, 1))
    corrupt, bound = set(), 0
    for victim, offsets in touched.items():
        rel = victim.relative_to(dst)
        if victim.read_bytes() != (src / rel).read_bytes():
            corrupt.add(rel.as_posix())
            bound += affected_block_bytes(src / rel, offsets)
    return corrupt, bound


def make_manifest(src: Path, out: Path) -> None:
    proc = run_fitsync("manifest", src, f"--output={out}", "--no-fits", "--quiet")
    if proc.returncode != 0:
        raise RuntimeError(f"manifest of {src} failed: {proc.stderr}")


def build_scenario(name: str, base: Path, seed: int, scale_name: str = "ci") -> Scenario:
    rng = random.Random(f"{name}-{seed}")
    scale = SCALES[scale_name]
    src, template = base / "src", base / "dst-template"
    build_source(src, rng, scale)
    flags: list = []
    if name == "new":
        pass  # DST starts empty
    elif name == "delta":
        copy_tree(src, template)
        _edit(src / "big/raw.bin", rng, "patch")
        for path in sorted(src.rglob("*.fits")):
            _fits_patch(path, rng)
        smalls = sorted(p for p in src.rglob("*.txt") if p.stat().st_size > 10)
        _edit(smalls[0], rng, "append")
        _edit(smalls[1], rng, "truncate")
        _edit(smalls[2], rng, "patch")
    elif name in ("repair", "manifest"):
        copy_tree(src, template)
        victims = [template / "big/raw.bin", *sorted(template.rglob("*.fits"))[:1],
                   *[p for p in sorted(template.rglob("*.txt")) if p.stat().st_size][:3]]
        for victim in victims:
            flip_bits_keep_stat(victim, rng, flips=2)
        flags = ["--checksum"] if name == "repair" else ["--manifest=MANIFEST"]
    elif name == "delete":
        copy_tree(src, template)
        for i in range(6):
            write_file(template / f"gone/sub{i % 2}/x{i}.dat", rng.randbytes(20_000), OLD_MTIME)
        write_file(template / "logs/d0/stale.txt", b"stale", OLD_MTIME)
        write_file(src / "added/new1.bin", rng.randbytes(3 * MIB), NEW_MTIME)
        write_file(src / "added/new2.bin", rng.randbytes(200_000), NEW_MTIME)
        flags = ["--delete"]
    else:
        raise ValueError(name)
    manifest = base / "src-manifest.jsonl"
    make_manifest(src, manifest)
    flags = [str(f).replace("MANIFEST", str(manifest)) for f in flags]
    return Scenario(name, src, template, flags, manifest)


# -- one crash trial ------------------------------------------------------------------

@dataclass
class TrialResult:
    scenario: str
    killed: bool = False  # the process was still running when SIGKILL came
    killed_while_locked: bool = False  # ... and held the destination lock (was working)
    kill_after: float = 0.0
    violations: list = field(default_factory=list)
    rerun_code: int | None = None
    audit_code: int | None = None
    partial_bytes: int = 0  # bytes of partial downloads the killed run left
    reusable_bytes: int = 0  # ... of which the journal still vouches for
    tmp_bytes: int = 0  # delta temporaries the killed run left (never reusable)
    rerun_transferred: int = 0
    rerun_reused: int = 0
    leftover_state: int = 0  # files left in DST/.fitsync after the clean re-run

    @property
    def resent_bytes(self) -> int:
        """Bytes the killed run had received into partial downloads that the re-run fetched again."""
        return self.partial_bytes - self.reusable_bytes

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class Timing:
    lock_at: float  # seconds after start when DST/.fitsync/lock appeared
    total: float


def calibrate(scenario: Scenario, work: Path) -> Timing:
    dst = work / "calibrate-dst"
    copy_tree(scenario.dst_template, dst)
    started = time.monotonic()
    proc = subprocess.Popen(fitsync_cmd(*scenario.mirror_args(dst)), env=scenario.env or fitsync_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    lock_at = _wait_for_lock(proc, dst, started) if scenario.dst_is_local else None
    proc.wait(timeout=300)
    total = time.monotonic() - started
    shutil.rmtree(dst, ignore_errors=True)
    return Timing(lock_at if lock_at is not None else total * 0.5, total)


def _wait_for_lock(proc, dst: Path, started: float, timeout: float = 60) -> float | None:
    lock = dst / STATE_DIR / "lock"
    while proc.poll() is None and time.monotonic() - started < timeout:
        if lock.exists():
            return time.monotonic() - started
        time.sleep(0.0005)
    return None


def kill_plan(trials: int, rng: random.Random, lock_visible: bool = True) -> list[tuple[str, float]]:
    """When each trial's SIGKILL comes, as (anchor, fraction): a fifth of the
    trials anywhere in the run ("start"), the rest in its working part, after
    the destination lock appears ("lock"); fractions are stratified so a
    short CI run still covers the whole working window."""
    plan = []
    for i in range(trials):
        fraction = (i + rng.random()) / trials
        plan.append(("start" if i % 5 == 4 or not lock_visible else "lock", fraction))
    rng.shuffle(plan)
    return plan


def crash_trial(scenario: Scenario, work: Path, timing: Timing, when: tuple[str, float],
                src_snapshot: dict, dst_before: dict | None = None) -> TrialResult:
    result = TrialResult(scenario.name)
    dst = work / "dst"
    copy_tree(scenario.dst_template, dst)
    before = dst_before if dst_before is not None else snapshot(dst)
    after_src = src_snapshot
    started = time.monotonic()
    proc = subprocess.Popen(fitsync_cmd(*scenario.mirror_args(dst)), env=scenario.env or fitsync_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        anchor, fraction = when
        if anchor == "start":
            _sleep_unless_done(proc, started + fraction * timing.total)
        elif _wait_for_lock(proc, dst, started) is not None:
            _sleep_unless_done(proc, time.monotonic() + fraction * max(0.01, timing.total - timing.lock_at))
        result.kill_after = time.monotonic() - started
        if proc.poll() is None:
            result.killed = True
            # A remote DST has no local lock: its state directory shows the run is writing.
            result.killed_while_locked = (dst / STATE_DIR / ("lock" if scenario.dst_is_local else "")).exists()
            proc.kill()
    finally:
        proc.wait()
    result.violations += check_after_crash(dst, before, after_src)
    state = state_bytes(dst)
    result.partial_bytes, result.reusable_bytes, result.tmp_bytes = (
        state["partial_bytes"], state["reusable_bytes"], state["tmp_bytes"])
    if snapshot(scenario.src) != src_snapshot:
        result.violations.append("the source changed")
    rerun = run_fitsync(*scenario.mirror_args(dst, "--json"), env=scenario.env)
    result.rerun_code = rerun.returncode
    if rerun.returncode != 0:
        result.violations.append(f"re-run exit {rerun.returncode}: {rerun.stderr.strip()[-300:]}")
    else:
        summary = json.loads(rerun.stdout)
        result.rerun_transferred = summary["bytes_transferred"]
        result.rerun_reused = summary["bytes_reused"]
    if "Traceback" in rerun.stderr:
        result.violations.append("traceback in re-run: " + rerun.stderr[-300:])
    final = snapshot(dst)
    if final != src_snapshot:
        diff = sorted(p for p in set(final) | set(src_snapshot) if final.get(p) != src_snapshot.get(p))
        result.violations.append(f"after the re-run DST differs from SRC at {diff[:5]}")
    audit = run_fitsync("audit", dst, f"--manifest={scenario.manifest}", "--quiet")
    result.audit_code = audit.returncode
    if audit.returncode != 0:
        result.violations.append(f"audit exit {audit.returncode}: {audit.stderr.strip()[-300:]}")
    if (dst / STATE_DIR).exists():
        result.leftover_state = sum(1 for p in (dst / STATE_DIR).rglob("*") if p.is_file())
    if snapshot(scenario.src) != src_snapshot:
        result.violations.append("the source changed during the re-run")
    shutil.rmtree(dst, ignore_errors=True)
    return result


def _sleep_unless_done(proc, until: float) -> None:
    while proc.poll() is None and time.monotonic() < until:
        time.sleep(0.0005)


def check_after_crash(dst: Path, before: dict, src: dict) -> list[str]:
    """Every file in DST is its old version or the source's version, with that version's mtime."""
    problems = []
    for rel, (digest, size, mtime_ns) in snapshot(dst).items():
        old, new = before.get(rel), src.get(rel)
        if new is not None and digest == new[0]:
            if mtime_ns != new[2] and not (old is not None and old[0] == digest):
                problems.append(f"{rel}: source content under its final name without the source's mtime")
        elif old is not None and digest == old[0]:
            pass
        else:
            problems.append(f"{rel}: partial or mixed content under its final name ({size} bytes)")
    return problems


# -- figures -------------------------------------------------------------------------

def summarize(results: list[TrialResult]) -> dict:
    return {
        "trials": len(results),
        "killed": sum(r.killed for r in results),
        "killed_while_working": sum(r.killed_while_locked for r in results),
        "failures": sum(not r.ok for r in results),
        "reruns_completed": sum(r.rerun_code == 0 for r in results),
        "audits_passed": sum(r.audit_code == 0 for r in results),
        "reruns_reusing_partial_data": sum(r.reusable_bytes > 0 for r in results),
        "partial_bytes_reused": sum(r.reusable_bytes for r in results),
        "bytes_resent": sum(r.resent_bytes for r in results),
        "delta_tmp_bytes_discarded": sum(r.tmp_bytes for r in results),
        "rerun_bytes_transferred": sum(r.rerun_transferred for r in results),
        "rerun_bytes_reused": sum(r.rerun_reused for r in results),
        "trials_leaving_state_files": sum(r.leftover_state > 0 for r in results),
        "violations": [v for r in results for v in r.violations][:20],
    }


def run_crash_trials(name: str, base: Path, trials: int, seed: int = 0, scale: str = "ci", *,
                     src_prefix: str = "", dst_prefix: str = "", env: dict | None = None) -> dict:
    base.mkdir(parents=True, exist_ok=True)
    scenario = build_scenario(name, base, seed, scale)
    scenario.src_prefix, scenario.dst_prefix, scenario.env = src_prefix, dst_prefix, env
    src_snapshot = snapshot(scenario.src)
    dst_before = snapshot(scenario.dst_template)
    timing = calibrate(scenario, base)
    plan = kill_plan(trials, random.Random(f"kill-{name}-{seed}"), lock_visible=scenario.dst_is_local)
    results = [crash_trial(scenario, base, timing, when, src_snapshot, dst_before) for when in plan]
    summary = summarize(results)
    summary["scenario"] = name
    summary["flags"] = [f if "manifest" not in f else "--manifest=M" for f in scenario.flags]
    summary["calibration_seconds"] = round(timing.total, 3)
    return summary
