"""A FITS file checked from its bytes as they pass by during a mirror: a
source whose bytes stop early is still being written (IncompleteFits)."""

from __future__ import annotations

from typing import Iterable, Iterator

from fitsync import fits
from fitsync.errors import SourceChanged
from fitsync.fits_walker import HduWalker
from fitsync.fits_gzip import GzipChecker
from fitsync.fitsaudit import STATUS_INCOMPLETE, FileReport, format_of, gzip_report, misnamed_gzip_report


class IncompleteFits(SourceChanged):
    """A FITS source whose bytes stop early: a file still being written."""


class StreamCheck:
    """Checks a FITS file from its bytes as they pass by (e.g. while being
    transferred), whether plain or gzip: ``update`` with every chunk in order,
    then ``finish``. Costs one decompression for .gz; nothing is re-read."""

    def __init__(self, name: str):
        self.name = name
        self._walker = HduWalker()
        self._gz: GzipChecker | None = None
        self._head: bytes | None = b""  # first bytes, until the format is known
        self._misnamed = False
        self._size = 0

    def update(self, chunk) -> None:
        self._size += len(chunk)
        if self._head is not None:
            self._head += bytes(chunk)
            if len(self._head) >= len(fits.FITS_MAGIC):
                self._start(self._head)
            return
        self._pass_on(chunk)

    def _start(self, head: bytes) -> None:
        self._head = None
        kind = format_of(self.name, head[: len(fits.FITS_MAGIC)])
        self._misnamed = kind == "misnamed"
        if kind == "gzip":
            self._gz = GzipChecker(self._walker.feed)
        self._pass_on(head)

    def _pass_on(self, chunk) -> None:
        if self._misnamed:
            return
        if self._gz is None:
            self._walker.feed(chunk)
        elif not self._gz.failed:
            self._gz.feed(chunk)

    def finish(self) -> FileReport:
        if self._head is not None:
            self._start(self._head)
        if self._misnamed:
            report = misnamed_gzip_report()
        elif self._gz is not None:
            report = gzip_report(self._gz, self._walker)
        else:
            hdus, problems = self._walker.finish()
            report = FileReport("", 0, None, hdus, problems)
        report.path, report.size = self.name, self._size
        return report


def guard_chunks(name: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Pass ``chunks`` through, and after the last one raise IncompleteFits
    when they do not make a complete FITS file. Wrap the chunks handed to
    ``Remote.write_atomic``: the exception aborts the write before the rename,
    so a half-written source never replaces a destination file."""
    check = StreamCheck(name)
    for chunk in chunks:
        check.update(chunk)
        yield chunk
    report = check.finish()
    if report.status == STATUS_INCOMPLETE:
        raise IncompleteFits(f"{name} is incomplete (still being written?): {report.first_problem()}")
