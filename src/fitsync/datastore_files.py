"""Small files of a data store read from any remote, bounded: the HDU and
observation index tables (FITS, gzipped or not) and master.json."""

from __future__ import annotations

import gzip
import io
import logging
import zlib

from fitsync.errors import BadInput, FitsyncError, NotFound
from fitsync.remotes.base import Remote

log = logging.getLogger("fitsync")

MASTER_JSON = "master.json"
DEFAULT_INDEXES = ("hdu-index.fits.gz", "obs-index.fits.gz")
# Where files that live outside the store root (allowed with --allow-root)
# are put inside the destination, under the allowed root's name.
OUTSIDE_DIR = "_outside"
MAX_INDEX_BYTES = 512 << 20
COPY_CHUNK = 4 << 20


# -- reading remote files -----------------------------------------------------------


def read_bytes(remote: Remote, path: str, limit: int = MAX_INDEX_BYTES) -> bytes:
    entry = remote.stat(path)
    if entry.size > limit:
        raise BadInput(f"{path} is {entry.size} bytes, larger than an index file can be ({limit}); refusing it")
    parts, total = [], 0
    with remote.open_read(path) as f:
        # A raw reader may return short reads: read until end of file.
        for chunk in iter(lambda: f.read(COPY_CHUNK), b""):
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise BadInput(f"{path} grew past {limit} bytes while being read; refusing it")
    return b"".join(parts)


def exists_on(remote: Remote, path: str) -> bool:
    try:
        remote.stat(path)
        return True
    except NotFound:
        return False


def read_index_table(remote: Remote, path: str):
    """The first binary table of an index file as an astropy Table with str columns."""
    from astropy.io import fits
    from astropy.table import Table

    data = gunzip_bounded(read_bytes(remote, path), path)
    try:
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            tables = [h for h in hdul if isinstance(h, fits.BinTableHDU)]
            if not tables:
                raise BadInput(f"{path} has no binary table; it is not an index file")
            table = Table.read(tables[0], character_as_bytes=False)
    except FitsyncError:
        raise
    except Exception as exc:  # astropy raises many types on damaged input
        raise BadInput(f"{path} cannot be read as a FITS index table: {exc}") from None
    if "OBS_ID" not in table.colnames:
        raise BadInput(f"{path} has no OBS_ID column; it is not an HDU or observation index")
    return table


def gunzip_bounded(data: bytes, path: str, limit: int = 4 * MAX_INDEX_BYTES) -> bytes:
    """Uncompress gzip data (an index may be .fits.gz) without letting a
    hostile file expand past ``limit``."""
    if not data.startswith(b"\x1f\x8b"):
        return data
    inflater = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BadInput(f"{path} is not valid gzip data: {exc}") from None
    if len(out) > limit:
        raise BadInput(f"{path} expands past {limit} bytes; refusing it as an index file")
    return out


def table_bytes(table, gzip_it: bool) -> bytes:
    """Serialize ``table`` as a FITS file (primary HDU + the table), gzipped if asked."""
    from astropy.io import fits

    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(table)]).writeto(buffer, checksum=True)
    data = buffer.getvalue()
    return gzip.compress(data, mtime=0) if gzip_it else data
