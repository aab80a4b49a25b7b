"""A local file cut into its FITS segments, hashed block by block on demand:
what the other version of a file (a remote signature by difference, a pull's
layout hint) is compared with, without rolling."""

from __future__ import annotations

import numpy as np

from fitsync import _native
from fitsync.fits import segment_boundaries
from fitsync.signature import STRONG_LEN, _in_halves, block_layout, signature_of_buffer, strong_digest
from fitsync.sums import FAST, Sums


def block_strong_rows(buffer, block_size: int, strong=strong_digest) -> tuple[np.ndarray, np.ndarray]:
    """(strong digests as rows of STRONG_LEN bytes, block lengths) of
    ``buffer`` cut into ``block_size`` blocks, without weak sums: enough to
    compare two files block by block at known places, where the weak sum
    (three times the strong one's cost) would only be compared too."""
    view = memoryview(buffer).cast("B")
    offsets, lengths = block_layout(len(view), block_size)
    out = np.zeros(len(offsets) * STRONG_LEN, dtype=np.uint8)

    def hash_part(first: int, last: int) -> None:
        _native.strong_blocks(view, offsets[first:last], lengths[first:last],
                              out[first * STRONG_LEN : last * STRONG_LEN], strong, STRONG_LEN)

    _in_halves(hash_part, 0, len(offsets), len(view), strong)
    return out.reshape(-1, STRONG_LEN), lengths


class LocalSegments:
    """A local file cut into its own FITS segments (header and data units),
    with the block sums of a segment computed on demand in ``block_size``
    blocks: what another version of the file is matched against without
    rolling (a grown header moves a data unit, not its blocks)."""

    def __init__(self, data, block_size: int, sums: Sums = FAST):
        self.data = data
        self.block_size = block_size
        self.sums = sums
        size = len(data)
        bounds = segment_boundaries(lambda o, n: bytes(data[o:o + n]), size) if size else [0]
        self.segments = list(zip(bounds, bounds[1:] + [size]))
        self._sigs: dict = {}

    def length(self, k: int) -> int:
        start, end = self.segments[k]
        return end - start

    def warm(self) -> None:
        """Compute every segment's signature (run in a thread, overlapping the remote work)."""
        for k in range(len(self.segments)):
            self.signature(k)

    def signature(self, k: int):
        if k not in self._sigs:
            start, end = self.segments[k]
            self._sigs[k] = signature_of_buffer(memoryview(self.data)[start:end], self.block_size, fits_aware=False,
                                                digest=False, sums=self.sums)  # matching needs no digest
        return self._sigs[k]

    def strong_rows(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(strong digest rows, block lengths) of segment k: from its
        signature when that was computed, else hashed without weak sums."""
        if k in self._sigs:
            sig = self._sigs[k]
            return sig.strong_rows(), sig.block_lengths()
        start, end = self.segments[k]
        return block_strong_rows(memoryview(self.data)[start:end], self.block_size, self.sums.strong)

    def find_segment(self, length: int, remote_hash: str, near: int) -> int | None:
        """A local segment with the remote segment's content (its strong sums hash the same)."""
        candidates = sorted((k for k in range(len(self.segments)) if self.length(k) == length),
                            key=lambda k: abs(k - near))[:4]
        for k in candidates:
            if self.sums.strong(self.signature(k).strong).hex() == remote_hash:
                return k
        return None

    def counterpart(self, length: int, near: int) -> int | None:
        """The local segment to compare group by group: same length nearest in
        order, else the one at the same index."""
        same = sorted((k for k in range(len(self.segments)) if self.length(k) == length), key=lambda k: abs(k - near))
        if same:
            return same[0]
        return near if near < len(self.segments) else None
