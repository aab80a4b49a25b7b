"""The STDLIB suite (Adler-32, SHA-256 per block, SHA-256 of the block
SHA-256s): its digest hasher fed in any pieces, signatures that name their
suite, and deltas in both directions rebuilt and verified with it."""

from __future__ import annotations

import hashlib
import os
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fitsync import reference
from fitsync.delta import apply_recipe, delta_recipe, fetch_recipe
from fitsync.errors import BadInput, VerificationFailed
from fitsync.signature import Signature, block_layout, signature_of_buffer
from fitsync.sums import FAST, STDLIB, BlockListHasher, file_block_list_digest
from test_delta import file_pairs


def _expected(data: bytes, lengths) -> bytes:
    out, pos = hashlib.sha256(), 0
    for n in lengths:
        out.update(hashlib.sha256(data[pos:pos + n]).digest())
        pos += n
    return out.digest()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=5000), block=st.integers(1, 700), cuts=st.lists(st.integers(0, 5000), max_size=6),
       parallel=st.sampled_from([1, 64, 1 << 30]))
def test_block_list_hasher_takes_any_pieces(data, block, cuts, parallel):
    """Fed in arbitrary pieces, with whole blocks hashed on two threads or
    one at a time, the digest is SHA-256 over the blocks' SHA-256s."""
    lengths = block_layout(len(data), block)[1].tolist()
    hasher = BlockListHasher(lengths)
    hasher.PARALLEL_BYTES = parallel  # small: the two-thread path on every update
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    for a, b in zip(points, points[1:]):
        hasher.update(data[a:b])
    assert hasher.digest() == _expected(data, lengths)


def test_block_list_hasher_never_matches_short_or_long_input():
    lengths = [10, 10, 5]
    data = os.urandom(25)
    short, long = BlockListHasher(lengths), BlockListHasher(lengths)
    short.update(data[:24])
    long.update(data + b"x")
    assert short.digest() != _expected(data, lengths) and long.digest() != _expected(data, lengths)


def test_file_digest_in_fixed_blocks(tmp_path):
    data = os.urandom(10 << 20 | 12345)
    (tmp_path / "f").write_bytes(data)
    lengths = block_layout(len(data), 4 << 20)[1].tolist()
    assert file_block_list_digest(tmp_path / "f", 4 << 20) == _expected(data, lengths).hex()


def test_a_stdlib_signature_names_its_suite_and_checks_its_trailer():
    data = os.urandom(50_000)
    sig = signature_of_buffer(data, 4096, fits_aware=False, sums=STDLIB)
    raw = sig.to_bytes()
    assert raw[10:12] == b"\x02\x02"
    back = Signature.from_bytes(raw)
    assert back == sig and back.sums is STDLIB
    assert back.weak.tolist() == [zlib.adler32(data[o:o + n]) for o, n in zip(*map(np.ndarray.tolist,
                                                                                   block_layout(50_000, 4096)))]
    assert sig != signature_of_buffer(data, 4096, fits_aware=False)  # FAST: other sums, other digest
    damaged = bytearray(raw)
    damaged[-20] ^= 1
    with pytest.raises(BadInput, match="damaged"):
        Signature.from_bytes(bytes(damaged))
    unknown = bytearray(raw)
    unknown[10] = 9
    with pytest.raises(BadInput, match="block sums this fitsync does not know"):
        Signature.from_bytes(bytes(unknown))


@pytest.mark.parametrize("direction", ["rsync", "zsync"])
@settings(max_examples=200, deadline=None)
@given(pair=file_pairs())
def test_stdlib_round_trip_in_both_directions(direction, pair):
    """The rolling Adler-32 matcher finds the same kind of matches as
    rollsum's: every recipe rebuilds the new file exactly."""
    old, new, block_size = pair
    if direction == "rsync":
        recipe = delta_recipe(signature_of_buffer(old, block_size, fits_aware=False, sums=STDLIB), new)
    else:
        recipe = fetch_recipe(signature_of_buffer(new, block_size, fits_aware=False, sums=STDLIB), old)
        assert recipe.digest_algo == "sha256-blocks"
        assert recipe.digest == _expected(new, block_layout(len(new), block_size)[1].tolist()).hex()
    assert reference.apply_ops(recipe.ops, old, new) == new
    if old == new and old:
        assert recipe.source_bytes == 0


def test_stdlib_matches_at_every_offset():
    """A block moved by one byte is still found: Adler-32 rolls."""
    rng = np.random.default_rng(7)
    old = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    new = b"x" + old
    recipe = fetch_recipe(signature_of_buffer(new, 2880, fits_aware=False, sums=STDLIB), old)
    assert recipe.source_bytes < 2 * 2880


def _patch(recipe, old_path, out_path, source: bytes) -> None:
    with open(old_path, "rb") as basis, open(out_path, "wb") as out:
        apply_recipe(recipe, basis.fileno(), lambda ranges: [source[o:o + n] for o, n in ranges], out.fileno())


@pytest.mark.parametrize("size", [300_000, 70 << 20])  # through the page cache, and written around it
def test_a_stdlib_fetch_is_verified_and_a_changed_basis_is_refused(tmp_path, size):
    rng = np.random.default_rng(size)
    old = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    new = old[:1000] + b"new bytes" + old[1000:]
    (tmp_path / "old").write_bytes(old)
    recipe = fetch_recipe(signature_of_buffer(new, 17280, fits_aware=False, sums=STDLIB), old)
    _patch(recipe, tmp_path / "old", tmp_path / "out", new)
    assert (tmp_path / "out").read_bytes() == new
    with open(tmp_path / "old", "r+b") as f:  # the basis changes after the recipe was made
        f.seek(size // 2)
        f.write(b"\xff" * 10)
    with pytest.raises(VerificationFailed, match="digest"):
        _patch(recipe, tmp_path / "old", tmp_path / "out2", new)


def test_the_suites_never_pair():
    from fitsync.delta import aligned_offsets

    data = os.urandom(100_000)
    fast = signature_of_buffer(data, 4096, fits_aware=False, sums=FAST)
    stdlib = signature_of_buffer(data, 4096, fits_aware=False, sums=STDLIB)
    assert (aligned_offsets(stdlib, stdlib) >= 0).all()
    assert (aligned_offsets(stdlib, fast) == -1).all() and (aligned_offsets(fast, stdlib) == -1).all()
