"""The compiled core agrees with the pure-Python reference, and its rolling
sum values are pinned (they are part of the signature format)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fitsync import _native, reference
from fitsync.signature import STRONG_LEN, signature_of_buffer, strong_digest

# Golden values of the weak sum (librsync rollsum, char offset 31). Changing
# them changes every stored signature: bump the format version instead.
GOLDEN_WEAK = {
    b"": 0x00000000,
    b"\x00": 0x001F001F,
    b"abc": 0x03040183,  # s1 = 97+98+99+3*31 = 0x183; s2 = 3*128 + 2*129 + 1*130 = 0x304
    b"fitsync": 0x0F5E03D9,
    bytes(range(256)): 0x3A009E80,
    bytes(2880): 0x66605CC0,  # s1 = 31*2880 mod 2**16; s2 = 31*2880*2881/2 mod 2**16
    b"\xff" * 65536: 0x00000000,
}


@pytest.mark.parametrize("data,expected", sorted(GOLDEN_WEAK.items(), key=lambda kv: len(kv[0])))
def test_weak_sum_golden_values(data, expected):
    assert _native.weak_sum(data) == expected
    assert reference.weak_sum(data) == expected


def test_rolling_sums_golden_values():
    data = bytes(range(256)) * 4
    out = np.zeros(len(data), dtype=np.uint32)
    count = _native.rolling_weak_sums(data, 100, out)
    assert count == len(data) - 99
    assert [hex(v) for v in out[[0, 1, 155, 156, 924]]] == [
        hex(0xEE801F72), hex(0x023A1FD6), hex(0xE01E5BFE), hex(0xF3D85C62), hex(0xF3D85C62)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000))
def test_weak_sum_equals_reference(data):
    assert _native.weak_sum(data) == reference.weak_sum(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=1500), st.integers(1, 400))
def test_rolling_equals_reference_and_block_sums(data, window):
    out = np.zeros(len(data), dtype=np.uint32)
    count = _native.rolling_weak_sums(data, window, out)
    expected = reference.rolling_weak_sums(data, window)
    assert count == len(expected)
    assert out[:count].tolist() == expected
    # rolling a window gives the same value as summing it from scratch
    for k in range(0, count, max(1, count // 7)):
        assert expected[k] == _native.weak_sum(data[k : k + window])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=6000), st.integers(1, 700), st.lists(st.integers(1, 5999), max_size=4))
def test_block_sums_equal_reference(data, block_size, cuts):
    bounds = sorted({0, *(c for c in cuts if c < len(data))})
    blocks = reference.block_layout(len(data), block_size, bounds)
    offsets = np.array([o for o, _ in blocks], dtype=np.int64)
    lengths = np.array([n for _, n in blocks], dtype=np.int64)
    weak = np.zeros(len(blocks), dtype=np.uint32)
    strong = np.zeros(len(blocks) * STRONG_LEN, dtype=np.uint8)
    _native.hash_blocks(data, offsets, lengths, weak, strong, strong_digest, STRONG_LEN)
    assert weak.tolist() == [reference.weak_sum(data[o : o + n]) for o, n in blocks]
    assert strong.tobytes() == b"".join(strong_digest(data[o : o + n]) for o, n in blocks)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 0xFFFFFFFF))
def test_fits_sum_equals_reference(data, seed):
    assert _native.fits_sum32(data, seed) == reference.fits_sum(data, seed)


def test_block_outside_buffer_is_refused():
    weak = np.zeros(1, dtype=np.uint32)
    strong = np.zeros(STRONG_LEN, dtype=np.uint8)
    with pytest.raises(ValueError):
        _native.hash_blocks(b"abc", np.array([1], np.int64), np.array([3], np.int64), weak, strong,
                            strong_digest, STRONG_LEN)
    with pytest.raises(ValueError):
        _native.block_weak_sums(b"abc", np.array([0], np.int64), np.array([0], np.int64), weak)
    with pytest.raises(ValueError):
        _native.strong_blocks(b"abc", np.array([1], np.int64), np.array([3], np.int64), strong,
                              strong_digest, STRONG_LEN)


def _mutate(rng, data: bytes) -> bytes:
    """A few random edits: inserts, deletes, overwrites, block moves."""
    out = bytearray(data)
    for _ in range(int(rng.integers(0, 4))):
        kind = int(rng.integers(0, 4))
        at = int(rng.integers(0, len(out) + 1))
        n = int(rng.integers(1, 300))
        if kind == 0:
            out[at:at] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        elif kind == 1:
            del out[at : at + n]
        elif kind == 2:
            out[at : at + n] = bytes(len(out[at : at + n]))
        else:
            src = int(rng.integers(0, len(out) + 1))
            out[at:at] = out[src : src + n]
    return bytes(out)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 5000), st.sampled_from([16, 64, 100, 257]),
       st.sampled_from(["random", "zeros", "repeats"]), st.integers(-1, 2))
def test_matcher_equals_reference(seed, size, block_size, kind, expect_first):
    rng = np.random.default_rng(seed)
    if kind == "random":
        old = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    elif kind == "zeros":
        old = bytes(size)
    else:
        old = (rng.integers(0, 256, block_size, dtype=np.uint8).tobytes() * (size // block_size + 1))[:size]
    new = _mutate(rng, old)
    sig = signature_of_buffer(old, block_size, fits_aware=False)
    blocks = [(int(sig.weak[j]), sig.strong_of(j), int(sig.block_lengths()[j])) for j in range(len(sig))]
    expected = reference.find_blocks(blocks, block_size, new, strong_digest, expect_first)
    if not len(sig) or not new:
        expected = []
        got = []
    else:
        index = _native.BlockIndex(sig.weak, np.frombuffer(sig.strong, np.uint8), sig.block_lengths(),
                                   block_size, STRONG_LEN)
        positions, found = index.scan(new, strong_digest, 0, len(new), expect_first)
        got = list(zip(positions.tolist(), found.tolist()))
    assert got == expected
    for pos, j in got:  # every match is real
        offset, length = int(sig.block_offsets()[j]), int(sig.block_lengths()[j])
        assert new[pos : pos + length] == old[offset : offset + length]


def test_scan_range_and_bad_arguments():
    data = bytes(range(256)) * 8
    sig = signature_of_buffer(data, 128, fits_aware=False)
    index = _native.BlockIndex(sig.weak, np.frombuffer(sig.strong, np.uint8), sig.block_lengths(), 128, STRONG_LEN)
    positions, blocks = index.scan(data, strong_digest, 256, 1024, -1)
    assert positions.min() >= 256 and (positions + 128).max() <= 1024
    with pytest.raises(ValueError):
        index.scan(data, strong_digest, 10, 5, 0)
    with pytest.raises(ValueError):
        _native.BlockIndex(sig.weak, np.frombuffer(sig.strong, np.uint8)[:-1], sig.block_lengths(), 128, STRONG_LEN)


# -- xxh3-128 from C ------------------------------------------------------------

def _through_python(data) -> bytes:
    """The strong digest, but not the function bound in C: the GIL-holding path."""
    return strong_digest(data)


def test_strong_digest_runs_from_c():
    # python-xxhash's wheels export XXH3_128bits; signature import binds it.
    assert _native.strong_in_c(strong_digest)
    assert not _native.strong_in_c(_through_python)
    assert not _native.strong_in_c(strong_digest, 8)


def test_binding_refuses_a_missing_library_or_a_disagreeing_function():
    import xxhash._xxhash

    assert _native.bind_xxh3_128("/nonexistent/libxxhash.so", strong_digest) is False
    assert _native.bind_xxh3_128(xxhash._xxhash.__file__, lambda data: bytes(16)) is False
    assert _native.strong_in_c(strong_digest)  # a refused binding leaves the one in use


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 6000), st.sampled_from([16, 100, 257, 2880]))
def test_c_and_python_strong_paths_agree(seed, size, block_size):
    rng = np.random.default_rng(seed)
    old = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    new = _mutate(rng, old)
    blocks = reference.block_layout(len(old), block_size, [0])
    offsets = np.array([o for o, _ in blocks], dtype=np.int64)
    lengths = np.array([n for _, n in blocks], dtype=np.int64)
    sums = []
    for fn in (strong_digest, _through_python):
        weak = np.zeros(len(blocks), dtype=np.uint32)
        strong = np.zeros(len(blocks) * STRONG_LEN, dtype=np.uint8)
        _native.hash_blocks(old, offsets, lengths, weak, strong, fn, STRONG_LEN)
        alone = np.zeros(len(blocks) * STRONG_LEN, dtype=np.uint8)
        _native.strong_blocks(old, offsets, lengths, alone, fn, STRONG_LEN)  # no weak sums
        assert alone.tobytes() == strong.tobytes()
        sums.append((weak.tolist(), strong.tobytes()))
    assert sums[0] == sums[1]
    assert sums[0][1] == b"".join(strong_digest(old[o:o + n]) for o, n in blocks)
    if not blocks or not new:
        return
    sig = signature_of_buffer(old, block_size, fits_aware=False)
    index = _native.BlockIndex(sig.weak, np.frombuffer(sig.strong, np.uint8), sig.block_lengths(),
                               block_size, STRONG_LEN)
    found = [tuple(a.tolist() for a in index.scan(new, fn, 0, len(new), 0))
             for fn in (strong_digest, _through_python)]
    assert found[0] == found[1]
