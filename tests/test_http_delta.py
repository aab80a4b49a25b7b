"""The delta scenario: a FITS release is revised; a mirror of the old release
updates through the HTTP remote, fetching only the changed blocks.

The release has five files: one with a header value edited, one whose header
grew by a 2880-byte record, one with an HDU appended, one replaced by another
file, one unchanged. Bytes are counted by the server.
"""

from __future__ import annotations

import io
import mmap
import os

import blake3
import numpy as np
import pytest
from astropy.io import fits

from fitsync.delta import apply_recipe, fetch_recipe
from fitsync.formats.manifest import DEFAULT_NAME
from fitsync.release import ReleaseRemote, release_source
from fitsync.remotes.base import Capability
from fitsync.remotes.http import HttpRemote
from fitsync.remotes.local import LocalRemote
from fitsync.engine.mirror import Mirror, MirrorOptions
from http_fixture import HttpFixture

SLACK = 1.05  # the target: at most the changed blocks + 5 %


def _fits(seed: int, *, hdus: int = 1, object_name: str = "Crab", history: int = 0, origin: str = "HESS") -> bytes:
    rng = np.random.default_rng(seed)
    primary = fits.PrimaryHDU(rng.normal(size=(200, 200)).astype(np.float32))
    primary.header["OBJECT"] = object_name
    for i in range(history):
        primary.header.add_history(f"reprocessing step {i}")
    extensions = [
        fits.ImageHDU(rng.integers(0, 30_000, size=(120, 150)).astype(np.int16), name=f"EXT{i}")
        for i in range(1, hdus)
    ]
    for ext in extensions:
        ext.header["ORIGIN"] = origin
    out = io.BytesIO()
    fits.HDUList([primary, *extensions]).writeto(out)
    return out.getvalue()


def _releases() -> tuple[dict[str, bytes], dict[str, bytes]]:
    old = {
        "obs/header_edit.fits": _fits(1, hdus=2),
        "obs/header_grown.fits": _fits(2, hdus=2),
        "obs/appended.fits": _fits(3, hdus=2),
        "obs/replaced.fits": _fits(4, hdus=2),
        "index/unchanged.fits": _fits(5),
    }
    new = dict(old)
    # Two headers edited, far apart: the update needs two ranges (one multi-range request).
    new["obs/header_edit.fits"] = _fits(1, hdus=2, object_name="Crab Nebula", origin="H.E.S.S.")
    new["obs/header_grown.fits"] = _fits(2, hdus=2, history=40)
    new["obs/appended.fits"] = _fits(3, hdus=3)
    new["obs/replaced.fits"] = _fits(40, hdus=2)
    assert len(new["obs/header_edit.fits"]) == len(old["obs/header_edit.fits"])
    assert len(new["obs/header_grown.fits"]) - len(old["obs/header_grown.fits"]) == 2880
    return old, new


OLD, NEW = _releases()
CHANGED = sorted(p for p in NEW if NEW[p] != OLD[p])


def _publish(root, files: dict[str, bytes], mtime: float, cli) -> None:
    for rel, data in files.items():
        path = root / rel
        if path.exists() and path.read_bytes() == data:
            continue  # an unchanged file keeps its mtime, as in a real revision
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
    result = cli("manifest", root, "--blocks", "--no-fits", "--quiet", f"--output={root / DEFAULT_NAME}")
    assert result.code == 0, result.err


def _changed_block_bytes(sig, old: bytes, new: bytes) -> int:
    """Bytes of the new file's blocks that occur nowhere in the old file: what
    an ideal block-matching update must download."""
    offsets, lengths = sig.layout()
    missing = 0
    for offset, length in zip(offsets.tolist(), lengths.tolist()):
        if old.find(new[offset:offset + length]) < 0:
            missing += length
    return missing


def _data_bytes(srv: HttpFixture) -> int:
    """Body bytes the server sent for data files (not the manifest)."""
    with srv.counters.lock:
        return sum(r.body_bytes for r in srv.counters.requests if DEFAULT_NAME not in r.path)


@pytest.fixture
def site(tmp_path, cli):
    root = tmp_path / "site" / "release"
    _publish(root, OLD, 1_700_000_000.0, cli)
    return root


def _ideal(remote: HttpRemote) -> dict[str, int]:
    return {p: _changed_block_bytes(remote.block_signature(p), OLD[p], NEW[p]) for p in CHANGED}


def test_release_revision_updates_an_old_copy_at_the_remote_level(site, tmp_path, cli):
    """Remote + fitsync.delta, as the mirror engine drives them."""
    _publish(site, NEW, 1_700_086_400.0, cli)
    with HttpFixture(str(site.parent)) as srv, HttpRemote(srv.url + "/release/") as remote:
        assert Capability.SIGNATURE in remote.capabilities
        ideal = _ideal(remote)
        srv.counters.reset()
        for path in CHANGED:
            basis = tmp_path / "basis"
            basis.write_bytes(OLD[path])
            out = tmp_path / "out"
            sig = remote.block_signature(path)
            with open(basis, "rb") as b, mmap.mmap(b.fileno(), 0, access=mmap.ACCESS_READ) as view:
                recipe = fetch_recipe(sig, view)
            with open(basis, "rb") as b, open(out, "wb") as o:
                apply_recipe(recipe, b.fileno(), lambda ranges: remote.read_ranges(path, ranges), o.fileno())
            assert out.read_bytes() == NEW[path], path
        fetched = _data_bytes(srv)
    assert fetched <= SLACK * sum(ideal.values()), (fetched, ideal)
    # Far less than downloading the changed files whole.
    assert fetched < 0.5 * sum(len(NEW[p]) for p in CHANGED)


def test_mirror_of_old_release_updates_by_delta(site, tmp_path, cli):
    dst = tmp_path / "mirror"
    with HttpFixture(str(site.parent)) as srv:
        first = cli("mirror", srv.url + "/release/", dst, "--json")
        assert first.code == 0, first.err
        _publish(site, NEW, 1_700_086_400.0, cli)
        srv.counters.reset()
        second = cli("mirror", srv.url + "/release/", dst, "--json")
        assert second.code == 0, second.err
        fetched = _data_bytes(srv)
        with HttpRemote(srv.url + "/release/") as remote:
            ideal = _ideal(remote)
    summary = second.json()
    assert summary["files_updated"] == len(CHANGED) + 1  # and the manifest itself
    assert summary["files_unchanged"] == 1
    for rel, data in NEW.items():
        assert (dst / rel).read_bytes() == data, rel
    assert (dst / DEFAULT_NAME).read_bytes() == (site / DEFAULT_NAME).read_bytes()
    assert fetched <= SLACK * sum(ideal.values()), (fetched, ideal)
    assert summary["bytes_reused"] > 0


def _hints_given(monkeypatch) -> dict[int, list]:
    """What fetch_recipe is told about the old copies (its ``known=``), by the
    BLAKE3 of the file it rebuilds."""
    import fitsync.delta

    seen: dict[int, list] = {}
    real = fitsync.delta.fetch_recipe

    def spy(sig, basis, known=None):
        seen.setdefault(sig.digest.hex(), []).append(known)
        return real(sig, basis, known=known)

    monkeypatch.setattr(fitsync.delta, "fetch_recipe", spy)
    return seen


def test_the_destinations_manifest_pairs_old_blocks_without_reading_them(site, tmp_path, cli, monkeypatch):
    """The mirror of the old release keeps the old manifest: the next update
    pairs the old copies' blocks from the two manifests (no pass over them)."""
    dst = tmp_path / "mirror"
    with HttpFixture(str(site.parent)) as srv:
        assert cli("mirror", srv.url + "/release/", dst).code == 0
        _publish(site, NEW, 1_700_086_400.0, cli)
        hints = _hints_given(monkeypatch)
        second = cli("mirror", srv.url + "/release/", dst, "--json")
    assert second.code == 0, second.err
    for rel in CHANGED:
        assert (dst / rel).read_bytes() == NEW[rel], rel
        [known] = hints[blake3.blake3(NEW[rel]).hexdigest()]
        assert known is not None, rel
        if rel != "obs/replaced.fits":
            assert (np.asarray(known) >= 0).any(), rel  # blocks of the old copy were placed


def test_a_copy_changed_behind_the_destinations_manifest_is_still_rebuilt_exactly(site, tmp_path, cli,
                                                                                 monkeypatch):
    """Same size and mtime as recorded, other bytes: the pairing is wrong, the
    rebuilt file fails verification, and the old copy is hashed instead."""
    dst = tmp_path / "mirror"
    with HttpFixture(str(site.parent)) as srv:
        assert cli("mirror", srv.url + "/release/", dst).code == 0
        for rel in ("obs/header_edit.fits", "obs/header_grown.fits"):
            path = dst / rel
            st = path.stat()
            data = bytearray(path.read_bytes())
            data[-20_000:-19_000] = bytes(1000)  # inside the last data unit, which the new release keeps
            path.write_bytes(bytes(data))
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        _publish(site, NEW, 1_700_086_400.0, cli)
        hints = _hints_given(monkeypatch)
        second = cli("mirror", srv.url + "/release/", dst, "--json")
    assert second.code == 0, second.err
    assert second.json()["files_failed"] == 0
    for rel in ("obs/header_edit.fits", "obs/header_grown.fits"):
        first_try, second_try = hints[blake3.blake3(NEW[rel]).hexdigest()]  # paired from the record, then by reading the copy
        assert first_try is not None and second_try is None, rel
    for rel, data in NEW.items():
        assert (dst / rel).read_bytes() == data, rel


@pytest.mark.parametrize("behaviour, extra", [
    ("ignore-range", {}),
    ("broken-multirange", {"broken_multirange": "garbled"}),
])
def test_misbehaving_servers_still_give_a_byte_identical_mirror(site, tmp_path, cli, behaviour, extra):
    dst = tmp_path / "mirror"
    with HttpFixture(str(site.parent)) as srv:
        assert cli("mirror", srv.url + "/release/", dst).code == 0
    _publish(site, NEW, 1_700_086_400.0, cli)
    with HttpFixture(str(site.parent), behaviour, **extra) as srv:
        result = cli("mirror", srv.url + "/release/", dst, "--json")
        assert result.code == 0, result.err
        data_requests = [r for r in srv.counters.requests if DEFAULT_NAME not in r.path]
        fetched = _data_bytes(srv)
    for rel, data in NEW.items():
        assert (dst / rel).read_bytes() == data, rel
    whole = sum(len(NEW[p]) for p in CHANGED)
    if behaviour == "ignore-range":
        # Detected on the first answer: every later file is one plain GET, nothing fetched twice over.
        assert len(data_requests) <= len(CHANGED) + 1
        assert fetched <= whole + max(len(NEW[p]) for p in CHANGED)
    else:
        assert len([r for r in data_requests if r.range and "," in r.range]) == 1
        assert fetched < whole


def test_index_listed_release_mirrors_without_manifest(tmp_path, cli):
    root = tmp_path / "site" / "plain"
    for rel, data in OLD.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    dst = tmp_path / "mirror"
    with HttpFixture(str(root.parent), autoindex="apache") as srv:
        result = cli("mirror", srv.url + "/plain/", dst, "--json")
        assert result.code == 0, result.err
        again = cli("mirror", srv.url + "/plain/", dst, "--json")
    for rel, data in OLD.items():
        assert (dst / rel).read_bytes() == data
    assert again.json()["files_unchanged"] == len(OLD)  # Last-Modified kept as the mtime


class RangeOnlyRemote(LocalRemote):
    """A remote that can read byte ranges and nothing more (like Dropbox or an
    sftp-only account): no local paths, no signatures of its own. It counts
    the bytes it is asked for."""

    capabilities = frozenset({Capability.READ_RANGE})

    def __init__(self, url: str):
        super().__init__(url)
        self.bytes_read = 0

    def local_path(self, path: str):
        return None

    def read_ranges(self, path, ranges):
        for data in super().read_ranges(path, ranges):
            self.bytes_read += len(data)
            yield data

    def open_read(self, path):
        data = super().open_read(path).read()
        self.bytes_read += len(data)
        return io.BytesIO(data)


def test_same_delta_path_for_any_remote_that_reads_ranges(site, tmp_path, cli):
    dst = tmp_path / "mirror"
    first = Mirror(release_source(RangeOnlyRemote(str(site))), LocalRemote(str(dst)), MirrorOptions()).run()
    assert first.files_failed == 0
    _publish(site, NEW, 1_700_086_400.0, cli)
    remote = RangeOnlyRemote(str(site))
    src = release_source(remote)
    assert isinstance(src, ReleaseRemote) and Capability.SIGNATURE in src.capabilities
    result = Mirror(src, LocalRemote(str(dst)), MirrorOptions()).run()
    assert result.files_failed == 0 and result.files_updated == len(CHANGED) + 1
    for rel, data in NEW.items():
        assert (dst / rel).read_bytes() == data, rel
    ideal = {p: _changed_block_bytes(src.block_signature(p), OLD[p], NEW[p]) for p in CHANGED}
    manifest_reads = len((site / DEFAULT_NAME).read_bytes())  # read once to list, never again
    assert remote.bytes_read - manifest_reads <= SLACK * sum(ideal.values())
