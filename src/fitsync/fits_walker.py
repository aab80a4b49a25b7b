"""The FITS walker: every byte of a FITS stream, in order, once. Fed the bytes
of a file as they come (a local file, a .fits.gz stream, a mirror transfer),
it reports every HDU with its structure problems and CHECKSUM/DATASUM status
(fitsaudit.py); the rules it applies are fits.py's."""

from __future__ import annotations

from dataclasses import dataclass, field

from fitsync.fitsnames import FITS_MAGIC
from fitsync.checksum import DataSum
from fitsync.fits import (ABSENT, BAD, BLOCK, BROKEN, CARD, INCOMPLETE, MAX_ILLEGAL_HEADER_BYTES, UNCHECKED,
                          WARNING, XTENSION_MAGIC, checksum_status, count_illegal, datasum_status,
                          describe_header, find_end_card, first_illegal, first_other, header_problem,
                          HeaderInfo, padded, parse_value, Problem, split_card)


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
        self._illegal += count_illegal(record)
        end = find_end_card(record)
        if end is not None:
            self._finish_header(len(self._header) - BLOCK + end, start + BLOCK)
        elif self._illegal > MAX_ILLEGAL_HEADER_BYTES:
            first = self._header_start + first_illegal(bytes(self._header))
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
        illegal = count_illegal(partial)
        if illegal:
            first = start + first_illegal(partial)
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
                self.first_odd = offset + first_other(data, self.fill)

    def problems(self, index: int) -> list[Problem]:
        if not self.odd:
            return []
        if not self.not_other:
            return [Problem(WARNING, "padding", f"HDU {index}: data unit is padded with {self.other:#04x} bytes instead of {self.fill:#04x}", self.first_odd)]
        return [Problem(BROKEN, "padding", f"HDU {index}: {self.odd} unexpected byte(s) in the data padding, first at offset {self.first_odd}", self.first_odd)]
