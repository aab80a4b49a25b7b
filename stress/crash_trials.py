"""Crash-consistency trials: SIGKILL `fitsync mirror` at random moments, re-run, audit.

Usage:
  crash_trials.py [--trials=N] [--scenario=NAME]... [--scale=S] [--seed=N] [--workdir=DIR] [--json=FILE]
                  [--ssh=SIDE]
  crash_trials.py --help

Options:
  --trials=N        Trials per scenario [default: 40].
  --scenario=NAME   new, delta, repair, manifest or delete (default: all five).
  --scale=S         Tree size: ci (~25 MB) or stress (~60 MB) [default: stress].
  --seed=N          Seed of the trees and of the kill moments [default: 0].
  --workdir=DIR     Where the trees go (a fresh temporary directory by default).
  --json=FILE       Also write the per-scenario figures as JSON.
  --ssh=SIDE        Put SRC or DST (SIDE = src or dst) behind a real sshd on
                    127.0.0.1 started for the run (tests/sshd_fixture.py), as
                    sftp://127.0.0.1:PORT/path; fitsync's agent runs there.

Run from the repository: PYTHONPATH=src python3 stress/crash_trials.py --trials=40
(5 scenarios x 40 = 200 trials, about 10 minutes on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from docopt import docopt

from harness import SCENARIOS, fitsync_env, run_crash_trials


def start_sshd(workdir: Path):
    """A loopback sshd and the environment (HOME with key, config, known_hosts) to reach it."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from sshd_fixture import SshServer, host_python

    server = SshServer(workdir / "sshd").start()
    env = dict(fitsync_env(), HOME=str(server.client_home(workdir / "home")))
    env.setdefault("FITSYNC_SSH_PYTHON", host_python(workdir))
    env.pop("SSH_AUTH_SOCK", None)
    return server, env


def main() -> int:
    opts = docopt(__doc__)
    scenarios = opts["--scenario"] or list(SCENARIOS)
    workdir = Path(opts["--workdir"] or tempfile.mkdtemp(prefix="fitsync-crash-"))
    figures = []
    failed = 0
    server, ends = None, {}
    if opts["--ssh"]:
        server, env = start_sshd(workdir)
        prefix = f"sftp://127.0.0.1:{server.port}"
        ends = {"env": env, ("src_prefix" if opts["--ssh"] == "src" else "dst_prefix"): prefix}
    for name in scenarios:
        started = time.monotonic()
        summary = run_crash_trials(name, workdir / name, int(opts["--trials"]), int(opts["--seed"]), opts["--scale"],
                                   **ends)
        summary["ssh"] = opts["--ssh"] or "none"
        summary["seconds"] = round(time.monotonic() - started, 1)
        figures.append(summary)
        failed += summary["failures"]
        print(json.dumps(summary), flush=True)
        shutil.rmtree(workdir / name, ignore_errors=True)
    if server is not None:
        server.stop()
    if opts["--json"]:
        Path(opts["--json"]).write_text(json.dumps(figures, indent=1))
    total = sum(f["trials"] for f in figures)
    print(f"{total} trials, {failed} with failures")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
