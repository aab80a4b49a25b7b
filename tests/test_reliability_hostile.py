"""Hostile listings, manifests, trees and archives (issue 9): nothing may make
fitsync write outside DST or read outside SRC's root.

Already covered elsewhere (and counted in docs/reliability.md): escaping
FILE_DIR / BASE_DIR / FILE_NAME rows and master.json paths
(tests/test_datastore.py), escaping, linked and special tar members
(tests/test_select_extract.py), hostile Dropbox names (tests/test_dropbox.py),
safe_relpath itself (tests/test_paths.py).
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))

from harness import run_fitsync, snapshot, write_file  # noqa: E402

from fitsync.errors import FitsyncError  # noqa: E402
from fitsync.remotes.base import Entry  # noqa: E402
from fitsync.remotes.local import LocalRemote  # noqa: E402
from fitsync.engine.mirror import Mirror, MirrorOptions  # noqa: E402

HOSTILE_PATHS = ["../escape.txt", "a/../../escape.txt", "/tmp/abs-escape.txt", "a\x00b", "a\nb", "x" * 300,
                 "a\\..\\..\\escape.txt", "./../escape.txt"]


@pytest.fixture
def outside(tmp_path):
    """A directory beside SRC and DST that nothing may touch."""
    out = tmp_path / "outside"
    write_file(out / "victim.txt", b"precious", 1_700_000_000.0)
    return out


# -- symlinks ---------------------------------------------------------------------------------

def test_symlinked_directory_in_dst_pointing_outside_is_never_written_through(tmp_path, outside):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_file(src / "sub/victim.txt", b"overwritten!", 1_700_000_000.0)
    write_file(src / "sub/new.txt", b"planted", 1_700_000_000.0)
    write_file(src / "plain.txt", b"plain", 1_700_000_000.0)
    dst.mkdir()
    (dst / "sub").symlink_to(outside)
    before = snapshot(outside)
    for flags in ((), ("--delete",), ("--checksum",)):
        proc = run_fitsync("mirror", src, dst, "--json", *flags)
        assert proc.returncode == 3, proc.stderr
        failures = {f["path"]: f["reason"] for f in json.loads(proc.stdout)["failures"]}
        assert set(failures) == {"sub/victim.txt", "sub/new.txt"}
        assert all("symlink" in r for r in failures.values()), failures
        assert snapshot(outside) == before, "nothing written through the link"
        assert (dst / "plain.txt").read_bytes() == b"plain"
        assert "Traceback" not in proc.stderr


def test_symlinked_file_in_dst_is_replaced_not_followed(tmp_path, outside):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_file(src / "victim.txt", b"new content", 1_700_000_000.0)
    dst.mkdir()
    (dst / "victim.txt").symlink_to(outside / "victim.txt")
    proc = run_fitsync("mirror", src, dst)
    assert proc.returncode == 0, proc.stderr
    assert not (dst / "victim.txt").is_symlink() and (dst / "victim.txt").read_bytes() == b"new content"
    assert (outside / "victim.txt").read_bytes() == b"precious"


def test_symlinks_in_src_pointing_outside_are_never_read(tmp_path, outside):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_file(src / "real.txt", b"real", 1_700_000_000.0)
    (src / "file-link").symlink_to(outside / "victim.txt")
    (src / "dir-link").symlink_to(outside)
    for command in (("mirror", src, dst, "--checksum"), ("manifest", src)):
        proc = run_fitsync(*command)
        assert proc.returncode == 0, proc.stderr
        assert "precious" not in proc.stdout
    assert snapshot(dst) == {"real.txt": snapshot(src)["real.txt"]}


# -- hostile listings (what a remote backend could hand the engine) -----------------------------

class HostileListing(LocalRemote):
    """A source whose listing carries names a compromised server might send."""

    def __init__(self, root, names):
        super().__init__(str(root))
        self.names = names

    def list(self):
        yield from super().list()
        for name in self.names:
            yield Entry(name, 8, 1_700_000_000.0)

    def open_read(self, path):
        return io.BytesIO(b"planted!")

    def read_ranges(self, path, ranges):
        for offset, length in ranges:
            yield b"planted!"[offset:offset + length]


@pytest.mark.parametrize("name", HOSTILE_PATHS)
def test_hostile_names_in_a_listing_never_write_outside_dst(tmp_path, outside, name):
    src, dst = tmp_path / "src", tmp_path / "dst" / "inner"
    write_file(src / "good.txt", b"good", 1_700_000_000.0)
    before_tree = {p for p in tmp_path.rglob("*")}
    try:
        result = Mirror(HostileListing(src, [name]), LocalRemote(str(dst)), MirrorOptions(retries=0)).run()
        assert result.files_failed == 1 and result.failures[0]["path"] == name
        assert (dst / "good.txt").read_bytes() == b"good"
    except FitsyncError:
        pass  # refusing the whole listing is also safe
    created = {p for p in tmp_path.rglob("*")} - before_tree
    assert all(p == dst.parent or p.is_relative_to(dst) for p in created), sorted(created)
    assert (outside / "victim.txt").read_bytes() == b"precious"
    assert not Path("/tmp/abs-escape.txt").exists()


def test_source_name_fitsync_cannot_hold_fails_that_file_only(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_file(src / "ok.txt", b"ok", 1_700_000_000.0)
    write_file(src / "new\nline.txt", b"x", 1_700_000_000.0)
    write_file(src / "back\\slash.txt", b"y", 1_700_000_000.0)
    proc = run_fitsync("mirror", src, dst, "--json")
    assert proc.returncode == 3, proc.stderr
    assert (dst / "ok.txt").read_bytes() == b"ok"
    assert {f["path"] for f in json.loads(proc.stdout)["failures"]} == {"new\nline.txt", "back\\slash.txt"}


# -- hostile manifests --------------------------------------------------------------------------

def _manifest(path: Path, records: list[dict]) -> Path:
    lines = [json.dumps({"format": "fitsync-manifest", "version": 1, "files": len(records)})]
    lines += [json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name", HOSTILE_PATHS)
def test_manifest_naming_paths_outside_the_root_is_refused(tmp_path, outside, name):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_file(src / "a.txt", b"a", 1_700_000_000.0)
    manifest = _manifest(tmp_path / "m.jsonl", [{"path": name, "size": 8, "mtime": 0, "blake3": "0" * 64}])
    for command in (("mirror", src, dst, f"--manifest={manifest}"), ("audit", outside, f"--manifest={manifest}")):
        proc = run_fitsync(*command)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert "line 2" in proc.stderr, "the error names the manifest line"
    assert not dst.exists(), "nothing written before the manifest was refused"
    assert (outside / "victim.txt").read_bytes() == b"precious"


# -- hostile archives and data stores --------------------------------------------------------------

def _tar(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("member", ["../escape.txt", "/tmp/abs-escape.txt", ".fitsync/lock",
                                    ".fitsync/partial/x.part", "./.fitsync/extracted.json"])
def test_extract_refuses_members_outside_dst_or_inside_its_state_dir(tmp_path, outside, member):
    """A member written into DST/.fitsync/ could plant a foreign lock (every later
    mirror refused) or a forged resume record; fixed in extract._target."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    _tar(src / "a.tar", {"ok.txt": b"ok", member: b"999999 otherhost\n"})
    proc = run_fitsync("mirror", src, dst, "--extract")
    assert proc.returncode == 3, proc.stderr  # a refused archive is a failure of the run; others would go on
    assert "refusing to extract" in proc.stderr and "Traceback" not in proc.stderr
    assert not (dst / "ok.txt").exists(), "an archive with a bad member is refused whole"
    assert not (dst / ".fitsync/lock").exists()
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/abs-escape.txt").exists()
    again = run_fitsync("mirror", src, dst)
    assert again.returncode == 0, "the destination is still usable: " + again.stderr


def test_data_store_with_a_symlinked_data_directory_is_not_read_through(tmp_path, outside, cli):
    from test_datastore import make_store

    store = tmp_path / "store"
    make_store(store, [1, 2])
    data = store / "data"
    real = outside / "data"
    data.rename(real)
    data.symlink_to(real)
    proc = run_fitsync("mirror", store, tmp_path / "copy", "--production=default", "--json")
    assert "Traceback" not in proc.stderr
    copied = [p for p in (tmp_path / "copy").rglob("*") if p.is_file() and ".fitsync" not in p.parts]
    assert not any(p.resolve().is_relative_to(outside.resolve()) for p in copied)
    assert not any("data/" in p.relative_to(tmp_path / "copy").as_posix() for p in copied), \
        "no file read through the symlink was copied"


def test_manifest_of_a_tree_with_an_unusable_name_says_so(tmp_path):
    src = tmp_path / "src"
    write_file(src / "ok.txt", b"ok", 1_700_000_000.0)
    write_file(src / "new\nline.txt", b"x", 1_700_000_000.0)
    proc = run_fitsync("manifest", src)
    assert proc.returncode == 3, "a manifest that leaves a file out must not exit 0"
    assert "line.txt" in proc.stderr
    audit_manifest = tmp_path / "m.jsonl"
    run_fitsync("manifest", src, f"--output={audit_manifest}")
    assert run_fitsync("audit", src, f"--manifest={audit_manifest}").returncode != 0, \
        "audit of the same tree reports the file it could not check"


def test_a_name_with_a_newline_cannot_forge_an_output_line(tmp_path):
    src = tmp_path / "src"
    write_file(src / "ok.txt", b"ok", 1_700_000_000.0)
    write_file(src / "x\nfitsync: all files verified", b"x", 1_700_000_000.0)
    proc = run_fitsync("mirror", src, tmp_path / "dst")
    assert proc.returncode == 3
    forged = [line for line in proc.stderr.splitlines() if line.startswith("fitsync: all files verified")]
    assert not forged, proc.stderr
