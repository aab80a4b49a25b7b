"""The undo journal of updates in place (fitsync.inplace), on real files:
any recipe applied in place gives the new file, the journal rolls it back
to the old one byte for byte, and a torn or damaged journal is read only
as far as it is intact."""

from __future__ import annotations

import os

import blake3
import pytest
from hypothesis import given, settings, strategies as st

from fitsync import inplace
from fitsync.delta import fetch_recipe
from fitsync.signature import signature_of_buffer

from test_delta import file_pairs


def _apply(tmp_path, old: bytes, new: bytes, block_size: int, batch: int):
    path, jpath = tmp_path / "f.dat", tmp_path / ".fitsync" / "inplace" / "f.journal"  # where mirror keeps it
    jpath.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, jpath):
        if p.exists():
            p.unlink()
    path.write_bytes(old)
    recipe = fetch_recipe(signature_of_buffer(new, block_size), old)
    header = {"path": "f.dat", "old_size": len(old), "old_mtime_ns": 0, "old_mode": 0o644, "new_owner": None}
    journal = inplace.Journal(str(jpath), header)
    fd = os.open(path, os.O_RDWR)

    def read_source(ranges):
        for offset, length in ranges:
            yield new[offset:offset + length]

    saved = inplace.BATCH
    inplace.BATCH = batch  # small batches: data moved later is read back from the journal
    try:
        inplace.write_in_place(fd, recipe, read_source, journal, len(old))
        journal.mark_done()  # as the engine does once the result has passed its checks
    finally:
        inplace.BATCH = saved
        journal.close()
    return path, jpath, fd, recipe


@settings(max_examples=150, deadline=None)
@given(pair=file_pairs(), batch=st.sampled_from([1, 4096, 1 << 25]), piece=st.sampled_from([700, 8 << 20]))
def test_applied_in_place_then_rolled_back(tmp_path_factory, pair, batch, piece):
    """``piece``: records of at most 700 bytes, so that ranges, the cut-off
    tail and the reads of old bytes are split as a multi-GiB file's are."""
    old, new, block_size = pair
    tmp_path = tmp_path_factory.mktemp("j")
    saved_piece, inplace.PIECE = inplace.PIECE, piece
    try:
        path, jpath, fd, recipe = _apply(tmp_path, old, new, block_size, batch)
    finally:
        inplace.PIECE = saved_piece
    try:
        assert path.read_bytes() == new
        assert inplace.file_digest_of(fd, len(new), blake3.blake3()) == recipe.digest
        saved_piece, inplace.PIECE = inplace.PIECE, piece
        try:
            header, records, done = inplace.read_journal(str(jpath))
        finally:
            inplace.PIECE = saved_piece
        assert done and header["old_size"] == len(old)
        # Only what changed was journalled, each old byte at most once.
        assert sum(n for _, n, _ in records) <= len(old)
        assert all(n <= piece for _, n, _ in records)
        inplace.roll_back(fd, str(jpath), header, records)
        assert path.read_bytes() == old
    finally:
        os.close(fd)


@settings(max_examples=60, deadline=None)
@given(pair=file_pairs(), cut=st.floats(0, 1), flip=st.booleans())
def test_a_torn_or_damaged_journal_is_read_up_to_its_last_intact_record(tmp_path_factory, pair, cut, flip):
    old, new, block_size = pair
    tmp_path = tmp_path_factory.mktemp("t")
    path, jpath, fd, _ = _apply(tmp_path, old, new, block_size, 1)
    os.close(fd)
    whole = jpath.read_bytes()
    full_header, full_records, _ = inplace.read_journal(str(jpath))
    at = int(cut * len(whole))
    damaged = bytearray(whole[:at])
    if flip and damaged:
        damaged[-1] ^= 0x40
    jpath.write_bytes(bytes(damaged))
    body_length = int.from_bytes(whole[len(inplace.MAGIC):len(inplace.MAGIC) + 4], "little")
    header_end = len(inplace.MAGIC) + 4 + body_length + 16
    if at < header_end or (flip and at == header_end):
        with pytest.raises(inplace.JournalCorrupt):
            inplace.read_journal(str(jpath))
        return
    header, records, done = inplace.read_journal(str(jpath))
    assert header == full_header
    assert records == full_records[:len(records)]  # a prefix: nothing torn is ever used
    assert done == (at == len(whole) and not flip)
