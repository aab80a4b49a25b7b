"""--bwlimit: one read rate shared by every transfer of a run."""

from __future__ import annotations

import threading
import time


class Throttle:
    """Spaces reads so that all threads together average ``rate`` bytes a second.

    ``consume(n)`` is called after ``n`` bytes were read from the source; it
    sleeps until the moment those bytes are due at the rate, so the next read
    starts no earlier (rsync's --bwlimit works the same way, per block).
    """

    def __init__(self, rate: int):
        self.rate = float(rate)
        self._due = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._due = max(self._due, now - 0.5) + n / self.rate  # at most half a second of credit
            wait = self._due - now
        if wait > 0:
            time.sleep(wait)
