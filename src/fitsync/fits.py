"""FITS structure: walking HDUs from their headers, and checking them.

A FITS file is a sequence of HDUs; each is a header of 2880-byte records of
80-character cards ending with an END card, then a data unit padded to a
multiple of 2880 bytes whose size follows from BITPIX, NAXISn, PCOUNT and
GCOUNT (FITS 4.0, section 4.4.1).

Two readers live here:

- ``walk_hdus`` / ``segment_boundaries`` read only the headers of a complete
  file through a ``read_at`` callback (used by the FITS-aware block layout).
- ``HduWalker`` (fits_walker.py) is fed the bytes of a file in order, once,
  and reports every HDU with its structure problems and CHECKSUM/DATASUM
  status (used by ``fitsync.fitsaudit`` for files, ``.fits.gz`` streams and
  mirror transfers), by the rules this module holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from fitsync.fitsnames import FITS_MAGIC, FITS_SUFFIXES, looks_like_fits  # noqa: F401 (re-exported)
from fitsync.checksum import checksum_ok, datasum, datasum_ok

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


def first_illegal(data: bytes) -> int:
    """Index of the first byte outside HEADER_TEXT (data must contain one)."""
    bad = data.translate(None, HEADER_TEXT)[0]
    return data.index(bad)


def count_illegal(data: bytes) -> int:
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
    illegal = count_illegal(cards_part)
    if illegal:
        first = offset + first_illegal(cards_part)
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
        first = offset + end_card + 8 + first_other(end_rest, 0x20)
    elif after.strip(b" ") and after.strip(b"\0"):
        usual = 0 if after.count(0) * 2 > len(after) else 0x20
        first = offset + end_card + CARD + first_other(after, usual)
    elif after.strip(b" "):
        return [Problem(WARNING, "header-fill", f"HDU {index}: header is padded with NUL bytes instead of blanks after END", offset + end_card + CARD)]
    else:
        return []
    return [Problem(BROKEN, "header-fill", f"HDU {index}: unexpected byte after the END card at offset {first}", first)]


def first_other(data: bytes, expected: int) -> int:
    """Index of the first byte of ``data`` that is not ``expected``."""
    return next(i for i, b in enumerate(data) if b != expected)


def _keyword_problems(cards_bytes: bytes, offset: int, index: int) -> list[Problem]:
    """Keywords must be upper case letters, digits, '-' and '_'. Some old
    writers break this, so it is only a warning; bytes that are not text at
    all are already reported as illegal characters."""
    for i in range(0, len(cards_bytes), CARD):
        keyword = cards_bytes[i : i + 8]
        if not KEYWORD_RE.match(keyword) and not count_illegal(keyword):
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
