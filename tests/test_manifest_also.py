"""``manifest --also=adler32,md5,sha256`` (issue 27): the digests replica
catalogues check (Rucio, FTS) on every jsonl line, from the same read, on
local trees, with --blocks, from an HTTP server, and across a resumed
cluster run; bad names and formats refused in one line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3

import fitsync
from fitsync.engine import cluster as clusters
from fitsync.remotes.base import Entry
from http_fixture import HttpFixture

FITSYNC = str(Path(sys.executable).with_name("fitsync"))
SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "archive"
HESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hess-dl3-dr1"


def tree(root: Path) -> Path:
    root.mkdir()
    (root / "big.bin").write_bytes(bytes(range(256)) * 20_000)  # above the mmap threshold
    (root / "empty.dat").write_bytes(b"")
    (root / "named.txt").write_bytes(b"SIMPLE  =                    T")  # FITS bytes under another name
    for fits in sorted(SAMPLE.rglob("*.fits"))[:3] + sorted(HESS.glob("data/*.fits.gz"))[:2]:
        (root / fits.name).write_bytes(fits.read_bytes())
    return root


def check_lines(root: Path, text: str, also=("adler32", "md5", "sha256")) -> list:
    lines = [json.loads(line) for line in text.splitlines()[1:]]
    assert sorted(line["path"] for line in lines) == sorted(p.name for p in root.iterdir())
    for line in lines:
        data = (root / line["path"]).read_bytes()
        assert line["blake3"] == blake3.blake3(data).hexdigest()
        expected = {"adler32": f"{zlib.adler32(data):08x}", "md5": hashlib.md5(data).hexdigest(),
                    "sha256": hashlib.sha256(data).hexdigest()}
        for algo in also:
            assert line[algo] == expected[algo], (line["path"], algo)
    return lines


def test_every_line_carries_the_extra_digests(tmp_path):
    root = tree(tmp_path / "tree")
    result = subprocess.run([FITSYNC, "manifest", root, "--also=adler32,md5,sha256"], capture_output=True,
                            text=True, check=True)
    lines = check_lines(root, result.stdout)
    fits_lines = [line for line in lines if line["path"].endswith((".fits", ".fits.gz"))]
    assert fits_lines and all("fits" in line for line in fits_lines)  # the FITS check shares the read


def test_with_blocks_and_from_an_http_server(tmp_path):
    root = tree(tmp_path / "tree")
    out = tmp_path / "m.jsonl"
    fitsync.manifest(root, output=out, blocks=True, also=["md5"])
    lines = check_lines(root, out.read_text(), also=("md5",))
    assert all("blocks" in line for line in lines)
    with HttpFixture(str(root)) as server:
        fitsync.manifest(server.url + "/", output=tmp_path / "h.jsonl", also=("adler32",))
    check_lines(root, (tmp_path / "h.jsonl").read_text(), also=("adler32",))


def test_bad_names_and_formats_are_refused_in_one_line(tmp_path):
    root = tree(tmp_path / "tree")
    for args, words in ((["--also=crc32"], "choose from adler32, md5, sha256"),
                        (["--also=md5", "--format=b3sum"], "--format=b3sum has no place for them")):
        result = subprocess.run([FITSYNC, "manifest", root, *args], capture_output=True, text=True)
        assert result.returncode == 2 and words in result.stderr and result.stderr.count("\n") == 1


def test_a_resume_with_other_digests_redoes_every_batch(tmp_path):
    """Shards of a run without --also are never merged into one with it."""
    root = tree(tmp_path / "tree")
    listed = [Entry(p.name, p.stat().st_size, p.stat().st_mtime) for p in sorted(root.iterdir())]
    shards = str(tmp_path / "shards")
    options = fitsync.RemoteOptions()

    def run(resume: bool, also: tuple):
        with ThreadPoolExecutor(2) as pool:
            return clusters.run_batches(pool, 4, str(root), options, listed, shards, blocks=False, fits=True,
                                        jobs=1, resume=resume, max_files=2, also=also)

    first = run(False, ())
    assert first.skipped == 0 and len(first.summaries) == 4
    assert run(True, ("md5",)).skipped == 0  # other digests: nothing reused
    assert run(True, ("md5",)).skipped == 4  # the same ones: everything reused
    shard_lines = [json.loads(line) for path in sorted(Path(shards).glob("*.jsonl")) for line in
                   Path(path).read_text().splitlines()]
    assert len(shard_lines) == len(listed) and all("md5" in line for line in shard_lines)


def test_files_from_looks_up_the_listed_files_instead_of_crawling(tmp_path):
    """A name the crawl would trip on (not UTF-8) is never met when
    --files-from lists other files; the manifest is the filtered one."""
    import os

    root = tree(tmp_path / "tree")
    (root / "sub").mkdir()
    (root / "sub" / "kept.dat").write_bytes(b"kept")
    with open(os.path.join(os.fsencode(root), b"sub/\xff-not-utf8.dat"), "wb") as f:
        f.write(b"a name a manifest cannot record")
    (tmp_path / "list.txt").write_text("# tonight's files\nbig.bin\nsub/kept.dat\nnot/there.fits\n")
    chosen = fitsync.manifest(root, output=tmp_path / "m.jsonl",
                              select=fitsync.Selection(files_from=str(tmp_path / "list.txt")))
    assert chosen.errors == []
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()[1:]]
    assert [line["path"] for line in lines] == ["big.bin", "sub/kept.dat"]
    (tmp_path / "dirs.txt").write_text("sub\n")  # a directory selects all below it: a crawl after all
    below = fitsync.manifest(root, output=tmp_path / "d.jsonl",
                             select=fitsync.Selection(files_from=str(tmp_path / "dirs.txt")))
    assert [json.loads(line)["path"] for line in (tmp_path / "d.jsonl").read_text().splitlines()[1:]] == ["sub/kept.dat"]
    assert any("UTF-8" in e["reason"] for e in below.errors)
    crawled = fitsync.manifest(root, output=tmp_path / "all.jsonl")
    assert any("UTF-8" in e["reason"] for e in crawled.errors)  # what the crawl meets, and the lookup does not
    assert (tmp_path / "all.jsonl").read_text().splitlines()[1:][0] == (tmp_path / "m.jsonl").read_text().splitlines()[1]
