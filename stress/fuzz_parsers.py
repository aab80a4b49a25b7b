"""Long fuzz runs of fitsync's parsers (the targets of stress/fuzz_targets.py).

Unlike the CI subset, a failure does not stop the run: every distinct failure
(exception type and where it was raised) is recorded with the first input that
caused it, and the run goes on to the requested number of inputs.

Usage:
  fuzz_parsers.py [--examples=N] [--batch=N] [--target=NAME]... [--seed=N] [--json=FILE] [--trace-all]
  fuzz_parsers.py --list
  fuzz_parsers.py --help

Options:
  --examples=N   Inputs per target [default: 100000].
  --batch=N      Inputs per hypothesis run: its bookkeeping slows down as a
                 run grows, so long runs go in batches of fresh seeds [default: 5000].
  --target=NAME  Only these targets (default: all; see --list).
  --seed=N       Hypothesis seed [default: 0].
  --json=FILE    Also write the figures as JSON.
  --trace-all    Trace allocations for every target (slower), not only the frame readers.

Run from the repository: PYTHONPATH=src python3 stress/fuzz_parsers.py --examples=100000
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

from docopt import docopt


def fuzz(name: str, examples: int, seed: int, batch: int) -> dict:
    """``examples`` inputs for one target, in hypothesis runs of ``batch``."""
    started = time.monotonic()
    total = {"target": name, "inputs": 0, "failures": {}}
    for number, start in enumerate(range(0, examples, batch)):
        part = fuzz_batch(name, min(batch, examples - start), seed * 100_003 + number)
        total["inputs"] += part["inputs"]
        for key, failure in part["failures"].items():
            known = total["failures"].setdefault(key, dict(failure, count=0))
            known["count"] += failure["count"]
    failures = list(total["failures"].values())
    return {"target": name, "inputs": total["inputs"], "seconds": round(time.monotonic() - started, 1),
            "distinct_failures": len(failures), "failures": failures}


def fuzz_batch(name: str, examples: int, seed: int) -> dict:
    from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings

    from fuzz_targets import TARGETS

    target, strategy = TARGETS[name]
    failures: dict[tuple, dict] = {}
    count = [0]

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(data):
        count[0] += 1
        try:
            target(data)
        except Exception as exc:  # every kind is a finding: record it and go on
            where = traceback.extract_tb(exc.__traceback__)[-1]
            key = (type(exc).__name__, Path(where.filename).name, where.lineno)
            if key not in failures:
                failures[key] = {"error": type(exc).__name__, "where": f"{key[1]}:{key[2]}",
                                 "message": str(exc)[:200], "input": repr(data)[:300], "count": 0}
            failures[key]["count"] += 1

    run()
    return {"inputs": count[0], "failures": failures}


def main() -> int:
    opts = docopt(__doc__)
    if opts["--trace-all"]:
        os.environ["FITSYNC_FUZZ_TRACE_ALL"] = "1"
    from fuzz_targets import TARGETS

    if opts["--list"]:
        print("\n".join(TARGETS))
        return 0
    figures = []
    for name in opts["--target"] or list(TARGETS):
        result = fuzz(name, int(opts["--examples"]), int(opts["--seed"]), int(opts["--batch"]))
        figures.append(result)
        print(json.dumps(result), flush=True)
        if opts["--json"]:
            Path(opts["--json"]).write_text(json.dumps(figures, indent=1))
    return 1 if any(f["distinct_failures"] for f in figures) else 0


if __name__ == "__main__":
    raise SystemExit(main())
