"""Shared fixtures: run the CLI in-process, build small trees, find the real H.E.S.S. release."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from fitsync.cli.main import main

HESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hess-dl3-dr1"
SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "archive"


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(capsys):
    """Run ``fitsync ARGS`` in this process; return exit code, stdout, stderr.
    The "fitsync" logger is put back as it was afterwards: a command sets it up
    for a terminal (its own handlers, no propagation), which would hide later
    tests' records from caplog."""
    logger = logging.getLogger("fitsync")
    saved = (logger.level, list(logger.handlers), logger.propagate)

    def run(*args) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    yield run
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


def write_tree(root: Path, files: dict[str, bytes], mtime: float = 1_700_000_000.0) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under root except fitsync's own state directory."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(".fitsync"):
            out[rel] = path.read_bytes()
    return out


@pytest.fixture
def hess() -> Path:
    if not HESS.is_dir():
        pytest.fail(f"the H.E.S.S. DL3 DR1 release is expected at {HESS} (../shared beside the repo)")
    return HESS


@pytest.fixture(scope="module")
def client():
    """A Dask client of a LocalCluster of 2 worker processes, for one test module."""
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with Client(cluster) as c:
        yield c
    cluster.close()


class WorkerKiller:
    """Kills one of a Dask client's worker processes (SIGKILL) once ``ready()``
    holds, from a thread, while the run under test goes on; ``killed`` says
    whether it happened before the 60 s deadline."""

    def __init__(self, client, ready):
        import threading

        self.client, self.ready = client, ready
        self.killed = threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:  # the run failed: stop watching
            self.killed.set()
        self._thread.join()

    def _watch(self) -> None:
        import signal
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.killed.is_set():
            if self.ready():
                pids = self.client.run(os.getpid)
                os.kill(sorted(pids.values())[0], signal.SIGKILL)
                self.killed.set()
                return
            time.sleep(0.002)
