"""Manifests longer than their header's totals may wait for: written batch by
batch as they are hashed (version 2, totals on a trailer line), read back
exactly, and refused when truncated or edited."""

import io
import json

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fitsync
from fitsync.errors import BadInput
from fitsync.formats import manifest as fmt
from fitsync.formats.manifest import JsonlWriter, ManifestEntry, parse_manifest_bytes, read_manifest

from conftest import write_tree

FILES = {f"d{i % 3}/f{i:03d}.bin": bytes([i]) * (i * 37 % 500) for i in range(40)}


@pytest.fixture
def short_limit(monkeypatch):
    """Manifests of more than 7 files stream (the real limits are 100,000 and 5,000)."""
    monkeypatch.setattr(fmt, "HEADER_TOTALS_UP_TO", 7)
    monkeypatch.setattr(fmt, "BLOCKS_HEADER_TOTALS_UP_TO", 7)
    monkeypatch.setattr("fitsync.engine.manifest.STREAM_BATCH_FILES", 5)  # many batches


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("blocks", [False, True])
def test_a_long_manifest_streams_with_its_totals_on_the_trailer(tmp_path, monkeypatch, blocks):
    write_tree(tmp_path / "t", FILES)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    fitsync.manifest(str(tmp_path / "t"), output=str(tmp_path / "whole.jsonl"), blocks=blocks)
    monkeypatch.setattr(fmt, "HEADER_TOTALS_UP_TO", 7)
    monkeypatch.setattr(fmt, "BLOCKS_HEADER_TOTALS_UP_TO", 7)
    monkeypatch.setattr("fitsync.engine.manifest.STREAM_BATCH_FILES", 5)
    result = fitsync.manifest(str(tmp_path / "t"), output=str(tmp_path / "streamed.jsonl"), blocks=blocks)
    assert result.files == 40 and result.bytes == sum(map(len, FILES.values()))
    lines = _lines(tmp_path / "streamed.jsonl")
    header, body, trailer = lines[0], lines[1:-1], lines[-1]
    assert header["version"] == 2 and "files" not in header and "bytes" not in header
    assert trailer == {"end": "fitsync-manifest", "files": 40, "bytes": result.bytes}
    assert [e["path"] for e in body] == sorted(FILES)  # one order across batches
    assert body == _lines(tmp_path / "whole.jsonl")[1:]  # the same lines as a manifest held whole
    read = read_manifest(str(tmp_path / "streamed.jsonl"))
    assert read.header["files"] == 40 and read.header["bytes"] == result.bytes
    assert {p: e.blake3 for p, e in read.entries.items()} == {p: blake3.blake3(d).hexdigest()
                                                               for p, d in FILES.items()}


def test_a_streamed_manifest_audits_clean_and_finds_damage(tmp_path, short_limit, cli):
    write_tree(tmp_path / "t", FILES)
    out = tmp_path / "m.jsonl"
    assert cli("manifest", tmp_path / "t", f"--output={out}").code == 0
    assert cli("audit", tmp_path / "t", f"--manifest={out}").code == 0
    (tmp_path / "t" / "d1" / "f004.bin").write_bytes(b"x" * len(FILES["d1/f004.bin"]))
    found = cli("audit", tmp_path / "t", f"--manifest={out}")
    assert found.code == 1 and "d1/f004.bin" in found.out + found.err


@pytest.mark.parametrize("form,tool", [("b3sum", blake3.blake3), ("sha256sum", None)])
def test_checksum_lists_stream_in_path_order(tmp_path, short_limit, cli, form, tool):
    import hashlib

    write_tree(tmp_path / "t", FILES)
    out = tmp_path / "sums"
    assert cli("manifest", tmp_path / "t", f"--format={form}", f"--output={out}").code == 0
    digest = tool or hashlib.sha256
    assert out.read_text().splitlines() == [f"{digest(FILES[p]).hexdigest()}  {p}" for p in sorted(FILES)]


def test_a_signed_streamed_manifest_verifies(tmp_path, short_limit, cli):
    write_tree(tmp_path / "t", FILES)
    key = tmp_path / "key"
    assert cli("keygen", key, "--quiet").code == 0
    out = tmp_path / "m.jsonl"
    assert cli("manifest", tmp_path / "t", f"--output={out}", f"--sign={key}").code == 0
    assert cli("audit", tmp_path / "t", f"--manifest={out}", f"--verify-key={key}.pub").code == 0


def _streamed_text(count: int) -> str:
    out = io.StringIO()
    writer = JsonlWriter(out, blocks=False)
    writer.add([ManifestEntry(f"f{i:04d}", i, 0.0, "0" * 64) for i in range(count)])
    writer.close()
    return out.getvalue()


def test_truncated_or_edited_streamed_manifests_are_refused(short_limit):
    text = _streamed_text(10)
    assert json.loads(text.splitlines()[0])["version"] == 2
    lines = text.splitlines(keepends=True)
    cases = {
        "no trailer": "".join(lines[:-1]),
        "cut mid-body": "".join(lines[:4]),
        "a line after the trailer": text + lines[1].replace("f0000", "g0000"),
        "a wrong count": "".join(lines[:-1]) + lines[-1].replace('"files": 10', '"files": 11'),
        "a bad count": "".join(lines[:-1]) + lines[-1].replace('"files": 10', '"files": "ten"'),
        "a trailer in version 1": lines[0].replace('"version": 2', '"version": 1') + "".join(lines[1:]),
    }
    for case, broken in cases.items():
        with pytest.raises(BadInput) as caught:
            parse_manifest_bytes(broken.encode(), "m.jsonl")
        assert "m.jsonl" in str(caught.value), case
    assert len(parse_manifest_bytes(text.encode(), "m.jsonl").entries) == 10


@given(sizes=st.lists(st.integers(0, 1 << 40), max_size=30), limit=st.integers(0, 12),
       batch=st.integers(1, 7))
def test_the_writer_round_trips_at_every_limit_and_batch_size(sizes, limit, batch):
    entries = [ManifestEntry(f"p/{i:03d}", size, float(i), f"{i:064x}") for i, size in enumerate(sizes)]
    saved = fmt.HEADER_TOTALS_UP_TO
    fmt.HEADER_TOTALS_UP_TO = limit
    try:
        out = io.StringIO()
        writer = JsonlWriter(out, blocks=False)
        for start in range(0, len(entries), batch):
            writer.add(entries[start:start + batch])
        writer.close()
    finally:
        fmt.HEADER_TOTALS_UP_TO = saved
    read = parse_manifest_bytes(out.getvalue().encode(), "m")
    assert list(read.entries.values()) == entries
    assert read.header["files"] == len(entries) and read.header["bytes"] == sum(sizes)
    assert read.header["version"] == (1 if len(entries) <= limit else 2)


def test_a_local_listing_makes_its_entries_a_chunk_at_a_time(tmp_path):
    """LocalRemote.list() keeps the tree in the walker's compact C records
    and makes Python Entries 4,096 at a time, as the walk takes them."""
    import gc

    from fitsync.remotes.base import Entry
    from fitsync.remotes.local import LocalRemote

    names = [f"d{i % 7}/f{i:05d}.bin" for i in range(10_000)]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")

    def alive() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is Entry)

    before = alive()
    listed = LocalRemote(str(tmp_path)).list()
    first = next(listed)
    assert alive() - before <= 4096
    rest = [e.path for e in listed]
    assert [first.path] + rest == sorted(names)
