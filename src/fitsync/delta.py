"""Deltas between two versions of a file, in both directions, and patching.

Matching finds every block of a signature (version X) at any byte offset of
the bytes of version Y, with librsync's rolling weak sum, a hash table, and
the strong digest confirming weak hits only (ext/_native.pyx, BlockIndex).
The matches become a ``Recipe``: the target file as a sequence of runs, each
either bytes of the BASIS (the old file, already at the destination) or bytes
of the SOURCE (the new file, to be sent). The same matcher serves:

- rsync direction (``delta_recipe``): the destination sends the signature of
  its old file; the side holding the new file scans it and sends literals.
- zsync direction (``fetch_recipe``): the source publishes the signature of
  the new file; the destination scans its old copy and fetches only the
  byte ranges of the new file that it lacks.

``apply_recipe`` builds the target by streaming: BASIS runs are copied
from the old file, SOURCE runs are written from the supplied reader, and
the result is checked against the recipe's BLAKE3 digest while it is
written: a large target is written with direct I/O and hashed as it is
handed to the kernel (``fitsync.directio``), a small one is copied in the
kernel (``os.copy_file_range``) and read back. A mismatch raises
``VerificationFailed``; the caller discards the temporary file.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat as stat_mod
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import blake3
import numpy as np

from fitsync import _native
from fitsync.directio import open_direct
from fitsync.errors import BadInput, NotFound, TransferFailed, VerificationFailed
from fitsync.segments import LocalSegments
from fitsync.sums import BlockListHasher
from fitsync.signature import (
    STRONG_LEN,
    Signature,
    block_layout,
    buffer_digest,
    check_length,
    open_envelope,
    seal,
)

BASIS = 0
SOURCE = 1

COPY_CHUNK = 64 << 20  # a BASIS run is copied in pieces this large, so verification can follow
VERIFY_CHUNK = 32 << 20

MAGIC = b"FSYNCRCP"
FORMAT_VERSION = 1
UNKNOWN_SIZE = (1 << 64) - 1
_HEADER = struct.Struct("<8sHHIQQQ32s")  # magic version 0 0 n_ops target_size basis_size digest
_OP = np.dtype([("kind", "u1"), ("offset", "<u8"), ("length", "<u8")])  # packed: 17 bytes
_TRAILER_SIZE = 8  # XXH3-64 of everything before it (signature.seal)
MAX_OFFSET = 1 << 62  # no file offset or length beyond this is plausible

ReadSource = Callable[[list], Iterable[bytes]]


@dataclass
class Recipe:
    """How to build a target file: ``ops`` are (kind, offset, length) runs in
    target order; BASIS runs come from the basis (old) file at ``offset``,
    SOURCE runs from the source (new) file at ``offset``. ``digest`` is the
    hex digest of the target: BLAKE3, or for a recipe made from a STDLIB
    signature (``digest_algo`` "sha256-blocks") that suite's file digest over
    ``layout`` (block size, boundaries). Neither of the last two is part of
    the wire format: the side applying a recipe is told them beside it."""

    ops: list
    target_size: int
    digest: str
    basis_size: int | None = None  # size of the basis the recipe was made for, when known
    digest_algo: str = "blake3"
    layout: tuple | None = None
    basis_bytes: int = field(init=False)
    source_bytes: int = field(init=False)

    def __post_init__(self):
        self.ops = [(int(k), int(o), int(n)) for k, o, n in self.ops]
        self.basis_bytes = sum(n for k, _, n in self.ops if k == BASIS)
        self.source_bytes = sum(n for k, _, n in self.ops if k == SOURCE)

    @classmethod
    def whole(cls, size: int, digest: str) -> "Recipe":
        """The recipe for a file with no usable basis: all of it is SOURCE."""
        return cls([(SOURCE, 0, size)] if size else [], size, digest)

    def new_hasher(self):
        """A hasher of the target's bytes whose hexdigest() is comparable with ``digest``."""
        if self.digest_algo == "blake3":
            return blake3.blake3(max_threads=blake3.blake3.AUTO)
        block_size, boundaries = self.layout
        return BlockListHasher(block_layout(self.target_size, block_size, boundaries)[1])

    def source_ranges(self) -> list[tuple[int, int]]:
        """(offset, length) of the source bytes to fetch, in order, adjacent
        ranges merged."""
        ranges: list[tuple[int, int]] = []
        for kind, offset, length in self.ops:
            if kind != SOURCE:
                continue
            if ranges and ranges[-1][0] + ranges[-1][1] == offset:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)
            else:
                ranges.append((offset, length))
        return ranges

    def __repr__(self) -> str:
        return (
            f"Recipe(target_size={self.target_size}, ops={len(self.ops)}, "
            f"basis_bytes={self.basis_bytes}, source_bytes={self.source_bytes}, digest={self.digest[:16]}...)"
        )

    # -- wire format (docs/signature-format.md) ------------------------
    def to_bytes(self) -> bytes:
        ops = np.array(self.ops, dtype=_OP) if self.ops else np.zeros(0, dtype=_OP)
        basis_size = UNKNOWN_SIZE if self.basis_size is None else self.basis_size
        body = _HEADER.pack(
            MAGIC, FORMAT_VERSION, 0, 0, len(self.ops), self.target_size, basis_size,
            bytes.fromhex(self.digest),
        ) + ops.tobytes()
        return seal(body)

    @classmethod
    def from_bytes(cls, data) -> "Recipe":
        """Parse ``to_bytes`` output; raise BadInput on anything else."""
        data, fields = open_envelope(data, MAGIC, _HEADER, "recipe", FORMAT_VERSION)
        _, _, _, _, n_ops, target_size, basis_size, digest = fields
        check_length(data, _HEADER.size + n_ops * _OP.itemsize + _TRAILER_SIZE, "recipe")
        ops = np.frombuffer(data, dtype=_OP, count=n_ops, offset=_HEADER.size)
        basis = None if basis_size == UNKNOWN_SIZE else basis_size
        _check_ops(ops, target_size, basis)
        return cls(ops.tolist(), target_size, digest.hex(), basis)


def _check_ops(ops: np.ndarray, target_size: int, basis_size: int | None) -> None:
    if target_size > MAX_OFFSET or (basis_size is not None and basis_size > MAX_OFFSET):
        raise BadInput("recipe sizes are implausibly large")
    if len(ops) == 0:
        if target_size:
            raise BadInput("recipe has no runs for a non-empty target")
        return
    kinds = ops["kind"]
    offsets = ops["offset"].astype(np.uint64)
    lengths = ops["length"].astype(np.uint64)
    if not np.isin(kinds, (BASIS, SOURCE)).all():
        raise BadInput("recipe has a run of unknown kind")
    if (lengths == 0).any() or (lengths > MAX_OFFSET).any() or (offsets > MAX_OFFSET).any():
        raise BadInput("recipe has an empty or implausibly long run")
    if sum(lengths.tolist()) != target_size:  # Python ints: a uint64 sum could wrap
        raise BadInput("recipe runs do not add up to the target size")
    ends = offsets + lengths
    source = kinds == SOURCE
    if (ends[source] > np.uint64(target_size)).any():
        raise BadInput("recipe reads source bytes beyond the target size")
    if basis_size is not None and (ends[~source] > np.uint64(basis_size)).any():
        raise BadInput("recipe reads basis bytes beyond the basis size")


# ---------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------


def block_index(sig: Signature) -> "_native.BlockIndex":
    """The hash table over a signature's full-size blocks."""
    return _native.BlockIndex(sig.weak, np.frombuffer(sig.strong, dtype=np.uint8),
                              sig.block_lengths(), sig.block_size, STRONG_LEN, sig.sums.weak_kind)


def find_blocks(sig: Signature, buffer) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping occurrences of ``sig``'s blocks in ``buffer``:
    (positions, block numbers), sorted by position. Runs without the GIL
    except to compute a strong digest on a weak hit."""
    view = _byte_view(buffer)
    if len(sig) == 0 or len(view) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    return block_index(sig).scan(view, sig.sums.strong, 0, len(view), 0)


def _byte_view(buffer) -> memoryview:
    view = memoryview(buffer)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def delta_recipe(basis_sig: Signature, source_buffer, source_digest: str | None = None, known=None) -> Recipe:
    """rsync direction: the recipe for the source (new) bytes, given the
    signature of the basis (old file at the destination). ``source_digest``
    (hex BLAKE3 of the source, when the caller already knows it) saves one
    pass over the source; a wrong one makes apply_recipe fail, never lie.
    ``known`` gives, per basis block, an offset of the source holding its
    bytes, or -1 (Signature.like_offsets of a signature rebuilt from this
    source): only source bytes that no known block covers are scanned."""
    view = _byte_view(source_buffer)
    with ThreadPoolExecutor(1) as pool:
        digesting = pool.submit(buffer_digest, view) if source_digest is None else None
        if known is None:
            positions, blocks = find_blocks(basis_sig, view)
        else:
            positions, blocks = _matches_around(basis_sig, view, _checked_hint(known, basis_sig))
        if digesting is not None:
            source_digest = digesting.result().hex()
    ops = _ops_from_matches(positions, blocks, basis_sig.block_offsets(), basis_sig.block_lengths(), len(view))
    return Recipe(ops, len(view), source_digest, basis_sig.file_size)


def _checked_hint(known, sig: Signature) -> np.ndarray:
    found = np.array(known, dtype=np.int64)  # a copy: callers' hints stay as they were
    if found.shape != (len(sig),):
        raise ValueError(f"a hint of {found.size} offsets for a signature of {len(sig)} blocks")
    return found


def _matches_around(sig: Signature, view: memoryview, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The known matches (block i at offset known[i]) plus what a scan of the
    bytes they leave uncovered finds: sorted by position, without overlaps."""
    placed = np.flatnonzero(known >= 0)
    more_positions, more_blocks = _scan_spans(sig, view, known)
    return _without_overlaps(np.concatenate((known[placed], more_positions)), np.concatenate((placed, more_blocks)),
                             sig.block_lengths())


def _scan_spans(sig: Signature, view: memoryview, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matches of ``sig``'s blocks in the bytes of ``view`` that no block
    placed by ``known`` covers."""
    spans = _uncovered_spans(known, sig.block_lengths(), len(view), sig.block_size)
    if not spans:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    index = block_index(sig)
    found = [index.scan(view, sig.sums.strong, start, stop, -1) for start, stop in spans]
    return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])


def _uncovered_spans(found: np.ndarray, lengths: np.ndarray, size: int, block_size: int) -> list[tuple[int, int]]:
    """The byte ranges of a buffer of ``size`` that no block placed by
    ``found`` covers, each widened by a block less one byte on both sides, so
    that a block straddling a span's edge is seen by a scan of it."""
    placed = found >= 0
    starts = found[placed]
    order = np.argsort(starts, kind="stable")
    starts = starts[order]
    ends = np.maximum.accumulate(starts + lengths[placed][order]) if len(starts) else starts
    gap_starts = np.concatenate(([0], ends))
    gap_ends = np.concatenate((starts, [size]))
    margin = max(block_size - 1, 0)
    spans: list[tuple[int, int]] = []
    for start, stop in zip(gap_starts.tolist(), gap_ends.tolist()):
        if stop <= start:
            continue
        start, stop = max(0, start - margin), min(size, stop + margin)
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(stop, spans[-1][1]))
        else:
            spans.append((start, stop))
    return spans


def _without_overlaps(positions: np.ndarray, blocks: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matches sorted by position; where two overlap, the earlier stays."""
    order = np.lexsort((blocks, positions))
    positions, blocks = positions[order], blocks[order]
    ends = positions + lengths[blocks]
    if len(positions) < 2 or bool(np.all(positions[1:] >= ends[:-1])):
        return positions, blocks
    keep = np.zeros(len(positions), dtype=bool)
    reach = -1
    for i, (position, end) in enumerate(zip(positions.tolist(), ends.tolist())):
        if position >= reach:
            keep[i] = True
            reach = end
    return positions[keep], blocks[keep]


def _ops_from_matches(positions, blocks, basis_offsets, basis_lengths, target_size) -> list:
    """Matches (target position, basis block) -> runs: consecutive matches
    that are also consecutive in the basis merge into one BASIS run, and the
    gaps between matches become SOURCE runs."""
    ops = []
    if len(positions):
        starts_in_basis = basis_offsets[blocks]
        lengths = basis_lengths[blocks]
        ends = positions + lengths
        joined = (positions[1:] == ends[:-1]) & (starts_in_basis[1:] == starts_in_basis[:-1] + lengths[:-1])
        run_starts = np.flatnonzero(np.concatenate(([True], ~joined)))
        run_ends = np.append(run_starts[1:], len(positions)) - 1
        cursor = 0
        for first, last in zip(run_starts.tolist(), run_ends.tolist()):
            target_pos = int(positions[first])
            if target_pos > cursor:
                ops.append((SOURCE, cursor, target_pos - cursor))
            length = int(ends[last]) - target_pos
            ops.append((BASIS, int(starts_in_basis[first]), length))
            cursor = target_pos + length
    else:
        cursor = 0
    if cursor < target_size:
        ops.append((SOURCE, cursor, target_size - cursor))
    return ops


def fetch_recipe(source_sig: Signature, basis_buffer, known=None) -> Recipe:
    """zsync direction: the recipe for the source file described by
    ``source_sig``, reusing whatever blocks of it the local basis (old copy)
    already holds; SOURCE runs are the byte ranges to fetch. ``known`` gives,
    per source block, an offset of the basis holding its bytes, or -1
    (Signature.like_offsets of a signature rebuilt from this basis): only
    basis bytes that no known block covers are scanned. A wrong hint makes
    apply_recipe's verification fail, never a wrong file."""
    if source_sig.digest is None:
        raise BadInput("the source's signature was made without its file digest; it cannot drive a fetch")
    view = _byte_view(basis_buffer)
    offsets, lengths = source_sig.block_offsets(), source_sig.block_lengths()
    if known is None:
        found = np.full(len(source_sig), -1, dtype=np.int64)
        _place_found(source_sig, found, *find_blocks(source_sig, view))
    else:
        found = _checked_hint(known, source_sig)
        if (found < 0).any():
            _place_found(source_sig, found, *_scan_spans(source_sig, view, found))
    _find_short_blocks_in_place(source_sig, view, found, offsets, lengths)
    ops = _ops_from_found(found, offsets, lengths)
    return _recipe_for(source_sig, ops, len(view))


def _recipe_for(source_sig: Signature, ops: list, basis_size: int | None) -> Recipe:
    """A recipe building the file ``source_sig`` describes, verified by its digest."""
    algo = source_sig.sums.digest_algo
    layout = None if algo == "blake3" else (source_sig.block_size, list(source_sig.boundaries))
    return Recipe(ops, source_sig.file_size, source_sig.digest.hex(), basis_size, algo, layout)


HINT_MIN_BYTES = 64 << 20  # below this, a whole scan costs about what hashing the basis for a hint does


def layout_hint(source_sig: Signature, basis_buffer, min_bytes: int = HINT_MIN_BYTES) -> np.ndarray | None:
    """A ``known=`` for fetch_recipe found without rolling: the basis is cut
    into its own FITS segments and hashed in the source's block size, and a
    source block whose sums equal the basis block at the same place in the
    counterpart segment (same length, nearest in order; else the same index)
    is known to be there (only the basis blocks' strong digests are computed).
    A header edit or a grown header then leaves only the header's bytes to
    scan. None for a basis under ``min_bytes``."""
    view = _byte_view(basis_buffer)
    if len(view) < min_bytes or len(source_sig) == 0:
        return None
    local = LocalSegments(view, source_sig.block_size, source_sig.sums)
    known = np.full(len(source_sig), -1, dtype=np.int64)
    strong = source_sig.strong_rows()
    lengths = source_sig.block_lengths()
    ends = source_sig.boundaries[1:] + [source_sig.file_size]
    first = 0
    for j, (start, end) in enumerate(zip(source_sig.boundaries, ends)):
        count = -(-(end - start) // source_sig.block_size)
        k = local.counterpart(end - start, j)
        if k is not None:
            # Strong digests and lengths only: equal 128-bit digests make the
            # weak sums redundant, and a wrong hint costs only a failed verify.
            their_strong, their_lengths = local.strong_rows(k)
            n = min(count, len(their_lengths))
            mine = slice(first, first + n)
            same = (lengths[mine] == their_lengths[:n]) & (strong[mine] == their_strong[:n]).all(axis=1)
            at = np.flatnonzero(same)
            known[first + at] = local.segments[k][0] + at * source_sig.block_size
        first += count
    return known


def _place_found(sig: Signature, found: np.ndarray, positions: np.ndarray, blocks: np.ndarray) -> None:
    """Record scan matches in ``found`` (basis offset per source block) for
    blocks not placed yet. Blocks with equal strong digests are the same
    bytes: one found is all found."""
    if not len(blocks):
        return
    keys = np.frombuffer(sig.strong, dtype="<u8").reshape(-1, STRONG_LEN // 8)
    _, same_as = np.unique(keys, axis=0, return_inverse=True)
    same_as = same_as.reshape(-1)
    where_class = np.full(int(same_as.max()) + 1, -1, dtype=np.int64)
    where_class[same_as[blocks]] = positions  # any place one of them was found will do
    placed = where_class[same_as]
    placed[blocks] = positions  # a block found itself keeps its own place: longer runs
    np.copyto(found, placed, where=found < 0)


def aligned_recipe(source_sig: Signature, basis_sig: Signature) -> Recipe:
    """The recipe for the source file from two signatures alone: each source
    block whose length and sums equal a block of the basis is copied from
    there; the rest are SOURCE ranges. No byte of either file is read, so
    this serves two remote hosts whose agents hash fixed blocks but cannot
    roll. With FITS-aware layouts a header edit or a grown header still
    finds every data block (blocks restart at each data unit); an insertion
    inside a data unit loses the blocks after it."""
    if source_sig.digest is None:
        raise BadInput("the source's signature was made without its file digest; it cannot drive a transfer")
    found = aligned_offsets(source_sig, basis_sig)
    ops = _ops_from_found(found, source_sig.block_offsets(), source_sig.block_lengths())
    return _recipe_for(source_sig, ops, basis_sig.file_size)


def aligned_offsets(source_sig: Signature, basis_sig: Signature) -> np.ndarray:
    """Per source block, the basis offset of a block with the same length,
    weak and strong sums, or -1: a ``known=`` for fetch_recipe, or the pairs
    of aligned_recipe. A block still at its own offset stays there (runs stay
    long); any other is taken from the first place the basis has it.
    Vectorised: a sorted join on the whole 128-bit strong digests, then
    length and weak sum compared for each pair found."""
    offsets, lengths = source_sig.block_offsets(), source_sig.block_lengths()
    basis_offsets, basis_lengths = basis_sig.block_offsets(), basis_sig.block_lengths()
    found = np.full(len(source_sig), -1, dtype=np.int64)
    if not len(source_sig) or not len(basis_sig) or source_sig.sums != basis_sig.sums:
        return found  # sums of two suites never pair
    mine, theirs = _strong_words(source_sig), _strong_words(basis_sig)

    def equal(blocks: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return ((lengths[blocks] == basis_lengths[candidates])
                & (source_sig.weak[blocks] == basis_sig.weak[candidates])
                & (mine[blocks] == theirs[candidates]).all(axis=1))

    same_place = np.minimum(np.searchsorted(basis_offsets, offsets), len(basis_offsets) - 1)
    here = (basis_offsets[same_place] == offsets) & equal(np.arange(len(offsets)), same_place)
    found[here] = offsets[here]
    rest = np.flatnonzero(~here)
    their_keys, my_keys = _as_keys(theirs), _as_keys(mine)
    order = np.argsort(their_keys, kind="stable")  # equal digests keep file order: the first wins
    keys = their_keys[order]
    at = np.minimum(np.searchsorted(keys, my_keys[rest]), len(keys) - 1)
    candidates = order[at]
    ok = (keys[at] == my_keys[rest]) & equal(rest, candidates)
    found[rest[ok]] = basis_offsets[candidates[ok]]
    return found


def _strong_words(sig: Signature) -> np.ndarray:
    """A signature's strong digests as rows of two 64-bit words."""
    return np.frombuffer(sig.strong, dtype="<u8").reshape(-1, STRONG_LEN // 8)


_KEY = np.dtype([("high", "<u8"), ("low", "<u8")])


def _as_keys(words: np.ndarray) -> np.ndarray:
    """Rows of two words as one sortable 128-bit key each."""
    return np.ascontiguousarray(words).view(_KEY).reshape(-1)


def _find_short_blocks_in_place(sig: Signature, view: memoryview, found, offsets, lengths) -> None:
    """The scan finds a short block (a file's or segment's tail) only next to a
    matched neighbour. One whose neighbour changed is looked for where it most
    likely still is: at its own offset, and at the end of the basis (a file's
    tail after an insertion or deletion)."""
    size = len(view)
    for index in np.flatnonzero((found < 0) & (lengths < sig.block_size)).tolist():
        length = int(lengths[index])
        want = sig.strong_of(index)
        for candidate in (int(offsets[index]), size - length):
            if 0 <= candidate and candidate + length <= size and sig.sums.strong(view[candidate:candidate + length]) == want:
                found[index] = candidate
                break


def _ops_from_found(found, offsets, lengths) -> list:
    """Per target block: BASIS at its found position, or SOURCE; adjacent
    runs of the same kind that continue each other merge."""
    if len(found) == 0:
        return []
    kinds = np.where(found >= 0, BASIS, SOURCE)
    starts = np.where(found >= 0, found, offsets)
    joined = (kinds[1:] == kinds[:-1]) & (starts[1:] == starts[:-1] + lengths[:-1])
    run_starts = np.flatnonzero(np.concatenate(([True], ~joined)))
    run_lengths = np.add.reduceat(lengths, run_starts)
    return list(zip(kinds[run_starts].tolist(), starts[run_starts].tolist(), run_lengths.tolist()))


def delta_recipe_for_file(basis_sig: Signature, source_path, source_digest: str | None = None) -> Recipe:
    """delta_recipe over a local source file (mmap)."""
    with _mapped(source_path) as view:
        return delta_recipe(basis_sig, view, source_digest)


def fetch_recipe_for_file(source_sig: Signature, basis_path) -> Recipe:
    """fetch_recipe over a local basis file (mmap)."""
    with _mapped(basis_path) as view:
        return fetch_recipe(source_sig, view)


class _mapped:
    """Context manager: a read-only memoryview of a whole local file."""

    def __init__(self, path):
        self.path = path

    def __enter__(self) -> memoryview:
        try:
            self._file = open(self.path, "rb")
        except FileNotFoundError:
            raise NotFound(f"{self.path} does not exist") from None
        size = os.fstat(self._file.fileno()).st_size
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")
        return self._view

    def __exit__(self, *exc):
        self._view.release()
        if self._map is not None:
            self._map.close()
        self._file.close()


# ---------------------------------------------------------------------------
# Patching
# ---------------------------------------------------------------------------


class SourceBytes:
    """Exact-length pieces cut from the chunks ``read_source`` yields."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._current = memoryview(b"")

    def take(self, length: int):
        while length:
            if not self._current:
                chunk = next(self._chunks, None)
                if chunk is None:
                    raise TransferFailed("the source sent fewer bytes than the recipe needs")
                self._current = memoryview(chunk).cast("B")
                continue
            piece = self._current[:length]
            self._current = self._current[len(piece):]
            length -= len(piece)
            yield piece

    def finish(self) -> None:
        if self._current or next(self._chunks, None):
            raise TransferFailed("the source sent more bytes than the recipe needs")


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Verifier(threading.Thread):
    """Hashes the output file as it is written, following a watermark, so
    reading it back overlaps with writing it."""

    def __init__(self, read_fd: int, base: int, size: int, hasher):
        super().__init__(name="fitsync-verify", daemon=True)
        self._fd = read_fd
        self._base = base
        self._size = size
        self._written = 0
        self._aborted = False
        self._cond = threading.Condition()
        self.hasher = hasher
        self.error: BaseException | None = None

    def advance(self, written: int) -> None:
        with self._cond:
            self._written = written
            self._cond.notify()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify()

    def run(self) -> None:
        done = 0
        try:
            while done < self._size:
                with self._cond:
                    while not self._aborted and self._written - done < min(VERIFY_CHUNK, self._size - done):
                        self._cond.wait()
                    if self._aborted:
                        return
                    upto = self._written
                done = self._hash(done, upto)
        except BaseException as exc:  # reported by apply_recipe
            self.error = exc

    def _hash(self, start: int, end: int) -> int:
        begin = self._base + start
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self._fd, self._base + end - aligned, access=mmap.ACCESS_READ, offset=aligned) as mapped:
            with memoryview(mapped) as view:
                self.hasher.update(view[begin - aligned :])
        return end


def _reader_for(out_fd: int) -> int | None:
    """A readable descriptor of the same file as ``out_fd`` (which may be
    write-only), or None when out_fd is not a regular file."""
    if not stat_mod.S_ISREG(os.fstat(out_fd).st_mode):
        return None
    try:
        return os.open(f"/proc/self/fd/{out_fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ETXTBSY}


class _Copier:
    """Copies basis ranges to the output: in the kernel when it can, else
    through a buffer (other file systems, pipes)."""

    def __init__(self, basis_fd: int, out_fd: int, hasher=None):
        self._basis = basis_fd
        self._out = out_fd
        self._hasher = hasher  # set when the output cannot be read back
        self._kernel = hasher is None and hasattr(os, "copy_file_range")
        self.kernel_bytes = 0  # copied by copy_file_range

    def copy(self, offset: int, length: int) -> int:
        """Bytes copied: ``length``, fewer only where the basis ends."""
        done = 0
        while done < length:
            if self._kernel:
                try:
                    n = os.copy_file_range(self._basis, self._out, length - done, offset + done)
                    self.kernel_bytes += n
                except OSError as exc:
                    if exc.errno not in _NO_KERNEL_COPY:
                        raise
                    self._kernel = False
                    continue
            else:
                data = os.pread(self._basis, min(length - done, 8 << 20), offset + done)
                n = len(data)
                if n:
                    if self._hasher is not None:
                        self._hasher.update(data)
                    _write_all(self._out, data)
            if n == 0:
                break
            done += n
        return done


class _BufferedWriter:
    """The target through the page cache, with DirectWriter's interface: basis
    runs copied in the kernel, the output read back by a _Verifier as it is
    written; where it cannot be read back (a pipe), bytes are hashed as written."""

    def __init__(self, out_fd: int, size: int, new_hasher=lambda: blake3.blake3(max_threads=blake3.blake3.AUTO)):
        self._out = out_fd
        self._read_fd = _reader_for(out_fd)
        self._verifier = None
        self._hasher = None
        if self._read_fd is not None:
            self._verifier = _Verifier(self._read_fd, os.lseek(out_fd, 0, os.SEEK_CUR), size, new_hasher())
            self._verifier.start()
        else:
            self._hasher = new_hasher()
        self._copier = None
        self._written = 0

    def write(self, data) -> None:
        if self._hasher is not None:
            self._hasher.update(data)
        _write_all(self._out, data)
        self._advance(len(data))

    def copy_from(self, fd: int, offset: int, length: int) -> int:
        """Like DirectWriter.copy_from; in pieces, so verification can follow."""
        if self._copier is None:
            self._copier = _Copier(fd, self._out, self._hasher)
        done = 0
        while done < length:
            step = min(COPY_CHUNK, length - done)
            got = self._copier.copy(offset + done, step)
            done += got
            self._advance(got)
            if got < step:
                break
        return done

    @property
    def built(self) -> str:
        copier = self._copier
        return "kernel copy" if copier is not None and copier.kernel_bytes else "rewritten"

    def _advance(self, n: int) -> None:
        self._written += n
        if self._verifier:
            self._verifier.advance(self._written)

    def finish(self) -> str:
        """Hex digest of the output as read back (of the bytes written for a pipe)."""
        if self._verifier is None:
            return self._hasher.hexdigest()
        self._close_verifier()
        if self._verifier.error is not None:
            raise TransferFailed(f"cannot read back the written file to verify it: {self._verifier.error}")
        return self._verifier.hasher.hexdigest()

    def abort(self) -> None:
        if self._verifier is not None:
            self._verifier.abort()
            self._close_verifier()

    def _close_verifier(self) -> None:
        self._verifier.join()
        os.close(self._read_fd)


def apply_recipe(recipe: Recipe, basis_fd: int | None, read_source: ReadSource, out_fd: int,
                 writer=None) -> None:
    """Write the target described by ``recipe`` to ``out_fd`` (a new, empty
    file; written from its current position), copying BASIS runs from
    ``basis_fd`` and SOURCE runs from ``read_source(recipe.source_ranges())``,
    an iterable of bytes covering those ranges in order. The BLAKE3 of the
    result is compared with ``recipe.digest``; raise VerificationFailed on a
    mismatch (the caller deletes the file). Large targets are written with
    direct I/O and hashed as handed to the kernel (fitsync.directio); others
    go through the page cache and are read back while they are written.
    ``writer`` replaces that choice (a reflink.CloneWriter). Returns how
    the file was built (``writer.built``: "cloned", "kernel copy", "rewritten")."""
    if recipe.basis_bytes + recipe.source_bytes != recipe.target_size:
        raise BadInput("recipe runs do not add up to the target size")
    source = SourceBytes(read_source(recipe.source_ranges()) if recipe.source_bytes else ())
    writer = (writer or open_direct(out_fd, recipe.target_size, recipe.new_hasher())
              or _BufferedWriter(out_fd, recipe.target_size, recipe.new_hasher))
    got = _write_ops(recipe, basis_fd, source, writer)
    built = writer.built
    if got != recipe.digest:
        name = "BLAKE3" if recipe.digest_algo == "blake3" else "digest"
        raise VerificationFailed(
            f"the patched file's {name} {got[:16]}... differs from the expected {recipe.digest[:16]}...; "
            "the basis or the source changed during the transfer, try again"
        )
    return built


def _write_ops(recipe: Recipe, basis_fd: int | None, source: "SourceBytes", writer) -> str:
    """Run the recipe's ops into ``writer`` (a DirectWriter or a _BufferedWriter);
    returns the BLAKE3 the writer vouches for."""
    try:
        for kind, offset, length in recipe.ops:
            if kind == BASIS:
                if basis_fd is None:
                    raise BadInput("the recipe copies from a basis file but none was given")
                if writer.copy_from(basis_fd, offset, length) != length:
                    raise VerificationFailed(
                        f"the basis file ends before offset {offset + length}; it changed since the recipe was made"
                    )
            else:
                for piece in source.take(length):
                    writer.write(piece)
        source.finish()
    except BaseException:
        writer.abort()
        raise
    return writer.finish()
