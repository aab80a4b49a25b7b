"""Large outputs are written around the page cache (fitsync.directio): the
bytes on disk, the digest, the fallbacks and the failures are the same as
through the page cache."""

from __future__ import annotations

import errno
import fcntl
import os

import blake3
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fitsync import directio
from fitsync.delta import apply_recipe, fetch_recipe
from fitsync.errors import VerificationFailed
from fitsync.signature import signature_of_buffer

from test_delta import file_pairs


def _direct_io_works(directory) -> bool:
    probe = os.path.join(directory, ".direct-probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


@pytest.fixture
def small_buffers(monkeypatch):
    """Direct I/O for any size, with buffers small enough that a few kB of
    test data crosses many buffer and alignment boundaries."""
    monkeypatch.setattr(directio, "MIN_SIZE", 0)
    monkeypatch.setattr(directio, "BUFFER", 3 * directio.ALIGN)


@pytest.fixture
def direct_dir(tmp_path):
    if not _direct_io_works(tmp_path):  # tmpfs: the fallback is tested below
        pytest.fail(f"{tmp_path} refuses O_DIRECT; run the tests on a disk file system")
    return tmp_path


def _open_out(path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def test_pieces_and_copies_of_any_length_land_exactly(small_buffers, direct_dir):
    rng = np.random.default_rng(7)
    basis = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    (direct_dir / "basis").write_bytes(basis)
    expected = bytearray()
    out = _open_out(direct_dir / "out")
    basis_fd = os.open(direct_dir / "basis", os.O_RDONLY)
    try:
        writer = directio.open_direct(out, 0)
        assert writer is not None and os.O_DIRECT & fcntl.fcntl(out, fcntl.F_GETFL)
        for step in range(40):
            if step % 2:
                piece = rng.integers(0, 256, int(rng.integers(0, 9000)), dtype=np.uint8).tobytes()
                writer.write(piece)
                expected += piece
            else:
                offset, length = int(rng.integers(0, 40_000)), int(rng.integers(0, 10_000))
                assert writer.copy_from(basis_fd, offset, length) == length
                expected += basis[offset : offset + length]
        digest = writer.finish()
        assert os.lseek(out, 0, os.SEEK_CUR) == len(expected)  # positioned as after write()
    finally:
        os.close(out)
        os.close(basis_fd)
    assert (direct_dir / "out").read_bytes() == bytes(expected)
    assert digest == blake3.blake3(bytes(expected)).hexdigest()


def test_copy_past_the_end_of_the_basis_returns_what_was_there(small_buffers, direct_dir):
    (direct_dir / "basis").write_bytes(b"x" * 5000)
    out = _open_out(direct_dir / "out")
    basis_fd = os.open(direct_dir / "basis", os.O_RDONLY)
    try:
        writer = directio.open_direct(out, 0)
        assert writer.copy_from(basis_fd, 4000, 3000) == 1000
        writer.finish()
    finally:
        os.close(out)
        os.close(basis_fd)
    assert (direct_dir / "out").read_bytes() == b"x" * 1000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=file_pairs())
def test_patching_with_direct_io_rebuilds_the_new_file(tmp_path_factory, pair, small_buffers):
    # small_buffers patches constants only: nothing to reset between examples
    old, new, block_size = pair
    tmp = tmp_path_factory.mktemp("direct")
    (tmp / "old").write_bytes(old)
    recipe = fetch_recipe(signature_of_buffer(new, block_size, fits_aware=False), old)
    basis, out = os.open(tmp / "old", os.O_RDONLY), _open_out(tmp / "out")
    try:
        apply_recipe(recipe, basis, lambda ranges: (new[o : o + n] for o, n in ranges), out)
    finally:
        os.close(basis)
        os.close(out)
    assert (tmp / "out").read_bytes() == new


def test_wrong_source_bytes_fail_verification_with_direct_io(small_buffers, direct_dir):
    old, new = b"a" * 20_000, b"a" * 10_000 + b"b" * 10_000
    recipe = fetch_recipe(signature_of_buffer(new, 1000, fits_aware=False), old)
    (direct_dir / "old").write_bytes(old)
    basis, out = os.open(direct_dir / "old", os.O_RDONLY), _open_out(direct_dir / "out")
    try:
        with pytest.raises(VerificationFailed):
            apply_recipe(recipe, basis, lambda ranges: (b"c" * n for _, n in ranges), out)
    finally:
        os.close(basis)
        os.close(out)


def test_a_file_system_without_direct_io_gets_none(small_buffers):
    shm = "/dev/shm"  # tmpfs: refuses O_DIRECT before Linux 6.6
    fd = os.open(os.path.join(shm, f"fitsync-direct-{os.getpid()}"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        writer = directio.open_direct(fd, 1 << 30)
        assert (writer is None) == (not _direct_io_works(shm))
        if writer:
            writer.finish()
    finally:
        os.close(fd)
        os.unlink(os.path.join(shm, f"fitsync-direct-{os.getpid()}"))


def test_small_or_unaligned_outputs_and_the_switch_stay_buffered(tmp_path, monkeypatch):
    fd = _open_out(tmp_path / "out")
    try:
        assert directio.open_direct(fd, directio.MIN_SIZE - 1) is None
        os.write(fd, b"x")
        assert directio.open_direct(fd, directio.MIN_SIZE) is None  # position 1 is not aligned
        os.lseek(fd, 0, os.SEEK_SET)
        monkeypatch.setenv("FITSYNC_DIRECT_IO", "0")
        assert directio.open_direct(fd, directio.MIN_SIZE) is None
    finally:
        os.close(fd)


def test_a_refused_direct_write_goes_on_through_the_page_cache(small_buffers, direct_dir, monkeypatch):
    """Some file systems accept O_DIRECT at open and refuse the write."""
    real_pwrite = os.pwrite
    refused = []

    def pwrite(fd, data, offset):
        if not refused:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(directio.os, "pwrite", pwrite)
    data = os.urandom(30_001)
    out = _open_out(direct_dir / "out")
    try:
        writer = directio.open_direct(out, 0)
        writer.write(data)
        assert writer.finish() == blake3.blake3(data).hexdigest()
    finally:
        os.close(out)
    assert refused and (direct_dir / "out").read_bytes() == data


def test_a_failing_disk_is_reported_and_stops_the_writer(small_buffers, direct_dir, monkeypatch):
    def pwrite(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(directio.os, "pwrite", pwrite)
    out = _open_out(direct_dir / "out")
    try:
        writer = directio.open_direct(out, 0)
        with pytest.raises(OSError) as failure:
            for _ in range(100):  # the error surfaces on a later write, or at finish
                writer.write(b"y" * 5000)
            writer.finish()
        assert failure.value.errno == errno.ENOSPC
        writer.abort()
    finally:
        os.close(out)
