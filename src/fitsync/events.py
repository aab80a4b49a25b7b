"""Progress events handed to a ``progress`` callable of the Python API.

A run calls ``progress(event)`` from its worker threads, so the callable must
be quick and thread-safe (``fitsync.progress.tqdm_bar()`` is). Events:

- ``Totals``: the work of a phase is known (``phase`` is "scan" for content
  comparisons and hashing, "transfer" for copies);
- ``MoreListed``: a phase whose listing streams (a manifest of more files
  than are held at once) grew by this much;
- ``FileStarted``: a file's transfer or hashing starts;
- ``BytesDone``: ``bytes`` more of a file were processed (sent, reused or hashed);
- ``FileFinished``: a file is done, with what was done to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union


@dataclass(frozen=True)
class Totals:
    """The size of a phase, once the listing is known."""

    phase: str
    files: int
    bytes: int


@dataclass(frozen=True)
class MoreListed:
    """More work for the current phase: its listing is walked as it is processed."""

    phase: str
    files: int
    bytes: int


@dataclass(frozen=True)
class FileStarted:
    path: str
    size: int


@dataclass(frozen=True)
class BytesDone:
    path: str
    bytes: int  # an increment, not a running total


@dataclass(frozen=True)
class FileFinished:
    path: str
    action: str  # new, delta, repair, delete, failed, ...
    bytes_moved: int = 0
    bytes_reused: int = 0
    error: Optional[str] = None


Event = Union[Totals, MoreListed, FileStarted, BytesDone, FileFinished]
ProgressCallback = Callable[[Event], None]


def hashing_progress(progress: Optional[ProgressCallback], entries, phase: str = "scan", sides: int = 1):
    """An ``on_done(entry)`` for the hashing loops that reports to ``progress``
    (None without one), after announcing the phase's totals. ``sides`` = 2
    when each listed file is read on both sides (compare)."""
    if progress is None:
        return None
    entries = list(entries)
    progress(Totals(phase, sides * len(entries), sides * sum(e.size for e in entries)))
    return file_done_reporter(progress)


def file_done_reporter(progress: ProgressCallback):
    """An ``on_done(entry)`` that reports each hashed file to ``progress``."""
    def on_done(entry) -> None:
        progress(BytesDone(entry.path, entry.size))
        progress(FileFinished(entry.path, "hashed"))
    return on_done
