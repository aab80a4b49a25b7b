"""One merge-walk of two listings in the contract's order.

Every backend lists in plain string order of the paths (the contract suite
checks it), so two listings pair up in one pass, holding one entry of each
side at a time: ``mirror``, ``compare`` and the manifest's writer walk trees
of 10^8 files without a dictionary of either side. A listing that breaks
the order is a backend's bug; it is refused, never paired wrongly.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, Optional

from fitsync.errors import EXIT_FAILED, FitsyncError
from fitsync.remotes.base import Entry
from fitsync.threads import put_unless_stopped as _hand_over

# A prefetched listing hands over entries in chunks of this many, with at
# most PREFETCH_CHUNKS chunks waiting: memory stays bounded whatever the tree.
CHUNK = 4096
PREFETCH_CHUNKS = 8


class ListingOutOfOrder(FitsyncError):
    """A backend listed a path before one that sorts ahead of it."""

    exit_code = EXIT_FAILED


def paired(first: Iterable[Entry], second: Iterable[Entry],
           sides: tuple = ("the source", "the destination")) -> Iterator[tuple[str, Optional[Entry], Optional[Entry]]]:
    """(path, entry of first or None, entry of second or None) for every path
    of either listing, in path order; ``sides`` name the two in errors."""
    left, right = _ordered(first, sides[0]), _ordered(second, sides[1])
    a, b = next(left, None), next(right, None)
    while a is not None and b is not None:
        if a.path == b.path:
            yield a.path, a, b
            a, b = next(left, None), next(right, None)
        elif a.path < b.path:
            yield a.path, a, None
            a = next(left, None)
        else:
            yield b.path, None, b
            b = next(right, None)
    while a is not None:
        yield a.path, a, None
        a = next(left, None)
    while b is not None:
        yield b.path, None, b
        b = next(right, None)


def _ordered(entries: Iterable[Entry], side: str) -> Iterator[Entry]:
    previous = None
    for entry in entries:
        if previous is not None and entry.path <= previous:
            raise ListingOutOfOrder(f"the listing of {side} gave {entry.path!r} after {previous!r}: it is not "
                                    "in path order, so the two sides cannot be paired (a backend bug; report it)")
        previous = entry.path
        yield entry


def selected(entries: Iterable[Entry], selection=None, only_paths=None) -> Iterator[Entry]:
    """The entries a run's --include/--exclude/--files-from (``selection``)
    and its list of paths (``only_paths``) keep."""
    for entry in entries:
        if only_paths is not None and entry.path not in only_paths:
            continue
        if selection is not None and not selection.matches(entry):
            continue
        yield entry


def prefetched(make_listing, name: str = "fitsync-listing") -> Iterator[Entry]:
    """The entries of ``make_listing()``, produced in a thread of their own:
    two listings walked side by side (a local walk, an SFTP agent's stream)
    wait on their disks and networks at once, as two whole listings in two
    threads did, while at most PREFETCH_CHUNKS chunks are held."""
    handoff: queue.Queue = queue.Queue(PREFETCH_CHUNKS)
    stop = threading.Event()

    def produce() -> None:
        try:
            chunk = []
            for entry in make_listing():
                chunk.append(entry)
                if len(chunk) == CHUNK:
                    if not _hand_over(handoff, stop, chunk):
                        return
                    chunk = []
            _hand_over(handoff, stop, chunk)
            _hand_over(handoff, stop, None)
        except BaseException as exc:  # raised again in the walking thread
            _hand_over(handoff, stop, exc)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            chunk = handoff.get()
            if chunk is None:
                return
            if isinstance(chunk, BaseException):
                raise chunk
            yield from chunk
    finally:
        stop.set()  # a walk that ended early (an error, Ctrl-C) frees the producer


