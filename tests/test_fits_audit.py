"""fitsaudit's API: tree audits, the table and JSON, exit codes, candidates,
quick_state for the sync engine, manifest fields, one-pass digests."""

from __future__ import annotations

import gzip
import io
import json
import os

import blake3
import numpy as np
import pytest
from astropy.io import fits as afits

from fitsync import fitsaudit
from fitsync.errors import NotFound, UnsafePath
from test_fits_corpus import base_hdul, fits_bytes, layout

WITH_SUMS = fits_bytes(base_hdul(21), checksum=True)
NO_SUMS = fits_bytes(base_hdul(21), checksum=False)


def damaged_data(data: bytes) -> bytes:
    out = bytearray(data)
    out[layout(data)[1]["data"] + 100] ^= 0x40
    return bytes(out)


@pytest.fixture
def tree(tmp_path):
    files = {
        "good.fits": WITH_SUMS,
        "good.fits.gz": gzip.compress(WITH_SUMS),
        "plain.fit": NO_SUMS,
        "sub/deeper/y.fts.gz": gzip.compress(NO_SUMS),
        "no_suffix_header": WITH_SUMS,
        "bad.fits": damaged_data(WITH_SUMS),
        "growing.fits": WITH_SUMS[:9000],
        "notes.txt": b"not fits at all",
        ".fitsync/tmp/write-x.fits": WITH_SUMS[:100],
    }
    for rel, data in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.symlink(tmp_path / "good.fits", tmp_path / "link.fits")
    return tmp_path


def test_audit_tree_finds_fits_files_by_name_and_by_content(tree):
    reports = fitsaudit.audit_tree(str(tree), jobs=2)
    assert {r.path: r.status for r in reports} == {
        "bad.fits": "broken",
        "good.fits": "ok",
        "good.fits.gz": "ok",
        "growing.fits": "incomplete",
        "no_suffix_header": "ok",
        "plain.fit": "ok",
        "sub/deeper/y.fts.gz": "ok",
    }
    assert [r.path for r in reports] == sorted(r.path for r in reports)


def test_table_names_each_problem_under_its_file(tree):
    table = fitsaudit.format_table(fitsaudit.audit_tree(str(tree)))
    lines = table.splitlines()
    assert lines[0].split() == ["STATUS", "HDUS", "CHECKSUMS", "PATH"]
    bad = lines.index(next(line for line in lines if line.endswith(" bad.fits")))
    assert lines[bad].split()[:3] == ["broken", "3", "bad"]
    assert "broken: HDU 1: the data was changed" in lines[bad + 1]
    growing = next(line for line in lines if line.endswith("growing.fits"))
    assert growing.split()[:2] == ["incomplete", "2"]
    assert "bytes missing" in table
    assert lines[-1] == "7 FITS file(s): 5 ok, 1 broken, 1 incomplete; 2 without CHECKSUM/DATASUM (not a failure)"


def test_run_fits_audit_exit_codes_and_json(tree):
    out = io.StringIO()
    assert fitsaudit.run_fits_audit(str(tree), json_out=True, out=out) == 1
    document = json.loads(out.getvalue())
    assert document["summary"] == {"ok": 5, "broken": 1, "incomplete": 1}
    bad = next(f for f in document["files"] if f["path"] == "bad.fits")
    assert bad["status"] == "broken" and bad["hdu_count"] == 3
    assert [h["datasum"] for h in bad["hdus"]] == ["ok", "bad", "ok"]
    assert bad["hdus"][1]["problems"][0]["kind"] == "datasum-bad"
    (tree / "bad.fits").unlink()
    (tree / "growing.fits").unlink()
    assert fitsaudit.run_fits_audit(str(tree), json_out=False, out=io.StringIO()) == 0


def test_audit_of_selected_paths_and_unsafe_paths(tree):
    reports = fitsaudit.audit_tree(str(tree), paths=["good.fits", "./sub/deeper/y.fts.gz", "notes.txt"])
    assert [r.path for r in reports] == ["good.fits", "sub/deeper/y.fts.gz"]
    with pytest.raises(UnsafePath):
        fitsaudit.audit_tree(str(tree), paths=["../outside.fits"])
    missing = fitsaudit.audit_tree(str(tree), paths=["gone.fits"])
    assert missing[0].status == "broken" and missing[0].problems[0].kind == "unreadable"


def test_audit_of_a_missing_root_or_a_single_file(tree):
    with pytest.raises(NotFound):
        fitsaudit.audit_tree(str(tree / "nowhere"))
    (single,) = fitsaudit.audit_tree(str(tree / "bad.fits"))
    assert single.path == "bad.fits" and single.status == "broken"


@pytest.mark.parametrize(
    "name, first, expected",
    [
        ("a.fits", b"", True), ("a.FIT", b"", True), ("a.fts", b"", True), ("a.fits.gz", b"", True),
        ("a.fit.gz", b"", True), ("a.fz", b"", True), ("a.dat", b"SIMPLE  =                    T", True),
        ("a.gz", b"\x1f\x8b", False), ("a.txt", b"SIMPLE", False), ("fits", b"", False),
    ],
)
def test_fits_candidates(name, first, expected):
    assert fitsaudit.is_fits_candidate(name, first) is expected


def test_quick_state_for_the_sync_engine(tree):
    assert fitsaudit.quick_state(str(tree / "good.fits")) == ("ok", "")
    assert fitsaudit.quick_state(str(tree / "plain.fit")) == ("ok", "checksum absent")
    state, reason = fitsaudit.quick_state(str(tree / "growing.fits"))
    assert state == "incomplete" and "bytes missing" in reason
    state, reason = fitsaudit.quick_state(str(tree / "bad.fits"))
    assert state == "broken" and "DATASUM" in reason
    assert fitsaudit.quick_state(str(tree / "notes.txt")) == ("not-fits", "")


@pytest.mark.parametrize("mapped", [True, False])
@pytest.mark.parametrize("name", ["good.fits", "good.fits.gz", "bad.fits", "growing.fits", "plain.fit"])
def test_check_file_feeds_a_digest_with_every_byte(tree, name, mapped):
    hasher = blake3.blake3()
    report = fitsaudit.check_file(str(tree / name), hasher=hasher, mapped=mapped)
    assert report.status == fitsaudit.check_file(str(tree / name)).status
    assert hasher.hexdigest() == blake3.blake3((tree / name).read_bytes()).hexdigest()


def test_digest_covers_a_gzip_file_that_stops_decoding(tmp_path):
    data = bytearray(gzip.compress(NO_SUMS))
    data[40] ^= 0xFF
    path = tmp_path / "c.fits.gz"
    path.write_bytes(data)
    hasher = blake3.blake3()
    assert fitsaudit.check_file(str(path), hasher=hasher).status == "broken"
    assert hasher.hexdigest() == blake3.blake3(bytes(data)).hexdigest()


def test_report_json_has_per_hdu_statuses(tree):
    record = json.loads(fitsaudit.check_file(str(tree / "plain.fit")).to_json())
    assert record["status"] == "ok" and record["checksums"] == "absent"
    assert [(h["type"], h["name"], h["checksum"], h["datasum"]) for h in record["hdus"]] == [
        ("PRIMARY", "", "absent", "absent"), ("BINTABLE", "EVENTS", "absent", "absent"), ("TABLE", "NOTES", "absent", "absent")
    ]


def test_manifest_fields(tree):
    assert fitsaudit.fits_manifest_fields(str(tree / "good.fits.gz")) == {
        "state": "ok", "hdus": 3, "checksum": ["ok", "ok", "ok"], "datasum": ["ok", "ok", "ok"]
    }
    assert fitsaudit.fits_manifest_fields(str(tree / "plain.fit"))["datasum"] == ["absent"] * 3


def test_large_image_without_checksums_is_checked_from_headers(tmp_path):
    path = tmp_path / "big.fits"
    afits.PrimaryHDU(np.ones((1500, 1500), dtype=np.float32)).writeto(path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 2880 * 3)
    report = fitsaudit.check_file(str(path))
    assert report.status == "incomplete"
    assert report.hdus[0].problems[0].missing_bytes == 2880 * 3


def test_audit_and_digest_reads_once_for_both(tree):
    report, digest = fitsaudit.audit_and_digest(str(tree / "bad.fits"), display_path="bad.fits")
    assert report.status == "broken" and report.path == "bad.fits"
    assert digest == blake3.blake3((tree / "bad.fits").read_bytes()).hexdigest()
    report, digest = fitsaudit.audit_and_digest(str(tree / "notes.txt"))
    assert report is None and digest == blake3.blake3(b"not fits at all").hexdigest()
