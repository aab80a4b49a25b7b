"""gzip as a FITS audit checks it: the member header, the deflate stream, CRC32
and ISIZE, in one streaming pass with bounded memory (fitsaudit.py)."""

from __future__ import annotations

import zlib

from fitsync.fits import BROKEN, INCOMPLETE, WARNING, Problem

GZIP_MAGIC = b"\x1f\x8b"
MAX_OUTPUT = 4 << 20  # decompressed bytes per zlib call: bounds memory
FTEXT, FHCRC, FEXTRA, FNAME, FCOMMENT = 1, 2, 4, 8, 16
KNOWN_XFL = (0, 2, 4)
KNOWN_OS = tuple(range(14)) + (255,)
MAX_GZIP_HEADER = 1 << 20


class _NeedMore(Exception):
    pass


def parse_gzip_header(buf: bytes) -> tuple[int, list[Problem]]:
    """Length of the gzip member header at the start of ``buf`` and the
    problems in it (RFC 1952 section 2.3). Raises _NeedMore when ``buf`` ends
    inside the header and ValueError when it is not a gzip header."""

    def need(n: int) -> None:
        if len(buf) < n:
            raise _NeedMore

    need(10)
    if buf[:2] != GZIP_MAGIC:
        raise ValueError("not a gzip member (bad magic bytes)")
    if buf[2] != 8:
        raise ValueError(f"unknown gzip compression method {buf[2]}")
    flags, xfl, os_byte = buf[3], buf[8], buf[9]
    if flags & 0xE0:
        raise ValueError(f"reserved gzip flag bits set ({flags:#04x})")
    problems = []
    if xfl not in KNOWN_XFL or os_byte not in KNOWN_OS:
        # No gzip writer produces these values (gzip itself ignores the
        # bytes): the header was altered after it was written.
        problems.append(Problem(BROKEN, "gzip-header", f"gzip header has undefined XFL={xfl} or OS={os_byte}: it was altered"))
    pos = 10
    if flags & FEXTRA:
        need(pos + 2)
        pos += 2 + int.from_bytes(buf[pos : pos + 2], "little")
        need(pos)
    for flag in (FNAME, FCOMMENT):
        if flags & flag:
            end = buf.find(b"\0", pos)
            if end < 0:
                if len(buf) > MAX_GZIP_HEADER:
                    raise ValueError("gzip header name or comment never ends")
                raise _NeedMore
            pos = end + 1
    if flags & FHCRC:
        need(pos + 2)
        if zlib.crc32(buf[:pos]) & 0xFFFF != int.from_bytes(buf[pos : pos + 2], "little"):
            raise ValueError("gzip header CRC16 does not match")
        pos += 2
    return pos, problems


class GzipChecker:
    """Decompresses a gzip stream fed in order, sending the decompressed bytes
    to ``sink`` and checking each member's header, deflate data, CRC32 and
    ISIZE. Offsets in messages are in the compressed stream."""

    def __init__(self, sink):
        self.sink = sink
        self.problems: list[Problem] = []
        self.members = 0
        self.in_pos = 0  # compressed bytes consumed
        self.out_size = 0  # decompressed bytes of the current member
        self.failed = False  # a broken stream: the rest cannot be decoded
        self._state = "header"
        self._buf = bytearray()  # header, trailer or after-stream bytes
        self._d = None
        self._crc = 0
        self._trailing = 0
        self._trailing_nonzero = 0
        self._trailing_start = 0

    def feed(self, data) -> None:
        view = memoryview(data).cast("B")
        while len(view) and not self.failed:
            if self._state == "deflate" and not self._buf:
                used = self._inflate(view, self.in_pos)
                self.in_pos += used
                view = view[used:]
            elif self._state == "trailing":
                self._count_trailing(view)
                self.in_pos += len(view)
                return
            else:
                self._buf += view
                self.in_pos += len(view)
                self._advance_buffer()
                return

    def _advance_buffer(self) -> None:
        """Handle the buffered header, trailer or after-stream bytes."""
        while self._buf and not self.failed:
            if self._state == "header":
                if not self._take_header():
                    return
            elif self._state == "deflate":
                rest = bytes(self._buf)
                self._buf.clear()
                used = self._inflate(memoryview(rest), self.in_pos - len(rest))
                if used == len(rest):
                    return
                self._buf += rest[used:]
            elif self._state == "trailer":
                if len(self._buf) < 8:
                    return
                self._check_trailer(bytes(self._buf[:8]))
                del self._buf[:8]
                self._state = "between"
            elif self._state == "between":
                if self._buf[:2] == GZIP_MAGIC:
                    self._state = "header"
                elif len(self._buf) == 1 and self._buf[:1] == GZIP_MAGIC[:1]:
                    return  # maybe the start of another member
                else:
                    self._begin_trailing()
            else:  # trailing
                self._count_trailing(memoryview(bytes(self._buf)))
                self._buf.clear()

    def _begin_trailing(self) -> None:
        self._state = "trailing"
        self._trailing_start = self.in_pos - len(self._buf)

    def _take_header(self) -> bool:
        try:
            length, problems = parse_gzip_header(bytes(self._buf))
        except _NeedMore:
            return False
        except ValueError as exc:
            self._fail("gzip-header", f"gzip member {self.members + 1}: {exc}")
            return False
        self.problems.extend(problems)
        del self._buf[:length]
        self.members += 1
        self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        self._crc = 0
        self.out_size = 0
        self._state = "deflate"
        return True

    def _inflate(self, view: memoryview, base: int) -> int:
        """Decompress from ``view`` (at compressed offset ``base``); return
        how many of its bytes belong to the deflate stream (all of them
        unless the stream ends inside)."""
        d = self._d
        before, emitted = d.copy(), self.out_size
        try:
            self._emit(d.decompress(view, MAX_OUTPUT))
            # Drain: input left over by the output limit, or output still pending.
            while not d.eof:
                out = d.decompress(d.unconsumed_tail, MAX_OUTPUT)
                if not out and not d.unconsumed_tail:
                    break
                self._emit(out)
        except zlib.error:
            self._d = before
            self._find_error(view, base, self.out_size - emitted)
            return len(view)
        if not d.eof:
            return len(view)
        self._state = "trailer"
        return len(view) - len(d.unused_data)

    def _find_error(self, view: memoryview, base: int, already_emitted: int) -> None:
        """Decode ``view`` again in small steps to emit everything before the
        bad byte and name its offset, whatever the chunking was."""
        pos, skip, error = 0, already_emitted, None
        for step in (4096, 1):
            while pos < len(view):
                saved = self._d.copy()
                try:
                    out = self._d.decompress(view[pos : pos + step])
                except zlib.error as exc:
                    self._d, error = saved, exc
                    break
                cut = min(skip, len(out))
                skip -= cut
                self._emit(out[cut:])
                pos += step
        self._fail("gzip-corrupt", f"gzip data is corrupt at compressed offset {base + pos}: {error}")

    def _emit(self, out: bytes) -> None:
        if out:
            self._crc = zlib.crc32(out, self._crc)
            self.out_size += len(out)
            self.sink(out)

    def _check_trailer(self, trailer: bytes) -> None:
        crc = int.from_bytes(trailer[:4], "little")
        isize = int.from_bytes(trailer[4:], "little")
        if crc != self._crc:
            self.problems.append(
                Problem(BROKEN, "gzip-crc", f"gzip member {self.members}: CRC32 is {crc:08x}, the decompressed data has {self._crc:08x}")
            )
        if isize != self.out_size & 0xFFFFFFFF:
            self.problems.append(
                Problem(BROKEN, "gzip-size", f"gzip member {self.members}: recorded length {isize}, decompressed {self.out_size} bytes")
            )

    def _count_trailing(self, view: memoryview) -> int:
        self._trailing += len(view)
        self._trailing_nonzero += len(bytes(view).translate(None, b"\0"))
        return len(view)

    def _fail(self, kind: str, message: str) -> None:
        self.problems.append(Problem(BROKEN, kind, message))
        self.failed = True

    def finish(self) -> list[Problem]:
        if self.failed:
            return self.problems
        if self._state == "header":
            if self.members == 0:
                what = "empty file" if not self._buf else "gzip header is truncated"
                self.problems.append(Problem(INCOMPLETE, "gzip-truncated", what))
        elif self._state == "deflate":
            self.problems.append(
                Problem(INCOMPLETE, "gzip-truncated", f"gzip stream ends early: member {self.members} stops at compressed offset {self.in_pos}")
            )
        elif self._state == "trailer":
            self.problems.append(
                Problem(INCOMPLETE, "gzip-truncated", f"gzip trailer is truncated: {8 - len(self._buf)} of its 8 bytes missing", missing_bytes=8 - len(self._buf))
            )
        elif self._state == "between" and self._buf:
            self._begin_trailing()
            self._count_trailing(memoryview(bytes(self._buf)))
        if self._state == "trailing":
            if self._trailing_nonzero:
                self.problems.append(
                    Problem(BROKEN, "trailing-bytes", f"{self._trailing} byte(s) of garbage after the gzip stream, from offset {self._trailing_start}")
                )
            else:
                self.problems.append(Problem(WARNING, "trailing-bytes", f"{self._trailing} zero byte(s) after the gzip stream (gzip ignores them)"))
        return self.problems
