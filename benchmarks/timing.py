"""Shared benchmark helpers: warm the page cache, interleave commands, take medians.

These machines drop idle file pages after ~30 s, so each timed run re-reads
its inputs first, and compared commands alternate (A B A B) so that drift in
machine load hits both alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from typing import Callable, Sequence


def installed_env() -> dict:
    """The environment for timing fitsync as an installed package runs: with
    bytecode caching on (pip compiles it at install time). A shell that sets
    PYTHONDONTWRITEBYTECODE would otherwise make every run recompile fitsync's
    modules from source, 50-150 ms that no user pays."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def warm(*paths: str) -> None:
    """Write back what earlier steps left dirty (so that no flush of gigabytes
    runs inside the timed run, taking a core from whichever tool is timed),
    then read every file under ``paths`` so the timed run starts with a warm cache."""
    os.sync()
    for top in paths:
        if os.path.isfile(top):
            _read(top)
            continue
        for dirpath, _, names in os.walk(top):
            for name in names:
                _read(os.path.join(dirpath, name))


def _read(path: str) -> None:
    try:
        with open(path, "rb", buffering=0) as f:
            while f.read(16 << 20):
                pass
    except OSError:
        pass


def run_timed(cmd: Sequence[str] | Callable[[], object], *, cwd: str | None = None, env=None) -> float:
    start = time.perf_counter()
    if callable(cmd):
        cmd()
    else:
        subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def interleave(cases: dict[str, dict], rounds: int = 3) -> dict[str, float]:
    """Run each case's ``setup`` (untimed, e.g. warm + reset), then its timed ``cmd``,
    alternating cases each round. Returns the median seconds per case."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            if case.get("setup"):
                case["setup"]()
            times[name].append(run_timed(case["cmd"], cwd=case.get("cwd"), env=case.get("env")))
    return {name: statistics.median(values) for name, values in times.items()}


def table(rows: list[tuple], headers: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*["-" * w for w in widths])]
    out += [line.format(*[str(x) for x in row]) for row in rows]
    return "\n".join(out)
