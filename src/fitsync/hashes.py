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


# Digests a manifest may carry beside BLAKE3 (--also): those that replica
# catalogues check (Rucio and FTS: adler32, md5) and sha256sum's.
ALSO = ("adler32", "md5", "sha256")


def new_hasher(algo: str = DEFAULT):
    """An object with update(bytes) and hexdigest() for ``algo``."""
    if algo == "blake3":
        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    if algo == "adler32":
        return Adler32()
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
    hash_stream_into(stream, hasher, chunk_size)
    return hasher.hexdigest()


def hash_stream_into(stream, hasher, chunk_size: int = 8 << 20) -> None:
    """Feed everything ``stream`` still holds to ``hasher``."""
    for chunk in iter(lambda: stream.read(chunk_size), b""):
        hasher.update(chunk)


MMAP_THRESHOLD = 1 << 20


def file_digest(path: str, algo: str = DEFAULT) -> str:
    return digest_and_head(path, algo)[0]


def digest_and_head(path: str, algo: str = DEFAULT, head: int = 0) -> tuple[str, bytes]:
    """Hex digest of a local file and its first ``head`` bytes. Large files are hashed from an mmap, which
    lets BLAKE3 use every core on one file (as ``b3sum`` does); small files
    take the shortest path (os.open/os.read: a Python file object costs more
    than hashing a few kilobytes), and a BLAKE3 without threads."""
    hasher, first = _feed_file(path, lambda size: blake3.blake3() if algo == "blake3" and size < MMAP_THRESHOLD
                               else new_hasher(algo), head)
    return hasher.hexdigest(), first


def hash_file_into(path: str, hasher, head: int = 0) -> bytes:
    """Feed a local file to ``hasher`` (a TeeHasher, say) in one read, as
    digest_and_head reads it; returns its first ``head`` bytes."""
    return _feed_file(path, lambda size: hasher, head)[1]


def _feed_file(path: str, hasher_for, head: int) -> tuple:
    """Read a local file once into the hasher ``hasher_for(size)`` returns:
    from an mmap when large, in os.read pieces (to its end, even if it grew
    since fstat) when small. Returns (that hasher, the first ``head`` bytes)."""
    import os

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        hasher = hasher_for(size)
        if size >= MMAP_THRESHOLD:
            import mmap

            from fitsync.mapped import mapped_file

            with mapped_file(fd, what=path) as mapped:
                mapped.madvise(mmap.MADV_SEQUENTIAL)
                hasher.update(mapped)
                return hasher, mapped[:head]
        first = b""
        while True:
            data = os.read(fd, MMAP_THRESHOLD)
            if not data:
                return hasher, first[:head]
            if len(first) < head:
                first += data[:head]
            hasher.update(data)
    finally:
        os.close(fd)


class Adler32:
    """zlib's Adler-32 as a hasher; hexdigest() is 8 lowercase hex digits, as Rucio writes it."""

    def __init__(self):
        self.value = 1

    def update(self, data) -> None:
        import zlib

        self.value = zlib.adler32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


class TeeHasher:
    """One read feeding several digests (``--also``): ``hexdigest()`` is the
    first's, so code that hashes with one hasher takes this one unchanged;
    ``hexdigests()`` has them all."""

    def __init__(self, algos):
        self._hashers = {algo: new_hasher(algo) for algo in algos}
        self._first = next(iter(self._hashers.values()))

    def update(self, data) -> None:
        for hasher in self._hashers.values():
            hasher.update(data)

    def hexdigest(self) -> str:
        return self._first.hexdigest()

    def hexdigests(self) -> dict:
        return {algo: hasher.hexdigest() for algo, hasher in self._hashers.items()}


def parse_also(text) -> tuple:
    """``--also=adler32,md5``: the names, checked; UsageError for others."""
    from fitsync.errors import UsageError

    names = tuple(n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip())
    unknown = [n for n in names if n not in ALSO]
    if unknown:
        raise UsageError(f"--also={','.join(unknown)}: choose from {', '.join(ALSO)}")
    return tuple(dict.fromkeys(names))
