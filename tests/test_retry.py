"""One retry policy (remotes/retry.py): delays, bounds, and retries that never nest."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fitsync.errors import ConnectionFailed, TransferFailed
from fitsync.remotes.retry import RetryPolicy, retrying, was_retried

from conftest import write_tree
from http_fixture import HttpFixture

FITSYNC = str(Path(sys.executable).with_name("fitsync"))


@given(failures=st.integers(1, 40), base=st.floats(0.01, 5), cap=st.floats(0.01, 100),
       retry_after=st.one_of(st.none(), st.floats(0, 1000)))
def test_delays_double_with_jitter_up_to_the_cap_and_honour_retry_after(failures, base, cap, retry_after):
    policy = RetryPolicy(3, base_delay=base, max_delay=cap, max_wait=60)
    plain = min(cap, base * 2 ** (failures - 1))
    delay = policy.delay(failures, retry_after)
    assert plain * 0.5 <= delay or (retry_after is not None and delay >= min(retry_after, 60))
    if retry_after is None:
        assert delay <= plain
    else:
        assert delay >= min(retry_after, 60) and delay <= max(plain, min(retry_after, 60))


def test_a_transient_failure_is_tried_again_then_given_up_and_marked():
    slept, calls = [], []

    def attempt():
        calls.append(1)
        raise TimeoutError("slow")

    policy = RetryPolicy(2, base_delay=0.01, sleep=slept.append)
    with pytest.raises(TransferFailed, match="3 attempts") as caught:
        retrying(attempt, policy, transient=lambda e: isinstance(e, TimeoutError), describe=str,
                 give_up=lambda e, n: TransferFailed(f"gave up after {n} attempts"))
    assert len(calls) == 3 and len(slept) == 2 and was_retried(caught.value)


def test_a_permanent_failure_is_not_retried():
    calls = []

    def attempt():
        calls.append(1)
        raise ConnectionFailed("no such host")

    with pytest.raises(ConnectionFailed):
        retrying(attempt, RetryPolicy(5, sleep=lambda s: None), transient=lambda e: False, describe=str,
                 give_up=lambda e, n: e)
    assert len(calls) == 1


def test_progress_earns_a_fresh_set_of_retries():
    tries = RetryPolicy(2, sleep=lambda s: None).tracker()
    for _ in range(10):  # a stream cut again and again, but moving on each time
        tries.failed("cut", lambda n: AssertionError("gave up although bytes kept arriving"))
        tries.progressed()
    tries.failed("cut", lambda n: TransferFailed("x"))
    tries.failed("cut", lambda n: TransferFailed("x"))
    with pytest.raises(TransferFailed):
        tries.failed("cut", lambda n: TransferFailed("x"))


def test_a_server_gone_mid_run_is_retried_by_the_backend_only(tmp_path, caplog):
    """Retries never nest: the server stops answering once the listing is in;
    the HTTP backend tries each request 1 + retries times and gives up with
    ConnectionFailed, which the engine does not retry again (before: 3 x 3)."""
    import logging

    import fitsync
    from fitsync.events import Totals

    write_tree(tmp_path / "site" / "rel", {"only.bin": os.urandom(3000)})
    srv = HttpFixture(str(tmp_path / "site"))

    def stop_the_server(event):
        if isinstance(event, Totals) and event.phase == "transfer":
            srv.go_away()

    caplog.set_level(logging.WARNING, logger="fitsync")
    result = fitsync.mirror(srv.url + "/rel/", tmp_path / "dst", retries=2, jobs=1, progress=stop_the_server)
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert result.files_failed == 1 and "only.bin" in result.failures[0]["path"]
    assert len(retries) == 2, [r.getMessage() for r in retries]
    assert not (tmp_path / "dst" / "only.bin").exists()


def test_a_file_its_server_refuses_is_given_up_after_its_retries(tmp_path):
    """With --retries=2 a file whose every GET fails is asked for 3 times in
    all, and the other files still arrive."""
    files = {"good.bin": os.urandom(5000), "bad.bin": os.urandom(7000), "sub/also.bin": os.urandom(100)}
    write_tree(tmp_path / "site" / "rel", files)
    with HttpFixture(str(tmp_path / "site"), fail_always={"/rel/bad.bin"}) as srv:
        proc = subprocess.run([FITSYNC, "mirror", srv.url + "/rel/", str(tmp_path / "dst"), "--retries=2"],
                              capture_output=True, text=True, timeout=120)
        gets = [r for r in srv.counters.requests if r.method == "GET" and r.path == "/rel/bad.bin"]
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "bad.bin" in proc.stderr
    assert len(gets) == 3
    assert (tmp_path / "dst" / "good.bin").read_bytes() == files["good.bin"]
    assert (tmp_path / "dst" / "sub" / "also.bin").read_bytes() == files["sub/also.bin"]
    assert not (tmp_path / "dst" / "bad.bin").exists()
