"""Faults on SSH destinations and connections (issue 9), against a real sshd:
temporaries a killed push left on the host (S4b), and a relay that stops
forwarding while it keeps the connection open (a stalled relay)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_tree, write_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))
from harness import run_fitsync  # noqa: E402
from fitsync import sshconn  # noqa: E402
from sshd_fixture import StallingRelay, home, sshd  # noqa: E402,F401 (fixtures)


def sftp_url(port: int, path) -> str:
    return f"sftp://127.0.0.1:{port}{path}"


def dead_pid() -> int:
    """The pid of a process of this host that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def plant(path, data: bytes = b"left by a killed run") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# -- S4b: a killed push's temporaries on the host ------------------------------------------------

def test_killed_runs_temporaries_are_removed_once_the_lock_is_held(sshd, home, tmp_path, cli):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    files = {"run/a.fits": os.urandom(300_000), "b.txt": b"b"}
    write_tree(src, files)
    state = dst / ".fitsync"
    # What a SIGKILLed push leaves: its lock (its pid is gone) and an upload in progress.
    plant(state / "lock", f"{dead_pid()} {socket.gethostname()} {int(time.time())}".encode())
    plant(state / "tmp" / "a.fits.0123456789ab.part", os.urandom(100_000))
    plant(outside / "precious.txt", b"not fitsync's")
    (state / "tmp" / "escape.part").symlink_to(outside / "precious.txt")
    plant(state / "tmp" / "somedir" / "inner.txt", b"a directory is not a temporary of ours")
    plant(state / "notes", b"outside tmp/: not touched")

    result = cli("mirror", src, sftp_url(sshd.port, dst), "--json")

    assert result.code == 0, result.err
    assert result.json()["files_new"] == len(files)
    assert read_tree(dst) == files  # read_tree leaves .fitsync out
    assert sorted(p.name for p in (state / "tmp").iterdir()) == ["somedir"]  # files and links gone
    assert (state / "tmp" / "somedir" / "inner.txt").read_bytes() == b"a directory is not a temporary of ours"
    assert (outside / "precious.txt").read_bytes() == b"not fitsync's"  # the link, not its target
    assert (state / "notes").exists() and not (state / "lock").exists()


def test_a_symlinked_tmp_directory_is_not_cleared(sshd, home, tmp_path, cli):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    write_tree(src, {"x.bin": b"x" * 1000})
    plant(outside / "keep.part", b"someone else's")
    (dst / ".fitsync").mkdir(parents=True)
    (dst / ".fitsync" / "tmp").symlink_to(outside)

    result = cli("mirror", src, sftp_url(sshd.port, dst))

    # Not cleared, and not written through either: the upload is refused with the reason.
    assert result.code == 3, result.err
    assert "not a directory" in result.err and "tmp is a symlink in the destination" in result.err
    assert [p.name for p in outside.iterdir()] == ["keep.part"]
    assert (outside / "keep.part").read_bytes() == b"someone else's"


def test_a_run_refused_by_the_lock_leaves_the_holders_temporaries_alone(sshd, home, tmp_path, cli):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"x.bin": b"x" * 1000})
    state = dst / ".fitsync"
    # A live holder: this test's own pid on this host.
    plant(state / "lock", f"{os.getpid()} {socket.gethostname()} {int(time.time())}".encode())
    in_progress = state / "tmp" / "x.bin.0123456789ab.part"
    plant(in_progress, b"being uploaded by the holder")

    result = cli("mirror", src, sftp_url(sshd.port, dst))

    assert result.code == 5, result.err
    assert f"locked by fitsync pid {os.getpid()}" in result.err
    assert in_progress.read_bytes() == b"being uploaded by the holder"
    assert not (dst / "x.bin").exists()


# -- a relay that stops forwarding ---------------------------------------------------------------

@pytest.fixture
def relay(sshd, home):
    relay = StallingRelay(sshd.port)
    with open(home / ".ssh" / "known_hosts", "a") as f:
        f.write(sshd.host_key_line(relay.port))
    yield relay
    sshconn.close_all()
    relay.close()


BIG = 8 << 20


def test_an_idle_connection_is_kept_alive_not_declared_stalled(sshd, home, tmp_path):
    """Silence without a stall: the watchdog's probes get answers, so an idle
    connection outlives several timeouts and is not replaced."""
    from fitsync.options import RemoteOptions
    from fitsync.remotes import open_remote

    write_tree(tmp_path / "r", {"x.bin": b"x"})
    remote = open_remote(sftp_url(sshd.port, tmp_path / "r"), RemoteOptions(timeout=1))
    assert [e.path for e in remote.list()] == ["x.bin"]
    conn = remote.connection()
    generation = conn.generation
    time.sleep(3.5)  # idle for three and a half timeouts
    assert conn.alive() and conn.generation == generation
    assert remote.stat("x.bin").size == 1
    assert conn.generation == generation


def test_a_bad_timeout_is_a_usage_error(sshd, home, tmp_path, cli):
    result = cli("mirror", tmp_path, sftp_url(sshd.port, tmp_path / "dst"), "--timeout=soon")
    assert result.code == 2
    assert result.err.strip() == "fitsync: --timeout must be a number of seconds (0 or more), not 'soon'"


def run_mirror(*args, limit: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    """``fitsync mirror ARGS`` as its own process, so that a run that waits for
    ever (no stall detection) fails this test instead of hanging it."""
    started = time.monotonic()
    try:
        proc = run_fitsync("mirror", *args, timeout=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"fitsync mirror was still running after {limit} s: the stall was not detected")
    return proc, time.monotonic() - started


def summary(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_relay_that_stalls_once_is_detected_retried_and_resumed(relay, tmp_path, direction):
    data = os.urandom(BIG)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"big.bin": data, "small.txt": b"small"}, mtime=1_700_000_300.0)
    # Mid-transfer of big.bin: its bytes go up in a push, down in a pull.
    relay.stall_after(3 << 20, "up" if direction == "push" else "down")
    if direction == "push":
        proc, elapsed = run_mirror(src, sftp_url(relay.port, dst), "--json", "--timeout=2", "--retries=3")
    else:
        proc, elapsed = run_mirror(sftp_url(relay.port, src), dst, "--json", "--timeout=2", "--retries=3")

    assert relay.stalled.is_set(), "the transfer ended before the relay stalled"
    assert proc.returncode == 0, proc.stderr
    assert "stalled" in proc.stderr and "--timeout=2" in proc.stderr  # the stall and the retry are reported
    assert "Traceback" not in proc.stderr
    assert read_tree(dst) == {"big.bin": data, "small.txt": b"small"}
    assert os.stat(dst / "big.bin").st_mtime == 1_700_000_300.0
    assert relay.connections >= 2  # it reconnected
    assert elapsed < 30, elapsed
    if direction == "pull":  # resumed at the byte where it stopped, not from the start
        assert summary(proc)["bytes_transferred"] < 2 * BIG


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_relay_that_stalls_for_good_ends_with_a_clear_error(relay, tmp_path, direction):
    data = os.urandom(BIG)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"big.bin": data})
    if direction == "push":
        relay.stall_after(3 << 20, "up", forever=True)
        proc, elapsed = run_mirror(src, sftp_url(relay.port, dst), "--timeout=2", "--retries=1")
    else:
        relay.stall_after(3 << 20, "down", forever=True)
        proc, elapsed = run_mirror(sftp_url(relay.port, src), dst, "--timeout=2", "--retries=1")

    assert relay.stalled.is_set()
    # README's exit codes: a push ends on a connection failure (4): with the host unreachable it cannot
    # even release its lock there. A pull has its own local lock: the file failed after retries (3).
    assert proc.returncode == (4 if direction == "push" else 3), proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fitsync: ") and "127.0.0.1" in last and "no answer within 2 s" in last, proc.stderr
    assert not (dst / "big.bin").exists()  # nothing under the final name
    assert elapsed < 25, elapsed
