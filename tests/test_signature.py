"""Block layouts, signatures (streaming, mmap, remote) and their byte format."""

from __future__ import annotations

import io

import blake3
import numpy as np
import pytest
import xxhash
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st

from fitsync import reference
from fitsync.errors import BadInput, NotFound, SourceChanged
from fitsync.remotes.local import LocalRemote
from fitsync.signature import (
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    STRONG_LEN,
    Signature,
    SignatureBuilder,
    block_count,
    block_layout,
    default_block_size,
    file_digest,
    signature_of_buffer,
    signature_of_file,
    signature_of_remote,
    strong_digest,
)


def _fits_bytes(header_cards: dict, data: np.ndarray, extra_hdus=()) -> bytes:
    primary = fits.PrimaryHDU(data)
    for key, value in header_cards.items():
        primary.header[key] = value
    out = io.BytesIO()
    fits.HDUList([primary, *extra_hdus]).writeto(out)
    return out.getvalue()


# -- block size and layout ---------------------------------------------------

def test_default_block_size_is_whole_records_within_bounds():
    sizes = [0, 1, 2880, 10**6, 10**8, 1 << 30, 10**11, 10**13]
    values = [default_block_size(s) for s in sizes]
    assert all(v % 2880 == 0 and MIN_BLOCK_SIZE <= v <= MAX_BLOCK_SIZE for v in values)
    assert values == sorted(values)
    assert default_block_size(1 << 30) == 17280  # ~ sqrt(1 GiB) / 2
    assert default_block_size(10**13) == MAX_BLOCK_SIZE


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 100_000), st.integers(1, 9000), st.lists(st.integers(1, 99_999), max_size=6))
def test_layout_tiles_the_file_and_equals_reference(size, block_size, cuts):
    bounds = sorted({0, *(c for c in cuts if c < size)})
    offsets, lengths = block_layout(size, block_size, bounds)
    assert list(zip(offsets.tolist(), lengths.tolist())) == reference.block_layout(size, block_size, bounds)
    assert block_count(size, block_size, bounds) == len(offsets)
    assert int(lengths.sum()) == size
    assert (offsets[1:] == offsets[:-1] + lengths[:-1]).all()
    assert set(bounds) <= set(offsets.tolist()) or size == 0
    assert (lengths <= block_size).all() and (lengths > 0).all()


@pytest.mark.parametrize("bounds", [[1], [0, 0], [0, 10, 5], [0, 100]])
def test_bad_layouts_are_refused(bounds):
    with pytest.raises(BadInput):
        block_layout(100, 10, bounds)


def test_fits_layout_restarts_at_every_header_and_data_unit():
    rng = np.random.default_rng(1)
    raw = _fits_bytes({"OBJECT": "x"}, rng.standard_normal((200, 300)).astype(np.float32),
                      [fits.ImageHDU(rng.integers(0, 9, (50, 70)).astype(np.int16)), fits.ImageHDU()])
    sig = signature_of_buffer(raw, 5760)
    # primary header, primary data, ext header, ext data, empty ext header
    assert sig.boundaries == [0, 2880, 2880 + 241920, 2880 + 241920 + 2880, 2880 + 241920 + 2880 + 8640]
    offsets = sig.block_offsets().tolist()
    assert set(sig.boundaries) <= set(offsets)
    assert signature_of_buffer(raw, 5760, fits_aware=False).boundaries == [0]
    assert signature_of_buffer(b"not fits" * 1000).boundaries == [0]


def test_header_growth_changes_only_header_blocks():
    rng = np.random.default_rng(2)
    data = rng.standard_normal((300, 400)).astype(np.float32)
    old = _fits_bytes({"OBJECT": "crab"}, data)
    new = _fits_bytes({"OBJECT": "crab", **{f"KEY{i}": i for i in range(40)}}, data)
    assert len(new) == len(old) + 2880
    a, b = signature_of_buffer(old, 5760), signature_of_buffer(new, 5760)
    assert a.boundaries[1] + 2880 == b.boundaries[1]
    # every data block keeps its weak and strong sums
    assert np.array_equal(a.weak[1:], b.weak[1:])
    assert a.strong[STRONG_LEN:] == b.strong[STRONG_LEN:]
    # while the fixed layout shifts them all
    fa, fb = signature_of_buffer(old, 5760, False), signature_of_buffer(new, 5760, False)
    assert not np.array_equal(fa.weak[1:], fb.weak[1:len(fa)])


# -- building ------------------------------------------------------------

def _expected(data: bytes, block_size: int, bounds) -> tuple[list, bytes]:
    blocks = reference.block_layout(len(data), block_size, bounds)
    weak = [reference.weak_sum(data[o : o + n]) for o, n in blocks]
    strong = b"".join(strong_digest(data[o : o + n]) for o, n in blocks)
    return weak, strong


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=20_000), st.integers(1, 3000), st.lists(st.integers(1, 7000), max_size=8),
       st.lists(st.integers(1, 19_999), max_size=3))
def test_streaming_builder_equals_definition_for_any_chunking(data, block_size, chunk_sizes, cuts):
    bounds = sorted({0, *(c for c in cuts if c < len(data))})
    builder = SignatureBuilder(len(data), block_size, bounds)
    pos, sizes = 0, chunk_sizes or [len(data) or 1]
    while pos < len(data):
        step = sizes[pos % len(sizes)]
        builder.update(data[pos : pos + step])
        pos += step
    sig = builder.finish()
    weak, strong = _expected(data, block_size, bounds)
    assert sig.weak.tolist() == weak and sig.strong == strong
    assert sig.digest == blake3.blake3(data).digest()
    assert (sig.file_size, sig.block_size, sig.boundaries) == (len(data), block_size, bounds)


def test_file_buffer_and_remote_signatures_agree_on_a_large_fits_file(tmp_path):
    rng = np.random.default_rng(3)
    raw = _fits_bytes({"OBJECT": "big"}, rng.standard_normal((1500, 4000)).astype(np.float32),
                      [fits.ImageHDU(rng.integers(0, 100, (3000, 3000)).astype(np.int16))])
    assert len(raw) > 32 << 20  # large enough for the threaded path
    path = tmp_path / "big.fits"
    path.write_bytes(raw)
    by_file = signature_of_file(path)
    assert by_file == signature_of_buffer(raw)
    assert by_file.digest.hex() == file_digest(path) == blake3.blake3(raw).hexdigest()
    assert len(by_file.boundaries) == 4
    # spot-check blocks against the definition
    offsets, lengths = by_file.block_offsets(), by_file.block_lengths()
    for j in (0, 1, len(by_file) // 2, len(by_file) - 1):
        block = raw[offsets[j] : offsets[j] + lengths[j]]
        assert by_file.weak[j] == reference.weak_sum(block)
        assert by_file.strong_of(j) == xxhash.xxh3_128_digest(block)

    class StreamOnly(LocalRemote):  # a remote without local paths: streamed + ranged header reads
        def local_path(self, rel):
            return None

    assert signature_of_remote(StreamOnly(str(tmp_path)), "big.fits") == by_file
    assert signature_of_remote(LocalRemote(str(tmp_path)), "big.fits") == by_file


def test_empty_and_tiny_files(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "tiny").write_bytes(b"x")
    empty = signature_of_file(tmp_path / "empty")
    assert len(empty) == 0 and empty.digest == blake3.blake3(b"").digest()
    tiny = signature_of_file(tmp_path / "tiny")
    assert len(tiny) == 1 and tiny.block_lengths().tolist() == [1]
    assert Signature.from_bytes(empty.to_bytes()) == empty


def test_wrong_byte_counts_mean_the_source_changed():
    builder = SignatureBuilder(10, 4)
    builder.update(b"12345")
    with pytest.raises(SourceChanged):
        builder.update(b"123456")
    with pytest.raises(SourceChanged):
        builder.finish()


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFound):
        signature_of_file(tmp_path / "nope")
    with pytest.raises(NotFound):
        file_digest(tmp_path / "nope")


# -- byte format ------------------------------------------------------------

def _small_signature() -> Signature:
    data = bytes(range(256)) * 30  # 7680 bytes
    return signature_of_buffer(data, 2880, fits_aware=False)


def test_serialised_format_golden():
    """Pins docs/signature-format.md: change the format => bump its version."""
    blob = _small_signature().to_bytes()
    assert len(blob) == 72 + 8 * 1 + 20 * 3 + 8
    assert blob[:8] == b"FSYNCSIG"
    assert blob[:72].hex() == (
        "4653594e43534947" "0100" "01" "01" "400b0000" "001e000000000000" "01000000" "00000000"
        "0300000000000000" + blake3.blake3(bytes(range(256)) * 30).hexdigest()
    )
    assert blob[72:80] == bytes(8)  # the one boundary, 0
    # weak sums, little-endian u32: 0x8480DF20, 0x8C80EF20, 0x3300C4C0 (the definition's values)
    assert blob[80:92].hex() == "20df8084" "20ef808c" "c0c40033"
    assert blob[92:108] == xxhash.xxh3_128_digest(bytes(range(256)) * 11 + bytes(range(64)))
    assert xxhash.xxh3_64_hexdigest(blob) == "42e863fdc177a19d"  # the whole file, trailer included


def test_round_trip():
    sig = _small_signature()
    again = Signature.from_bytes(sig.to_bytes())
    assert again == sig and again.block_offsets().tolist() == [0, 2880, 5760]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_bad_input(blob):
    with pytest.raises(BadInput):
        Signature.from_bytes(blob)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 72 + 8 + 60 + 8 - 1), st.integers(1, 255))
def test_damaged_or_truncated_signature_is_bad_input(position, flip):
    blob = bytearray(_small_signature().to_bytes())
    blob[position] ^= flip
    with pytest.raises(BadInput):
        Signature.from_bytes(bytes(blob))
    with pytest.raises(BadInput):
        Signature.from_bytes(_small_signature().to_bytes()[:position])


def test_signature_without_digest_has_the_same_blocks_and_round_trips(tmp_path):
    rng = np.random.default_rng(8)
    raw = _fits_bytes({"OBJECT": "nodigest"}, rng.standard_normal((2000, 3000)).astype(np.float32))
    path = tmp_path / "x.fits"
    path.write_bytes(raw)
    full = signature_of_file(path)
    bare = signature_of_file(path, digest=False)
    assert bare.digest is None and bare.hexdigest is None
    assert np.array_equal(bare.weak, full.weak) and bare.strong == full.strong
    assert bare.boundaries == full.boundaries
    blob = bare.to_bytes()
    assert blob[28:32] == b"\x01\x00\x00\x00" and blob[40:72] == bytes(32)
    assert Signature.from_bytes(blob) == bare
    unknown_flag = bytearray(blob[:-8])
    unknown_flag[28] = 3
    import fitsync.signature as signature_module

    with pytest.raises(BadInput):
        Signature.from_bytes(signature_module.seal(bytes(unknown_flag)))


def test_block_sums_split_between_threads_equal_the_single_thread_ones():
    # Above PARALLEL_MIN_BYTES and without a digest, the block sums are split
    # between two threads; with a digest they are not. Both give the same sums.
    from fitsync.signature import PARALLEL_MIN_BYTES

    data = np.random.default_rng(7).integers(0, 256, PARALLEL_MIN_BYTES * 2 + 12345, dtype=np.uint8).tobytes()
    split = signature_of_buffer(data, 17280, fits_aware=False, digest=False)
    whole = signature_of_buffer(data, 17280, fits_aware=False, digest=True)
    assert split.digest is None
    assert split.weak.tolist() == whole.weak.tolist()
    assert split.strong == whole.strong
    assert split.strong[-16:] == xxhash.xxh3_128_digest(data[-(len(data) % 17280):])


def test_block_strong_rows_equal_the_signatures_strong_digests():
    """The weak-sum-free hashing of LocalSegments (split over two threads for
    large buffers) gives exactly the strong digests of a signature."""
    from fitsync.segments import block_strong_rows
    from fitsync.signature import PARALLEL_MIN_BYTES, STRONG_LEN

    rng = np.random.default_rng(11)
    for size in (0, 1, 2879, 100_000, PARALLEL_MIN_BYTES + 12345):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        rows, lengths = block_strong_rows(data, 2880)
        sig = signature_of_buffer(data, 2880, fits_aware=False)
        assert rows.shape == (len(sig), STRONG_LEN)
        assert rows.tobytes() == sig.strong
        assert lengths.tolist() == sig.block_lengths().tolist()
