"""--extract: unpacking downloaded archives safely and idempotently."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from fitsync.errors import BadInput, UnsafePath
from fitsync.extract import extract_archives, extracted_paths


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz", mtime: int = 1_700_000_000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))


def special_tar(path: Path, kind: bytes, name: str, linkname: str = "") -> None:
    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo("fine.txt"), io.BytesIO(b""))
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        tar.addfile(info)


@pytest.mark.parametrize("suffix, mode", [(".tgz", "w:gz"), (".tar.gz", "w:gz"), (".tar", "w")])
def test_archives_unpack_next_to_themselves(tmp_path, suffix, mode):
    make_tar(tmp_path / f"dl/final_cat_271.282{suffix}",
             {"./output/run_sp/final_cat-271.282.fits": b"SIMPLE", "output/log.txt": b"log"}, mode)
    produced = extract_archives(str(tmp_path), [f"dl/final_cat_271.282{suffix}", "dl/other.fits"])
    assert sorted(produced) == ["dl/output/log.txt", "dl/output/run_sp/final_cat-271.282.fits"]
    assert (tmp_path / "dl/output/run_sp/final_cat-271.282.fits").read_bytes() == b"SIMPLE"
    assert os.stat(tmp_path / "dl/output/log.txt").st_mtime == 1_700_000_000
    assert not list((tmp_path / ".fitsync" / "tmp").iterdir())  # no temporary left behind


def test_rerun_skips_unchanged_and_restores_removed_members(tmp_path):
    make_tar(tmp_path / "a.tgz", {"x/1.txt": b"one", "x/2.txt": b"two"})
    extract_archives(str(tmp_path), ["a.tgz"])
    first = (tmp_path / "x/1.txt").stat().st_ino
    extract_archives(str(tmp_path), ["a.tgz"])
    assert (tmp_path / "x/1.txt").stat().st_ino == first  # not rewritten
    (tmp_path / "x/2.txt").unlink()
    (tmp_path / "x/1.txt").write_bytes(b"tampered")
    extract_archives(str(tmp_path), ["a.tgz"])
    assert (tmp_path / "x/2.txt").read_bytes() == b"two"
    assert (tmp_path / "x/1.txt").read_bytes() == b"one"
    assert extracted_paths(str(tmp_path)) == {"x/1.txt", "x/2.txt"}


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/evil", "a/../../escape.txt"])
def test_members_escaping_the_destination_are_refused(tmp_path, name):
    dst = tmp_path / "dst"
    make_tar(dst / "bad.tar", {"ok.txt": b"fine", name: b"evil"}, "w")
    with pytest.raises(UnsafePath, match="refusing to extract"):
        extract_archives(str(dst), ["bad.tar"])
    assert not (dst / "ok.txt").exists()  # refused whole, before any write
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("kind, what", [(tarfile.SYMTYPE, "link"), (tarfile.LNKTYPE, "link"),
                                        (tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"),
                                        (tarfile.FIFOTYPE, "device")])
def test_links_and_special_files_are_refused(tmp_path, kind, what):
    special_tar(tmp_path / "bad.tar", kind, "thing", linkname="/etc/passwd")
    with pytest.raises(UnsafePath, match=what):
        extract_archives(str(tmp_path), ["bad.tar"])
    assert not (tmp_path / "fine.txt").exists()


def test_existing_symlink_in_destination_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(outside, dst / "out")
    make_tar(dst / "a.tar", {"out/x.txt": b"x"}, "w")
    with pytest.raises(UnsafePath):
        extract_archives(str(dst), ["a.tar"])
    assert not (outside / "x.txt").exists()


def test_damaged_archive_is_bad_input(tmp_path):
    make_tar(tmp_path / "a.tgz", {"x.txt": b"x" * 100_000})
    data = (tmp_path / "a.tgz").read_bytes()
    (tmp_path / "a.tgz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match="not a readable tar archive"):
        extract_archives(str(tmp_path), ["a.tgz"])
    assert not (tmp_path / "x.txt").exists()


def test_members_keep_their_execute_bits(tmp_path):
    import stat

    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        for name, mode in (("run.sh", 0o755), ("data.txt", 0o600)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = 2, mode
            tar.addfile(info, io.BytesIO(b"ok"))
    extract_archives(str(tmp_path), ["a.tar"])
    assert stat.S_IMODE((tmp_path / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "data.txt").stat().st_mode) == 0o644
