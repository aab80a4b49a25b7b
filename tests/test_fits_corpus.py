"""The corruption corpus: damaged FITS files made with astropy and numpy, and
exactly which damage fitsync detects without a manifest.

``build_corpus`` is also used by benchmarks/bench_fits_audit.py to print the
detection table of docs/fits-audit.md (with astropy's column).
"""

from __future__ import annotations

import gzip
import io
import multiprocessing
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
from astropy.io import fits as afits

from fitsync import fits_gzip, fitsaudit

SEED = 20240611
CUTS_PER_KIND = 3  # random offsets per truncation/flip kind


@dataclass
class Case:
    name: str
    data: bytes
    suffix: str  # ".fits" or ".fits.gz"
    detected: bool  # fitsync must report broken/incomplete (False: must report ok)
    status: str  # expected fitsync status
    kinds: set = field(default_factory=set)  # problem kinds that must be among those reported
    missing: int | None = None  # expected missing_bytes of the truncation
    why_undetectable: str = ""


def base_hdul(seed: int) -> afits.HDUList:
    """An image, a binary table and an ASCII table, with random contents so
    that every changed byte changes the data."""
    rng = np.random.default_rng(seed)
    primary = afits.PrimaryHDU(rng.integers(-30000, 30000, size=(40, 30), dtype=np.int16))
    primary.header["OBSERVER"] = "corpus"
    rows = 300
    table = afits.BinTableHDU.from_columns(
        [
            afits.Column(name="TIME", format="D", array=rng.random(rows) * 1e5),
            afits.Column(name="ENERGY", format="E", array=rng.random(rows).astype(np.float32)),
            afits.Column(name="FLAG", format="J", array=rng.integers(1, 2**31 - 1, rows, dtype=np.int32)),
            afits.Column(name="LABEL", format="8A", array=np.array([f"ev{i:06d}" for i in range(rows)])),
        ],
        name="EVENTS",
    )
    ascii_table = afits.TableHDU.from_columns(
        [afits.Column(name="ID", format="I6", array=np.arange(20)), afits.Column(name="X", format="F10.4", array=rng.random(20))],
        name="NOTES",
    )
    return afits.HDUList([primary, table, ascii_table])


def fits_bytes(hdul: afits.HDUList, checksum: bool) -> bytes:
    """The file astropy writes (use a fresh HDUList each time: writing with
    checksums adds the keywords to the headers in memory)."""
    buf = io.BytesIO()
    hdul.writeto(buf, checksum=checksum)
    return buf.getvalue()


def layout(data: bytes) -> list[dict]:
    """HDU offsets from astropy (independent of fitsync's walker)."""
    with afits.open(io.BytesIO(data)) as hdul:
        spans = []
        for hdu in hdul:
            info = hdu.fileinfo()
            spans.append({"header": info["hdrLoc"], "data": info["datLoc"], "data_size": info["datSpan"], "raw_size": hdu.size})
        for span in spans:
            span["end"] = span["data"] + span["data_size"]  # datSpan includes the padding
        return spans


def gzipped(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="corpus.fits", mode="wb", fileobj=buf, mtime=1_500_000_000) as gz:
        gz.write(data)
    return buf.getvalue()


def flip(data: bytes, offset: int, mask: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def gzip_header_length(data: bytes) -> int:
    return fits_gzip.parse_gzip_header(data)[0]


def build_corpus(seed: int = SEED) -> list[Case]:
    rng = np.random.default_rng(seed)
    with_sums = fits_bytes(base_hdul(seed), checksum=True)
    no_sums = fits_bytes(base_hdul(seed), checksum=False)
    assert b"DATASUM" not in no_sums
    spans = layout(with_sums)
    assert spans == layout(no_sums)
    table = spans[1]
    cases = [
        Case("clean, with checksums", with_sums, ".fits", False, "ok"),
        Case("clean, without checksums", no_sums, ".fits", False, "ok"),
    ]

    def pick(lo: int, hi: int) -> list[int]:
        return sorted(int(x) for x in rng.integers(lo, hi, CUTS_PER_KIND))

    # -- truncations -------------------------------------------------------
    for data, label in ((with_sums, "with checksums"), (no_sums, "without checksums")):
        for cut in pick(table["header"] + 1, table["data"]):
            cases.append(Case(f"truncated in a header ({label}) at {cut}", data[:cut], ".fits", True, "incomplete", {"truncated"}, 2880 - cut % 2880))
        for cut in pick(table["data"] + 1, table["data"] + table["data_size"]):
            cases.append(Case(f"truncated in data ({label}) at {cut}", data[:cut], ".fits", True, "incomplete", {"truncated"}, table["end"] - cut))
    for cut in (table["data"], table["data"] + 2880, spans[0]["header"] + 2880 if spans[0]["data"] > 2880 else table["data"] + 5760):
        cases.append(Case(f"truncated at a record boundary at {cut}", with_sums[:cut], ".fits", True, "incomplete", {"truncated"}, table["end"] - cut))
    cases.append(Case("truncated inside the data padding", with_sums[: table["end"] - 10], ".fits", True, "incomplete", {"truncated"}, 10))
    cases.append(Case("empty file", b"", ".fits", True, "incomplete", {"truncated"}))

    # -- single bit flips ----------------------------------------------------
    for offset in pick(table["header"], table["data"]):
        bit = 1 << int(rng.integers(0, 8))
        cases.append(Case(f"bit flip in a header at {offset} (with CHECKSUM)", flip(with_sums, offset, bit), ".fits", True, "broken"))
    for offset in pick(table["data"], table["data"] + table["data_size"]):
        bit = 1 << int(rng.integers(0, 8))
        cases.append(Case(f"bit flip in data at {offset} (with DATASUM)", flip(with_sums, offset, bit), ".fits", True, "broken", {"datasum-bad"}))
        cases.append(
            Case(f"bit flip in data at {offset} (no DATASUM)", flip(no_sums, offset, bit), ".fits", False, "ok",
                 why_undetectable="nothing in the file describes the data values")
        )
    padding_at = table["data"] + table["raw_size"] + 5
    cases.append(Case("flip in the data padding (no DATASUM)", flip(no_sums, padding_at, 0x04), ".fits", True, "broken", {"padding"}))
    cases.append(Case("non-ASCII byte in a header (no CHECKSUM)", flip(no_sums, table["header"] + 80 * 3 + 40, 0x80), ".fits", True, "broken", {"illegal-chars"}))
    after_end = table["data"] - 100
    cases.append(Case("byte changed after END (no CHECKSUM)", flip(no_sums, after_end, 0x01), ".fits", True, "broken", {"header-fill"}))

    # -- zero-filled holes ---------------------------------------------------
    hole = (table["data"] + 512, 1024)

    def zero(data: bytes, start: int, length: int) -> bytes:
        return data[:start] + bytes(length) + data[start + length :]

    cases.append(Case("zero-filled hole in data (with DATASUM)", zero(with_sums, *hole), ".fits", True, "broken", {"datasum-bad"}))
    cases.append(
        Case("zero-filled hole in data (no checksum)", zero(no_sums, *hole), ".fits", False, "ok",
             why_undetectable="zeros are valid data values")
    )
    cases.append(Case("zero-filled hole over a header (no checksum)", zero(no_sums, table["header"] + 100, 600), ".fits", True, "broken", {"illegal-chars"}))

    # -- structure -------------------------------------------------------------
    cases.append(Case("trailing garbage", with_sums + rng.bytes(100), ".fits", True, "broken", {"trailing-bytes"}))
    cases.append(Case("trailing zero record", no_sums + bytes(2880), ".fits", True, "broken", {"trailing-bytes"}))
    for index in (0, 1):
        for data, label in ((with_sums, "with checksums"), (no_sums, "without checksums")):
            end_card = _end_card_offset(data, spans[index])
            damaged = data[:end_card] + b" " * 80 + data[end_card + 80 :]
            cases.append(Case(f"missing END in HDU {index} ({label})", damaged, ".fits", True, "broken", {"missing-end"}))

    # -- gzip ----------------------------------------------------------------
    gz = gzipped(with_sums)
    gz_plain = gzipped(no_sums)
    start = gzip_header_length(gz)
    cases.append(Case("clean .fits.gz", gz, ".fits.gz", False, "ok"))
    for cut in pick(start + 1, len(gz) - 8):
        cases.append(Case(f".fits.gz truncated at {cut}", gz[:cut], ".fits.gz", True, "incomplete", {"gzip-truncated"}))
    cases.append(Case(".fits.gz truncated in its trailer", gz[:-3], ".fits.gz", True, "incomplete", {"gzip-truncated"}, 3))
    cases.append(Case(".fits.gz with a flipped CRC byte", flip(gz, len(gz) - 7, 0x10), ".fits.gz", True, "broken", {"gzip-crc"}))
    cases.append(Case(".fits.gz with a flipped length byte", flip(gz, len(gz) - 3, 0x01), ".fits.gz", True, "broken", {"gzip-size"}))
    for offset in pick(start, len(gz) - 8):
        mask = int(rng.integers(1, 256))
        cases.append(Case(f".fits.gz flipped compressed byte at {offset}", flip(gz, offset, mask), ".fits.gz", True, "broken"))
        cases.append(Case(f".fits.gz (no FITS checksums) flipped compressed byte at {offset}", flip(gz_plain, offset, mask), ".fits.gz", True, "broken"))
    cases.append(Case(".fits.gz with garbage after the stream", gz + b"garbage", ".fits.gz", True, "broken", {"trailing-bytes"}))
    cases.append(Case(".fits.gz damaged magic byte", flip(gz, 0, 0x01), ".fits.gz", True, "broken", {"gzip-header"}))
    cases.append(Case(".fits.gz with reserved flag bits set", flip(gz, 3, 0x80), ".fits.gz", True, "broken", {"gzip-header"}))
    return cases


def _end_card_offset(data: bytes, span: dict) -> int:
    for pos in range(span["header"], span["data"], 80):
        if data[pos : pos + 8] == b"END     ":
            return pos
    raise AssertionError("no END card")


def fitsync_verdict(tmp_path, case: Case) -> fitsaudit.FileReport:
    path = tmp_path / f"case{case.suffix}"
    path.write_bytes(case.data)
    return fitsaudit.check_file(str(path))


def astropy_verdict(path: str, timeout: float = 20.0) -> str:
    """What astropy says: "error" (an exception), "warning" (warnings or a
    failed verify_checksum/verify_datasum), "ok", or "hang" (no answer within
    ``timeout``: some damaged headers send astropy 8 into an endless loop).
    Every HDU's data is loaded, so lazy loading hides nothing. Runs in a
    forked child so that a hang can be stopped."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=lambda: sender.send(_astropy_verdict(path)), daemon=True)
    child.start()
    verdict = receiver.recv() if receiver.poll(timeout) else "hang"
    child.kill()
    child.join()
    return verdict


def _astropy_verdict(path: str) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with afits.open(path, checksum=True) as hdul:
                failed = False
                for hdu in hdul:
                    hdu.data  # noqa: B018 - load every data unit
                    failed |= hdu.verify_checksum() == 0 or hdu.verify_datasum() == 0
        except Exception:
            return "error"
    return "warning" if failed or caught else "ok"


CORPUS = build_corpus()


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_corpus_case_is_detected_exactly(tmp_path, case):
    report = fitsync_verdict(tmp_path, case)
    kinds = {p.kind for p in report.all_problems}
    assert report.status == case.status, (case.name, [p.message for p in report.all_problems])
    assert case.kinds <= kinds, (case.name, kinds)
    if case.missing is not None:
        missing = [p.missing_bytes for p in report.all_problems if p.kind in ("truncated", "gzip-truncated")]
        assert case.missing in missing, (case.name, missing)
    if not case.detected:
        assert not [p for p in report.all_problems if p.severity != "warning"]


def test_corpus_covers_every_kind_the_issue_names():
    names = " | ".join(c.name for c in CORPUS)
    for phrase in ("truncated in a header", "truncated in data", "record boundary", "bit flip in a header", "with DATASUM",
                   "zero-filled hole", "trailing garbage", "missing END", ".fits.gz truncated", "flipped CRC", "flipped compressed byte"):
        assert phrase in names
    undetectable = {c.name.split(" at ")[0] for c in CORPUS if not c.detected and c.why_undetectable}
    assert undetectable == {"bit flip in data", "zero-filled hole in data (no checksum)"}


def test_detects_everything_astropy_detects(tmp_path):
    """Agreement: where astropy raises or warns, fitsync reports a problem;
    on clean files both are silent."""
    disagreements = []
    for number, case in enumerate(CORPUS):
        path = tmp_path / f"c{number}{case.suffix}"
        path.write_bytes(case.data)
        theirs = astropy_verdict(str(path), timeout=5)
        ours = fitsaudit.check_file(str(path)).status
        if theirs != "ok" and ours == "ok":
            disagreements.append((case.name, theirs))
        if not case.detected and case.name.startswith("clean"):
            assert theirs == "ok", case.name
    assert disagreements == []


def test_cut_exactly_at_the_end_of_an_hdu_needs_the_manifest_record(tmp_path):
    """A file cut where an HDU ends is a valid, shorter FITS file: only the
    HDU count a manifest recorded shows the loss."""
    data = fits_bytes(base_hdul(1), checksum=True)
    whole = tmp_path / "whole.fits"
    whole.write_bytes(data)
    recorded = fitsaudit.fits_manifest_fields(str(whole))
    assert recorded == {"state": "ok", "hdus": 3, "checksum": ["ok"] * 3, "datasum": ["ok"] * 3}
    cut = tmp_path / "cut.fits"
    cut.write_bytes(data[: layout(data)[1]["end"]])
    report = fitsaudit.check_file(str(cut))
    assert report.status == "ok" and len(report.hdus) == 2
    assert fitsaudit.manifest_regressions(recorded, report) == [f"{cut}: had 3 HDUs, now 2"]


def test_lost_checksum_keywords_show_against_the_manifest_record(tmp_path):
    before = tmp_path / "a.fits"
    before.write_bytes(fits_bytes(base_hdul(2), checksum=True))
    recorded = fitsaudit.fits_manifest_fields(str(before))
    after = tmp_path / "b.fits"
    after.write_bytes(fits_bytes(base_hdul(2), checksum=False))
    report = fitsaudit.check_file(str(after))
    assert report.status == "ok" and report.checksums == "absent"
    lost = fitsaudit.manifest_regressions(recorded, report)
    assert f"{after}: HDU 1 lost its DATASUM keyword" in lost and len(lost) == 6
