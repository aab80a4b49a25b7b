"""What the sync engine gets from fitsaudit: a source still being written is
"incomplete" and never replaces a good destination copy; a damaged
destination copy is "broken" and gets repaired."""

from __future__ import annotations

import gzip
import os
import threading

import pytest

from fitsync import fits_stream, fitsaudit
from fitsync.errors import SourceChanged
from fitsync.remotes.local import LocalRemote
from test_fits_corpus import base_hdul, fits_bytes, layout

GOOD = fits_bytes(base_hdul(31), checksum=True)
NEWER = fits_bytes(base_hdul(32), checksum=True)


def chunks_of(data: bytes, size: int = 4096):
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def destination(tmp_path):
    root = tmp_path / "dst"
    root.mkdir()
    (root / "obs.fits").write_bytes(GOOD)
    return LocalRemote(str(root))


def leftovers(remote: LocalRemote) -> list[str]:
    tmp = os.path.join(remote.root, ".fitsync", "tmp")
    return os.listdir(tmp) if os.path.isdir(tmp) else []


def test_incomplete_source_never_replaces_the_good_copy(destination):
    half_written = NEWER[: layout(NEWER)[1]["data"] + 1000]
    with pytest.raises(fits_stream.IncompleteFits, match="obs.fits is incomplete.*bytes missing"):
        destination.write_atomic("obs.fits", fits_stream.guard_chunks("obs.fits", chunks_of(half_written)))
    assert open(os.path.join(destination.root, "obs.fits"), "rb").read() == GOOD
    assert leftovers(destination) == []
    assert issubclass(fits_stream.IncompleteFits, SourceChanged)


def test_complete_source_goes_through_the_guard(destination):
    destination.write_atomic("obs.fits", fits_stream.guard_chunks("obs.fits", chunks_of(NEWER, 1000)))
    assert open(os.path.join(destination.root, "obs.fits"), "rb").read() == NEWER


def test_gzip_source_flushed_mid_write_is_incomplete(tmp_path, destination):
    path = tmp_path / "obs.fits.gz"
    with open(path, "wb") as raw:
        writer = gzip.GzipFile(fileobj=raw, mode="wb")
        writer.write(NEWER[:10000])
        writer.flush()  # what a writer has on disk mid-file: no trailer yet
        state, reason = fitsaudit.quick_state(str(path))
        assert state == "incomplete" and "gzip stream ends early" in reason
        with pytest.raises(fits_stream.IncompleteFits):
            destination.write_atomic("obs.fits.gz", fits_stream.guard_chunks("obs.fits.gz", [path.read_bytes()]))
        writer.write(NEWER[10000:])
        writer.close()
    assert fitsaudit.quick_state(str(path)) == ("ok", "")
    assert not os.path.exists(os.path.join(destination.root, "obs.fits.gz"))


def test_instrument_writing_a_file_is_incomplete_until_the_last_record(tmp_path):
    """An exposure written header first, then data in pieces."""
    path = tmp_path / "exposure.fits"
    seen = []
    with open(path, "wb") as out:
        for piece in chunks_of(NEWER, 2000):
            out.write(piece)
            out.flush()
            seen.append(fitsaudit.quick_state(str(path))[0])
    assert set(seen[:-1]) <= {"incomplete", "ok"} and seen[-1] == "ok"
    ends = {span["end"] for span in layout(NEWER)}
    for written, state in zip(range(2000, len(NEWER) + 2000, 2000), seen):
        assert state == ("ok" if min(written, len(NEWER)) in ends else "incomplete"), written


def test_source_appended_to_while_it_is_read(tmp_path, destination):
    """The reader reaches the end of a file its writer has not finished: the
    guard stops the copy, and the destination keeps its good copy."""
    path = tmp_path / "obs.fits"
    half = len(NEWER) // 2
    first_half_written, reader_done = threading.Event(), threading.Event()

    def instrument():
        with open(path, "wb") as out:
            out.write(NEWER[:half])
            out.flush()
            first_half_written.set()
            reader_done.wait(10)
            out.write(NEWER[half:])

    writer = threading.Thread(target=instrument)
    writer.start()
    first_half_written.wait(10)
    try:
        with open(path, "rb") as source, pytest.raises(fits_stream.IncompleteFits):
            destination.write_atomic("obs.fits", fits_stream.guard_chunks("obs.fits", iter(lambda: source.read(1500), b"")))
    finally:
        reader_done.set()
        writer.join()
    assert open(os.path.join(destination.root, "obs.fits"), "rb").read() == GOOD
    assert fitsaudit.quick_state(str(path)) == ("ok", "")


def test_damaged_destination_copy_is_broken(destination):
    damaged = bytearray(GOOD)
    damaged[layout(GOOD)[2]["data"] + 3] ^= 0x20
    with open(os.path.join(destination.root, "obs.fits"), "wb") as out:
        out.write(damaged)
    state, reason = fitsaudit.quick_state(os.path.join(destination.root, "obs.fits"))
    assert state == "broken" and "HDU 2: the data was changed" in reason
