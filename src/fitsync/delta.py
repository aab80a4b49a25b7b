"""Deltas between two versions of a file, in both directions.

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

``fitsync.patch.apply_recipe`` builds the target from a recipe.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fitsync import _native
from fitsync.errors import BadInput, NotFound
from fitsync.mapped import mapped_file
from fitsync.segments import LocalSegments
from fitsync.recipe import BASIS, FORMAT_VERSION, SOURCE, ReadSource, Recipe  # noqa: F401  (re-exported)
from fitsync.signature import STRONG_LEN, Signature, buffer_digest

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
        self._map = mapped_file(self._file.fileno(), what=self.path) if size else None
        self._view = memoryview(self._map.map) if self._map is not None else memoryview(b"")
        return self._view

    def __exit__(self, exc_type, exc, tb):
        self._view.release()
        try:
            if self._map is not None:
                self._map.close(exc)
        finally:
            self._file.close()


def __getattr__(name: str):
    # The patching half lives in fitsync.patch; its names stay importable
    # from here, as fitsync's agent (on a host where fitsync is installed)
    # and older callers import them.
    if name in ("apply_recipe", "SourceBytes"):
        from fitsync import patch

        return getattr(patch, name)
    raise AttributeError(f"module 'fitsync.delta' has no attribute {name!r}")
