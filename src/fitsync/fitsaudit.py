"""FITS integrity without a manifest: what a FITS file proves about itself.

A FITS file carries its own record structure, an END card per header, data
sizes from BITPIX/NAXISn/PCOUNT/GCOUNT, often CHECKSUM/DATASUM keywords, and
for ``.fits.gz`` a gzip CRC32 and length. ``check_file`` reads every byte at
most once (plain files through an mmap, skipping data units that carry no
checksum; gzip files in one streaming pass) and reports per file and per HDU.

Statuses of a file:

- ``ok``: nothing wrong (a file without checksums can be ok: "checksum absent"
  is information, not a failure);
- ``incomplete``: the bytes stop early, as in a file still being written;
- ``broken``: the bytes are damaged (structure, gzip CRC/length, checksums).

See docs/fits-audit.md for every check and how it compares with astropy.
"""

from __future__ import annotations

import json
import os
import re
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from fitsync import fits
from fitsync.checksum import checksum_ok, datasum, datasum_ok
from fitsync.errors import NotFound, SourceChanged
from fitsync.fits import ABSENT, BAD, BROKEN, INCOMPLETE, OK, UNCHECKED, WARNING, HduResult, HduWalker, Problem
from fitsync.mapped import mapped_file
from fitsync.paths import join_under, safe_relpath

GZIP_MAGIC = b"\x1f\x8b"
STATE_DIR = ".fitsync"  # fitsync's own state inside a tree (see remotes.local)
READ_CHUNK = 1 << 20  # compressed bytes per read
MAX_OUTPUT = 4 << 20  # decompressed bytes per zlib call: bounds memory
PREAD_CHUNK = 8 << 20  # bytes per read when a plain file is not memory-mapped

STATUS_OK = "ok"
STATUS_BROKEN = BROKEN
STATUS_INCOMPLETE = INCOMPLETE
STATUS_NOT_FITS = "not-fits"


def is_fits_candidate(name: str, first_bytes: bytes) -> bool:
    """True for FITS names (.fits .fit .fts, gzipped, .fz) or content that
    starts like a FITS primary header."""
    return fits.looks_like_fits(name, first_bytes)


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------


def _status_of(problems: Iterable[Problem]) -> str:
    severities = {p.severity for p in problems}
    if BROKEN in severities:
        return STATUS_BROKEN
    if INCOMPLETE in severities:
        return STATUS_INCOMPLETE
    return STATUS_OK


@dataclass
class FileReport:
    path: str
    size: int
    compression: str | None = None  # "gzip" or None
    hdus: list = field(default_factory=list)  # list[HduResult]
    problems: list = field(default_factory=list)  # file-level problems (gzip, trailing bytes...)

    @property
    def all_problems(self) -> list[Problem]:
        return list(self.problems) + [p for hdu in self.hdus for p in hdu.problems]

    @property
    def status(self) -> str:
        return _status_of(self.all_problems)

    @property
    def checksums(self) -> str:
        """Summary over HDUs: ok, bad, absent (no HDU has any), partial
        (some HDUs have none) or unchecked."""
        statuses = [s for h in self.hdus for s in (h.checksum, h.datasum, h.zhecksum, h.zdatasum)]
        if BAD in statuses:
            return BAD
        if all(s == ABSENT for s in statuses):
            return ABSENT
        if UNCHECKED in (h.checksum for h in self.hdus) or UNCHECKED in (h.datasum for h in self.hdus):
            return UNCHECKED
        if any(h.checksum == ABSENT and h.datasum == ABSENT for h in self.hdus):
            return "partial"
        return OK

    def first_problem(self) -> str:
        worst = sorted(self.all_problems, key=lambda p: (BROKEN, INCOMPLETE, WARNING).index(p.severity))
        return worst[0].message if worst else ""

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "size": self.size,
            "status": self.status,
            "compression": self.compression,
            "checksums": self.checksums,
            "hdu_count": len(self.hdus),
            "problems": [p.to_dict() for p in self.problems],
            "hdus": [h.to_dict() for h in self.hdus],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# ---------------------------------------------------------------------------
# gzip: header, deflate stream, CRC32 and ISIZE, in one streaming pass
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Checking one file
# ---------------------------------------------------------------------------


def check_file(path: str, hasher=None, display_path: str | None = None, mapped: bool = True) -> FileReport:
    """Check one local file. ``hasher`` (anything with ``update``) also sees
    every raw byte, so an audit against a manifest digest reads the file once.
    ``mapped=False`` reads with pread instead of an mmap: slower, but safe for
    a file that may be truncated while it is read (an mmap would then kill
    the process with SIGBUS), such as a mirror's source.
    Raises NotFound when the file cannot be opened."""
    shown = display_path if display_path is not None else path
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except OSError as exc:
        raise NotFound(f"{path}: cannot open ({exc.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        kind = _format_of(path, os.pread(f.fileno(), len(fits.FITS_MAGIC), 0))
        if kind == "gzip":
            report = _check_gzip_file(f, hasher)
        elif kind == "misnamed":
            report = _misnamed_gzip_report()
            _hash_rest(f, hasher)
        else:
            report = _check_plain_file(f, size, hasher, mapped)
    report.path, report.size = shown, size
    if report.compression is None and any(_is_tile_compressed(h) for h in report.hdus):
        _check_tile_compressed(path, report)
    return report


def _format_of(name: str, head: bytes) -> str:
    """"gzip", "plain" (FITS, or anything to be judged as FITS) or
    "misnamed" (a .gz name on bytes that are neither gzip nor FITS), from the
    first 9 bytes (fewer only when that is the whole file)."""
    if head.startswith(GZIP_MAGIC) or head == GZIP_MAGIC[:1]:
        return "gzip"
    if head and name.lower().endswith(".gz") and not fits.is_prefix_of(head, fits.FITS_MAGIC):
        return "misnamed"
    return "plain"


def _misnamed_gzip_report() -> FileReport:
    problem = Problem(BROKEN, "gzip-header", "named .gz but starts with neither the gzip magic bytes nor a FITS header", 0)
    return FileReport("", 0, "gzip", [], [problem])


def _check_plain_file(f, size: int, hasher, mapped: bool) -> FileReport:
    if size and mapped:
        with mapped_file(f.fileno(), what=f.name) as mapping:
            view = memoryview(mapping)
            try:
                if hasher is not None:
                    hasher.update(view)
                return _walked_report(size, lambda pos, n: view[pos : pos + n], skip_data=True)
            finally:
                view.release()
    buf = memoryview(bytearray(PREAD_CHUNK if size else 0))

    def read_at(pos: int, n: int) -> memoryview:
        got = os.preadv(f.fileno(), [buf[: min(n, PREAD_CHUNK)]], pos)
        if hasher is not None:
            hasher.update(buf[:got])
        return buf[:got]

    return _walked_report(size, read_at, skip_data=hasher is None)


def _walked_report(size: int, read_at, skip_data: bool) -> FileReport:
    """The structure report of a plain FITS file of ``size`` bytes read through ``read_at``."""
    walker = HduWalker()
    _walk(walker, size, read_at, skip_data)
    hdus, problems = walker.finish()
    return FileReport("", size, None, hdus, problems)


def _walk(walker: HduWalker, size: int, read_at, skip_data: bool) -> None:
    """Feed the walker the file's bytes, skipping data units it does not
    need (no checksum keywords) unless ``skip_data`` is False: those pages
    are never touched. Stops early if the file turns out shorter than
    ``size`` (it shrank while being read)."""
    pos = 0
    while pos < size:
        skip = min(walker.skippable(), size - pos) if skip_data else 0
        if skip:
            walker.skip(skip)
            pos += skip
            continue
        piece = read_at(pos, min(walker.wants() or size - pos, size - pos))
        if not len(piece):
            return
        walker.feed(piece)
        pos += len(piece)


def _check_gzip_file(f, hasher) -> FileReport:
    walker = HduWalker()
    gz = GzipChecker(walker.feed)
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    while not gz.failed:
        n = f.readinto(buf)
        if not n:
            break
        if hasher is not None:
            hasher.update(view[:n])
        gz.feed(view[:n])
    if gz.failed:  # the digest still covers every byte
        _hash_rest(f, hasher)
    return _gzip_report(gz, walker)


def _hash_rest(f, hasher) -> None:
    if hasher is not None:
        for chunk in iter(lambda: f.read(READ_CHUNK), b""):
            hasher.update(chunk)


def _gzip_report(gz: GzipChecker, walker: HduWalker) -> FileReport:
    gz_problems = gz.finish()
    hdus, fits_problems = walker.finish()
    if any(p.severity == BROKEN for p in gz_problems):
        # The FITS bytes stop where decoding failed: their "truncation" is a
        # consequence, not a second finding.
        fits_problems = [p for p in fits_problems if p.kind != "truncated"]
        for hdu in hdus:
            hdu.problems = [p for p in hdu.problems if p.kind != "truncated"]
    return FileReport("", 0, "gzip", hdus, gz_problems + fits_problems)


# ---------------------------------------------------------------------------
# Tile-compressed images (.fz): ZHECKSUM and ZDATASUM of the original image
# ---------------------------------------------------------------------------

# Z-keywords that become the image's own keywords (tiled image convention).
_ZRENAME = {
    "ZSIMPLE": "SIMPLE", "ZTENSION": "XTENSION", "ZBITPIX": "BITPIX", "ZNAXIS": "NAXIS",
    "ZEXTEND": "EXTEND", "ZPCOUNT": "PCOUNT", "ZGCOUNT": "GCOUNT",
    "ZHECKSUM": "CHECKSUM", "ZDATASUM": "DATASUM",
}
# Keywords of the compressed table itself, absent from the image header.
_ZTABLE_ONLY = re.compile(
    r"(XTENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|TFIELDS|T(TYPE|FORM|UNIT|DIM|NULL|SCAL|ZERO)\d+|ZIMAGE|ZTILE\d+"
    r"|ZCMPTYPE|ZNAME\d+|ZVAL\d+|ZQUANTIZ|ZDITHER0|ZBLANK|ZBLOCKED|ZMASKCMP|CHECKSUM|DATASUM)\Z"
)
# History CFITSIO adds when it quantizes floats, after computing ZHECKSUM.
_CFITSIO_QUANTIZE_HISTORY = (b"HISTORY Image was compressed by CFITSIO", b"HISTORY   q = ", b"HISTORY 'SUBTRACTIVE_DITHER", b"HISTORY 'NO_DITHER")


def _is_tile_compressed(hdu: HduResult) -> bool:
    return hdu.info is not None and hdu.info.value("ZIMAGE") is True and (hdu.zhecksum != ABSENT or hdu.zdatasum != ABSENT)


def image_header_of(table_header: bytes, drop_quantize_history: bool = False) -> bytes:
    """The uncompressed image header a tile-compressed HDU stands for, as
    CFITSIO's funpack rebuilds it: Z-keywords renamed in place, table
    keywords dropped, everything else kept in order."""
    cards = []
    for i in range(0, len(table_header), fits.CARD):
        card = table_header[i : i + fits.CARD]
        keyword = card[:8].rstrip().decode("ascii", "replace")
        if keyword == "END":
            break
        if drop_quantize_history and card.startswith(_CFITSIO_QUANTIZE_HISTORY):
            continue
        if keyword in _ZRENAME:
            card = _ZRENAME[keyword].ljust(8).encode() + card[8:]
        elif keyword.startswith("ZNAXIS") and keyword[6:].isdigit():
            card = keyword[1:].ljust(8).encode() + card[8:]
        elif _ZTABLE_ONLY.match(keyword) or (keyword == "EXTNAME" and b"'COMPRESSED_IMAGE'" in card):
            continue
        cards.append(card)
    cards.append(b"END".ljust(fits.CARD))
    header = b"".join(cards)
    return header + b" " * (-len(header) % fits.BLOCK)


def _check_tile_compressed(path: str, report: FileReport) -> None:
    for hdu in report.hdus:
        if _is_tile_compressed(hdu) and not any(p.severity != WARNING for p in hdu.problems):
            _check_zhecksum(hdu)
            _check_zdatasum(path, hdu)


def _check_zhecksum(hdu: HduResult) -> None:
    if hdu.zhecksum == ABSENT:
        return
    zdatasum = hdu.info.value("ZDATASUM")
    try:
        data_sum = int(str(zdatasum).strip())
    except ValueError:
        hdu.zhecksum = UNCHECKED
        return
    for drop in (False, True):
        if checksum_ok(datasum(image_header_of(hdu.info.header, drop)), data_sum):
            hdu.zhecksum = OK
            return
    # The rebuilt header may differ from the original without any damage
    # (another writer's layout): say so, without calling the file broken.
    hdu.zhecksum = UNCHECKED
    hdu.problems.append(
        Problem(WARNING, "zhecksum", f"HDU {hdu.index}: ZHECKSUM does not match the image header rebuilt by the tiled-image convention", hdu.offset)
    )


def _is_lossy(info) -> bool:
    quantize = str(info.value("ZQUANTIZ", "")).strip().upper()
    if int(info.value("ZBITPIX", 0) or 0) < 0 and quantize not in ("NONE", "NO_QUANTIZE"):
        return True
    if str(info.value("ZCMPTYPE", "")).strip().upper().startswith("HCOMPRESS"):
        for i in range(1, 20):
            if str(info.value(f"ZNAME{i}", "")).strip().upper() == "SCALE":
                return float(info.value(f"ZVAL{i}", 0) or 0) > 0
    return False


def _check_zdatasum(path: str, hdu: HduResult) -> None:
    """ZDATASUM is the sum of the original image: decompress the tiles and
    compare (lossless compression only; lossy tiles cannot give it back)."""
    if hdu.zdatasum == ABSENT:
        return
    if _is_lossy(hdu.info):
        hdu.zdatasum = UNCHECKED
        return
    try:
        image_sum = _decompressed_sum(path, hdu.index)
    except Exception as exc:  # astropy raises many kinds on damaged tiles
        hdu.zdatasum = BAD
        hdu.problems.append(Problem(BROKEN, "tile-corrupt", f"HDU {hdu.index}: tiles do not decompress: {exc}".splitlines()[0], hdu.offset))
        return
    if datasum_ok(hdu.info.value("ZDATASUM"), image_sum):
        hdu.zdatasum = OK
    else:
        hdu.zdatasum = BAD
        hdu.problems.append(
            Problem(BROKEN, "zdatasum-bad", f"HDU {hdu.index}: ZDATASUM is {hdu.info.value('ZDATASUM')!r}, the decompressed image sums to {image_sum}", hdu.offset)
        )


def _decompressed_sum(path: str, index: int) -> int:
    import numpy as np
    from astropy.io import fits as afits

    with afits.open(path, memmap=False, do_not_scale_image_data=True) as hdul:
        data = hdul[index].data
        if data is None:
            return 0
        big_endian = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder(">"))
        return datasum(big_endian.reshape(-1).view(np.uint8))


# ---------------------------------------------------------------------------
# Checking a stream (bytes in flight during a mirror)
# ---------------------------------------------------------------------------


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
        kind = _format_of(self.name, head[: len(fits.FITS_MAGIC)])
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
            report = _misnamed_gzip_report()
        elif self._gz is not None:
            report = _gzip_report(self._gz, self._walker)
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


# ---------------------------------------------------------------------------
# For the sync engine and the manifest writer
# ---------------------------------------------------------------------------


def quick_state(path: str) -> tuple[str, str]:
    """("ok" | "incomplete" | "broken" | "not-fits", reason) of a local file.

    Reads the headers of a plain file, and its data only for HDUs with
    CHECKSUM/DATASUM; decompresses a .gz once. For the sync engine: an
    incomplete source is skipped, a broken or incomplete destination copy is
    corrupt and repaired."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(fits.FITS_MAGIC))
    except OSError as exc:
        return STATUS_BROKEN, f"cannot read {path}: {exc.strerror}"
    if not is_fits_candidate(os.path.basename(path), head):
        return STATUS_NOT_FITS, ""
    report = check_file(path, mapped=False)  # a source may shrink under us
    if report.status == STATUS_OK:
        return STATUS_OK, "checksum absent" if report.checksums == ABSENT else ""
    return report.status, report.first_problem()


def plain_structure_state(read_at, size: int) -> tuple[str, str]:
    """Like quick_state, for an uncompressed FITS file read through
    ``read_at(offset, length)`` (a remote file): headers only, no data unit
    is read, so it costs a few kilobytes whatever the file's size."""
    report = _walked_report(size, read_at, skip_data=True)
    return report.status, report.first_problem()


def audit_and_digest(path: str, display_path: str | None = None, algo: str = "blake3",
                     hasher=None) -> tuple[FileReport | None, str]:
    """One read of a local file for ``audit --manifest --fits``: its digest
    and, for a FITS candidate, its FITS report (None for other files).
    ``hasher`` (a hashes.TeeHasher) takes the place of ``algo``'s."""
    from fitsync import hashes

    with open(path, "rb") as f:
        head = f.read(len(fits.FITS_MAGIC))
    if not is_fits_candidate(os.path.basename(path), head):
        if hasher is None:
            return None, hashes.file_digest(path, algo)
        hashes.hash_file_into(path, hasher)
        return None, hasher.hexdigest()
    hasher = hasher if hasher is not None else hashes.new_hasher(algo)
    report = check_file(path, hasher=hasher, display_path=display_path)
    return report, hasher.hexdigest()


def manifest_fields(report: FileReport) -> dict:
    """The FITS record a manifest keeps for a file: how many HDUs, each HDU's
    CHECKSUM and DATASUM status, so a later audit can tell a file that never
    had checksums from one that lost them."""
    return {
        "state": report.status,
        "hdus": len(report.hdus),
        "checksum": [h.checksum for h in report.hdus],
        "datasum": [h.datasum for h in report.hdus],
    }


def fits_manifest_fields(path: str) -> dict:
    return manifest_fields(check_file(path))


def manifest_regressions(recorded: dict, report: FileReport) -> list[str]:
    """What changed for the worse since a manifest recorded ``recorded``
    (as made by ``manifest_fields``): lost HDUs, lost checksum keywords."""
    now = manifest_fields(report)
    found = []
    if recorded.get("hdus") != now["hdus"]:
        found.append(f"{report.path}: had {recorded.get('hdus')} HDUs, now {now['hdus']}")
    for key in ("checksum", "datasum"):
        for index, (before, after) in enumerate(zip(recorded.get(key) or [], now[key])):
            if before != ABSENT and after == ABSENT:
                found.append(f"{report.path}: HDU {index} lost its {key.upper()} keyword")
    return found


# ---------------------------------------------------------------------------
# Auditing a tree
# ---------------------------------------------------------------------------


def iter_fits_files(root: str) -> Iterator[str]:
    """Relative POSIX paths of FITS candidates under ``root``, sorted,
    without following symlinks and without fitsync's state directory."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != STATE_DIR]
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            rel = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
            if is_fits_candidate(name, b"") or _starts_like_fits(full):
                yield rel


def _starts_like_fits(full: str) -> bool:
    try:
        with open(full, "rb") as f:
            return f.read(len(fits.FITS_MAGIC)) == fits.FITS_MAGIC
    except OSError:
        return False


def _check_under(root: str, rel: str) -> FileReport:
    full = join_under(root, rel)
    try:
        return check_file(full, display_path=rel)
    except NotFound as exc:
        return FileReport(rel, 0, None, [], [Problem(BROKEN, "unreadable", str(exc))])


def audit_tree(root: str, paths: Iterable[str] | None = None, jobs: int | None = None) -> list[FileReport]:
    """Check every FITS file under ``root`` (or just ``paths``, relative to
    it, e.g. a manifest's entries), ``jobs`` files at a time."""
    if os.path.isfile(root):
        return [check_file(root, display_path=os.path.basename(root))]
    if not os.path.isdir(root):
        raise NotFound(f"{root}: no such directory; give the tree to audit")
    if paths is None:
        selected = list(iter_fits_files(root))
    else:
        selected = sorted({safe_relpath(p) for p in paths})
        selected = [p for p in selected if is_fits_candidate(p, b"") or _starts_like_fits(join_under(root, p))]
    workers = max(1, jobs or min(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda rel: _check_under(root, rel), selected))


def printable(path: str) -> str:
    """A path as printed: control characters escaped (fitsync.paths.shown)."""
    from fitsync.paths import shown

    return shown(path)


def format_table(reports: list[FileReport]) -> str:
    """One line per file (status, HDUs, checksums, path); the problems of
    files that are not ok below them; a summary line."""
    lines = [f"{'STATUS':<11} {'HDUS':>4}  {'CHECKSUMS':<9}  PATH"]
    for report in reports:
        lines.append(f"{report.status:<11} {len(report.hdus):>4}  {report.checksums:<9}  {printable(report.path)}")
        for problem in report.all_problems:
            if report.status != STATUS_OK or problem.severity == WARNING:
                lines.append(f"{'':<11}   {problem.severity}: {problem.message}")
    lines.append(summary_line(reports))
    return "\n".join(lines)


def summary_line(reports: list[FileReport]) -> str:
    count = {s: 0 for s in (STATUS_OK, STATUS_INCOMPLETE, STATUS_BROKEN)}
    for report in reports:
        count[report.status] += 1
    absent = sum(1 for r in reports if r.checksums == ABSENT)
    return (
        f"{len(reports)} FITS file(s): {count[STATUS_OK]} ok, {count[STATUS_BROKEN]} broken, "
        f"{count[STATUS_INCOMPLETE]} incomplete; {absent} without CHECKSUM/DATASUM (not a failure)"
    )


def exit_code(reports: list[FileReport]) -> int:
    """0 when every file is ok, 1 when any is broken or incomplete."""
    return 0 if all(r.status == STATUS_OK for r in reports) else 1


def run_fits_audit(target_root: str, json_out: bool, out=sys.stdout, jobs: int | None = None) -> int:
    """``fitsync audit TARGET --fits``: audit, print a table (or JSON), and
    return the exit code (0 clean, 1 a file is broken or incomplete)."""
    reports = audit_tree(target_root, jobs=jobs)
    if json_out:
        document = {
            "target": target_root,
            "summary": {s: sum(1 for r in reports if r.status == s) for s in (STATUS_OK, STATUS_BROKEN, STATUS_INCOMPLETE)},
            "files": [r.to_dict() for r in reports],
        }
        out.write(json.dumps(document, indent=1, sort_keys=True) + "\n")
    else:
        out.write(format_table(reports) + "\n")
    return exit_code(reports)
