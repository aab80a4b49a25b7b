"""Small threading helpers shared by the engine and the transfers."""

from __future__ import annotations

import threading


def run_beside(work):
    """Start ``work()`` in a thread of its own; return a function that waits for
    it and returns its result or raises its exception. (Lighter than a thread
    pool, whose import alone costs a no-op run a few milliseconds.)"""
    outcome: list = []

    def target():
        try:
            outcome.append((work(), None))
        except BaseException as exc:  # handed to the waiting thread
            outcome.append((None, exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def wait():
        thread.join()
        result, error = outcome[0]
        if error is not None:
            raise error
        return result

    return wait
