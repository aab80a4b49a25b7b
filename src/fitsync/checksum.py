"""FITS DATASUM and CHECKSUM (FITS 4.0 appendix J).

The sum is the 32-bit ones'-complement sum of the bytes read as big-endian
32-bit words; a partial last word is padded with zero bytes. DATASUM is the
sum of a data unit, written as a decimal string. CHECKSUM is a 16-character
ASCII encoding of the complement of the sum of the whole HDU (header with
CHECKSUM = '0000000000000000', plus data), chosen so that the sum of the HDU
as written is -0 (0xFFFFFFFF). Values equal what astropy writes with
``checksum=True``; the sum runs in the compiled core at memory speed.
"""

from __future__ import annotations

from fitsync._native import fits_sum32

MASK32 = 0xFFFFFFFF
NEGATIVE_ZERO = MASK32  # the ones'-complement sum of an HDU with a valid CHECKSUM
ZERO_CHECKSUM = "0" * 16  # CHECKSUM's value while the header sum is computed

# Encoded characters avoid the punctuation between the digits and the letters.
_EXCLUDED = frozenset(range(0x3A, 0x41)) | frozenset(range(0x5B, 0x61))


def datasum(buffer, seed: int = 0) -> int:
    """Ones'-complement 32-bit sum of ``buffer`` (any bytes-like object) added
    to ``seed``. Chained calls give the sum of the concatenation as long as
    every piece before the last has a length that is a multiple of 4; use
    ``DataSum`` for arbitrary pieces."""
    return fits_sum32(_contiguous(buffer), seed & MASK32)


def add_sums(a: int, b: int) -> int:
    """Ones'-complement addition of two 32-bit sums (end-around carry)."""
    s = (a & MASK32) + (b & MASK32)
    return (s & MASK32) + (s >> 32)


class DataSum:
    """Incremental FITS sum over pieces of any length (a stream)."""

    def __init__(self, seed: int = 0):
        self.value = seed & MASK32
        self._pending = b""  # 0-3 bytes of an unfinished word

    def update(self, chunk) -> None:
        view = memoryview(chunk).cast("B")
        if self._pending:
            need = 4 - len(self._pending)
            head, view = bytes(view[:need]), view[need:]
            self._pending += head
            if len(self._pending) < 4:
                return
            self.value = fits_sum32(self._pending, self.value)
            self._pending = b""
        whole = len(view) - len(view) % 4
        if whole:
            self.value = fits_sum32(view[:whole], self.value)
        self._pending = bytes(view[whole:])

    def digest(self) -> int:
        """The sum so far, a partial last word padded with zeros."""
        if not self._pending:
            return self.value
        return fits_sum32(self._pending, self.value)


def encode_checksum(sum32: int, complement: bool = False) -> str:
    """The 16-character ASCII encoding of a 32-bit value (FITS 4.0 J.2).

    Pass the complement of the HDU sum (or ``complement=True``) to get the
    CHECKSUM value astropy writes."""
    value = sum32 & MASK32
    if complement:
        value = MASK32 - value
    columns = [_encode_byte((value >> (24 - 8 * i)) & 0xFF) for i in range(4)]
    # Interleave: character 4*j+i comes from byte i, then rotate right by one
    # because the string starts at column 12 of the card, one byte into a word.
    chars = [columns[i][j] for j in range(4) for i in range(4)]
    chars = chars[-1:] + chars[:-1]
    return bytes(chars).decode("ascii")


def _encode_byte(byte: int) -> list[int]:
    quotient = byte // 4 + ord("0")
    remainder = byte % 4
    ch = [quotient + remainder, quotient, quotient, quotient]
    changed = True
    while changed:
        changed = False
        for j in (0, 2):
            while ch[j] in _EXCLUDED or ch[j + 1] in _EXCLUDED:
                ch[j] += 1
                ch[j + 1] -= 1
                changed = True
    return ch


def decode_checksum(text: str) -> int:
    """Inverse of ``encode_checksum``: the 32-bit value a CHECKSUM string holds."""
    raw = text.encode("ascii")
    if len(raw) != 16:
        raise ValueError(f"a CHECKSUM value has 16 characters, not {len(raw)}")
    rotated = raw[1:] + raw[:1]
    value = 0
    for i in range(4):
        byte = sum(rotated[4 * j + i] - ord("0") for j in range(4))
        value |= (byte & 0xFF) << (24 - 8 * i)
    return value


def checksum_value(header_sum_with_zero_checksum: int, data_sum: int) -> str:
    """CHECKSUM for an HDU: ``header_sum_with_zero_checksum`` is the sum of
    the header bytes with CHECKSUM set to '0000000000000000' (and DATASUM
    already holding ``data_sum``)."""
    return encode_checksum(add_sums(header_sum_with_zero_checksum, data_sum), complement=True)


def checksum_of_hdu(header_bytes, data_sum: int) -> str:
    """CHECKSUM value for a header (as bytes, CHECKSUM zeroed) and its DATASUM."""
    return checksum_value(datasum(header_bytes), data_sum)


def checksum_ok(header_sum: int, data_sum: int) -> bool:
    """True when an HDU whose header (as written, CHECKSUM included) sums to
    ``header_sum`` and whose data sums to ``data_sum`` has a valid CHECKSUM:
    the whole HDU sums to -0."""
    return add_sums(header_sum, data_sum) in (NEGATIVE_ZERO, 0)


def datasum_ok(recorded: str | int, data_sum: int) -> bool:
    """True when a DATASUM keyword value (decimal string) equals ``data_sum``."""
    try:
        return int(str(recorded).strip()) == data_sum
    except ValueError:
        return False


def _contiguous(buffer):
    view = memoryview(buffer)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B") if view.c_contiguous else memoryview(bytes(view))
    return view
