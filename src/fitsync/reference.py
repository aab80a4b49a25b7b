"""Pure-Python reference implementations of the compiled core: the test
oracles. They follow the definitions, not the optimisations, and are far
too slow (a few MB/s) for real files.
"""

from __future__ import annotations

import blake3

CHAR_OFFSET = 31  # librsync's ROLLSUM_CHAR_OFFSET
MASK16 = 0xFFFF
MASK32 = 0xFFFFFFFF


def fits_sum(data: bytes, seed: int = 0) -> int:
    """FITS ones'-complement sum: big-endian 32-bit words, zero-padded, with
    end-around carry."""
    padded = bytes(data) + b"\0" * (-len(data) % 4)
    s = seed & MASK32
    for i in range(0, len(padded), 4):
        s += int.from_bytes(padded[i : i + 4], "big")
        s = (s & MASK32) + (s >> 32)
    return s


def weak_sum(data: bytes) -> int:
    """librsync rollsum of a whole block."""
    n = len(data)
    s1 = sum(x + CHAR_OFFSET for x in data) & MASK16
    s2 = sum((n - i) * (x + CHAR_OFFSET) for i, x in enumerate(data)) & MASK16
    return (s2 << 16) | s1


def rolling_weak_sums(data: bytes, window: int) -> list[int]:
    """Weak sum of every window, by rolling (s1, s2) one byte at a time."""
    if window <= 0 or len(data) < window:
        return []
    s1 = sum(x + CHAR_OFFSET for x in data[:window])
    s2 = sum((window - i) * (x + CHAR_OFFSET) for i, x in enumerate(data[:window]))
    sums = [((s2 & MASK16) << 16) | (s1 & MASK16)]
    for k in range(1, len(data) - window + 1):
        out, new = data[k - 1], data[k - 1 + window]
        s1 += new - out
        s2 += s1 - window * (out + CHAR_OFFSET)
        sums.append(((s2 & MASK16) << 16) | (s1 & MASK16))
    return sums


def block_layout(file_size: int, block_size: int, boundaries=(0,)) -> list[tuple[int, int]]:
    """(offset, length) of every block: fixed blocks restarting at each boundary."""
    bounds = list(boundaries) or [0]
    ends = bounds[1:] + [file_size]
    blocks = []
    for start, end in zip(bounds, ends):
        for offset in range(start, end, block_size):
            blocks.append((offset, min(block_size, end - offset)))
    return blocks


def find_blocks(blocks: list[tuple[int, bytes, int]], block_size: int, data: bytes,
                strong, expect_first: int = 0) -> list[tuple[int, int]]:
    """The matcher's definition (see BlockIndex.scan), one byte at a time.

    ``blocks`` is [(weak, strong digest, length)] in signature order; returns
    non-overlapping [(position, block number)]. Only full-size blocks are
    looked up by weak sum (lowest block number first); shorter blocks are
    found as the successor of a match or by extending a match backwards."""
    table: dict[int, list[int]] = {}
    for j, (weak, _, length) in enumerate(blocks):
        if length == block_size:
            table.setdefault(weak, []).append(j)

    def is_at(j: int, pos: int) -> bool:
        weak, digest, length = blocks[j]
        window = data[pos : pos + length]
        return len(window) == length and weak_sum(window) == weak and strong(window) == digest

    found: list[tuple[int, int]] = []
    pos = literal_start = 0
    expected = expect_first
    while pos < len(data):
        if 0 <= expected < len(blocks) and is_at(expected, pos):
            found.append((pos, expected))
            pos += blocks[expected][2]
            literal_start = pos
            expected += 1
            continue
        expected = -1
        match = None
        while pos + block_size <= len(data):
            window = data[pos : pos + block_size]
            for j in table.get(weak_sum(window), ()):
                if strong(window) == blocks[j][1]:
                    match = j
                    break
            if match is not None:
                break
            pos += 1
        if match is None:
            break
        before = []
        j, q = match - 1, pos
        while j >= 0 and q - blocks[j][2] >= literal_start and is_at(j, q - blocks[j][2]):
            q -= blocks[j][2]
            before.append((q, j))
            j -= 1
        found.extend(reversed(before))
        found.append((pos, match))
        pos += block_size
        literal_start = pos
        expected = match + 1
    return found


def apply_ops(ops, basis: bytes, source: bytes) -> bytes:
    """The target a recipe's runs describe."""
    parts = []
    for kind, offset, length in ops:
        parts.append((basis if kind == 0 else source)[offset : offset + length])
    return b"".join(parts)


def digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()
