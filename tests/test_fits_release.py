"""The real H.E.S.S. DL3 DR1 release audits clean, and single-byte changes to
its files are detected (a sample here; every file in
benchmarks/bench_fits_audit.py)."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest

from fitsync import fits_gzip, fitsaudit

RELEASE = Path(__file__).resolve().parents[2] / "shared/data/hess-dl3-dr1"
FILES_SAMPLED = 6
FLIPS_PER_FILE = 12


@pytest.fixture(scope="module")
def release() -> Path:
    assert RELEASE.is_dir(), f"the H.E.S.S. release is expected at {RELEASE} (shared/ beside the clone)"
    return RELEASE


def fits_content(gz: bytes) -> bytes | None:
    """The decompressed bytes of a gzip file, or None if it does not decode."""
    try:
        return zlib.decompress(gz, wbits=31)
    except zlib.error:
        return None


def test_release_audits_clean(release):
    reports = fitsaudit.audit_tree(str(release))
    assert len(reports) == 107
    assert all(r.status == "ok" for r in reports), [(r.path, r.first_problem()) for r in reports if r.status != "ok"]
    by_path = {r.path: r for r in reports}
    assert len(by_path["hdu-index.fits.gz"].hdus) == 2
    assert {len(r.hdus) for p, r in by_path.items() if p.startswith("data/")} == {7}
    assert all(r.compression == "gzip" and r.checksums == "absent" for r in reports)
    out = io.StringIO()
    assert fitsaudit.run_fits_audit(str(release), json_out=False, out=out) == 0
    assert out.getvalue().rstrip().endswith("107 FITS file(s): 107 ok, 0 broken, 0 incomplete; 107 without CHECKSUM/DATASUM (not a failure)")


def sampled_flips(release: Path, seed: int = 7):
    rng = np.random.default_rng(seed)
    files = sorted(p for p in release.rglob("*.fits.gz"))
    for path in rng.choice(files, FILES_SAMPLED, replace=False):
        data = path.read_bytes()
        header_length = fits_gzip.parse_gzip_header(data)[0]
        offsets = [int(rng.integers(0, header_length)), len(data) - int(rng.integers(1, 9))]
        offsets += [int(o) for o in rng.integers(header_length, len(data) - 8, FLIPS_PER_FILE - 2)]
        for offset in offsets:
            yield path, data, offset, int(rng.integers(1, 256))


def test_single_byte_changes_are_detected_unless_the_fits_bytes_are_unchanged(release, tmp_path):
    """Every change is reported, except one that leaves the decompressed FITS
    bytes identical (gzip header metadata such as MTIME or the file name,
    which no checksum covers); those are named, and are only in the header."""
    detected = harmless = 0
    for path, data, offset, mask in sampled_flips(release):
        damaged = bytearray(data)
        damaged[offset] ^= mask
        target = tmp_path / path.name
        target.write_bytes(damaged)
        report = fitsaudit.check_file(str(target))
        if report.status != "ok":
            detected += 1
            continue
        assert fits_content(bytes(damaged)) == fits_content(data), (path.name, offset, mask)
        assert offset < fits_gzip.parse_gzip_header(data)[0], (path.name, offset, mask)
        harmless += 1
    assert detected + harmless == FILES_SAMPLED * FLIPS_PER_FILE
    assert detected >= FILES_SAMPLED * (FLIPS_PER_FILE - 1)


def test_gzip_metadata_changes_leave_the_fits_bytes_whole(release, tmp_path):
    """MTIME and the stored file name are outside the CRC and outside the FITS
    bytes: changing them is invisible without a manifest, and harmless."""
    data = (release / "data/hess_dl3_dr1_obs_id_020136.fits.gz").read_bytes()
    assert data[3] & fits_gzip.FNAME and data[10:20] == b"hess_dl3_d"
    for offset, mask in ((4, 0x55), (7, 0x01), (12, 0x20), (15, 0x03)):  # MTIME, then name characters
        damaged = bytearray(data)
        damaged[offset] ^= mask
        target = tmp_path / "obs.fits.gz"
        target.write_bytes(damaged)
        assert fitsaudit.check_file(str(target)).status == "ok", offset
        assert fits_content(bytes(damaged)) == fits_content(data)
