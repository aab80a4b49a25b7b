"""Dropbox's ``content_hash``, computed locally.

Dropbox publishes a digest for every file: split the file into 4 MiB blocks,
SHA-256 each block, and SHA-256 the concatenation of the block digests
(https://www.dropbox.com/developers/reference/content-hash). Computing it
here lets fitsync compare a local copy with a Dropbox file, and verify a
download, without fetching anything twice.

Written here rather than imported from the SDK so that hashing a local tree
never imports the SDK (whose host settings are read at import time), and so
that large buffers are hashed through memoryviews without copying.
The published vectors pin it in tests/test_dropbox_hash.py.
"""

from __future__ import annotations

import hashlib

BLOCK_SIZE = 4 * 1024 * 1024


class DropboxContentHasher:
    """hashlib-style hasher: ``update(bytes)``, ``digest()``, ``hexdigest()``.

    ``digest()`` does not consume the state (unlike the SDK's hasher), so it
    can be asked for more than once, like hashlib's.
    """

    name = "dropbox"
    digest_size = 32
    block_size = BLOCK_SIZE

    def __init__(self, data: bytes = b""):
        self._overall = hashlib.sha256()
        self._block = hashlib.sha256()
        self._filled = 0  # bytes in the current, unfinished block
        if data:
            self.update(data)

    def update(self, data) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            take = min(BLOCK_SIZE - self._filled, view.nbytes)
            self._block.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == BLOCK_SIZE:
                self._overall.update(self._block.digest())
                self._block = hashlib.sha256()
                self._filled = 0

    def digest(self) -> bytes:
        overall = self._overall.copy()
        if self._filled:
            overall.update(self._block.digest())
        return overall.digest()

    def hexdigest(self) -> str:
        return self.digest().hex()

    def copy(self) -> "DropboxContentHasher":
        other = DropboxContentHasher.__new__(DropboxContentHasher)
        other._overall = self._overall.copy()
        other._block = self._block.copy()
        other._filled = self._filled
        return other


def content_hash(data) -> str:
    """Hex content hash of an in-memory buffer."""
    return DropboxContentHasher(data).hexdigest()


def content_hash_of_file(path: str, chunk_size: int = BLOCK_SIZE) -> str:
    """Hex content hash of a local file, read in whole blocks."""
    hasher = DropboxContentHasher()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk_size)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            hasher.update(view[:n])
    return hasher.hexdigest()
