"""A delta recipe: how to build a target file from runs of an old file
(BASIS) and of the new one (SOURCE), and its wire format
(docs/signature-format.md). fitsync.delta makes recipes; fitsync.patch
applies them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import blake3
import numpy as np

from fitsync import wire
from fitsync.errors import BadInput
from fitsync.sums import BlockListHasher
from fitsync.signature import block_layout, check_length, open_envelope, seal

BASIS = 0
SOURCE = 1


MAGIC, FORMAT_VERSION = wire.RECIPE_MAGIC, wire.RECIPE_FORMAT_VERSION  # fitsync/wire.py, shared with the agent
UNKNOWN_SIZE = (1 << 64) - 1
_HEADER = wire.RECIPE_HEADER
_OP = np.dtype([("kind", "u1"), ("offset", "<u8"), ("length", "<u8")])  # wire.RECIPE_OP as a numpy row
assert _OP.itemsize == wire.RECIPE_OP.size
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
