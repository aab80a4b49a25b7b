"""Whole-file digest algorithms by name.

BLAKE3 is fitsync's own digest. Others exist to compare against what a
remote already knows without reading the data (Dropbox's content hash,
MD5 tables shipped with releases, sha256sum files).
"""

from __future__ import annotations

import importlib

import blake3

DEFAULT = "blake3"

# name -> "module:factory" for hashers that live in their own module.
_EXTERNAL = {"dropbox": "fitsync.dbhash:DropboxContentHasher"}


def new_hasher(algo: str = DEFAULT):
    """An object with update(bytes) and hexdigest() for ``algo``."""
    if algo == "blake3":
        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    if algo in _EXTERNAL:
        module_name, _, attr = _EXTERNAL[algo].partition(":")
        return getattr(importlib.import_module(module_name), attr)()
    import hashlib  # OpenSSL's; loaded only when a digest other than BLAKE3 is asked for

    try:
        return hashlib.new(algo)
    except ValueError:
        raise ValueError(f"unknown digest algorithm {algo!r}") from None


def hash_stream(stream, algo: str = DEFAULT, chunk_size: int = 8 << 20) -> str:
    hasher = new_hasher(algo)
    for chunk in iter(lambda: stream.read(chunk_size), b""):
        hasher.update(chunk)
    return hasher.hexdigest()


MMAP_THRESHOLD = 1 << 20


def file_digest(path: str, algo: str = DEFAULT) -> str:
    return digest_and_head(path, algo)[0]


def digest_and_head(path: str, algo: str = DEFAULT, head: int = 0) -> tuple[str, bytes]:
    """Hex digest of a local file and its first ``head`` bytes. Large files are hashed from an mmap, which
    lets BLAKE3 use every core on one file (as ``b3sum`` does); small files
    take the shortest path (os.open/os.read: a Python file object costs more
    than hashing a few kilobytes)."""
    import mmap
    import os

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size >= MMAP_THRESHOLD:
            hasher = new_hasher(algo)
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                mapped.madvise(mmap.MADV_SEQUENTIAL)
                hasher.update(mapped)
                return hasher.hexdigest(), mapped[:head]
        hasher = blake3.blake3() if algo == "blake3" else new_hasher(algo)
        first = b""
        while True:  # to end of file, even if it grew since fstat
            data = os.read(fd, MMAP_THRESHOLD)
            if not data:
                return hasher.hexdigest(), first[:head]
            if len(first) < head:
                first += data[:head]
            hasher.update(data)
    finally:
        os.close(fd)
