"""Sparse files: a local source with holes is copied with holes, as
``rsync --sparse`` does, without reading the holes at all.

The data extents are found with ``SEEK_DATA``/``SEEK_HOLE`` and copied at
their offsets; the holes stay holes in the copy. The BLAKE3 of the file is
computed over the extents read and zeros fed for the holes (no page is
read for them), and the copy is checked the same way before it is renamed
into place: its extents re-read, its holes counted as zeros.
"""

from __future__ import annotations

import os

import blake3

from fitsync.errors import SourceChanged, VerificationFailed
from fitsync.holes import data_extents

CHUNK = 8 << 20
ZEROS = bytes(CHUNK)


def allocated_if_sparse(path: str, size: int) -> int | None:
    """The bytes ``path`` occupies when it holds at least a chunk of holes, else None."""
    if size < CHUNK:
        return None
    try:
        allocated = os.stat(path).st_blocks * 512
    except OSError:
        return None
    return allocated if allocated < size - CHUNK else None


def copy_sparse(source: str, out, size: int, on_bytes=None) -> str:
    """Copy the local file ``source`` (``size`` bytes) into the open writable
    file ``out`` with its holes; return the hex BLAKE3 of its content."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    done = 0
    with open(source, "rb") as src:
        fd = src.fileno()
        for offset, end in data_extents(fd, 0, size):
            _hash_zeros(hasher, offset - done)
            while offset < end:
                data = os.pread(fd, min(CHUNK, end - offset), offset)
                if not data:
                    raise SourceChanged(f"{source} shrank while it was copied")
                os.pwrite(out.fileno(), data, offset)
                hasher.update(data)
                offset += len(data)
                if on_bytes:
                    on_bytes(len(data))
            done = end
        _hash_zeros(hasher, size - done)
    out.truncate(size)  # the tail may be a hole
    return hasher.hexdigest()


def verify_sparse(path: str, size: int, expected: str, name: str) -> None:
    """The copy at ``path`` has ``size`` bytes whose BLAKE3 (holes as zeros) is ``expected``."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    done = 0
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size != size:
            raise VerificationFailed(f"{name}: the copy has {os.fstat(f.fileno()).st_size} bytes, expected {size}")
        for offset, end in data_extents(f.fileno(), 0, size):
            _hash_zeros(hasher, offset - done)
            while offset < end:
                data = os.pread(f.fileno(), min(CHUNK, end - offset), offset)
                hasher.update(data)
                offset += len(data)
            done = end
        _hash_zeros(hasher, size - done)
    if hasher.hexdigest() != expected:
        raise VerificationFailed(f"{name}: the copy does not match what was read from the source")


def _hash_zeros(hasher, count: int) -> None:
    while count > 0:
        n = min(count, CHUNK)
        hasher.update(ZEROS[:n] if n < CHUNK else ZEROS)
        count -= n
