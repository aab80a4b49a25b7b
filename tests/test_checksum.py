"""FITS DATASUM / CHECKSUM: equal to what astropy writes, and to the definition."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st

from fitsync import reference
from fitsync.checksum import (
    DataSum,
    add_sums,
    checksum_of_hdu,
    checksum_ok,
    datasum,
    datasum_ok,
    decode_checksum,
    encode_checksum,
)
from fitsync.fits import walk_hdus

CHECKSUM_CARD = b"CHECKSUM= '"


def _hdus_with_checksums(path):
    """(header bytes, data bytes, DATASUM, CHECKSUM) of every HDU of a file."""
    raw = path.read_bytes()
    out = []
    for span in walk_hdus(lambda o, n: raw[o : o + n], len(raw)):
        cards = dict(span.cards)
        header = raw[span.header_offset : span.data_offset]
        data = raw[span.data_offset : span.end_offset]
        recorded_sum = cards["DATASUM"].split("/")[0].strip().strip("'").strip()
        recorded_check = cards["CHECKSUM"].split("/")[0].strip().strip("'")
        out.append((header, data, recorded_sum, recorded_check))
    return out


def _zero_checksum(header: bytes) -> bytes:
    at = header.index(CHECKSUM_CARD) + len(CHECKSUM_CARD)
    return header[:at] + b"0" * 16 + header[at + 16 :]


def _check_file_against_astropy(path):
    hdus = _hdus_with_checksums(path)
    assert hdus
    for header, data, recorded_sum, recorded_check in hdus:
        data_sum = datasum(data)
        assert str(data_sum) == recorded_sum
        assert datasum_ok(recorded_sum, data_sum)
        assert checksum_of_hdu(_zero_checksum(header), data_sum) == recorded_check
        assert checksum_ok(datasum(header), data_sum)
        # a flipped data bit breaks both
        if data:
            damaged = bytearray(data)
            damaged[len(damaged) // 2] ^= 0x10
            assert not datasum_ok(recorded_sum, datasum(damaged))
            assert not checksum_ok(datasum(header), datasum(damaged))


@pytest.mark.parametrize("dtype", [">u1", ">i2", ">i4", ">i8", ">f4", ">f8"])
def test_image_of_every_bitpix_matches_astropy(tmp_path, dtype):
    rng = np.random.default_rng(len(dtype) + ord(dtype[-1]))
    if dtype.startswith(">f"):
        data = (rng.standard_normal((37, 53)) * 1e3).astype(dtype)
    else:
        info = np.iinfo(np.dtype(dtype))
        data = rng.integers(info.min, info.max, size=(37, 53), dtype=np.dtype(dtype).newbyteorder("="))
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(data).writeto(path, checksum=True)
    _check_file_against_astropy(path)


def test_binary_table_with_heap_and_several_extensions_match_astropy(tmp_path):
    rng = np.random.default_rng(7)
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="energy", format="E", array=rng.standard_normal(301).astype(np.float32)),
            fits.Column(name="time", format="D", array=rng.standard_normal(301)),
            fits.Column(name="id", format="K", array=np.arange(301)),
            fits.Column(name="flag", format="L", array=rng.integers(0, 2, 301).astype(bool)),
            fits.Column(name="name", format="7A", array=[f"ev{i}" for i in range(301)]),
            fits.Column(name="trace", format="PJ()", array=[np.arange(i % 17) for i in range(301)]),
        ],
        name="EVENTS",
    )
    hdus = fits.HDUList(
        [
            fits.PrimaryHDU(),  # empty primary HDU: no data unit
            table,
            fits.ImageHDU(rng.integers(-5, 5, size=(11, 13, 3)).astype(np.int16), name="CUBE"),
            fits.TableHDU.from_columns([fits.Column(name="a", format="F10.3", array=rng.standard_normal(9))]),
            fits.ImageHDU(name="EMPTY"),
        ]
    )
    path = tmp_path / "multi.fits"
    hdus.writeto(path, checksum=True)
    _check_file_against_astropy(path)


def test_empty_primary_hdu_has_zero_datasum(tmp_path):
    path = tmp_path / "empty.fits"
    fits.PrimaryHDU().writeto(path, checksum=True)
    ((header, data, recorded_sum, recorded_check),) = _hdus_with_checksums(path)
    assert data == b"" and datasum(data) == 0 and recorded_sum == "0"
    assert checksum_of_hdu(_zero_checksum(header), 0) == recorded_check


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFFFFFFFF))
def test_encoding_equals_astropys_and_decodes_back(value):
    assert encode_checksum(value) == fits.PrimaryHDU()._char_encode(value)
    assert decode_checksum(encode_checksum(value)) == value
    assert encode_checksum(value, complement=True) == encode_checksum(0xFFFFFFFF - value)


@pytest.mark.parametrize("value", [0, 1, 0xFFFFFFFF, 0xFFFFFFFE, 0x3A3A3A3A, 0x5B5B5B5B, 0x80000000, 0x01020304])
def test_encoding_edge_values(value):
    encoded = encode_checksum(value)
    assert len(encoded) == 16 and encoded.isalnum()
    assert encoded == fits.PrimaryHDU()._char_encode(value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 0xFFFFFFFF))
def test_datasum_equals_definition(data, seed):
    assert datasum(data, seed) == reference.fits_sum(data, seed)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4000), st.lists(st.integers(0, 4000), max_size=6))
def test_incremental_sums_equal_one_shot(data, cuts):
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    stream = DataSum()
    for a, b in zip(points, points[1:]):
        stream.update(data[a:b])
    assert stream.digest() == datasum(data)
    # seeded chaining is exact at multiples of 4
    split = (len(data) // 2) & ~3
    assert datasum(data[split:], datasum(data[:split])) == datasum(data)


def test_sum_of_large_buffer_equals_numpy_and_golden():
    rng = np.random.default_rng(2880)
    data = rng.integers(0, 256, 3 * (1 << 20) + 7, dtype=np.uint8)
    words = np.frombuffer(data[: len(data) - 7].tobytes(), dtype=">u4").astype(np.uint64)
    tail = int.from_bytes(data[len(data) - 7 : len(data) - 3].tobytes(), "big")
    tail2 = int.from_bytes(data[len(data) - 3 :].tobytes() + b"\0", "big")
    expected = int(words.sum()) + tail + tail2
    while expected >> 32:
        expected = (expected & 0xFFFFFFFF) + (expected >> 32)
    assert datasum(data) == expected
    assert datasum(memoryview(data)) == expected
    # pinned values of the definition
    assert datasum(b"") == 0
    assert datasum(b"\xff" * 8) == 0xFFFFFFFF
    assert datasum(b"\x00\x00\x00\x01" * 3, 0xFFFFFFFF) == 3
    assert datasum(bytes(range(256))) == 0x9FE0205F


def test_add_sums_is_ones_complement():
    assert add_sums(0xFFFFFFFF, 1) == 1
    assert add_sums(0x80000000, 0x80000000) == 1
    assert add_sums(5, 7) == 12


def test_decode_rejects_wrong_length():
    with pytest.raises(ValueError):
        decode_checksum("abc")
