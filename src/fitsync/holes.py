"""Zero runs written as holes, for copies whose source cannot say where its
holes are (HTTP, SFTP, Dropbox; a local source says so itself: see
engine/sparse.py). Like ``rsync --sparse``, but on by default: a piece of
HOLE bytes, aligned to its offset in the file, that holds only zeros is
skipped, and the file's size is set at the end. A file of zeros then takes
no space, and reads back the same."""

from __future__ import annotations

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
        if os.fstat(self._out.fileno()).st_size < self._pos:  # it ended in a hole
            self._out.truncate(self._pos)
