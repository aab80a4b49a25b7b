"""fitsync's own BLAKE3 (ext/b3.h) against the official implementation (the
blake3 package), and the threaded small-file hasher built on it."""

from __future__ import annotations

import errno
import os

import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from fitsync._walk import blake3_digest, blake3_files

CHUNK = 1024
DATA = os.urandom(20 * CHUNK + 100)


def official(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def test_every_length_through_three_chunks_and_around_every_chunk_boundary():
    lengths = set(range(0, 3 * CHUNK + 70))
    lengths |= {k * CHUNK + d for k in range(1, 21) for d in (-65, -64, -1, 0, 1, 63, 64, 65)}
    wrong = [n for n in sorted(lengths) if n <= len(DATA) and blake3_digest(DATA[:n]) != official(DATA[:n])]
    assert wrong == []


def test_inputs_that_fill_every_lane_batch_and_deep_trees():
    # 8 lanes per batch: 9, 16, 17, 33 full chunks exercise full, partial and
    # one-at-a-time batches; 1 MiB + 1 a tree of depth 11.
    for n in (9 * CHUNK, 16 * CHUNK + 1, 17 * CHUNK, 33 * CHUNK + 500, (1 << 20) + 1):
        data = os.urandom(n)
        assert blake3_digest(data) == official(data), n


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=12 * CHUNK))
def test_random_inputs_agree_with_the_official_implementation(data):
    assert blake3_digest(data) == official(data)


def test_known_digest_of_the_empty_input():
    # the specification's published value for the empty input
    assert blake3_digest(b"").hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def write(root, name: str, data: bytes) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_files_are_hashed_by_every_thread_count_alike(tmp_path):
    files = {f"d{i % 7}/f{i:04d}.dat": os.urandom(i * 37 % 9000) for i in range(300)}
    files["fits/a.fits"] = b"SIMPLE  =                    T" + os.urandom(3000)
    for name, data in files.items():
        write(tmp_path, name, data)
    names = sorted(files)
    expected = [blake3.blake3(files[n]).hexdigest() for n in names]
    for threads in (1, 2, 3):
        digests, starting = blake3_files(str(tmp_path), names, [len(files[n]) for n in names], b"SIMPLE  =", threads)
        assert digests == expected
        assert [names[i] for i in starting] == ["fits/a.fits"]


def test_unreadable_missing_grown_and_linked_files_are_reported_not_hashed(tmp_path):
    write(tmp_path, "ok.dat", b"fine")
    write(tmp_path, "grew.dat", b"longer than listed")
    write(tmp_path, "outside.dat", b"secret")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "outside.dat", tmp_path / "root" / "link.dat")
    for name in ("ok.dat", "grew.dat"):
        os.replace(tmp_path / name, tmp_path / "root" / name)
    names = ["ok.dat", "grew.dat", "gone.dat", "link.dat"]
    digests, _ = blake3_files(str(tmp_path / "root"), names, [4, 5, 10, 6])
    assert digests[0] == blake3.blake3(b"fine").hexdigest()
    assert digests[1] is None  # more bytes than listed: the caller hashes it another way
    assert digests[2] == errno.ENOENT
    assert digests[3] == errno.ELOOP  # a symlink is never followed out of the root


def test_a_symlinked_directory_is_not_followed_out_of_the_root(tmp_path):
    write(tmp_path, "outside/secret.dat", b"secret")
    write(tmp_path, "root/a/one.dat", b"one")
    write(tmp_path, "root/b/two.dat", b"two")
    os.symlink(tmp_path / "outside", tmp_path / "root" / "a2")
    names = ["a/one.dat", "a2/secret.dat", "b/two.dat"]
    digests, _ = blake3_files(str(tmp_path / "root"), names, [3, 6, 3], b"", 1)
    assert digests[0] == blake3.blake3(b"one").hexdigest()
    assert digests[1] in (errno.ELOOP, errno.ENOTDIR)  # refused, whichever way the kernel says it
    assert digests[2] == blake3.blake3(b"two").hexdigest()


def test_claims_of_large_and_small_files_mixed(tmp_path):
    # files over the claim's byte budget go alone, small ones sixteen at a time
    sizes = [300_000, 5, 0, 1024, 700_000, 2048, 3] + [100] * 40 + [1 << 20 - 1]
    files = {f"m/f{i:03d}.dat": os.urandom(n) for i, n in enumerate(sizes)}
    for name, data in files.items():
        write(tmp_path, name, data)
    names = sorted(files)
    digests, _ = blake3_files(str(tmp_path), names, [len(files[n]) for n in names], b"", 2)
    assert digests == [blake3.blake3(files[n]).hexdigest() for n in names]
