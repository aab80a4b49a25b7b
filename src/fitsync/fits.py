"""FITS structure: walking HDUs from their headers, and checking them.

A FITS file is a sequence of HDUs; each is a header of 2880-byte records of
80-character cards ending with an END card, then a data unit padded to a
multiple of 2880 bytes whose size follows from BITPIX, NAXISn, PCOUNT and
GCOUNT (FITS 4.0, section 4.4.1).

Two readers live here:

- ``walk_hdus`` / ``segment_boundaries`` read only the headers of a complete
  file through a ``read_at`` callback (used by the FITS-aware block layout).
- ``HduWalker`` is fed the bytes of a file in order, once, and reports every
  HDU with its structure problems and CHECKSUM/DATASUM status (used by
  ``fitsync.fitsaudit`` for files, ``.fits.gz`` streams and mirror transfers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from fitsync.fitsnames import FITS_MAGIC, FITS_SUFFIXES, looks_like_fits  # noqa: F401 (re-exported)
from fitsync.checksum import DataSum, checksum_ok, datasum, datasum_ok

BLOCK = 2880
CARD = 80
XTENSION_MAGIC = b"XTENSION="
END_KEYWORD = b"END     "

# FITS 4.0 section 4.1.1: a header holds only ASCII text 0x20-0x7E.
HEADER_TEXT = bytes(range(0x20, 0x7F))
# Beyond this many illegal bytes in one header we stop reading it as cards:
# it is no longer a damaged header but binary data (a lost END card).
MAX_ILLEGAL_HEADER_BYTES = CARD
VALID_BITPIX = (8, 16, 32, 64, -32, -64)
# Keyword field: upper-case letters, digits, hyphen, underscore, left-justified.
KEYWORD_RE = re.compile(rb"[A-Z0-9_-]* *\Z")

ReadAt = Callable[[int, int], bytes]

# Severities of a problem, from worst.
BROKEN = "broken"  # the bytes are damaged
INCOMPLETE = "incomplete"  # the bytes stop early: a file still being written, or cut
WARNING = "warning"  # not FITS-conforming, but how a writer may have made it

# Per-HDU checksum statuses.
OK = "ok"
BAD = "bad"
ABSENT = "absent"
UNCHECKED = "unchecked"  # present but not verifiable here (truncated HDU, lossy tiles)


@dataclass(frozen=True)
class HduSpan:
    """Where one HDU's header and data unit lie in the file."""

    header_offset: int
    header_size: int  # bytes, a multiple of 2880
    data_size: int  # bytes of data as the keywords give it, before padding
    cards: tuple  # (keyword, raw value string) pairs, in order

    @property
    def data_offset(self) -> int:
        return self.header_offset + self.header_size

    @property
    def padded_data_size(self) -> int:
        return padded(self.data_size)

    @property
    def end_offset(self) -> int:
        return self.data_offset + self.padded_data_size


class FitsStructureError(ValueError):
    """The bytes are not a complete, well-formed FITS file."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file or an HDU."""

    severity: str  # BROKEN, INCOMPLETE or WARNING
    kind: str  # short stable name, e.g. "truncated", "datasum-bad"
    message: str  # one line for people
    offset: int | None = None  # byte offset in the (decompressed) FITS stream
    missing_bytes: int | None = None  # for truncations: how many bytes are missing

    def to_dict(self) -> dict:
        record = {"severity": self.severity, "kind": self.kind, "message": self.message}
        if self.offset is not None:
            record["offset"] = self.offset
        if self.missing_bytes is not None:
            record["missing_bytes"] = self.missing_bytes
        return record


def padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def parse_value(raw: str):
    """Integer, float, bool or string value of a card's value field."""
    text = raw.split("/", 1)[0].strip() if not raw.strip().startswith("'") else raw.strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        while end != -1 and end + 1 < len(text) and text[end + 1] == "'":
            end = text.find("'", end + 2)
        return text[1:end].replace("''", "'").rstrip() if end != -1 else text[1:]
    if text in ("T", "F"):
        return text == "T"
    try:
        return int(text)
    except ValueError:
        try:
            return float(text.replace("D", "E"))
        except ValueError:
            return text


def split_card(card: bytes) -> tuple[str, str | None]:
    """(keyword, raw value text or None) of one 80-byte card."""
    text = card.decode("ascii", "replace")
    keyword = text[:8].rstrip()
    return keyword, (text[10:] if text[8:10] == "= " else None)


def read_header(read_at: ReadAt, offset: int, file_size: int) -> tuple[list, int]:
    """Read cards from ``offset`` up to END; return (cards, header_size)."""
    cards = []
    pos = offset
    while True:
        if pos + BLOCK > file_size:
            raise FitsStructureError(
                f"header at offset {offset} is truncated: {pos + BLOCK - file_size} bytes missing"
            )
        record = read_at(pos, BLOCK)
        if len(record) < BLOCK:
            raise FitsStructureError(f"header at offset {offset} is truncated")
        pos += BLOCK
        for i in range(0, BLOCK, CARD):
            card = record[i : i + CARD]
            if card[:8] == END_KEYWORD:
                return cards, pos - offset
            cards.append(split_card(card))


def data_size(cards) -> int:
    """Data unit size in bytes from BITPIX, NAXISn, PCOUNT and GCOUNT."""
    values = {}
    for keyword, raw in cards:
        if raw is not None and keyword not in values:
            values[keyword] = raw
    try:
        bitpix = int(parse_value(values["BITPIX"]))
        naxis = int(parse_value(values["NAXIS"]))
    except (KeyError, ValueError, TypeError, OverflowError):
        raise FitsStructureError("header lacks a valid BITPIX or NAXIS") from None
    if bitpix not in VALID_BITPIX:
        raise FitsStructureError(f"BITPIX = {bitpix} is not a FITS value")
    if not 0 <= naxis <= 999:
        raise FitsStructureError(f"NAXIS = {naxis} is out of range")
    if naxis == 0:
        return 0
    try:
        dims = [int(parse_value(values[f"NAXIS{i}"])) for i in range(1, naxis + 1)]
        pcount = int(parse_value(values.get("PCOUNT", "0")) or 0)
        gcount = int(parse_value(values.get("GCOUNT", "1")) or 1)
    except (KeyError, ValueError, TypeError, OverflowError):
        raise FitsStructureError("header lacks a valid NAXISn, PCOUNT or GCOUNT keyword") from None
    if min(dims) < 0 or pcount < 0 or gcount < 0:
        raise FitsStructureError("header has a negative NAXISn, PCOUNT or GCOUNT")
    # Random groups (NAXIS1 = 0 with GROUPS = T) skip the first axis.
    if dims and dims[0] == 0 and naxis > 1:
        dims = dims[1:]
    product = 1
    for d in dims:
        product *= d
    return abs(bitpix) // 8 * gcount * (pcount + product)


def walk_hdus(read_at: ReadAt, file_size: int) -> list[HduSpan]:
    """Every HDU of a complete FITS file; raise FitsStructureError on damage."""
    spans = []
    offset = 0
    while offset < file_size:
        cards, header_size = read_header(read_at, offset, file_size)
        span = HduSpan(offset, header_size, data_size(cards), tuple(cards))
        if span.end_offset > file_size:
            raise FitsStructureError(
                f"data unit at offset {span.data_offset} is truncated: "
                f"{span.end_offset - file_size} bytes missing"
            )
        spans.append(span)
        offset = span.end_offset
    return spans


def segment_boundaries(read_at: ReadAt, file_size: int) -> list[int]:
    """Offsets where the FITS-aware block layout restarts: every header and
    every data unit start. A damaged or non-FITS file gives ``[0]`` (the fixed
    layout)."""
    if file_size < BLOCK or not read_at(0, len(FITS_MAGIC)) == FITS_MAGIC:
        return [0]
    try:
        spans = walk_hdus(read_at, file_size)
    except FitsStructureError:
        return [0]
    bounds = []
    for span in spans:
        bounds.append(span.header_offset)
        if span.padded_data_size:
            bounds.append(span.data_offset)
    return bounds


# ---------------------------------------------------------------------------
# Checking a header once all its records are in
# ---------------------------------------------------------------------------


def _first_illegal(data: bytes) -> int:
    """Index of the first byte outside HEADER_TEXT (data must contain one)."""
    bad = data.translate(None, HEADER_TEXT)[0]
    return data.index(bad)


def _count_illegal(data: bytes) -> int:
    return len(data.translate(None, HEADER_TEXT))


@dataclass
class HeaderInfo:
    """What a complete header says, and what is wrong with it."""

    offset: int
    index: int  # position of the HDU in the file
    header: bytes  # every record, END card and fill included
    cards: list  # (keyword, raw value) before END
    values: dict  # first occurrence of each keyword with a value
    data_size: int | None  # None when the keywords cannot size the data unit
    problems: list = field(default_factory=list)

    def value(self, keyword: str, default=None):
        raw = self.values.get(keyword)
        return default if raw is None else parse_value(raw)

    @property
    def kind(self) -> str:
        if "XTENSION" in self.values:
            return str(self.value("XTENSION")).strip() or "?"
        return "PRIMARY"

    @property
    def name(self) -> str:
        return str(self.value("EXTNAME", "")).strip()

    @property
    def has_sums(self) -> bool:
        return "CHECKSUM" in self.values or "DATASUM" in self.values


def describe_header(header: bytes, end_card: int, offset: int, index: int) -> HeaderInfo:
    """Cards, data size and problems of a header whose END card starts at
    byte ``end_card`` of ``header``."""
    cards = [split_card(header[i : i + CARD]) for i in range(0, end_card, CARD)]
    values: dict = {}
    for keyword, raw in cards:
        if raw is not None and keyword not in values:
            values[keyword] = raw
    info = HeaderInfo(offset, index, header, cards, values, None)
    problems = info.problems
    expected = "SIMPLE" if index == 0 else "XTENSION"
    if not cards or cards[0][0] != expected:
        problems.append(Problem(BROKEN, "bad-header", f"HDU {index} at offset {offset}: first keyword is not {expected}", offset))
    cards_part = header[: end_card + 8]  # the fill after END is judged by its own rule
    illegal = _count_illegal(cards_part)
    if illegal:
        first = offset + _first_illegal(cards_part)
        problems.append(
            Problem(BROKEN, "illegal-chars", f"HDU {index}: {illegal} illegal (non-ASCII-text) byte(s) in the header, first at offset {first}", first)
        )
    problems.extend(_fill_problems(header, end_card, offset, index))
    problems.extend(_keyword_problems(header[:end_card], offset, index))
    try:
        info.data_size = data_size(cards)
    except FitsStructureError as exc:
        problems.append(Problem(BROKEN, "bad-header", f"HDU {index} at offset {offset}: {exc}", offset))
    return info


def _fill_problems(header: bytes, end_card: int, offset: int, index: int) -> list[Problem]:
    """The END card is blank after "END", and so is the rest of its record.
    A record filled with NULs after the END card is a known writer bug
    (astropy warns about it too); anything mixed is damage."""
    end_rest = header[end_card + 8 : end_card + CARD]
    after = header[end_card + CARD :]
    if end_rest.strip(b" "):
        first = offset + end_card + 8 + _first_other(end_rest, 0x20)
    elif after.strip(b" ") and after.strip(b"\0"):
        usual = 0 if after.count(0) * 2 > len(after) else 0x20
        first = offset + end_card + CARD + _first_other(after, usual)
    elif after.strip(b" "):
        return [Problem(WARNING, "header-fill", f"HDU {index}: header is padded with NUL bytes instead of blanks after END", offset + end_card + CARD)]
    else:
        return []
    return [Problem(BROKEN, "header-fill", f"HDU {index}: unexpected byte after the END card at offset {first}", first)]


def _first_other(data: bytes, expected: int) -> int:
    """Index of the first byte of ``data`` that is not ``expected``."""
    return next(i for i, b in enumerate(data) if b != expected)


def _keyword_problems(cards_bytes: bytes, offset: int, index: int) -> list[Problem]:
    """Keywords must be upper case letters, digits, '-' and '_'. Some old
    writers break this, so it is only a warning; bytes that are not text at
    all are already reported as illegal characters."""
    for i in range(0, len(cards_bytes), CARD):
        keyword = cards_bytes[i : i + 8]
        if not KEYWORD_RE.match(keyword) and not _count_illegal(keyword):
            return [
                Problem(WARNING, "keyword", f"HDU {index}: keyword {keyword.decode('ascii').rstrip()!r} at offset {offset + i} is not a valid FITS keyword", offset + i)
            ]
    return []


def find_end_card(record: bytes) -> int | None:
    """Byte index of the END card in one 2880-byte record, or None."""
    start = 0
    while True:
        at = record.find(END_KEYWORD, start)
        if at < 0:
            return None
        if at % CARD == 0:
            return at
        start = at + 1


# ---------------------------------------------------------------------------
# Verifying CHECKSUM and DATASUM
# ---------------------------------------------------------------------------


def recorded_datasum(info: HeaderInfo) -> int | None:
    """The DATASUM keyword's value as a number, or None (absent, not a number)."""
    try:
        return int(str(info.value("DATASUM")).strip()) if "DATASUM" in info.values else None
    except ValueError:
        return None


def header_problem(info: HeaderInfo) -> Problem | None:
    """Check the header alone, before any data is read: CHECKSUM was made
    from the header and the data sum that DATASUM records, so the header plus
    DATASUM must sum to -0. This catches a changed header even when the data
    unit is cut short (a changed NAXIS2 looks like a truncation otherwise)."""
    recorded = recorded_datasum(info)
    if "CHECKSUM" not in info.values or recorded is None:
        return None
    if checksum_ok(datasum(info.header), recorded):
        return None
    return Problem(BROKEN, "checksum-bad", f"HDU {info.index}: the header was changed (offset {info.offset}): its CHECKSUM does not match the header and DATASUM", info.offset)


def datasum_status(info: HeaderInfo, data_sum: int) -> tuple[str, Problem | None]:
    """DATASUM holds the ones'-complement sum of the data unit as a decimal string."""
    if "DATASUM" not in info.values:
        return ABSENT, None
    recorded = info.value("DATASUM")
    if datasum_ok(recorded, data_sum):
        return OK, None
    return BAD, Problem(
        BROKEN, "datasum-bad", f"HDU {info.index}: the data was changed: DATASUM is {recorded!r}, the data unit at offset {info.offset + len(info.header)} sums to {data_sum}", info.offset
    )


def checksum_status(info: HeaderInfo, data_sum: int) -> tuple[str, Problem | None]:
    """CHECKSUM is right when the whole HDU, header included, sums to -0."""
    if "CHECKSUM" not in info.values:
        return ABSENT, None
    if checksum_ok(datasum(info.header), data_sum):
        return OK, None
    return BAD, Problem(BROKEN, "checksum-bad", f"HDU {info.index}: CHECKSUM does not match the bytes of the HDU at offset {info.offset}", info.offset)


# ---------------------------------------------------------------------------
# The walker: every byte of a FITS stream, in order, once
# ---------------------------------------------------------------------------


@dataclass
class HduResult:
    index: int
    offset: int
    header_size: int = 0
    data_size: int | None = None
    kind: str = "?"
    name: str = ""
    checksum: str = UNCHECKED
    datasum: str = UNCHECKED
    zhecksum: str = ABSENT
    zdatasum: str = ABSENT
    problems: list = field(default_factory=list)
    info: HeaderInfo | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "offset": self.offset,
            "type": self.kind,
            "name": self.name,
            "header_size": self.header_size,
            "data_size": self.data_size,
            "checksum": self.checksum,
            "datasum": self.datasum,
            "zhecksum": self.zhecksum,
            "zdatasum": self.zdatasum,
            "problems": [p.to_dict() for p in self.problems],
        }


# Walker states
_HEADER, _DATA, _TRAILING, _LOST = "header", "data", "trailing", "lost"
# A header longer than this without an END card is not a header.
MAX_HEADER_BYTES = 64 << 20


def is_prefix_of(data: bytes, magic: bytes) -> bool:
    n = min(len(data), len(magic))
    return data[:n] == magic[:n]


class HduWalker:
    """Checks a FITS byte stream fed in order with ``feed``; ``finish`` gives
    the per-HDU results and the file-level problems.

    Data bytes of an HDU without CHECKSUM/DATASUM are not needed except for
    the padding, so a reader with random access may ``skip`` them (see
    ``skippable``): a plain file without checksums costs only its headers.
    """

    def __init__(self):
        self.pos = 0  # offset of the next byte
        self.state = _HEADER
        self.hdus: list[HduResult] = []
        self.problems: list[Problem] = []
        self._record = bytearray()  # header record being assembled
        self._record_start = 0
        self._header = bytearray()  # complete records of the header being read
        self._header_start = 0
        self._illegal = 0
        self._hdu: HduResult | None = None  # HDU whose data unit is being read
        self._data_end = 0
        self._padding_start = 0
        self._padding = _PaddingCheck(0)
        self._sum: DataSum | None = None
        self._trailing_start = 0
        self._probe = bytearray()  # first bytes of a record while resynchronising

    # -- driving -------------------------------------------------------
    def skippable(self) -> int:
        """How many of the next bytes the walker does not need to see: data
        of an HDU without checksums, up to its padding."""
        if self.state != _DATA or self._sum is not None:
            return 0
        return max(0, self._padding_start - self.pos)

    def wants(self) -> int:
        """How many bytes complete the current header record or data unit
        (0 when any amount will do)."""
        if self.state == _DATA:
            return self._data_end - self.pos
        if self.state == _HEADER:
            return BLOCK - len(self._record)
        return 0

    def skip(self, n: int) -> None:
        if not 0 <= n <= self.skippable():
            raise ValueError(f"cannot skip {n} bytes here")
        self.pos += n
        if self.pos == self._data_end:
            self._close_hdu()

    def feed(self, data) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            taken = self._step(view)
            view = view[taken:]
            self.pos += taken

    def _step(self, view: memoryview) -> int:
        if self.state == _DATA:
            return self._take_data(view)
        if self.state == _HEADER:
            return self._take_header(view)
        if self.state == _LOST:
            return self._take_lost(view)
        return len(view)  # trailing bytes: only counted

    # -- headers -------------------------------------------------------
    def _take_header(self, view: memoryview) -> int:
        if not self._record:
            self._record_start = self.pos
        take = min(BLOCK - len(self._record), len(view))
        self._record += view[:take]
        if self.hdus and not self._header and not is_prefix_of(self._record, XTENSION_MAGIC):
            self._begin_trailing(self._record_start)
        elif len(self._record) == BLOCK:
            record = bytes(self._record)
            self._record.clear()
            self._add_record(record, self._record_start)
        return take

    def _add_record(self, record: bytes, start: int) -> None:
        if self._header and record.startswith(XTENSION_MAGIC):
            self._abandon_header(f"has no END card before the next HDU at offset {start}")
        if not self._header:
            self._header_start = start
            self._illegal = 0
        self._header += record
        self._illegal += _count_illegal(record)
        end = find_end_card(record)
        if end is not None:
            self._finish_header(len(self._header) - BLOCK + end, start + BLOCK)
        elif self._illegal > MAX_ILLEGAL_HEADER_BYTES:
            first = self._header_start + _first_illegal(bytes(self._header))
            self._abandon_header(f"has no END card: it runs into non-text bytes at offset {first}")
            self.state = _LOST
        elif len(self._header) > MAX_HEADER_BYTES:
            self._abandon_header(f"has no END card in its first {MAX_HEADER_BYTES} bytes")
            self.state = _LOST

    def _abandon_header(self, reason: str) -> None:
        header = bytes(self._header)
        self._header.clear()
        index = len(self.hdus)
        hdu = HduResult(index, self._header_start, len(header))
        hdu.kind = str(parse_value(split_card(header[:CARD])[1])).strip() if header.startswith(XTENSION_MAGIC) else "PRIMARY"
        if index == 0 and not header.startswith(FITS_MAGIC):
            hdu.problems.append(Problem(BROKEN, "not-fits", "does not start with 'SIMPLE  =': not a FITS file", 0))
        else:
            hdu.problems.append(Problem(BROKEN, "missing-end", f"HDU {index}: header at offset {self._header_start} {reason}", self._header_start))
        self.hdus.append(hdu)

    def _finish_header(self, end_card: int, data_start: int) -> None:
        header = bytes(self._header)
        self._header.clear()
        index = len(self.hdus)
        info = describe_header(header, end_card, self._header_start, index)
        hdu = HduResult(index, self._header_start, len(header), info.data_size, info.kind, info.name, problems=list(info.problems), info=info)
        self.hdus.append(hdu)
        changed_header = header_problem(info)
        if changed_header is not None:
            hdu.problems.append(changed_header)
            hdu.checksum = BAD
        if info.data_size is None:  # cannot tell where the next HDU starts
            if hdu.checksum != BAD:
                hdu.checksum = UNCHECKED if "CHECKSUM" in info.values else ABSENT
            hdu.datasum = UNCHECKED if "DATASUM" in info.values else ABSENT
            self.state = _LOST
            return
        self._hdu = hdu
        self._padding_start = data_start + info.data_size
        self._data_end = data_start + padded(info.data_size)
        self._padding = _PaddingCheck(0x20 if hdu.kind == "TABLE" else 0)
        self._sum = DataSum() if info.has_sums else None
        if self._data_end == data_start:
            self._close_hdu()
        else:
            self.state = _DATA

    # -- data units ----------------------------------------------------
    def _take_data(self, view: memoryview) -> int:
        take = min(self._data_end - self.pos, len(view))
        piece = view[:take] if take < len(view) else view
        if self._sum is not None:
            self._sum.update(piece)
        into_padding = self._padding_start - self.pos
        if into_padding < take:
            start = max(into_padding, 0)
            self._padding.update(bytes(piece[start:]), self.pos + start)
        if self.pos + take == self._data_end:
            self._close_hdu()
        return take

    def _close_hdu(self) -> None:
        hdu, info = self._hdu, self._hdu.info
        hdu.problems.extend(self._padding.problems(hdu.index))
        if self._sum is not None:
            data_sum = self._sum.digest()
            hdu.datasum, bad_data = datasum_status(info, data_sum)
            header_known_bad = hdu.checksum == BAD
            hdu.checksum, bad_hdu = checksum_status(info, data_sum)
            # One finding per change: a changed header or changed data is
            # already named; a bad CHECKSUM then says nothing new.
            if bad_data is not None:
                hdu.problems.append(bad_data)
            elif bad_hdu is not None and not header_known_bad:
                hdu.problems.append(bad_hdu)
        else:
            hdu.checksum = hdu.datasum = ABSENT
        hdu.zhecksum = UNCHECKED if "ZHECKSUM" in info.values else ABSENT
        hdu.zdatasum = UNCHECKED if "ZDATASUM" in info.values else ABSENT
        self._hdu = None
        self._sum = None
        self.state = _HEADER

    # -- after the end, or after damage ------------------------------------
    def _begin_trailing(self, start: int) -> None:
        self.state = _TRAILING
        self._trailing_start = start
        self._record.clear()

    def _take_lost(self, view: memoryview) -> int:
        """Look for the next extension at a record boundary."""
        into = self.pos % BLOCK
        if into >= len(XTENSION_MAGIC):
            return min(BLOCK - into, len(view))
        if into == 0:
            self._probe.clear()
        take = min(len(XTENSION_MAGIC) - into, len(view))
        self._probe += view[:take]
        if bytes(self._probe) == XTENSION_MAGIC:
            self.state = _HEADER
            self._record = bytearray(self._probe)
            self._record_start = self.pos - into
        return take

    def finish(self) -> tuple[list[HduResult], list[Problem]]:
        """Results once every byte has been fed (or skipped)."""
        if self.state == _DATA:
            self._report_short_data()
        elif self.state == _HEADER and (self._header or self._record):
            self._report_short_header()
        elif self.state == _HEADER and not self.hdus:
            self.problems.append(Problem(INCOMPLETE, "truncated", "empty file: no FITS header yet", 0, BLOCK))
        elif self.state == _TRAILING:
            count = self.pos - self._trailing_start
            self.problems.append(
                Problem(BROKEN, "trailing-bytes", f"{count} byte(s) after the last HDU, from offset {self._trailing_start}", self._trailing_start)
            )
        return self.hdus, self.problems

    def _report_short_data(self) -> None:
        hdu = self._hdu
        missing = self._data_end - self.pos
        what = "padding of the data unit" if self.pos >= self._padding_start else "data unit"
        hdu.problems.append(
            Problem(INCOMPLETE, "truncated", f"HDU {hdu.index}: {what} is truncated at offset {self.pos}: {missing} bytes missing", self.pos, missing)
        )
        hdu.problems.extend(self._padding.problems(hdu.index))
        if hdu.checksum != BAD:
            hdu.checksum = UNCHECKED if "CHECKSUM" in hdu.info.values else ABSENT
        hdu.datasum = UNCHECKED if "DATASUM" in hdu.info.values else ABSENT

    def _report_short_header(self) -> None:
        start = self._header_start if self._header else self._record_start
        partial = bytes(self._header) + bytes(self._record)
        index = len(self.hdus)
        hdu = HduResult(index, start, len(partial))
        missing = BLOCK - len(self._record) if self._record else BLOCK
        hdu.problems.append(
            Problem(INCOMPLETE, "truncated", f"HDU {index}: header at offset {start} is truncated: at least {missing} bytes missing", self.pos, missing)
        )
        illegal = _count_illegal(partial)
        if illegal:
            first = start + _first_illegal(partial)
            hdu.problems.append(Problem(BROKEN, "illegal-chars", f"HDU {index}: {illegal} illegal byte(s) in the header, first at offset {first}", first))
        if index == 0 and not is_prefix_of(partial, FITS_MAGIC):
            hdu.problems.append(Problem(BROKEN, "not-fits", "does not start with 'SIMPLE  =': not a FITS file", 0))
        self.hdus.append(hdu)


class _PaddingCheck:
    """The fill after the data must be zeros (blanks in ASCII tables). A unit
    padded entirely with the other fill byte is a writer's quirk; a mixture
    means the bytes changed."""

    def __init__(self, fill: int):
        self.fill = fill
        self.other = 0x20 if fill == 0 else 0
        self.odd = 0  # bytes that are not the expected fill
        self.not_other = 0  # bytes that are not the other fill either
        self.first_odd: int | None = None

    def update(self, data: bytes, offset: int) -> None:
        odd = len(data.translate(None, bytes([self.fill])))
        self.not_other += len(data.translate(None, bytes([self.other])))
        if odd:
            self.odd += odd
            if self.first_odd is None:
                self.first_odd = offset + _first_other(data, self.fill)

    def problems(self, index: int) -> list[Problem]:
        if not self.odd:
            return []
        if not self.not_other:
            return [Problem(WARNING, "padding", f"HDU {index}: data unit is padded with {self.other:#04x} bytes instead of {self.fill:#04x}", self.first_odd)]
        return [Problem(BROKEN, "padding", f"HDU {index}: {self.odd} unexpected byte(s) in the data padding, first at offset {self.first_odd}", self.first_odd)]

