"""Read-only memory maps of files that someone else may truncate meanwhile.

fitsync reads large local files through mmap: BLAKE3 hashes a map on every
core, and the delta matcher reads both files at random offsets. A page past a
file's end raises SIGBUS, so a source truncated while it is read would kill
the run with no message and leave its lock behind. Every map fitsync reads
is opened here instead: the compiled guard (ext/mapguard.h) turns such a
fault into zero pages, and leaving the map raises SourceChanged, which the
mirror retries and then reports like any other source that changed while read.
"""

from __future__ import annotations

import mmap

from fitsync import _mapguard
from fitsync.errors import SourceChanged


class mapped_file:
    """``with mapped_file(fd, what=name) as m:`` a read-only mmap of ``fd``
    (``length`` bytes from ``offset``; 0: to the end). Raises SourceChanged on
    leaving if the file shrank while the map was read, in place of whatever
    the block raised or returned, since that was computed from zeros."""

    def __init__(self, fd: int, length: int = 0, offset: int = 0, what: str = "a file"):
        self.map = mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=offset)
        self._slot = _mapguard.add(self.map)
        self._what = what

    def __enter__(self) -> mmap.mmap:
        return self.map

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc)

    def close(self, cause: BaseException | None = None) -> None:
        # Withdrawn before the unmap, so that no other map given the same
        # addresses meanwhile is mistaken for this one.
        faulted = _mapguard.remove(self._slot)
        self._slot = -1
        self.map.close()
        if faulted and (cause is None or isinstance(cause, Exception)):  # never mask a Ctrl-C
            raise SourceChanged(f"{self._what} shrank while it was read; try again") from cause
