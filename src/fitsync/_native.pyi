"""Type stub of the compiled core (ext/_native.pyx). Buffers are any
contiguous bytes-like object: bytes, bytearray, mmap, memoryview, numpy."""

from typing import Any, Callable

import numpy as np
import numpy.typing as npt

Buffer = Any  # an object with the buffer protocol (collections.abc.Buffer from Python 3.12)

StrongFn = Callable[[memoryview], bytes]

def fits_sum32(data: Buffer, seed: int = 0) -> int:
    """FITS 32-bit ones'-complement sum of big-endian words (zero-padded), plus seed."""

def weak_sum(data: Buffer) -> int:
    """librsync rollsum (s2 << 16 | s1, char offset 31) of the whole buffer."""

def rolling_weak_sums(data: Buffer, window: int, out: npt.NDArray[np.uint32]) -> int:
    """out[k] = weak sum of data[k:k+window]; returns the number of windows."""

def block_weak_sums(
    data: Buffer,
    offsets: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    out: npt.NDArray[np.uint32],
) -> None:
    """out[k] = weak sum of data[offsets[k]:offsets[k]+lengths[k]]."""

def bind_xxh3_128(library_path: str | bytes, py_fn: StrongFn) -> bool:
    """Call XXH3_128bits from C wherever ``py_fn`` is the strong digest; whether it is in use."""

def strong_in_c(strong_fn: StrongFn, strong_len: int = ...) -> bool:
    """Whether ``strong_fn`` is computed from C."""

def hash_blocks(
    buffer: Buffer,
    offsets: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    weak_out: npt.NDArray[np.uint32],
    strong_out: npt.NDArray[np.uint8],
    strong_fn: StrongFn,
    strong_len: int,
) -> None:
    """Weak sum and strong digest (strong_fn, strong_len bytes) of every block."""

def strong_blocks(
    buffer: Buffer,
    offsets: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    strong_out: npt.NDArray[np.uint8],
    strong_fn: StrongFn,
    strong_len: int,
) -> None:
    """Strong digest (strong_fn, strong_len bytes) of every block, no weak sums."""

class BlockIndex:
    """Hash table over a signature's full-size blocks, for scanning."""

    def __init__(
        self,
        weak: npt.NDArray[np.uint32],
        strong: npt.NDArray[np.uint8],
        lengths: npt.NDArray[np.int64],
        block_size: int,
        strong_len: int,
    ) -> None: ...
    def scan(
        self,
        buffer: Buffer,
        strong_fn: StrongFn,
        start: int = 0,
        stop: int = -1,
        expect_first: int = 0,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Non-overlapping (positions, block numbers) of blocks found in buffer[start:stop]."""
