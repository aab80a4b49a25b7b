"""The selection options through the command line: filters on mirror and
compare, `fitsync missing`, `fitsync datasets` errors."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import read_tree, write_tree


def test_mirror_filters_follow_the_command_line_order(tmp_path):
    """A real process: the rule order comes from its argv (docopt keeps two unordered lists)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"a.fits": b"1", "keep.txt": b"2", "notes.txt": b"3", "sub/b.fits": b"4", "QC/c.fits": b"5"})
    env = dict(os.environ)  # the installed fitsync, as a user runs it
    args = [sys.executable, "-m", "fitsync", "mirror", str(src), str(dst), "--exclude=QC/", "--include=*/",
            "--include=*.fits", "--include=keep.txt", "--exclude=*", "--quiet"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(read_tree(dst)) == ["a.fits", "keep.txt", "sub/b.fits"]


def test_compare_with_a_template_ignores_other_files(cli, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_tree(a, {"shoc/2026/1101/x.fits": b"1", "notes.txt": b"a"})
    write_tree(b, {"shoc/2026/1101/x.fits": b"1", "notes.txt": b"bb"})
    result = cli("compare", a, b, "--template={instrument}/{yyyy}/{mmdd}/{file}")
    assert result.code == 0 and result.out == ""
    assert cli("compare", a, b).code == 1


def test_missing_writes_keys_and_is_silent_when_complete(cli, tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"final_cat_100.100.tgz": b"", "logs_100.100.tgz": b"", "final_cat_100.101.tgz": b""})
    keys = tmp_path / "tiles.txt"
    keys.write_text("100.100\n100.101\n")
    out = tmp_path / "missing.txt"
    result = cli("missing", src, "--template={type}_{tile:[0-9]+\\.[0-9]+}.tgz", f"--where=tile=@{keys}",
                 "--expect=type=final_cat,logs", f"--output={out}", f"--report={tmp_path / 'report.txt'}")
    assert result.code == 1
    assert out.read_text() == "100.101\n"
    assert "1 of 2 tile keys lack expected type files" in result.out and "100.101: lacks logs" in result.out
    assert "100.100\tcomplete" in (tmp_path / "report.txt").read_text()
    keys.write_text("100.100\n")
    result = cli("missing", src, "--profile=shapepipe", f"--where=tile=@{keys}", "--expect=type=final_cat,logs",
                 f"--output={out}")
    assert result.code == 0 and result.out == "" and out.read_text() == ""


def test_missing_on_a_directory_not_yet_created(cli, tmp_path):
    keys = tmp_path / "tiles.txt"
    keys.write_text("100.100\n")
    out = tmp_path / "missing.txt"
    result = cli("missing", tmp_path / "results", "--profile=shapepipe", f"--where=tile=@{keys}",
                 "--expect=type=final_cat", f"--output={out}", "--quiet")
    assert result.code == 1 and result.out == "" and out.read_text() == "100.100\n"


def test_missing_needs_a_template(cli, tmp_path):
    result = cli("missing", tmp_path, "--expect=type=a")
    assert result.code == 2 and "--template" in result.err


def test_datasets_on_a_directory_that_is_not_a_store(cli, tmp_path):
    result = cli("datasets", tmp_path)
    assert result.code == 2 and "master.json" in result.err
    assert cli("datasets", tmp_path / "nope").code == 2
