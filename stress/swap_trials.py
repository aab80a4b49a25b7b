"""Swap trials: symlinks planted into the destination while `fitsync mirror` runs.

Usage:
  swap_trials.py [--trials=N] [--seed=N] [--workdir=DIR] [--json=FILE]
  swap_trials.py --help

Options:
  --trials=N     Trials, spread evenly over the attacks and mirror modes [default: 500].
  --seed=N       Seed of the trees, the swap moments and targets [default: 0].
  --workdir=DIR  Where the trees go (a fresh temporary directory by default).
  --json=FILE    Also write the summary as JSON.

Run from the repository, as root (as fitsync runs from cron):
  PYTHONPATH=src:stress python3 stress/swap_trials.py --trials=500   # about 8 minutes on 2 cores
Exit status 1 if any trial changed the canary or the source, or ended badly.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from docopt import docopt

from swaps import run_swap_trials


def main() -> int:
    opts = docopt(__doc__)
    workdir = Path(opts["--workdir"] or tempfile.mkdtemp(prefix="fitsync-swaps-"))
    started = time.monotonic()
    summary = run_swap_trials(workdir, int(opts["--trials"]), int(opts["--seed"]))
    summary["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary, indent=1))
    if opts["--json"]:
        Path(opts["--json"]).write_text(json.dumps(summary, indent=1))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
