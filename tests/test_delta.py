"""Deltas in both directions reproduce the new file byte for byte; patching
verifies; recipes serialise safely."""

from __future__ import annotations

import io
import os

import blake3
import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st

from fitsync import reference
from fitsync.delta import (
    BASIS,
    SOURCE,
    Recipe,
    aligned_offsets,
    aligned_recipe,
    apply_recipe,
    delta_recipe,
    delta_recipe_for_file,
    fetch_recipe,
    fetch_recipe_for_file,
    layout_hint,
)
from fitsync.errors import BadInput, TransferFailed, VerificationFailed
from fitsync.signature import signature_of_buffer, signature_of_file

BLOCK_SIZES = [1, 7, 64, 100, 2880]


def _base(kind: str, size: int, rng) -> bytes:
    if kind == "random":
        return rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    if kind == "zeros":
        return bytes(size)
    if kind == "repeats":  # the same 300 bytes over and over: repeated blocks
        return (rng.integers(0, 256, 300, dtype=np.uint8).tobytes() * (size // 300 + 1))[:size]
    return bytes(rng.integers(0, 4, size, dtype=np.uint8))  # low entropy text-like


def _edit(kind: str, data: bytes, rng) -> bytes:
    at = int(rng.integers(0, len(data) + 1))
    n = int(rng.integers(1, 5000))
    noise = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    if kind == "insert":
        return data[:at] + noise + data[at:]
    if kind == "delete":
        return data[:at] + data[at + n :]
    if kind == "overwrite":
        return data[:at] + noise[: len(data) - at] + data[at + n :]
    if kind == "shift1":
        return noise[:1] + data
    if kind == "shift2880":
        return (noise * 3)[:2880] + data
    if kind == "unshift1":
        return data[1:]
    if kind == "duplicate":
        return data[:at] + data[at : at + n] + data[at:]
    if kind == "truncate":
        return data[:at]
    if kind == "append":
        return data + noise
    if kind == "replace_all":
        return rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()
    if kind == "empty":
        return b""
    return data  # identical


EDITS = ["identical", "insert", "delete", "overwrite", "shift1", "shift2880", "unshift1", "duplicate",
         "truncate", "append", "replace_all", "empty"]


@st.composite
def file_pairs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = draw(st.sampled_from([0, 1, 5, 99, 2879, 2880, 2881, 10_000, 30_000]))
    old = _base(draw(st.sampled_from(["random", "zeros", "repeats", "text"])), size, rng)
    new = old
    for kind in draw(st.lists(st.sampled_from(EDITS), min_size=1, max_size=3)):
        new = _edit(kind, new, rng)
    return old, new, draw(st.sampled_from(BLOCK_SIZES))


def _check_recipe(recipe: Recipe, old: bytes, new: bytes) -> None:
    assert reference.apply_ops(recipe.ops, old, new) == new
    assert recipe.target_size == len(new)
    assert recipe.digest == blake3.blake3(new).hexdigest()
    assert recipe.basis_bytes + recipe.source_bytes == len(new)
    assert sum(n for _, n in recipe.source_ranges()) == recipe.source_bytes
    assert Recipe.from_bytes(recipe.to_bytes()) == recipe


@pytest.mark.parametrize("direction", ["rsync", "zsync"])
@settings(max_examples=250, deadline=None)
@given(pair=file_pairs())
def test_round_trip_in_both_directions(direction, pair):
    """rsync: signature of the old file, scan of the new; zsync: signature of
    the new file, scan of the old. Both must rebuild the new file exactly."""
    old, new, block_size = pair
    if direction == "rsync":
        recipe = delta_recipe(signature_of_buffer(old, block_size, fits_aware=False), new)
    else:
        recipe = fetch_recipe(signature_of_buffer(new, block_size, fits_aware=False), old)
    _check_recipe(recipe, old, new)
    if new == old and old:
        assert recipe.ops == [(BASIS, 0, len(old))]


@settings(max_examples=25, deadline=None)
@given(file_pairs(), st.booleans())
def test_patching_real_files_in_both_directions(tmp_path_factory, pair, zsync):
    old, new, block_size = pair
    tmp = tmp_path_factory.mktemp("patch")
    (tmp / "old").write_bytes(old)
    if zsync:
        recipe = fetch_recipe_for_file(signature_of_buffer(new, block_size, False), tmp / "old")
    else:
        (tmp / "new").write_bytes(new)
        recipe = delta_recipe_for_file(signature_of_file(tmp / "old", block_size, False), tmp / "new")
    _patch(recipe, tmp / "old", new, tmp / "out")
    assert (tmp / "out").read_bytes() == new


def _aligned_hint(sig, described: bytes, other: bytes, keep) -> np.ndarray:
    """Per block of ``sig`` (a signature of ``described``): its own offset
    where ``other`` holds the same bytes there and ``keep`` says so, else -1."""
    hint = np.full(len(sig), -1, dtype=np.int64)
    for i, (offset, length) in enumerate(zip(sig.block_offsets().tolist(), sig.block_lengths().tolist())):
        if keep(i) and other[offset:offset + length] == described[offset:offset + length]:
            hint[i] = offset
    return hint


@pytest.mark.parametrize("direction", ["rsync", "zsync"])
@settings(max_examples=200, deadline=None)
@given(pair=file_pairs(), seed=st.integers(0, 2**32 - 1))
def test_recipes_from_a_partial_hint_rebuild_the_new_file(direction, pair, seed):
    """A hint (some blocks' places in the scanned file, as a signature rebuilt
    from it carries) narrows the scan to the bytes it leaves uncovered; the
    recipe must still rebuild the new file exactly."""
    old, new, block_size = pair
    coin = np.random.default_rng(seed).random(1 + len(old) + len(new)) < 0.7
    if direction == "rsync":
        sig = signature_of_buffer(old, block_size, fits_aware=False)
        recipe = delta_recipe(sig, new, known=_aligned_hint(sig, old, new, lambda i: coin[i]))
    else:
        sig = signature_of_buffer(new, block_size, fits_aware=False)
        recipe = fetch_recipe(sig, old, known=_aligned_hint(sig, new, old, lambda i: coin[i]))
    _check_recipe(recipe, old, new)


@pytest.mark.parametrize("edit", ["header value", "header grown", "data overwritten"])
def test_a_full_hint_finds_what_the_whole_scan_finds(edit):
    """The mirror's cases: with the unchanged blocks' places known, the scan of
    what is left finds every other reusable block (same literal bytes)."""
    rng = np.random.default_rng(9)
    old = bytes(2880) + rng.integers(0, 256, 300 * 2880, dtype=np.uint8).tobytes()
    if edit == "header value":
        new = b"X" + old[1:]
    elif edit == "header grown":
        new = b"Y" * 2880 + old
    else:
        new = old[:100_000] + bytes(10_000) + old[110_000:]
    block = 2 * 2880
    new_sig, old_sig = signature_of_buffer(new, block), signature_of_buffer(old, block)
    full = fetch_recipe(new_sig, old)
    hinted = fetch_recipe(new_sig, old, known=_shifted_hint(new_sig, new, old))
    _check_recipe(hinted, old, new)
    assert hinted.source_bytes == full.source_bytes
    pushed = delta_recipe(old_sig, new, known=_shifted_hint(old_sig, old, new))
    _check_recipe(pushed, old, new)
    assert pushed.source_bytes == delta_recipe(old_sig, new).source_bytes


def _shifted_hint(sig, described: bytes, other: bytes) -> np.ndarray:
    """Per block of ``sig``: where ``other`` holds it at its own offset or
    shifted by the edit (0 or 2880 bytes either way), skipping the first block."""
    hint = np.full(len(sig), -1, dtype=np.int64)
    for i, (offset, length) in enumerate(zip(sig.block_offsets().tolist(), sig.block_lengths().tolist())):
        for shift in (0, 2880, -2880):
            at = offset + shift
            if i > 0 and 0 <= at and other[at:at + length] == described[offset:offset + length]:
                hint[i] = at
                break
    return hint


@settings(max_examples=150, deadline=None)
@given(pair=file_pairs())
def test_a_hint_from_hashing_the_basis_in_the_source_layout_rebuilds_the_new_file(pair):
    old, new, block_size = pair
    sig = signature_of_buffer(new, block_size)
    _check_recipe(fetch_recipe(sig, old, known=layout_hint(sig, old, min_bytes=0)), old, new)


@pytest.mark.parametrize("edit", ["value changed", "header grown", "data overwritten"])
def test_the_layout_hint_finds_every_unchanged_block_of_a_fits_file(edit):
    data = np.random.default_rng(6).standard_normal((600, 600)).astype(np.float32)
    old = _fits({"OBJECT": "crab"}, data)
    if edit == "value changed":
        new = _fits({"OBJECT": "vela"}, data)
    elif edit == "header grown":
        new = _fits({"OBJECT": "crab", **{f"K{i}": i for i in range(36)}}, data)
    else:
        changed = data.copy()
        changed[300, :50] = 0
        new = _fits({"OBJECT": "crab"}, changed)
    sig = signature_of_buffer(new, 14400)
    hint = layout_hint(sig, old, min_bytes=0)
    hinted, scanned = fetch_recipe(sig, old, known=hint), fetch_recipe(sig, old)
    _check_recipe(hinted, old, new)
    assert hinted.source_bytes == scanned.source_bytes
    assert (hint >= 0).sum() >= len(sig) - 3  # all but the changed blocks, placed without rolling
    assert layout_hint(sig, old) is None  # small files: the whole scan costs as little


def test_a_wrong_hint_fails_verification_not_silently(tmp_path):
    old = np.random.default_rng(3).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    new = old[:20_000] + b"edit" + old[20_004:]
    (tmp_path / "old").write_bytes(old)
    sig = signature_of_buffer(new, 1000, fits_aware=False)
    wrong = np.arange(len(sig), dtype=np.int64)[::-1] * 1000  # every block "found" in the wrong place
    recipe = fetch_recipe(sig, old, known=wrong)
    with pytest.raises(VerificationFailed):
        _patch(recipe, tmp_path / "old", new, tmp_path / "out")
    with pytest.raises(ValueError):
        fetch_recipe(sig, old, known=wrong[:-1])


def _patch(recipe, basis_path, new: bytes, out_path, flags=os.O_WRONLY, chunk=1000):
    """apply_recipe with a reader that returns the source ranges in odd-sized chunks."""
    requested = []

    def read_source(ranges):
        requested.extend(ranges)
        for offset, length in ranges:
            for at in range(offset, offset + length, chunk):
                yield new[at : min(at + chunk, offset + length)]

    basis = os.open(basis_path, os.O_RDONLY)
    out = os.open(out_path, flags | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        apply_recipe(recipe, basis, read_source, out)
    finally:
        os.close(basis)
        os.close(out)
    assert requested == (recipe.source_ranges() if recipe.source_bytes else [])


def _shifted_pair(rng, size=200_000):
    old = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    return old, b"!" + old[:50_000] + old[52_880:]  # 1-byte insert, 2880 bytes deleted


def test_literals_stay_small_for_shifts_insertions_and_deletions():
    old, new = _shifted_pair(np.random.default_rng(4))
    for recipe in (delta_recipe(signature_of_buffer(old, 2880, False), new),
                   fetch_recipe(signature_of_buffer(new, 2880, False), old)):
        _check_recipe(recipe, old, new)
        assert recipe.source_bytes <= 1 + 2 * 2880


def _fits(cards: dict, data) -> bytes:
    hdu = fits.PrimaryHDU(data)
    for key, value in cards.items():
        hdu.header[key] = value
    out = io.BytesIO()
    fits.HDUList([hdu, fits.ImageHDU(data[:10] * 2)]).writeto(out)
    return out.getvalue()


def test_fits_edits_send_about_the_changed_bytes_only():
    data = np.random.default_rng(5).standard_normal((1000, 1000)).astype(np.float32)
    old = _fits({"OBJECT": "crab"}, data)
    value_changed = _fits({"OBJECT": "vela"}, data)
    header_grew = _fits({"OBJECT": "crab", **{f"K{i}": i for i in range(36)}}, data)
    assert len(header_grew) == len(old) + 2880
    mid = len(old) // 2
    overwritten = old[:mid] + bytes(100_000) + old[mid + 100_000 :]
    block = 14400
    sig_old = signature_of_buffer(old, block)
    for new, most in ((value_changed, 2880), (header_grew, 5760), (overwritten, 100_000 + 2 * block)):
        recipe = delta_recipe(sig_old, new)
        _check_recipe(recipe, old, new)
        assert recipe.source_bytes <= most
        zsync = fetch_recipe(signature_of_buffer(new, block), old)
        _check_recipe(zsync, old, new)
        assert zsync.source_bytes <= most


@settings(max_examples=250, deadline=None)
@given(pair=file_pairs())
def test_recipe_from_two_signatures_rebuilds_the_new_file(pair):
    """Two remote agents: signatures only, no rolling. Whatever matches, the
    recipe rebuilds the new file exactly."""
    old, new, block_size = pair
    recipe = aligned_recipe(signature_of_buffer(new, block_size, fits_aware=False),
                            signature_of_buffer(old, block_size, fits_aware=False))
    _check_recipe(recipe, old, new)
    if new == old and old:
        assert recipe.ops == [(BASIS, 0, len(old))]


@settings(max_examples=250, deadline=None)
@given(pair=file_pairs())
def test_aligned_offsets_equal_a_join_on_whole_block_keys(pair):
    """The vectorised pairing agrees with the plain definition: a block at its
    own offset stays there, any other comes from the first basis block with
    the same length, weak and strong sums."""
    old, new, block_size = pair
    source = signature_of_buffer(new, block_size, fits_aware=False)
    basis = signature_of_buffer(old, block_size, fits_aware=False)

    def keys(sig):
        return [(int(n), int(sig.weak[i]), sig.strong_of(i)) for i, n in enumerate(sig.block_lengths())]

    basis_offsets = basis.block_offsets().tolist()
    at_offset = dict(zip(basis_offsets, keys(basis)))
    first: dict = {}
    for key, offset in zip(keys(basis), basis_offsets):
        first.setdefault(key, offset)
    expected = [offset if at_offset.get(offset) == key else first.get(key, -1)
                for key, offset in zip(keys(source), source.block_offsets().tolist())]
    assert aligned_offsets(source, basis).tolist() == expected


def test_aligned_offsets_tell_digests_apart_by_all_their_bits():
    """Two basis blocks whose strong digests share the first 64 bits (craftable:
    xxh3 is not cryptographic) are still told apart: the source block pairs
    with the one equal in full."""
    from fitsync.signature import Signature

    w, x, y = b"W" * 8, b"X" * 8, b"Y" * 8
    basis = Signature(2 * 64, 64, [0], np.array([7, 9], np.uint32), w + x + w + y, None)
    source = Signature(64, 64, [0], np.array([9], np.uint32), w + y, bytes(32))
    assert aligned_offsets(source, basis).tolist() == [64]
    other = Signature(64, 64, [0], np.array([9], np.uint32), w + b"Z" * 8, bytes(32))
    assert aligned_offsets(other, basis).tolist() == [-1]


def test_recipe_from_two_signatures_keeps_fits_data_blocks_after_header_edits():
    data = np.random.default_rng(6).standard_normal((500, 500)).astype(np.float32)
    old = _fits({"OBJECT": "crab"}, data)
    value_changed = _fits({"OBJECT": "vela"}, data)
    header_grew = _fits({"OBJECT": "crab", **{f"K{i}": i for i in range(36)}}, data)
    block = 14400
    for new, most in ((value_changed, block), (header_grew, 2 * block)):
        recipe = aligned_recipe(signature_of_buffer(new, block), signature_of_buffer(old, block))
        _check_recipe(recipe, old, new)
        assert recipe.source_bytes <= most  # the changed header's blocks only


def test_wrong_source_bytes_fail_verification(tmp_path):
    old = bytes(range(256)) * 100
    new = old[:1000] + b"changed" + old[1000:]
    (tmp_path / "old").write_bytes(old)
    recipe = delta_recipe(signature_of_buffer(old, 256, False), new)
    with pytest.raises(VerificationFailed):
        _patch(recipe, tmp_path / "old", new.replace(b"changed", b"CHANGED"), tmp_path / "out")
    # a basis that changed since the recipe was made
    (tmp_path / "old").write_bytes(old[::-1])
    with pytest.raises(VerificationFailed):
        _patch(recipe, tmp_path / "old", new, tmp_path / "out")
    (tmp_path / "old").write_bytes(old[:300])
    with pytest.raises(VerificationFailed):
        _patch(recipe, tmp_path / "old", new, tmp_path / "out")


def test_source_sending_too_few_or_too_many_bytes_is_a_transfer_failure(tmp_path):
    old = bytes(range(256)) * 100
    new = old + b"tail"
    (tmp_path / "old").write_bytes(old)
    recipe = delta_recipe(signature_of_buffer(old, 256, False), new)
    for reader in (lambda ranges: [b"ta"], lambda ranges: [b"tail", b"more"]):
        basis = os.open(tmp_path / "old", os.O_RDONLY)
        out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with pytest.raises(TransferFailed):
            apply_recipe(recipe, basis, reader, out)
        os.close(basis)
        os.close(out)


def test_patching_into_a_pipe_and_a_read_write_file(tmp_path):
    old = np.random.default_rng(6).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    new = old[:1000] + b"x" * 10 + old[1000:]
    (tmp_path / "old").write_bytes(old)
    recipe = delta_recipe(signature_of_buffer(old, 2880, False), new)
    _patch(recipe, tmp_path / "old", new, tmp_path / "rw", flags=os.O_RDWR)
    assert (tmp_path / "rw").read_bytes() == new
    read_end, write_end = os.pipe()
    basis = os.open(tmp_path / "old", os.O_RDONLY)
    received = bytearray()
    import threading

    def drain():
        while chunk := os.read(read_end, 1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    apply_recipe(recipe, basis, lambda ranges: [new[o : o + n] for o, n in ranges], write_end)
    os.close(write_end)
    reader.join()
    os.close(read_end)
    os.close(basis)
    assert bytes(received) == new


def test_whole_file_recipe_needs_no_basis(tmp_path):
    data = b"brand new file" * 1000
    recipe = Recipe.whole(len(data), blake3.blake3(data).hexdigest())
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    apply_recipe(recipe, None, lambda ranges: [data], out)
    os.close(out)
    assert (tmp_path / "out").read_bytes() == data
    assert Recipe.whole(0, blake3.blake3(b"").hexdigest()).ops == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_recipe_is_bad_input(blob):
    with pytest.raises(BadInput):
        Recipe.from_bytes(blob)


def _forge(ops, target_size, basis_size=None) -> bytes:
    return Recipe(ops, target_size, "00" * 32, basis_size).to_bytes()


@pytest.mark.parametrize("ops,target,basis", [
    ([(SOURCE, 0, 5)], 6, None),  # runs do not add up
    ([(2, 0, 5)], 5, None),  # unknown kind
    ([(SOURCE, 0, 0), (SOURCE, 0, 5)], 5, None),  # empty run
    ([(SOURCE, 3, 5)], 5, None),  # source beyond the target
    ([(BASIS, 90, 20)], 20, 100),  # basis beyond its size
    ([(BASIS, 1 << 63, 5)], 5, None),  # implausible offset
    ([], 5, None),
])
def test_inconsistent_recipes_are_bad_input(ops, target, basis):
    with pytest.raises(BadInput):
        Recipe.from_bytes(_forge(ops, target, basis))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 255))
def test_damaged_recipe_is_bad_input(position, flip):
    old = bytes(range(256)) * 40
    blob = bytearray(delta_recipe(signature_of_buffer(old, 100, False), old[5:] + b"abc").to_bytes())
    blob[position % len(blob)] ^= flip
    with pytest.raises(BadInput):
        Recipe.from_bytes(bytes(blob))


def test_known_source_digest_is_used_and_a_stale_one_fails_the_patch(tmp_path):
    old = bytes(range(256)) * 100
    new = old[:500] + b"edit" + old[500:]
    (tmp_path / "old").write_bytes(old)
    sig = signature_of_buffer(old, 256, False)
    right = delta_recipe(sig, new, source_digest=blake3.blake3(new).hexdigest())
    assert right == delta_recipe(sig, new)
    stale = delta_recipe(sig, new, source_digest=blake3.blake3(old).hexdigest())
    with pytest.raises(VerificationFailed):
        _patch(stale, tmp_path / "old", new, tmp_path / "out")


def test_digestless_signature_serves_the_rsync_direction_but_not_a_fetch():
    old = np.random.default_rng(9).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    new = old[:100] + b"+" + old[100:]
    bare = signature_of_buffer(old, 2880, False, digest=False)
    recipe = delta_recipe(bare, new)
    _check_recipe(recipe, old, new)
    with pytest.raises(BadInput):
        fetch_recipe(signature_of_buffer(new, 2880, False, digest=False), old)


def test_run_lengths_that_wrap_around_64_bits_are_bad_input():
    with pytest.raises(BadInput):
        Recipe.from_bytes(_forge([(BASIS, 0, 1 << 62)] * 4, 0))  # sums to 2**64, i.e. 0 in uint64
