"""Local updates that cost what changed (issue 26), run as users run them:
the installed ``fitsync`` on real file systems. Reflinks on an XFS file
system made on a loop device, --inplace with its undo journal, and how each
file was built, as --itemize and --json report it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fitsync
from fitsync.reflink import can_clone

FITSYNC = str(Path(sys.executable).with_name("fitsync"))  # the console script pip installed
OLD_MTIME = 1_600_000_000
NEW_MTIME = 1_700_000_000


def run(*args, check_code: int | None = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([FITSYNC, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    if check_code is not None:
        assert result.returncode == check_code, result.stderr
    return result


def card(key: str, value: str) -> bytes:
    return f"{key:<8}= {value:>20}".ljust(80).encode()


def fits_file(path: Path, data: bytes, extra_cards: int = 0, obj: str = "'M31     '") -> None:
    """A primary HDU of 8-bit pixels: ``data`` (a square's worth) under a
    header, grown by ``extra_cards`` HISTORY-like cards."""
    side = int(len(data) ** 0.5)
    cards = [card("SIMPLE", "T"), card("BITPIX", "8"), card("NAXIS", "2"), card("NAXIS1", str(side)),
             card("NAXIS2", str(len(data) // side)), card("OBJECT", obj)]
    cards += [card(f"KEY{i:05d}", str(i)) for i in range(extra_cards)]
    header = b"".join(cards) + b"END".ljust(80)
    header += b" " * (-len(header) % 2880)
    body = data[:side * (len(data) // side)]
    path.write_bytes(header + body + b"\0" * (-len(body) % 2880))
    os.utime(path, (NEW_MTIME, NEW_MTIME))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def json_files(result: subprocess.CompletedProcess) -> dict:
    return {f["path"]: f for f in json.loads(result.stdout)["files"]}


@pytest.fixture(scope="module")
def pixels() -> bytes:
    return os.urandom(1 << 22)  # 4 MiB; the kill trials use 64 MiB


def three_versions(root: Path, pixels: bytes) -> dict:
    """The old file and its three edits: a header value, a grown header, overwritten data."""
    versions = {}
    for name, kwargs, data in (
        ("old", {}, pixels),
        ("header", {"obj": "'M33     '"}, pixels),
        ("grown", {"extra_cards": 40}, pixels),
        ("data", {}, pixels[:len(pixels) // 3] + os.urandom(1 << 16) + pixels[len(pixels) // 3 + (1 << 16):]),
    ):
        (root / name).mkdir(parents=True)
        fits_file(root / name / "image.fits", data, **kwargs)
        versions[name] = root / name / "image.fits"
    os.utime(versions["old"], (OLD_MTIME, OLD_MTIME))
    return versions


def fresh_destination(dst: Path, old: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copy2(old, dst / "image.fits")
    return dst / "image.fits"


# -- reflinks on XFS -----------------------------------------------------------------

@pytest.fixture(scope="module")
def xfs(tmp_path_factory):
    """An XFS file system with reflinks, made on a loop device for this module."""
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        pytest.fail("these tests make an XFS file system on a loop device: run as root with xfsprogs installed "
                    "(apt-get install xfsprogs)")
    base = tmp_path_factory.mktemp("xfs")
    image, mount = base / "xfs.img", base / "mnt"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(1 << 30)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def used_bytes(path: Path) -> int:
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.parametrize("edit", ["header", "data"])
def test_an_update_on_xfs_shares_every_unchanged_block(xfs, tmp_path, pixels, edit):
    versions = three_versions(tmp_path, pixels)
    target = fresh_destination(xfs / f"dst-{edit}", versions["old"])
    # A snapshot of the old version (a hard link) keeps its blocks: the space
    # added is then what the new version does not share with it.
    snapshot = xfs / f"snapshot-{edit}.fits"
    os.link(target, snapshot)
    before = used_bytes(xfs)
    result = run("mirror", versions[edit].parent, target.parent, "--json", "--itemize")
    grown = used_bytes(xfs) - before
    assert digest(target) == digest(versions[edit])
    assert json_files(result)["image.fits"]["built"] == "cloned"
    assert os.stat(target).st_mtime == NEW_MTIME
    # The changed bytes (a header card, or 64 KiB of pixels) and the blocks
    # around them, not a second 4 MiB copy.
    changed = 2880 if edit == "header" else 1 << 16
    assert grown <= changed + 24 * 4096, f"{grown} bytes more in use after a {edit} edit"
    assert digest(snapshot) == digest(versions["old"])
    assert not list((target.parent / ".fitsync").glob("**/*.delta"))


def test_an_update_on_xfs_whose_data_moved_off_the_block_grid_is_rewritten(xfs, tmp_path, pixels):
    """A header grown by 2880 bytes shifts the pixels by less than a block:
    no block can be shared, the file is written out, and it says so."""
    versions = three_versions(tmp_path, pixels)
    target = fresh_destination(xfs / "dst-grown", versions["old"])
    result = run("mirror", versions["grown"].parent, target.parent, "--itemize")
    assert digest(target) == digest(versions["grown"])
    assert result.stdout.strip() == ">f.st...... image.fits (rewritten)"


def test_a_release_pulled_over_http_into_xfs_is_cloned(xfs, tmp_path, pixels):
    """A remote source: the delta fetches the changed ranges and clones the rest."""
    from fitsync.formats.manifest import DEFAULT_NAME
    from http_fixture import HttpFixture

    versions = three_versions(tmp_path, pixels)
    site = versions["header"].parent
    run("manifest", site, "--blocks", "--quiet", f"--output={site / DEFAULT_NAME}")
    target = fresh_destination(xfs / "dst-http", versions["old"])
    with HttpFixture(str(site)) as server:
        result = run("mirror", server.url + "/", target.parent, "--json", "--itemize")
    row = json_files(result)["image.fits"]
    assert row["built"] == "cloned" and row["bytes_moved"] < 64 << 10
    assert digest(target) == digest(versions["header"])


def test_a_new_copy_within_xfs_is_a_clone(xfs, tmp_path, pixels):
    """A mirror inside one file system with reflinks (staging to archive)
    shares the source's blocks: no data written, the source untouched."""
    versions = three_versions(tmp_path, pixels)
    source = xfs / "staging"
    source.mkdir()
    shutil.copy2(versions["header"], source / "image.fits")
    (source / "small.txt").write_bytes(b"below the clone threshold")
    before_source = (digest(source / "image.fits"), os.stat(source / "image.fits").st_mtime)
    before = used_bytes(xfs)
    result = run("mirror", source, xfs / "archive", "--json", "--itemize")
    grown = used_bytes(xfs) - before
    rows = json_files(result)
    assert rows["image.fits"]["built"] == "cloned" and rows["image.fits"]["bytes_moved"] == 0
    assert rows["small.txt"]["built"] == "copied"
    assert digest(xfs / "archive" / "image.fits") == before_source[0]
    assert (digest(source / "image.fits"), os.stat(source / "image.fits").st_mtime) == before_source
    assert grown <= 64 * 4096, f"{grown} bytes more in use for a clone of {len(pixels)} bytes"


# -- the default on file systems without reflinks -------------------------------

def test_a_local_source_is_copied_whole_unless_asked_for_a_delta(tmp_path, pixels):
    versions = three_versions(tmp_path / "v", pixels)
    target = fresh_destination(tmp_path / "dst", versions["old"])
    with open(target, "rb") as f:
        if can_clone(f.fileno(), str(target.parent)):
            pytest.fail(f"this test needs a destination without reflinks; {target.parent} has them")
    first = run("mirror", versions["header"].parent, target.parent, "--json", "--itemize")
    assert json_files(first)["image.fits"]["built"] == "rewritten"
    assert json_files(first)["image.fits"]["bytes_reused"] == 0
    fresh_destination(tmp_path / "dst", versions["old"])
    second = run("mirror", versions["header"].parent, target.parent, "--json", "--itemize", "--no-whole-file")
    row = json_files(second)["image.fits"]
    assert row["built"] in ("kernel copy", "rewritten") and row["bytes_reused"] > len(pixels) // 2
    assert digest(target) == digest(versions["header"])


# -- --inplace ---------------------------------------------------------------------

@pytest.mark.parametrize("edit", ["header", "grown", "data"])
def test_inplace_writes_into_the_same_file_and_leaves_no_journal(tmp_path, pixels, edit):
    versions = three_versions(tmp_path / "v", pixels)
    target = fresh_destination(tmp_path / "dst", versions["old"])
    os.chmod(target, 0o640)
    inode = os.stat(target).st_ino
    result = run("mirror", versions[edit].parent, target.parent, "--inplace", "--itemize")
    size_flag = "." if edit != "grown" else "s"
    assert result.stdout.strip() == f">f.{size_flag}t...... image.fits (in place)"
    assert os.stat(target).st_ino == inode
    assert digest(target) == digest(versions[edit])
    assert os.stat(target).st_mtime == NEW_MTIME
    assert oct(os.stat(target).st_mode & 0o777) == oct(os.stat(versions[edit]).st_mode & 0o777)
    assert not list((target.parent / ".fitsync").glob("**/*.journal"))


def test_inplace_of_a_header_edit_writes_kilobytes(tmp_path):
    """Bytes the update writes to the disk, from /proc/PID/io, for a 64 MiB file."""
    versions = three_versions(tmp_path / "v", os.urandom(64 << 20))
    target = fresh_destination(tmp_path / "dst", versions["old"])
    os.sync()
    proc = subprocess.Popen([FITSYNC, "mirror", versions["header"].parent, target.parent, "--inplace", "--quiet"])
    rusage = os.wait4(proc.pid, 0)[2]
    proc.returncode = 0
    assert digest(target) == digest(versions["header"])
    written = rusage.ru_oublock * 512
    assert written < 1 << 20, f"{written} bytes written for a one-card header edit"


def test_inplace_shrinks_and_grows_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    old = os.urandom(3 << 20)
    for name, new in (("shorter.dat", old[: 2 << 20]), ("longer.dat", old + os.urandom(1 << 20)),
                      ("middle.dat", old[:1000] + old[5000:])):
        (src / name).write_bytes(new)
        (dst / name).write_bytes(old)
        os.utime(dst / name, (OLD_MTIME, OLD_MTIME))
    fitsync.mirror(src, dst, inplace=True, raise_on_failure=True)
    for name in ("shorter.dat", "longer.dat", "middle.dat"):
        assert (dst / name).read_bytes() == (src / name).read_bytes(), name


def test_inplace_is_refused_where_it_cannot_be_made_safe(tmp_path):
    from fitsync.engine.inplace_update import _filesystem_type

    (tmp_path / "src").mkdir()
    result = run("mirror", tmp_path / "src", "sftp://nobody@127.0.0.1:1/data", "--inplace", check_code=2)
    assert result.stderr.count("\n") == 1 and "--inplace updates files of a local destination only" in result.stderr
    # The file system type read from mountinfo is the one findmnt reports.
    found = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(tmp_path)], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert _filesystem_type(str(tmp_path)) == found


def test_recover_with_nothing_to_do_and_on_bad_input(tmp_path):
    (tmp_path / "dst").mkdir()
    assert run("recover", tmp_path / "dst", "--json").stdout.strip() == "[]"
    missing = run("recover", tmp_path / "nowhere", check_code=2)
    assert missing.stderr.startswith("fitsync: ") and missing.stderr.count("\n") == 1
    assert fitsync.recover(tmp_path / "dst") == []


def _interrupted_update(dst: Path, rel: str, old: bytes, new: bytes) -> Path:
    """A file of ``dst`` left as a kill just before the end of an update
    leaves it: every new byte written, under a journal never marked done."""
    from fitsync.delta import fetch_recipe
    from fitsync.engine.inplace_update import journal_path
    from fitsync.inplace import Journal, write_in_place
    from fitsync.remotes.local import LocalRemote
    from fitsync.signature import signature_of_buffer

    target = dst / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(old)
    os.utime(target, (OLD_MTIME, OLD_MTIME))
    st = os.stat(target)
    recipe = fetch_recipe(signature_of_buffer(new, 4096), old)
    header = {"path": rel, "ino": st.st_ino, "old_size": len(old), "old_mtime_ns": st.st_mtime_ns,
              "old_mode": 0o644, "old_owner": [0, 0], "new_owner": None, "new_size": len(new),
              "new_mtime_ns": NEW_MTIME * 10**9, "new_mode": 0o644, "new_digest": recipe.digest,
              "digest_algo": "blake3", "layout": None}
    journal = Journal(journal_path(LocalRemote(str(dst)), rel), header)
    fd = os.open(target, os.O_RDWR)
    try:
        write_in_place(fd, recipe, lambda ranges: (new[o:o + n] for o, n in ranges), journal, len(old))
    finally:
        os.close(fd)
        journal.close()
    return target


def test_recovery_rolls_back_keeps_going_and_leaves_replaced_files_alone(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    old, new = os.urandom(300_000), os.urandom(200) + os.urandom(300_000)
    mixed = _interrupted_update(dst, "a.dat", old, new)
    assert mixed.read_bytes() == new  # every byte written, but never marked done: not yet the new version
    replaced = _interrupted_update(dst, "b.dat", old, new)
    replaced.unlink()
    replaced.write_bytes(b"the user's own file")  # a new inode under the same name
    _interrupted_update(dst, "night/c.dat", old, new)
    os.rename(dst / "night", dst / "elsewhere")
    (dst / "night").symlink_to("elsewhere")  # its path now runs through a symlink: refused, kept
    result = run("recover", dst, "--json")
    outcomes = {row["path"]: row["outcome"] for row in json.loads(result.stdout)}
    assert mixed.read_bytes() == old and os.stat(mixed).st_mtime == OLD_MTIME
    assert outcomes["a.dat"] == "rolled back to the old version"
    assert replaced.read_bytes() == b"the user's own file"
    assert "replaced since" in outcomes["b.dat"]
    stuck = [row for path, row in outcomes.items() if path not in ("a.dat", "b.dat")]
    assert len(stuck) == 1 and "journal is kept" in stuck[0]
    assert len(list((dst / ".fitsync").glob("inplace/*.journal"))) == 1
    assert (dst / "elsewhere" / "c.dat").read_bytes() == new  # untouched through the link
    (dst / "night").unlink()
    os.rename(dst / "elsewhere", dst / "night")
    assert [row["outcome"] for row in fitsync.recover(dst)] == ["rolled back to the old version"]
    assert (dst / "night" / "c.dat").read_bytes() == old


def test_inplace_never_keeps_setuid_bits(tmp_path, pixels):
    versions = three_versions(tmp_path / "v", pixels)
    os.chmod(versions["header"], 0o4755)
    target = fresh_destination(tmp_path / "dst", versions["old"])
    run("mirror", versions["header"].parent, target.parent, "--inplace")
    assert os.stat(target).st_mode & 0o7777 == 0o755
