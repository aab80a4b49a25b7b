"""Tile-compressed FITS (fpack, astropy): the table HDU's ZHECKSUM and
ZDATASUM checked against the image the tiles decompress to (fitsaudit.py)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fitsync import fits
from fitsync.checksum import checksum_ok, datasum, datasum_ok
from fitsync.fits import ABSENT, BAD, BROKEN, OK, UNCHECKED, WARNING, Problem
from fitsync.fits_walker import HduResult

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.fitsaudit import FileReport


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


def is_tile_compressed(hdu: HduResult) -> bool:
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


def check_tile_compressed(path: str, report: FileReport) -> None:
    for hdu in report.hdus:
        if is_tile_compressed(hdu) and not any(p.severity != WARNING for p in hdu.problems):
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
