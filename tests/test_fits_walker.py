"""The FITS walker and gzip checker: properties over chunking, truncation and
single-byte changes, and the smaller structure rules."""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest
from astropy.io import fits as afits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fitsync import fits, fits_gzip, fits_stream, fits_walker, fitsaudit
from test_fits_corpus import base_hdul, fits_bytes, gzipped, layout

WITH_SUMS = fits_bytes(base_hdul(11), checksum=True)
NO_SUMS = fits_bytes(base_hdul(11), checksum=False)
GZ = gzipped(WITH_SUMS)
HDU_ENDS = {span["end"] for span in layout(WITH_SUMS)}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def stream_report(data: bytes, cuts=(), name="x.fits") -> fitsaudit.FileReport:
    check = fits_stream.StreamCheck(name)
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        check.update(data[last:cut])
        last = cut
    return check.finish()


def summary(report: fitsaudit.FileReport) -> dict:
    record = report.to_dict()
    record.pop("path")
    return record


def file_report(tmp_path, data: bytes, name="f.fits", mapped=True) -> fitsaudit.FileReport:
    path = tmp_path / name
    path.write_bytes(data)
    return fitsaudit.check_file(str(path), mapped=mapped)


# -- the header-only reader the block layout uses --------------------------------


def test_segment_boundaries_match_astropy_layout():
    spans = layout(WITH_SUMS)
    expected = []
    for span in spans:
        expected.append(span["header"])
        if span["data_size"]:
            expected.append(span["data"])
    assert fits.segment_boundaries(lambda o, n: WITH_SUMS[o : o + n], len(WITH_SUMS)) == expected
    assert [s.end_offset for s in fits.walk_hdus(lambda o, n: WITH_SUMS[o : o + n], len(WITH_SUMS))] == [s["end"] for s in spans]
    assert fits.segment_boundaries(lambda o, n: WITH_SUMS[o : o + n], len(WITH_SUMS) - 1) == [0]


# -- properties -------------------------------------------------------------------


@SETTINGS
@given(st.lists(st.integers(0, len(WITH_SUMS)), max_size=12), st.sampled_from(["sums", "plain", "gz"]))
def test_any_chunking_gives_the_same_report(cuts, which):
    data = {"sums": WITH_SUMS, "plain": NO_SUMS, "gz": GZ}[which]
    cuts = [c % (len(data) + 1) for c in cuts]
    assert summary(stream_report(data, cuts)) == summary(stream_report(data))


@SETTINGS
@given(st.integers(0, len(WITH_SUMS) - 1))
def test_a_prefix_is_incomplete_unless_cut_where_an_hdu_ends(cut):
    report = stream_report(WITH_SUMS[:cut])
    assert report.status == ("ok" if cut in HDU_ENDS else "incomplete"), [p.message for p in report.all_problems]


@SETTINGS
@given(st.integers(0, len(GZ) - 1))
def test_a_gzip_prefix_is_incomplete(cut):
    assert stream_report(GZ[:cut]).status == "incomplete"


# The one blind spot: a change to a CHECKSUM card's keyword or "= " makes the
# card an ordinary one, and the HDU then looks like it never had a CHECKSUM.
CHECKSUM_NAMES = {o for c in range(0, len(WITH_SUMS), 80) if WITH_SUMS[c : c + 10] == b"CHECKSUM= " for o in range(c, c + 10)}


@SETTINGS
@given(st.integers(0, len(WITH_SUMS) - 1), st.integers(1, 255))
def test_any_byte_change_in_a_checksummed_file_is_detected(offset, mask):
    damaged = bytearray(WITH_SUMS)
    damaged[offset] ^= mask
    report = stream_report(bytes(damaged))
    if offset in CHECKSUM_NAMES and report.status == "ok":
        assert [h.checksum for h in report.hdus].count("absent") == 1  # visible against a manifest record
    else:
        assert report.status != "ok", (offset, mask)


def test_renamed_checksum_keyword_shows_against_the_manifest_record(tmp_path):
    damaged = WITH_SUMS.replace(b"CHECKSUM= ", b"BHECKSUM= ", 1)
    recorded = fitsaudit.manifest_fields(stream_report(WITH_SUMS))
    report = stream_report(damaged)
    assert report.status == "ok"
    assert fitsaudit.manifest_regressions(recorded, report) == ["x.fits: HDU 0 lost its CHECKSUM keyword"]


def test_mapped_read_and_streamed_checks_agree_on_the_corpus(tmp_path):
    from test_fits_corpus import CORPUS

    for case in CORPUS:
        mapped = file_report(tmp_path, case.data, "case" + case.suffix)
        read = file_report(tmp_path, case.data, "case" + case.suffix, mapped=False)
        streamed = stream_report(case.data, range(0, len(case.data), 1000), "case" + case.suffix)
        assert summary(mapped) == summary(streamed) == summary(read), case.name


@pytest.mark.parametrize("mapped", [True, False])
def test_plain_file_without_checksums_reads_only_headers_and_padding(tmp_path, monkeypatch, mapped):
    seen = []
    original = fits_walker.HduWalker.feed

    def counting_feed(self, data):
        seen.append(len(memoryview(data)))
        return original(self, data)

    monkeypatch.setattr(fits_walker.HduWalker, "feed", counting_feed)
    big = afits.PrimaryHDU(np.zeros((1000, 1000), dtype=np.float64) + 1.5)
    report = file_report(tmp_path, fits_bytes(afits.HDUList([big]), checksum=False), mapped=mapped)
    assert report.status == "ok"
    assert sum(seen) < 3 * 2880  # the 8 MB data unit is skipped, not read


# -- structure rules -------------------------------------------------------------


def test_truncated_data_reports_the_exact_number_of_missing_bytes(tmp_path):
    end = layout(NO_SUMS)[1]["end"]
    report = file_report(tmp_path, NO_SUMS[: end - 4000])
    (problem,) = [p for p in report.all_problems]
    assert (problem.kind, problem.missing_bytes, problem.severity) == ("truncated", 4000, "incomplete")
    assert "4000 bytes missing" in problem.message


def test_header_nul_fill_and_space_padded_binary_data_are_only_warnings(tmp_path):
    spans = layout(NO_SUMS)
    data = bytearray(NO_SUMS)
    end_card = data.index(b"END     ", spans[1]["header"])
    data[end_card + 80 : spans[1]["data"]] = bytes(spans[1]["data"] - end_card - 80)
    pad_from = spans[1]["data"] + spans[1]["raw_size"]
    data[pad_from : spans[1]["end"]] = b" " * (spans[1]["end"] - pad_from)
    report = file_report(tmp_path, bytes(data))
    assert report.status == "ok"
    assert {(p.kind, p.severity) for p in report.all_problems} == {("header-fill", "warning"), ("padding", "warning")}


def test_lower_case_keyword_is_a_warning(tmp_path):
    data = NO_SUMS.replace(b"OBSERVER=", b"Observer=", 1)
    report = file_report(tmp_path, data)
    assert report.status == "ok" and [p.kind for p in report.all_problems] == ["keyword"]


def test_not_fits_at_all(tmp_path):
    report = file_report(tmp_path, bytes(range(256)) * 40)
    assert report.status == "broken" and "not-fits" in {p.kind for p in report.all_problems}


def test_hdus_after_a_lost_end_card_are_still_checked(tmp_path):
    spans = layout(WITH_SUMS)
    data = bytearray(WITH_SUMS)
    end_card = data.index(b"END     ", spans[1]["header"])
    data[end_card : end_card + 3] = b"   "
    report = file_report(tmp_path, bytes(data))
    assert report.status == "broken"
    assert [h.offset for h in report.hdus] == [0, spans[1]["header"], spans[2]["header"]]
    assert report.hdus[2].checksum == "ok" and report.hdus[2].problems == []


# -- gzip --------------------------------------------------------------------------


def test_multi_member_gzip_is_one_fits_stream(tmp_path):
    split = layout(NO_SUMS)[1]["header"]
    data = gzip.compress(NO_SUMS[:split]) + gzip.compress(NO_SUMS[split:])
    report = file_report(tmp_path, data, "m.fits.gz")
    assert report.status == "ok" and len(report.hdus) == 3


def test_zero_bytes_after_the_gzip_stream_are_a_warning(tmp_path):
    report = file_report(tmp_path, GZ + bytes(512), "z.fits.gz")
    assert report.status == "ok" and [p.kind for p in report.all_problems] == ["trailing-bytes"]


def gzip_with_header_crc(payload: bytes, corrupt: bool = False) -> bytes:
    header = b"\x1f\x8b\x08" + bytes([fits_gzip.FHCRC | fits_gzip.FNAME]) + struct.pack("<I", 0) + b"\x00\x03" + b"a.fits\x00"
    crc16 = zlib.crc32(header) & 0xFFFF
    if corrupt:
        crc16 ^= 1
    body = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = body.compress(payload) + body.flush()
    return header + struct.pack("<H", crc16) + deflated + struct.pack("<II", zlib.crc32(payload), len(payload))


def test_gzip_header_crc16_is_verified(tmp_path):
    assert gzip.decompress(gzip_with_header_crc(NO_SUMS)) == NO_SUMS  # a real gzip stream
    assert file_report(tmp_path, gzip_with_header_crc(NO_SUMS), "h.fits.gz").status == "ok"
    bad = file_report(tmp_path, gzip_with_header_crc(NO_SUMS, corrupt=True), "h.fits.gz")
    assert bad.status == "broken" and "CRC16" in bad.first_problem()


@pytest.mark.parametrize("offset, value", [(8, 0xFD), (9, 0x7F)])
def test_undefined_xfl_or_os_byte_is_broken(tmp_path, offset, value):
    data = bytearray(GZ)
    data[offset] = value
    report = file_report(tmp_path, bytes(data), "x.fits.gz")
    assert report.status == "broken" and [p.kind for p in report.all_problems] == ["gzip-header"]
    assert gzip.decompress(bytes(data)) == WITH_SUMS  # gzip itself does not mind


def test_gzip_errors_do_not_also_claim_a_truncated_fits_file(tmp_path):
    data = bytearray(GZ)
    data[len(GZ) // 2] ^= 0xFF
    report = file_report(tmp_path, bytes(data), "c.fits.gz")
    assert report.status == "broken"
    assert "truncated" not in {p.kind for p in report.all_problems}
