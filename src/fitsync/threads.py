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


def put_unless_stopped(handoff, stop: threading.Event, item, poll: float = 0.2) -> bool:
    """Put ``item`` on the bounded queue ``handoff`` unless ``stop`` is set
    first (its reader has gone); False when it was. A producer thread that
    blocked on a full queue forever would outlive the reader that left."""
    import queue

    while not stop.is_set():
        try:
            handoff.put(item, timeout=poll)
            return True
        except queue.Full:
            continue
    return False


_PRELOADS: list[threading.Thread] = []


def preload(*modules: str) -> None:
    """Import ``modules`` in a background thread, while this one waits on
    something else (a server starting a process for us). Code that needs
    them calls await_preloads() first: importing a package in one thread
    while another imports its submodules can end in CPython's import
    deadlock detection. A failure is left for that later import to raise."""

    def target():
        import importlib

        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - re-raised by the import that needs it
                return

    thread = threading.Thread(target=target, name="fitsync-preload", daemon=True)
    _PRELOADS.append(thread)
    thread.start()


def await_preloads() -> None:
    """Wait for every preload() started so far."""
    for thread in list(_PRELOADS):
        thread.join()
