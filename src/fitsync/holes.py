"""Zero runs written as holes, for copies whose source cannot say where its
holes are (HTTP, SFTP, Dropbox; a local source says so itself: see
engine/sparse.py). Like ``rsync --sparse``, but on by default: a piece of
HOLE bytes, aligned to its offset in the file, that holds only zeros is
skipped, and the file's size is set at the end. A file of zeros then takes
no space, and reads back the same."""

from __future__ import annotations

import errno
import os
from typing import Iterator

HOLE = 64 << 10  # a multiple of every file system's block: a skipped piece frees whole blocks
_ZEROS = memoryview(bytes(HOLE))


def data_runs(view: memoryview, at: int) -> Iterator[tuple[int, int]]:
    """(start, end) in ``view`` (file bytes from offset ``at``) of the runs to
    write; whole aligned HOLE pieces of zeros are left out."""
    size = len(view)
    start = 0
    piece = min(size, -at % HOLE or HOLE)  # the first piece ends on the grid
    begin = 0
    while begin < size:
        end = min(size, begin + piece)
        if end - begin == HOLE and view[begin:end] == _ZEROS:
            if start < begin:
                yield start, begin
            start = end
        begin, piece = end, HOLE
    if start < size:
        yield start, size


def data_extents(fd: int, begin: int, end: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the data extents of ``fd`` within [begin, end), by
    SEEK_DATA/SEEK_HOLE (the whole range where the file system cannot say)."""
    at = begin
    while at < end:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
            stop = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from ``at`` on
                return
            yield at, end  # no SEEK_DATA here: all of it is data
            return
        if start >= end:
            return
        yield start, min(stop, end)
        at = stop


def extend_to(fd: int, size: int) -> None:
    """Make a file that ends in a hole ``size`` bytes long (nothing wrote its
    last bytes), before a reader or a size check comes to it."""
    if os.fstat(fd).st_size < size:
        os.ftruncate(fd, size)


class HoleWriter:
    """``write(data)`` for a file object written from ``at`` on, leaving
    holes; ``finish()`` sets the file's size, whatever its last bytes were."""

    def __init__(self, out, at: int):
        self._out = out
        self._pos = at

    def write(self, data) -> None:
        with memoryview(data).cast("B") as view:
            for start, end in data_runs(view, self._pos):
                if self._out.tell() != self._pos + start:
                    self._out.seek(self._pos + start)
                self._out.write(view[start:end])
            self._pos += len(view)

    def finish(self) -> None:
        self._out.flush()
        extend_to(self._out.fileno(), self._pos)
