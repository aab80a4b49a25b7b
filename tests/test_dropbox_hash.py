"""The Dropbox content hasher, pinned by the published test vectors.

The vectors are the ones rclone's dbhash tests list (inputs of n bytes of
b"A"), which cross the 4 MiB block boundary on both sides.
"""

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from fitsync.dbhash import BLOCK_SIZE, DropboxContentHasher, content_hash, content_hash_of_file
from fitsync.hashes import new_hasher

VECTORS = [
    (0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (1, "1cd6ef71e6e0ff46ad2609d403dc3fee244417089aa4461245a4e4fe23a55e42"),
    (2, "01e0655fb754d10418a73760f57515f4903b298e6d67dda6bf0987fa79c22c88"),
    (4096, "8620913d33852befe09f16fff8fd75f77a83160d29f76f07e0276e9690903035"),
    (4194303, "647c8627d70f7a7d13ce96b1e7710a771a55d41a62c3da490d92e56044d311fa"),
    (4194304, "d4d63bac5b866c71620185392a8a6218ac1092454a2d16f820363b69852befa3"),
    (4194305, "8f553da8d00d0bf509d8470e242888be33019c20c0544811f5b2b89e98360b92"),
    (8388607, "83b30cf4fb5195b04a937727ae379cf3d06673bf8f77947f6a92858536e8369c"),
    (8388608, "e08b3ba1f538804075c5f939accdeaa9efc7b5c01865c94a41e78ca6550a88e7"),
    (8388609, "02c8a4aefc2bfc9036f89a7098001865885938ca580e5c9e5db672385edd303c"),
]

BIG = b"A" * (8388609)


@pytest.mark.parametrize("chunk", [2047, 32 * 1024, 1 << 20, 4 << 20, 16 << 20])
@pytest.mark.parametrize("n,want", VECTORS, ids=[str(n) for n, _ in VECTORS])
def test_published_vectors_any_chunking(n, want, chunk):
    hasher = DropboxContentHasher()
    data = memoryview(BIG)[:n]
    for start in range(0, n, chunk):
        hasher.update(data[start:start + chunk])
    assert hasher.hexdigest() == want


def test_one_shot_helpers_and_registry(tmp_path):
    n, want = VECTORS[6]
    assert content_hash(BIG[:n]) == want
    f = tmp_path / "a.bin"
    f.write_bytes(BIG[:n])
    assert content_hash_of_file(str(f)) == want
    h = new_hasher("dropbox")
    h.update(BIG[:n])
    assert h.hexdigest() == want


def test_digest_is_repeatable_and_copy_is_independent():
    h = DropboxContentHasher(b"A")
    assert h.hexdigest() == h.hexdigest() == VECTORS[1][1]
    c = h.copy()
    c.update(b"A")
    assert c.hexdigest() == VECTORS[2][1]
    assert h.hexdigest() == VECTORS[1][1]


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=1, max_value=700), max_size=8))
def test_definition_with_small_blocks(data, cuts):
    """Against the definition itself, at a block size small enough for
    hypothesis to cross many boundaries (the algorithm does not depend on it)."""
    import fitsync.dbhash as dbhash

    block = 256
    want = hashlib.sha256(b"".join(
        hashlib.sha256(data[i:i + block]).digest() for i in range(0, len(data), block)
    )).hexdigest()
    old = dbhash.BLOCK_SIZE
    dbhash.BLOCK_SIZE = block
    try:
        h = DropboxContentHasher()
        pos = 0
        for cut in cuts:
            h.update(data[pos:pos + cut])
            pos += cut
        h.update(data[pos:])
        assert h.hexdigest() == want
    finally:
        dbhash.BLOCK_SIZE = old
    assert BLOCK_SIZE == 4 << 20
