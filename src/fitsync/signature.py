"""Block signatures: a weak rolling sum and a strong digest per block.

A signature describes one version of a file well enough to find its blocks
inside another version at any byte offset (see fitsync.delta). Blocks follow
a layout: fixed-size blocks from the file start, or, for uncompressed FITS
files, fixed-size blocks restarting at every header and every data unit, so a
header that grows by one 2880-byte record changes only that header's blocks
and every data block keeps its hash.

Per block: the weak sum is librsync's rollsum (32 bits, rolls by one byte in
two additions); the strong digest is xxh3-128 (16 bytes, ~11 GB/s per core
and it releases the GIL). Per file: the BLAKE3 digest of the whole file.
The byte format of ``Signature.to_bytes`` is docs/signature-format.md.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from concurrent.futures import ThreadPoolExecutor

import blake3
import numpy as np
import xxhash

from fitsync import _native, wire
from fitsync.wire import MAX_BLOCK_RECORDS, MIN_BLOCK_RECORDS
from fitsync.errors import BadInput, NotFound, SourceChanged
from fitsync.fits import BLOCK as FITS_BLOCK
from fitsync.fits import segment_boundaries
from fitsync.mapped import mapped_file
from fitsync.sums import FAST, STDLIB, Sums, block_list_digest, suite_of
from fitsync.threads import run_beside

STRONG_LEN = 16  # xxh3-128 per block
DIGEST_LEN = 32  # BLAKE3 of the whole file
strong_digest = xxhash.xxh3_128_digest  # canonical (big-endian) 16 bytes
# The compiled loops call the same function from C where python-xxhash's
# extension exports it (checked against it first): block hashing and
# scanning then never take the GIL.
_native.bind_xxh3_128(getattr(sys.modules.get("xxhash._xxhash"), "__file__", None) or "", strong_digest)

# Block size bounds, in 2880-byte FITS records (docs/signature-format.md has
# the benchmark behind them): at 1 record the per-block cost adds ~10 % CPU to
# a signature and the signature is 0.7 % of the file, at 2 records ~5 % and
# 0.35 %; from 4 records CPU time is flat, so beyond 64 records (180 KiB)
# bigger blocks only make every change cost more literal bytes.
MIN_BLOCK_SIZE = MIN_BLOCK_RECORDS * FITS_BLOCK
MAX_BLOCK_SIZE = MAX_BLOCK_RECORDS * FITS_BLOCK

READ_CHUNK = 8 << 20  # streaming read size for remotes
FILE_WINDOW = 256 << 20  # mmap window hashed at once: sequential reads on cold files
PARALLEL_MIN_BYTES = 16 << 20  # below this, threads cost more than they save
CACHE_WINDOW = 8 << 20  # read by BLAKE3 and the block sums together, while it is in cache

# The layout is fitsync/wire.py's, which the SSH agent is sent too (written once).
MAGIC, FORMAT_VERSION, _HEADER, _TRAILER = wire.SIG_MAGIC, wire.SIG_FORMAT_VERSION, wire.SIG_HEADER, wire.SIG_TRAILER
FLAG_NO_DIGEST = wire.SIG_FLAG_NO_DIGEST  # the signature was made without the whole-file digest (digest is None)
MAX_SIGNATURE_BYTES = 1 << 34  # 16 GiB: refuse anything larger when parsing
MAX_FILE_SIZE = 1 << 62  # keeps every offset arithmetic inside int64


def seal(body: bytes, check=xxhash.xxh3_64_intdigest) -> bytes:
    """``body`` followed by its XXH3-64 (or the suite's ``check``): the envelope of fitsync's byte formats."""
    return body + _TRAILER.pack(check(body))


def open_envelope(data, magic: bytes, header: struct.Struct, what: str, version: int,
                  check=xxhash.xxh3_64_intdigest) -> tuple[bytes, tuple]:
    """Check magic, size and 64-bit trailer (XXH3-64 unless ``check`` says
    otherwise) of a sealed blob; return the bytes and its unpacked header
    (whose field 1 is the format version)."""
    data = bytes(data)
    if len(data) < header.size + _TRAILER.size or not data.startswith(magic):
        raise BadInput(f"not a fitsync {what} (bad magic or too short)")
    if len(data) > MAX_SIGNATURE_BYTES:
        raise BadInput(f"{what} is larger than any fitsync writes")
    (trailer,) = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    if trailer != check(memoryview(data)[: len(data) - _TRAILER.size]):
        raise BadInput(f"{what} is damaged (integrity check failed)")
    fields = header.unpack_from(data)
    if fields[1] != version:
        raise BadInput(f"{what} format version {fields[1]} is not supported (this fitsync reads {version})")
    return data, fields


def check_length(data: bytes, expected: int, what: str) -> None:
    if expected != len(data):
        raise BadInput(f"{what} is {len(data)} bytes; its header promises {expected}")


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


THREADS = min(_cpu_count(), 8)


def default_block_size(file_size: int) -> int:
    """The block size of a new signature (wire.default_block_size, the rule the agent applies too)."""
    return wire.default_block_size(file_size)


def _check_layout_args(file_size: int, block_size: int, boundaries) -> list[int]:
    if not 0 <= file_size <= MAX_FILE_SIZE:
        raise BadInput(f"file size {file_size} is outside 0 .. 2**62 bytes")
    if not 0 < block_size <= 1 << 30:
        raise BadInput(f"block size {block_size} is outside 1 byte .. 1 GiB")
    bounds = [int(b) for b in boundaries] or [0]
    if bounds[0] != 0:
        raise BadInput("block layout boundaries must start at offset 0")
    for a, b in zip(bounds, bounds[1:]):
        if not a < b:
            raise BadInput("block layout boundaries must increase strictly")
    if len(bounds) > 1 and bounds[-1] >= file_size:
        raise BadInput(f"block layout boundary {bounds[-1]} lies beyond the file size {file_size}")
    return bounds


def block_count(file_size: int, block_size: int, boundaries=(0,)) -> int:
    """Number of blocks of a layout, without building it."""
    bounds = _check_layout_args(file_size, block_size, boundaries)
    ends = bounds[1:] + [file_size]
    return sum(-(-(e - b) // block_size) for b, e in zip(bounds, ends))


def block_layout(file_size: int, block_size: int, boundaries=(0,)) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, lengths) of every block, as int64 arrays: blocks of
    ``block_size`` from each boundary up to the next one (the last block of a
    segment may be shorter). ``boundaries`` = [0] is the fixed layout."""
    bounds = np.asarray(_check_layout_args(file_size, block_size, boundaries), dtype=np.int64)
    ends = np.append(bounds[1:], np.int64(file_size))
    counts = -(-(ends - bounds) // block_size)
    total = int(counts.sum())
    first = np.cumsum(counts) - counts  # index of each segment's first block
    within = np.arange(total, dtype=np.int64) - np.repeat(first, counts)
    offsets = np.repeat(bounds, counts) + within * block_size
    lengths = np.minimum(np.int64(block_size), np.repeat(ends, counts) - offsets)
    return offsets, lengths


class Signature:
    """Blocks (weak + strong sums) and BLAKE3 digest of one file version.
    ``digest`` is None only for signatures built with ``digest=False``, which
    serve matching alone (the basis side of the rsync direction).

    ``like_offsets`` is set only on a signature that a remote rebuilt from a
    local file (``Remote.block_signature(path, like=FILE)``): per block, an
    offset of FILE holding that block's bytes, or -1. Recipes take it as a
    hint (delta.fetch_recipe, delta.delta_recipe); it is not part of the
    signature's value or wire format."""

    __slots__ = ("file_size", "block_size", "boundaries", "weak", "strong", "digest", "_layout", "like_offsets", "sums")

    def __init__(self, file_size, block_size, boundaries, weak, strong, digest, sums: Sums = FAST):
        self.sums = sums
        self.file_size = int(file_size)
        self.block_size = int(block_size)
        self.boundaries = [int(b) for b in boundaries]
        self.weak = np.ascontiguousarray(weak, dtype=np.uint32)
        self.strong = bytes(strong)
        self.digest = None if digest is None else bytes(digest)
        self._layout = None
        self.like_offsets: np.ndarray | None = None
        if self.digest is not None and len(self.digest) != DIGEST_LEN:
            raise BadInput("a signature's digest must be 32 bytes")
        count = block_count(self.file_size, self.block_size, self.boundaries)
        if len(self.weak) != count or len(self.strong) != count * STRONG_LEN:
            raise BadInput(f"signature has {len(self.weak)} blocks; its layout has {count}")

    # -- layout -------------------------------------------------------
    def layout(self) -> tuple[np.ndarray, np.ndarray]:
        if self._layout is None:
            self._layout = block_layout(self.file_size, self.block_size, self.boundaries)
        return self._layout

    def block_offsets(self) -> np.ndarray:
        return self.layout()[0]

    def block_lengths(self) -> np.ndarray:
        return self.layout()[1]

    def __len__(self) -> int:
        return len(self.weak)

    @property
    def hexdigest(self) -> str | None:
        return None if self.digest is None else self.digest.hex()

    def strong_rows(self) -> np.ndarray:
        """The strong digests as rows of STRONG_LEN bytes (a view, not a copy)."""
        return np.frombuffer(self.strong, dtype=np.uint8).reshape(-1, STRONG_LEN)

    def strong_of(self, index: int) -> bytes:
        return self.strong[index * STRONG_LEN : (index + 1) * STRONG_LEN]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return (
            self.file_size == other.file_size
            and self.block_size == other.block_size
            and self.boundaries == other.boundaries
            and np.array_equal(self.weak, other.weak)
            and self.strong == other.strong
            and self.digest == other.digest
            and self.sums == other.sums
        )

    def __repr__(self) -> str:
        return (
            f"Signature(file_size={self.file_size}, block_size={self.block_size}, "
            f"blocks={len(self)}, segments={len(self.boundaries)}, digest={(self.hexdigest or 'none')[:16]})"
        )

    # -- wire format (docs/signature-format.md) ------------------------
    def to_bytes(self) -> bytes:
        header = _HEADER.pack(
            MAGIC, FORMAT_VERSION, self.sums.weak_id, self.sums.strong_id, self.block_size,
            self.file_size, len(self.boundaries), 0 if self.digest is not None else FLAG_NO_DIGEST, len(self),
            self.digest if self.digest is not None else bytes(DIGEST_LEN),
        )
        body = b"".join((
            header,
            np.asarray(self.boundaries, dtype="<u8").tobytes(),
            self.weak.astype("<u4").tobytes(),
            self.strong,
        ))
        return seal(body, self.sums.check)

    @classmethod
    def from_bytes(cls, data) -> "Signature":
        """Parse ``to_bytes`` output; raise BadInput on anything else."""
        raw = bytes(data)
        sums = suite_of(*raw[10:12]) if len(raw) >= 12 and raw.startswith(MAGIC) else FAST
        if sums is None:  # the header's algorithm bytes decide how its trailer is checked
            raise BadInput("signature uses block sums this fitsync does not know")
        data, fields = open_envelope(raw, MAGIC, _HEADER, "signature", FORMAT_VERSION, sums.check)
        _, _, weak_id, strong_id, block_size, file_size, nbounds, flags, nblocks, digest = fields
        check_length(data, _HEADER.size + 8 * nbounds + (4 + STRONG_LEN) * nblocks + _TRAILER.size, "signature")
        pos = _HEADER.size
        boundaries = np.frombuffer(data, dtype="<u8", count=nbounds, offset=pos).tolist()
        pos += 8 * nbounds
        weak = np.frombuffer(data, dtype="<u4", count=nblocks, offset=pos).astype(np.uint32)
        pos += 4 * nblocks
        strong = data[pos : pos + STRONG_LEN * nblocks]
        if flags & ~FLAG_NO_DIGEST:
            raise BadInput("signature has flags this fitsync does not know")
        return cls(file_size, block_size, boundaries, weak, strong, None if flags & FLAG_NO_DIGEST else digest, sums)


class SignatureBuilder:
    """Builds a Signature from the file's bytes fed in order, in chunks of
    any size, so a file never has to fit in memory. Large chunks (an mmap
    window) use two cores or more: BLAKE3 on its own threads while this
    thread computes the block sums, both outside the GIL."""

    def __init__(self, file_size: int, block_size: int | None = None, boundaries=(0,), digest: bool = True,
                 sums: Sums = FAST):
        self.file_size = int(file_size)
        self.block_size = int(block_size or default_block_size(self.file_size))
        self.boundaries = _check_layout_args(self.file_size, self.block_size, boundaries)
        self._offsets, self._lengths = block_layout(self.file_size, self.block_size, self.boundaries)
        self._ends = self._offsets + self._lengths
        n = len(self._offsets)
        self._weak = np.zeros(n, dtype=np.uint32)
        self._strong = np.zeros(n * STRONG_LEN, dtype=np.uint8)
        self.sums = sums
        # STDLIB's file digest is made of the blocks' full SHA-256 digests, kept here
        self._full = np.zeros((n, 32), dtype=np.uint8) if digest and sums is STDLIB else None
        self._hasher = blake3.blake3(max_threads=blake3.blake3.AUTO) if digest and sums is FAST else None
        self._received = 0
        self._next_block = 0
        self._partial = bytearray()  # the start of a block split across chunks

    def update(self, chunk) -> None:
        view = memoryview(chunk).cast("B")
        start = self._received
        if start + len(view) > self.file_size:
            raise SourceChanged(f"file grew past its expected size of {self.file_size} bytes while being read")
        self._received += len(view)
        if len(view) < PARALLEL_MIN_BYTES or THREADS < 2 or self._hasher is None:
            # Block hashing stays on one thread beside BLAKE3: xxhash is called
            # per block, and two threads taking turns at the GIL were measured
            # slower. Without a digest to compute, the cores are free for the
            # block sums themselves (_hash_range splits them).
            if self._hasher is not None:
                self._hasher.update(view)
            self._hash_blocks_in(view, start)
            return
        # BLAKE3 (on its own threads) and the block sums read the same
        # window at the same time, so it comes from memory once and from
        # cache the second time: memory bandwidth, not CPU, is the limit.
        with ThreadPoolExecutor(1) as digester:
            pending = []
            for offset in range(0, len(view), CACHE_WINDOW):
                window = view[offset : offset + CACHE_WINDOW]
                pending.append(digester.submit(self._hasher.update, window))
                self._hash_blocks_in(window, start + offset)
            for job in pending:
                job.result()

    def _hash_blocks_in(self, view: memoryview, start: int) -> None:
        end = start + len(view)
        used = 0
        if self._partial:
            k = self._next_block
            used = min(int(self._ends[k]) - start, len(view))
            self._partial += view[:used]
            if len(self._partial) < self._lengths[k]:
                return
            self._hash_range(memoryview(self._partial), int(self._offsets[k]), k, k + 1)
            self._partial = bytearray()
            self._next_block = k + 1
        first = self._next_block
        last = int(np.searchsorted(self._ends, end, side="right"))  # blocks ending inside
        if last > first:
            self._hash_range(view, start, first, last)
        if last < len(self._offsets) and self._offsets[last] < end:
            self._partial = bytearray(view[int(self._offsets[last]) - start :])
        self._next_block = last

    def _hash_range(self, view, view_offset: int, first: int, last: int) -> None:
        """Hash blocks first..last-1, which lie inside ``view`` (whose first
        byte is at file offset ``view_offset``). With no digest running
        beside, a large range is split between two threads (_in_halves: the
        local side of an SSH signature by difference hashes a whole 1 GiB
        old copy this way)."""
        if self._hasher is not None:  # BLAKE3 has the other cores
            self._hash_blocks_native(view, view_offset, first, last)
            return
        span = int(self._ends[last - 1] - self._offsets[first]) if last > first else 0
        _in_halves(lambda lo, hi: self._hash_blocks_native(view, view_offset, lo, hi), first, last, span,
                   self.sums.strong)

    def _hash_blocks_native(self, view, view_offset: int, first: int, last: int) -> None:
        _native.hash_blocks(
            view, self._offsets[first:last] - view_offset, self._lengths[first:last],
            self._weak[first:last], self._strong[first * STRONG_LEN : last * STRONG_LEN],
            self._strong_fn(first), STRONG_LEN, self.sums.weak_kind,
        )

    def _strong_fn(self, first: int):
        """The block digest function, called for blocks first, first + 1, ...
        in order; for a STDLIB digest it also keeps each block's full SHA-256."""
        if self._full is None:
            return self.sums.strong
        rows = iter(range(first, len(self._full)))
        full = self._full

        def sha256_keeping_full(block) -> bytes:
            d = hashlib.sha256(block).digest()
            full[next(rows)] = np.frombuffer(d, dtype=np.uint8)
            return d[:STRONG_LEN]
        return sha256_keeping_full

    def finish(self) -> Signature:
        if self._received != self.file_size:
            raise SourceChanged(
                f"file shrank while being read: got {self._received} of {self.file_size} bytes"
            )
        digest = self._hasher.digest() if self._hasher else None
        if self._full is not None:
            digest = block_list_digest(bytes(row) for row in self._full)
        return Signature(self.file_size, self.block_size, self.boundaries, self._weak, self._strong.tobytes(), digest,
                         self.sums)


def fits_boundaries(read_at, file_size: int) -> list[int]:
    """FITS-aware layout boundaries (every header and data unit start), or
    [0] for a file that is not a complete uncompressed FITS file."""
    return segment_boundaries(read_at, file_size)


def signature_of_buffer(buffer, block_size: int | None = None, fits_aware: bool = True,
                        digest: bool = True, sums: Sums = FAST) -> Signature:
    """Signature of bytes in memory (bytes, mmap, memoryview). With
    ``digest=False`` the whole-file BLAKE3 is skipped (Signature.digest is
    None): enough for matching, e.g. the basis side of the rsync direction."""
    view = memoryview(buffer).cast("B")
    size = len(view)
    boundaries = fits_boundaries(lambda o, n: bytes(view[o : o + n]), size) if fits_aware else [0]
    builder = SignatureBuilder(size, block_size, boundaries, digest, sums)
    for offset in range(0, size, FILE_WINDOW):
        builder.update(view[offset : offset + FILE_WINDOW])
    return builder.finish()


def signature_of_file(path, block_size: int | None = None, fits_aware: bool = True,
                      digest: bool = True, sums: Sums = FAST) -> Signature:
    """Signature of a local file, read through mmap in large windows and
    hashed on all cores. Raises SourceChanged if the file changes meanwhile.
    ``digest=False``: see signature_of_buffer."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except IsADirectoryError:
        raise NotFound(f"{path} is a directory, not a file") from None
    with f:
        before = os.fstat(f.fileno())
        if before.st_size == 0:
            sig = SignatureBuilder(0, block_size, digest=digest, sums=sums).finish()
        else:
            with mapped_file(f.fileno(), what=path) as mapped:
                view = memoryview(mapped)
                try:
                    sig = signature_of_buffer(view, block_size, fits_aware, digest, sums)
                finally:
                    view.release()
        after = os.fstat(f.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise SourceChanged(f"{path} changed while its signature was computed; try again")
    return sig


def signature_of_remote(remote, path: str, block_size: int | None = None, fits_aware: bool = True) -> Signature:
    """Signature of a file on any Remote: local files go through mmap;
    others are streamed with ``open_read`` after reading the FITS headers
    (one small ranged read per header record) to choose the layout."""
    local = remote.local_path(path)
    if local is not None:
        return signature_of_file(local, block_size, fits_aware)
    size = remote.stat(path).size
    boundaries = [0]
    if fits_aware and size >= FITS_BLOCK:
        boundaries = fits_boundaries(lambda o, n: remote.read_range(path, o, n), size)
    builder = SignatureBuilder(size, block_size, boundaries)
    with remote.open_read(path) as stream:
        for chunk in iter(lambda: stream.read(READ_CHUNK), b""):
            builder.update(chunk)
    return builder.finish()


def file_digest(path) -> str:
    """Hex BLAKE3 of a local file: mmap plus BLAKE3's own threads, like b3sum."""
    from fitsync.hashes import file_digest as digest_of_file

    try:
        return digest_of_file(path)
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except IsADirectoryError:
        raise NotFound(f"{path} is a directory, not a file") from None


def buffer_digest(buffer) -> bytes:
    """BLAKE3 (32 bytes) of bytes in memory, on all cores."""
    return blake3.blake3(buffer, max_threads=blake3.blake3.AUTO).digest()


def _in_halves(work, first: int, last: int, span: int, strong=strong_digest) -> None:
    """``work(lo, hi)`` over blocks first..last-1 (``span`` bytes): in two
    halves on two threads when the span is large and the strong digest runs
    from C (no GIL at all); through Python's xxhash the threads would take
    turns at the GIL (measured slower), so then on this thread alone. SHA-256
    (STDLIB) releases the GIL on each block, so it splits too."""
    if THREADS < 2 or span < PARALLEL_MIN_BYTES or not (strong is not strong_digest
                                                           or _native.strong_in_c(strong, STRONG_LEN)):
        work(first, last)
        return
    middle = (first + last) // 2
    other = run_beside(lambda: work(middle, last))
    work(first, middle)
    other()
