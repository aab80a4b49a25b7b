"""Large outputs are written around the page cache (fitsync.directio): the
bytes on disk, the digest, the fallbacks and the failures are the same as
through the page cache."""

from __future__ import annotations

import errno
import fcntl
import os
import time

import blake3
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

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


def test_a_long_copy_asks_the_disk_for_the_basis_ahead_of_it(small_buffers, direct_dir, monkeypatch):
    """A cold old copy is read while the new one is written: every copied
    range is asked for (WILLNEED) before it is read, never more than
    READ_AHEAD ahead of the copy, and the bytes land as before."""
    monkeypatch.setattr(directio, "READ_AHEAD", 8 * directio.BUFFER)
    asked: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def note(fd, offset, length, advice):
        if advice == os.POSIX_FADV_WILLNEED:
            asked.append((offset, length))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", note)
    basis = np.random.default_rng(3).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    (direct_dir / "basis").write_bytes(basis)
    out = _open_out(direct_dir / "out")
    basis_fd = os.open(direct_dir / "basis", os.O_RDONLY)
    try:
        writer = directio.open_direct(out, 0)
        assert writer.copy_from(basis_fd, 1000, 150_000) == 150_000
        assert writer.copy_from(basis_fd, 0, 20_000) == 20_000  # a jump back starts again there
        writer.finish()
    finally:
        os.close(out)
        os.close(basis_fd)
    assert (direct_dir / "out").read_bytes() == basis[1000:151_000] + basis[:20_000]
    first = [a for a in asked if a[0] >= 1000]
    assert first[0][0] == 1000 and sum(n for _, n in first) == 150_000  # contiguous, the whole range once
    assert all(n <= directio.READ_AHEAD for _, n in asked)
    assert asked[-1] == (0, 20_000)


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


# -- new files pulled into a local destination (transfer.pull_new) ------------------------

@pytest.fixture
def pulled_directly(small_buffers, direct_dir, monkeypatch):
    """A source tree whose files all count as large; records which digests the
    source computed and whether any copy was read back."""
    from fitsync.engine import transfer
    from fitsync.remotes.local import LocalRemote

    monkeypatch.setattr(transfer, "CHUNK", 64 * 1024)  # journal chunks a test file crosses
    seen = {"source_digests": [], "read_back": []}
    real_digest, real_verify = LocalRemote.digest, transfer._verify_file

    def digest(self, path, algo="blake3"):
        seen["source_digests"].append(path)
        return real_digest(self, path, algo)

    def verify(part, *args):
        seen["read_back"].append(part)
        return real_verify(part, *args)

    monkeypatch.setattr(LocalRemote, "digest", digest)
    monkeypatch.setattr(transfer, "_verify_file", verify)
    files = {"a/big.fits": os.urandom(300_001), "b/exact.bin": os.urandom(256 * 1024), "c/empty": b""}
    src = direct_dir / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return src, direct_dir / "dst", files, seen


def test_new_files_go_around_the_page_cache_checked_against_the_source(pulled_directly, cli):
    src, dst, files, seen = pulled_directly
    result = cli("mirror", src, dst, "--json")
    assert result.code == 0, result.err
    assert {rel: (dst / rel).read_bytes() for rel in files} == files
    assert sorted(seen["source_digests"]) == sorted(files)  # the source hashed its own data
    assert seen["read_back"] == []  # nothing was read back: the bytes written were hashed
    assert not list((dst / ".fitsync").rglob("*.part")) if (dst / ".fitsync").exists() else True


def test_a_copy_that_differs_from_the_source_digest_is_not_kept(pulled_directly, cli, monkeypatch):
    from fitsync.remotes.local import LocalRemote

    src, dst, files, seen = pulled_directly
    monkeypatch.setattr(LocalRemote, "digest", lambda self, path, algo="blake3": "0" * 64)
    result = cli("mirror", src, dst, "--json", "--retries=0")
    assert result.code == 3
    failed = {f["path"] for f in result.json()["failures"]}
    assert failed == set(files) and all("does not match the source" in f["reason"] for f in result.json()["failures"])
    assert not [p for p in dst.rglob("*") if p.is_file() and ".fitsync" not in p.parts]
    assert not list(dst.rglob("*.part")), "a copy that failed verification is not kept for resuming"


def test_a_direct_copy_cut_mid_way_keeps_its_bytes_and_resumes(pulled_directly, cli, monkeypatch):
    from fitsync.engine import transfer
    from fitsync.errors import ConnectionFailed

    src, dst, files, seen = pulled_directly
    real_read_from = transfer._read_from
    cut = {"after": 3}

    def read_from(remote, path, offset, size):
        for n, chunk in enumerate(real_read_from(remote, path, offset, size)):
            if path == "a/big.fits" and offset == 0 and n == cut["after"]:
                raise ConnectionFailed("the connection dropped (test)")
            yield chunk

    monkeypatch.setattr(transfer, "_read_from", read_from)
    real_pwrite = os.pwrite

    def slow_disk(fd, data, offset):  # buffers are still queued for the disk at the cut
        time.sleep(0.002)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(directio.os, "pwrite", slow_disk)
    first = cli("mirror", src, dst, "--json", "--retries=0")
    assert first.code == 3 and [f["path"] for f in first.json()["failures"]] == ["a/big.fits"]
    assert not (dst / "a/big.fits").exists()
    second = cli("mirror", src, dst, "--json")
    assert second.code == 0, second.err
    assert second.json()["bytes_reused"] == cut["after"] * transfer.CHUNK  # the chunks received before the cut
    assert (dst / "a/big.fits").read_bytes() == files["a/big.fits"]
