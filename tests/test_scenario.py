"""Issue 3's acceptance scenario: a realistic tree mirrored, changed on both sides, mirrored again.

~2,000 small files plus 20 FITS files of 20-100 MB. Then: a header keyword
value changed in 5 source FITS files, an HDU appended to 1, bytes flipped in
3 destination files (same size and mtime), 2 source files deleted, 10 new
ones added. ``mirror --checksum --delete`` must leave DST byte-identical to
SRC with exactly 3 repairs, moving little more than the new files' bytes.
FITSYNC_SCENARIO_MB=lo-hi scales the FITS sizes (default 20-100).
"""

import json
import os
import random

import numpy as np
import pytest
from astropy.io import fits

from conftest import write_tree

SMALL_FILES = 2000
BIG_FILES = 20


def _sizes_mb():
    lo, hi = (int(x) for x in os.environ.get("FITSYNC_SCENARIO_MB", "20-100").split("-"))
    return [lo + (hi - lo) * i // (BIG_FILES - 1) for i in range(BIG_FILES)]


def _write_fits(path, mb, rng):
    """An image HDU of about ``mb`` MB with random data, written header-first like an instrument."""
    n = (mb << 20) // 4
    header = fits.Header()
    for key, value in (("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 1), ("NAXIS1", n),
                       ("OBJECT", "FIELD-0001"), ("EXPTIME", 30.0)):
        header[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tostring().encode())
        f.write(rng.bytes(n * 4))
        f.write(b"\0" * (-(n * 4) % 2880))


def _edit_keyword(path):
    """Change OBJECT's value in place (same length), as a header fix does."""
    with open(path, "r+b") as f:
        head = f.read(2880)
        at = head.index(b"OBJECT  = ")
        f.seek(at)
        f.write(b"OBJECT  = 'FIELD-0002'".ljust(80))


def _append_hdu(path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="X", format="E", array=np.arange(1000.0))])
    with open(path, "ab") as f:
        f.write(table.header.tostring().encode())
        data = table.data.tobytes()
        f.write(data + b"\0" * (-len(data) % 2880))


def _flip(path, offset):
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _tree_digests(root):
    import blake3

    out = {}
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".fitsync"]
        for name in names:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = blake3.blake3(open(p, "rb").read()).hexdigest()
    return out


@pytest.mark.slow
def test_mirror_scenario(tmp_path, cli):
    rng = np.random.default_rng(7)
    pyrng = random.Random(7)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {f"cat/d{i // 100:02d}/f{i:04d}.txt": rng.bytes(pyrng.randint(100, 4000)) for i in range(SMALL_FILES)})
    bigs = [src / f"fits/obs{i:02d}.fits" for i in range(BIG_FILES)]
    for path, mb in zip(bigs, _sizes_mb()):
        _write_fits(path, mb, rng)
    assert cli("mirror", src, dst, "--quiet").code == 0

    edited = bigs[:5]
    for path in edited:
        _edit_keyword(path)
    _append_hdu(bigs[5])
    flipped = [dst / "fits/obs10.fits", dst / "fits/obs11.fits", dst / "cat/d03/f0300.txt"]
    for path in flipped[:2]:
        _flip(path, os.path.getsize(path) // 2)
    _flip(flipped[2], 10)
    os.unlink(src / "cat/d00/f0000.txt")
    os.unlink(bigs[19])
    new = {f"new/n{i}.dat": rng.bytes(50_000) for i in range(10)}
    write_tree(src, new)

    # --no-whole-file: the source is local, where changed files are otherwise
    # copied whole (cheaper on a disk than a delta, as in rsync); this
    # scenario measures what a delta moves.
    result = cli("mirror", src, dst, "--checksum", "--delete", "--json", "--no-whole-file")
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["files_repaired"] == 3
    assert summary["files_new"] == 10
    assert summary["files_updated"] == 6
    assert summary["files_deleted"] == 2
    assert summary["files_failed"] == 0
    assert _tree_digests(dst) == _tree_digests(src)

    changed_bytes = sum(os.path.getsize(p) for p in edited + [bigs[5]]) + sum(os.path.getsize(p) for p in flipped)
    budget = sum(map(len, new.values())) + 0.01 * changed_bytes
    assert summary["bytes_transferred"] <= budget, (summary["bytes_transferred"], budget)

    manifest = tmp_path / "src.jsonl"
    assert cli("manifest", src, f"--output={manifest}").code == 0
    audit = cli("audit", dst, f"--manifest={manifest}", "--json")
    assert audit.code == 0, audit.out
    assert json.loads(audit.out)["manifest"]["counts"]["ok"] == SMALL_FILES - 1 + BIG_FILES - 1 + 10
