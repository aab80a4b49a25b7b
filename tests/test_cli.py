"""The command line: help, version, usage errors, exit codes, logging, the README's first command."""

import json
import os
import subprocess
import sys

from fitsync import __version__

from conftest import SAMPLE, read_tree, write_tree


def test_version_and_help(cli):
    assert cli("--version").out.strip() == f"fitsync {__version__}"
    result = cli("--help")
    assert result.code == 0 and "fitsync mirror SRC DST" in result.out and "Exit codes" in result.out
    result = cli("mirror", "--help")
    assert result.code == 0 and "--checksum" in result.out


def test_usage_errors_exit_2_without_traceback(cli):
    for args in (("frobnicate",), ("mirror", "only-one-arg"), ("mirror", "a", "b", "--jobs=zero")):
        result = cli(*args)
        assert result.code == 2, args
        assert "Traceback" not in result.err


def test_python_dash_m_runs_as_a_real_process(tmp_path):
    write_tree(tmp_path / "src", {"x.txt": b"x"})
    proc = subprocess.run([sys.executable, "-m", "fitsync", "mirror", str(tmp_path / "src"), str(tmp_path / "dst"),
                           "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files_new"] == 1


def test_readme_first_command_on_the_shipped_sample(tmp_path, cli):
    """The README's first command mirrors sample/archive and audits the copy."""
    dst = tmp_path / "fitsync-demo"
    result = cli("mirror", SAMPLE, dst, "--itemize")
    assert result.code == 0, result.err
    assert result.out.count(">f+++++++++ ") == len(read_tree(SAMPLE))
    assert read_tree(dst) == read_tree(SAMPLE)
    assert cli("manifest", SAMPLE, f"--output={tmp_path / 'sample.jsonl'}").code == 0
    assert cli("audit", dst, f"--manifest={tmp_path / 'sample.jsonl'}").code == 0


def test_log_file_is_appended_with_timestamps(tmp_path, cli):
    write_tree(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b"})
    log = tmp_path / "run.log"
    cli("mirror", tmp_path / "src", tmp_path / "dst", f"--log-file={log}", "--quiet")
    cli("mirror", tmp_path / "src", tmp_path / "dst", f"--log-file={log}", "--quiet")
    text = log.read_text()
    assert "new        a.txt" in text and text.count("transfer:") == 2
    first = text.splitlines()[0]
    assert first[:4].isdigit() and first[4] == "-", first


def test_quiet_prints_nothing_on_success(tmp_path, cli):
    write_tree(tmp_path / "src", {"a.txt": b"a"})
    result = cli("mirror", tmp_path / "src", tmp_path / "dst", "--quiet")
    assert result.code == 0 and result.out == "" and result.err == ""


def test_progress_goes_to_a_terminal_only(tmp_path):
    """On a pipe there is no progress bar; stdout stays clean."""
    write_tree(tmp_path / "src", {"a.bin": os.urandom(1 << 20)})
    proc = subprocess.run([sys.executable, "-m", "fitsync", "mirror", str(tmp_path / "src"), str(tmp_path / "dst")],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert "\r" not in proc.stderr and proc.stdout == ""
