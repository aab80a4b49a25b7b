"""Memory that stays flat as the tree grows (issue 21): the peak RSS of
`manifest` and of a no-op `mirror` over a generator-backed listing
(benchmarks/synthetic.py) of 10^6 and 10^7 entries, each run in a fresh
process. The target: no more than 1.5x growth between the two sizes.

Run by hand:  python3 benchmarks/bench_memory.py [--entries=1000000,10000000]
    [--python=/path/to/venv/bin/python] [--only=manifest|mirror] [--tree=N,M]

--tree=N,M lists real trees of N and M empty files instead (made once under
benchmarks/work/tree-N/, 1,000 a directory), walked by the local backend:
`manifest` only, since a no-op mirror of two local trees diffs in C.

--python runs the children under another install (an older fitsync, for
before-and-after figures); by default this checkout's src/ is used. The
mirror pairs synthetic://N with synthetic://N: every file is unchanged, so the
run lists, pairs and counts, as a nightly no-op re-run of a huge archive does.

Results go to stdout and to benchmarks/work/bench_memory.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(entries: int, mode: str, work: Path) -> int:
    """One run in this (fresh) process; prints its peak RSS."""
    import resource

    import fitsync
    from fitsync import remotes

    remotes.register_scheme("synthetic", "synthetic:Backend")
    url = str(work) if mode == "tree" else f"synthetic://{entries}"
    if mode == "tree":
        work, mode = work.parent, "manifest"
    t0 = time.perf_counter()
    if mode == "manifest":
        result = fitsync.manifest(url, output=str(work / "m.jsonl"), fits=False)
        files = result.files
    else:
        result = fitsync.mirror(url, url, fits_check=False)
        files = result.files_unchanged
    seconds = time.perf_counter() - t0
    if files != entries:
        raise SystemExit(f"{mode} of {entries} entries counted {files}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"entries": entries, "mode": mode, "peak_rss_mib": round(peak, 1),
                      "seconds": round(seconds, 1)}))
    return 0


def real_tree(files: int) -> Path:
    """A tree of ``files`` empty files, 1,000 a directory, made once."""
    root = HERE / "work" / f"tree-{files}"
    done = root / ".complete"
    if not done.exists():
        for start in range(0, files, 1000):
            directory = root / f"d{start // 1000:06d}"
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(start, min(start + 1000, files)):
                (directory / f"obs_{i:09d}.fits").touch()
        done.touch()
    return root


def run_child(python: str | None, entries: int, mode: str, work: Path) -> dict:
    path = [str(HERE)] + ([] if python else [str(HERE.parent / "src")])  # another install, or this checkout
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    proc = subprocess.run([python or sys.executable, __file__, "--child", f"--entries={entries}", f"--mode={mode}", f"--work={work}"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list) -> int:
    opts = dict(a.lstrip("-").split("=", 1) for a in argv if "=" in a)
    if "--child" in argv:
        return child(int(opts["entries"]), opts["mode"], Path(opts["work"]))
    sizes = [int(n) for n in opts.get("entries", "1000000,10000000").split(",")]
    python = opts.get("python")
    modes = [opts["only"]] if "only" in opts else ["manifest", "mirror"]
    (HERE / "work").mkdir(exist_ok=True)
    out = []
    if "tree" in opts:
        for n in (int(x) for x in opts["tree"].split(",")):
            row = run_child(python, n + 1, "tree", real_tree(n))  # the walk also lists .complete
            out.append(row)
            print(f"manifest of a real tree of {n:,d} files: {row['peak_rss_mib']:9.1f} MiB  "
                  f"{row['seconds']:8.1f} s ({(row['peak_rss_mib'] * 1048576) / n:.0f} bytes a file, "
                  "the interpreter included)", flush=True)
        modes = []
    with tempfile.TemporaryDirectory(dir=HERE / "work") as work:
        for mode in modes:
            rows = [run_child(python, n, mode, Path(work)) for n in sizes]
            out += rows
            for row in rows:
                print(f"{mode:9s} {row['entries']:>12,d} entries  {row['peak_rss_mib']:9.1f} MiB  "
                      f"{row['seconds']:8.1f} s", flush=True)
            print(f"{mode:9s} growth {sizes[0]:,d} -> {sizes[-1]:,d}: "
                  f"{rows[-1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f}x (target <= 1.5x)", flush=True)
    (HERE / "work" / "bench_memory.json").write_text(json.dumps({"python": python or "src/", "runs": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
