"""The two algorithm suites of block signatures (docs/signature-format.md).

A signature names the sums it was made with in its header, so both sides
of a delta agree on how a block is summed and how the whole file is checked:

- ``FAST``: librsync's rollsum, xxh3-128 per block, BLAKE3 of the file. What
  fitsync computes wherever it runs (compiled core, all cores).
- ``STDLIB``: Adler-32 (``zlib.adler32``), SHA-256 truncated to 16 bytes per
  block, and as the file's digest the SHA-256 of the blocks' full SHA-256
  digests in layout order. A host with nothing but Python's standard library
  computes all of it at C speed (zlib and OpenSSL), in several threads, and
  the file digest costs no second pass over the file. Our side rolls
  Adler-32 in the compiled core and confirms hits with the same SHA-256.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import xxhash

from fitsync import _native, wire

STRONG_LEN = 16  # every suite's block digest is 16 bytes: the format's fixed row width


def _sha256_128(block) -> bytes:
    return hashlib.sha256(block).digest()[:STRONG_LEN]


def _xxh3_64_check(body) -> int:
    return xxhash.xxh3_64_intdigest(body)


def _sha256_check(body) -> int:
    return int.from_bytes(hashlib.sha256(body).digest()[:8], "little")


@dataclass(frozen=True)
class Sums:
    """How one suite sums blocks and files. ``weak_id``/``strong_id`` are the
    header's algorithm bytes; ``weak_kind`` is the compiled core's name for
    the weak sum; ``strong`` is the 16-byte block digest (also the hash of a
    group of block digests in a signature by difference); ``check`` the
    64-bit integrity trailer of the serialised signature; ``digest_algo`` the
    whole-file digest that verifies a file built from this signature."""

    name: str
    weak_id: int
    strong_id: int
    weak_kind: int
    strong: Callable[[bytes], bytes]
    check: Callable[[bytes], int]
    digest_algo: str


FAST = Sums("fast", 1, 1, _native.ROLLSUM, xxhash.xxh3_128_digest, _xxh3_64_check, "blake3")
STDLIB = Sums("stdlib", wire.WEAK_ADLER32, wire.STRONG_SHA256_128, _native.ADLER32, _sha256_128, _sha256_check,
              "sha256-blocks")
SUITES = {(s.weak_id, s.strong_id): s for s in (FAST, STDLIB)}
BY_NAME = {s.name: s for s in (FAST, STDLIB)}


def suite_of(weak_id: int, strong_id: int) -> Sums | None:
    return SUITES.get((weak_id, strong_id))


class BlockListHasher:
    """hashlib-style hasher of the STDLIB file digest: the SHA-256 of each
    block's SHA-256, blocks cut by ``lengths`` (a signature's layout), fed
    with the file's bytes in order and in pieces of any size."""

    name = "sha256-blocks"
    PARALLEL_BYTES = 4 << 20  # whole blocks of an update this large are hashed on two threads

    def __init__(self, lengths):
        self._lengths = [int(n) for n in lengths]
        self._next = 0
        self._left = self._lengths[0] if self._lengths else 0
        self._block = hashlib.sha256()
        self._outer = hashlib.sha256()
        self._extra = 0  # bytes fed past the layout's end: the digest then cannot match

    def update(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            if self._next >= len(self._lengths):
                self._extra += len(view)
                return
            if self._left == self._lengths[self._next] and len(view) >= self.PARALLEL_BYTES:
                view = self._whole_blocks(view)  # at a block start with much to hash
                if not view:
                    return
            piece = view[: self._left]
            self._block.update(piece)
            self._left -= len(piece)
            view = view[len(piece):]
            if self._left == 0:
                self._outer.update(self._block.digest())
                self._block = hashlib.sha256()
                self._next += 1
                self._left = self._lengths[self._next] if self._next < len(self._lengths) else 0

    def _whole_blocks(self, view: memoryview) -> memoryview:
        """Hash the complete blocks at the start of ``view``, in two halves on
        two threads (hashlib releases the GIL); return the rest."""
        from fitsync.threads import run_beside

        ends, total, k = [], 0, self._next
        while k < len(self._lengths) and total + self._lengths[k] <= len(view):
            total += self._lengths[k]
            ends.append(total)
            k += 1
        if not ends:
            return view
        starts = [0] + ends[:-1]

        def digests(lo: int, hi: int) -> list:
            return [hashlib.sha256(view[starts[i]:ends[i]]).digest() for i in range(lo, hi)]

        middle = len(ends) // 2
        second = run_beside(lambda: digests(middle, len(ends)))
        for d in digests(0, middle) + second():
            self._outer.update(d)
        self._next = k
        self._left = self._lengths[k] if k < len(self._lengths) else 0
        return view[total:]

    def digest(self) -> bytes:
        if self._next < len(self._lengths) or self._extra:
            return b"\0" * 32  # short or long input: never any layout's digest
        return self._outer.digest()

    def hexdigest(self) -> str:
        return self.digest().hex()


def block_list_digest(full_block_digests) -> bytes:
    """The STDLIB file digest from the blocks' 32-byte SHA-256 digests, in order."""
    outer = hashlib.sha256()
    for d in full_block_digests:
        outer.update(d)
    return outer.digest()


PUSH_BLOCK = 4 << 20  # the layout of a STDLIB digest we choose ourselves: few blocks, hashed on all cores
PUSH_LAYOUT = (PUSH_BLOCK, (0,))  # (block size, boundaries) of that digest, as Recipe.layout holds it


def file_block_list_digest(path, block_size: int = PUSH_BLOCK) -> str:
    """Hex STDLIB file digest of a local file in fixed ``block_size`` blocks
    (boundaries [0]): the blocks are hashed on several threads, since
    hashlib releases the GIL, which one SHA-256 of the whole file cannot do."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from fitsync.signature import THREADS

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size

        def block(offset: int) -> bytes:
            return hashlib.sha256(os.pread(fd, min(block_size, size - offset), offset)).digest()

        with ThreadPoolExecutor(THREADS) as pool:
            return block_list_digest(pool.map(block, range(0, size, block_size))).hex()
    finally:
        os.close(fd)
