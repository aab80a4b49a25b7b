"""The destination's own manifest as a record of its files (fitsync.recorded):
used only for a file with the recorded size and mtime, and never a reason
to fail when it is damaged."""

from __future__ import annotations

import base64
import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from fitsync.formats.manifest import DEFAULT_NAME
from fitsync.recorded import RecordedSignatures
from fitsync.remotes.base import Entry
from fitsync.signature import signature_of_buffer

DATA = bytes(range(256)) * 40
MTIME = 1_700_000_000.25


def _manifest(blocks: str | None) -> bytes:
    header = {"format": "fitsync-manifest", "version": 1, "tool": "fitsync test", "created": "2026-12-02T00:00:00Z",
              "files": 1, "bytes": len(DATA), "digest": "blake3", "blocks": blocks is not None}
    entry = {"path": "a.fits", "size": len(DATA), "mtime": MTIME, "blake3": "0" * 64}
    if blocks is not None:
        entry["blocks"] = blocks
    return (json.dumps(header) + "\n" + json.dumps(entry) + "\n").encode()


def _good_blocks() -> str:
    return base64.b64encode(signature_of_buffer(DATA, 2880, fits_aware=False).to_bytes()).decode()


def test_a_file_with_the_recorded_size_and_mtime_gets_the_recorded_signature():
    record = RecordedSignatures(_manifest(_good_blocks()))
    sig = record.signature("a.fits", Entry("a.fits", len(DATA), MTIME))
    assert sig == signature_of_buffer(DATA, 2880, fits_aware=False)


def test_another_size_mtime_path_or_no_blocks_gets_none():
    record = RecordedSignatures(_manifest(_good_blocks()))
    assert record.signature("a.fits", Entry("a.fits", len(DATA) + 1, MTIME)) is None
    assert record.signature("a.fits", Entry("a.fits", len(DATA), MTIME + 1)) is None
    assert record.signature("b.fits", Entry("b.fits", len(DATA), MTIME)) is None
    assert record.signature("a.fits", None) is None
    assert RecordedSignatures(_manifest(None)).signature("a.fits", Entry("a.fits", len(DATA), MTIME)) is None
    assert RecordedSignatures(None).signature("a.fits", Entry("a.fits", len(DATA), MTIME)) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 2000))
def test_a_damaged_record_is_only_no_record(junk, cut):
    """Random bytes, a cut manifest, or damaged block signatures: None, never an exception."""
    held = Entry("a.fits", len(DATA), MTIME)
    good = _manifest(_good_blocks())
    for raw in (junk, good[:cut], good[:cut] + junk + good[cut:]):
        assert RecordedSignatures(raw).signature("a.fits", held) in (None, RecordedSignatures(good).signature(
            "a.fits", held))
    blob = base64.b64decode(_good_blocks())
    damaged = base64.b64encode(blob[:cut % len(blob)] + junk).decode()
    assert RecordedSignatures(_manifest(damaged)).signature("a.fits", held) is None or junk == blob[cut % len(blob):]


def test_of_destination_reads_only_a_plain_file_at_the_root(tmp_path):
    (tmp_path / "elsewhere").write_bytes(_manifest(_good_blocks()))
    os.symlink(tmp_path / "elsewhere", tmp_path / DEFAULT_NAME)  # never followed
    held = Entry("a.fits", len(DATA), MTIME)
    assert RecordedSignatures.of_destination(str(tmp_path)).signature("a.fits", held) is None
    os.unlink(tmp_path / DEFAULT_NAME)
    assert RecordedSignatures.of_destination(str(tmp_path)).signature("a.fits", held) is None  # none there
    (tmp_path / DEFAULT_NAME).write_bytes(_manifest(_good_blocks()))
    assert RecordedSignatures.of_destination(str(tmp_path)).signature("a.fits", held) is not None


def test_a_fifo_at_the_root_does_not_hang_the_run(tmp_path):
    os.mkfifo(tmp_path / DEFAULT_NAME)
    held = Entry("a.fits", len(DATA), MTIME)
    assert RecordedSignatures.of_destination(str(tmp_path)).signature("a.fits", held) is None


def test_the_mtime_is_compared_as_the_planner_does_and_a_wrong_record_is_forgotten():
    raw = _manifest(_good_blocks())
    held_a_second_later = Entry("a.fits", len(DATA), MTIME + 0.6)
    assert RecordedSignatures(raw).signature("a.fits", held_a_second_later) is None
    coarse = RecordedSignatures(raw, mtime_resolution=1.0)  # a file system that keeps whole seconds
    assert coarse.signature("a.fits", held_a_second_later) is not None
    coarse.forget("a.fits")
    assert coarse.signature("a.fits", held_a_second_later) is None
    nan = raw.replace(str(MTIME).encode(), b"NaN")
    assert RecordedSignatures(nan).signature("a.fits", Entry("a.fits", len(DATA), MTIME)) is None
