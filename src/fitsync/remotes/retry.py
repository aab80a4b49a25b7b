"""One retry policy for every backend and for the engine's per-file retries.

Permanent errors fail at once: a name that does not resolve, a refused
login or host key, 403/404, a missing file. Transient ones (a dropped
connection, a timeout, HTTP 429/5xx) are tried again after a delay that
doubles from ``base_delay`` up to ``max_delay``, with jitter so that the
jobs of one run do not retry in step, and never shorter than a server's
Retry-After (up to ``max_wait``).

Retries never nest. A failure is retried at one level only: the backend
retries the request that failed, and what it gives up on reaches the engine
marked ``retried``, which the engine does not retry again. The engine's own
loop retries only what nothing below it did: a source that changed while it
was read, a copy that failed its verification, a connection lost in the
middle of a stream the backend cannot resume.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, Optional

log = logging.getLogger("fitsync")

DEFAULT_ATTEMPTS = 3


class RetryPolicy:
    """How often and how patiently to try again (``--retries``)."""

    def __init__(self, attempts: int = DEFAULT_ATTEMPTS, *, base_delay: float = 0.5, max_delay: float = 30.0,
                 max_wait: float = 60.0, sleep: Callable[[float], None] = time.sleep):
        self.attempts = attempts  # retries after the first try
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_wait = max_wait  # the longest Retry-After honoured
        self.sleep = sleep

    @classmethod
    def from_option(cls, retries: Optional[int], **kw) -> "RetryPolicy":
        """The policy for ``--retries`` (None: the default)."""
        return cls(DEFAULT_ATTEMPTS if retries is None else retries, **kw)

    def delay(self, failures: int, retry_after: Optional[float] = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row."""
        delay = min(self.max_delay, self.base_delay * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), self.max_wait))
        return delay

    def tracker(self) -> "Retries":
        return Retries(self)


class Retries:
    """The failures of one operation under a policy: each loop that retries
    (a request, a resumable stream, a file) keeps one."""

    def __init__(self, policy: RetryPolicy):
        self.policy = policy
        self.failures = 0

    def progressed(self) -> None:
        """A stream moved on since its last failure: it gets a fresh set of retries."""
        self.failures = 0

    def failed(self, failure: str, give_up: Callable[[int], BaseException],
               retry_after: Optional[float] = None) -> None:
        """Count a transient failure (``failure`` says what happened), then
        wait before the next try; past the policy's attempts raise
        ``give_up(attempts)``, marked as retried."""
        if not self.again(failure, retry_after):
            raise mark_retried(give_up(self.failures))

    def again(self, failure: str, retry_after: Optional[float] = None) -> bool:
        """Count a transient failure and wait before the next try: True, or
        False (no wait) once the policy's attempts are spent."""
        self.failures += 1
        if self.failures > self.policy.attempts:
            return False
        delay = self.policy.delay(self.failures, retry_after)
        log.warning("%s; retry %d of %d in %.1f s", failure, self.failures, self.policy.attempts, delay)
        self.policy.sleep(delay)
        return True


def retrying(attempt: Callable[[], object], policy: RetryPolicy, *, transient: Callable[[BaseException], bool],
             describe: Callable[[BaseException], str], give_up: Callable[[BaseException, int], BaseException],
             retry_after: Callable[[BaseException], Optional[float]] = lambda exc: None):
    """``attempt()``, tried again while it raises what ``transient`` accepts."""
    tries = policy.tracker()
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not transient(exc):
                raise
            tries.failed(describe(exc), lambda count, exc=exc: give_up(exc, count), retry_after(exc))


def mark_retried(error: BaseException) -> BaseException:
    """``error`` marked as given up on after retries: nothing above retries it again."""
    try:
        error.retried = True  # type: ignore[attr-defined]
    except AttributeError:  # an exception type with __slots__: left unmarked
        pass
    return error


def was_retried(error: BaseException) -> bool:
    return bool(getattr(error, "retried", False))
