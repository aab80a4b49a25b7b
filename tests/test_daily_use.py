"""Daily use, as a user at a terminal or cron runs the installed ``fitsync``:
rsync's habits, symlinks, partial trees, one-line errors, logs and progress."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fitsync
from conftest import read_tree, write_tree
from dropbox_fixture import dropbox_server  # noqa: F401  (pytest fixture; sets the SDK's API host for children)
from fitsync.events import BytesDone, Totals

FITSYNC = str(Path(sys.executable).with_name("fitsync"))  # the console script pip installed
SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "archive"


def run(*args, env=None, unprivileged=False, stdin=None) -> subprocess.CompletedProcess:
    command = [FITSYNC, *map(str, args)]
    if unprivileged:  # root without the capabilities that let it read any directory, as a user is
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})},
                            stdin=stdin, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fitsync: "), result.stderr
    return lines[0]


@pytest.fixture
def tree(tmp_path):
    write_tree(tmp_path / "src", {"a.fits": b"A" * 3000, "night/b.log": b"log", "night/c.fits": b"C" * 5000})
    return tmp_path / "src"


# -- what a mirror copies -------------------------------------------------------------

def test_symlinks_are_reported_copied_or_followed(tmp_path, tree):
    (tree / "link.fits").symlink_to("a.fits")
    (tree / "night" / "up.fits").symlink_to("../a.fits")
    (tree / "outside").symlink_to("/etc/hostname")
    (tree / "nightly").symlink_to("night")

    skipped = run("mirror", tree, tmp_path / "d1", "-i")
    assert skipped.returncode == 0
    assert 'skipping non-regular file "link.fits"' in skipped.stdout.splitlines()
    assert "4 symlinks skipped" in skipped.stderr
    assert sorted(read_tree(tmp_path / "d1")) == ["a.fits", "night/b.log", "night/c.fits"]

    linked = run("mirror", tree, tmp_path / "d2", "--links", "-i")
    assert "cL+++++++++ link.fits -> a.fits" in linked.stdout.splitlines()
    assert os.readlink(tmp_path / "d2" / "night" / "up.fits") == "../a.fits"
    assert os.readlink(tmp_path / "d2" / "nightly") == "night"
    assert not os.path.lexists(tmp_path / "d2" / "outside")  # it leads out of the source
    assert 'skipping unsafe symlink' in linked.stdout
    run("mirror", tree, tmp_path / "d2", "--links", "--unsafe-links")
    assert os.readlink(tmp_path / "d2" / "outside") == "/etc/hostname"

    followed = run("mirror", tree, tmp_path / "d3", "--copy-links")
    assert followed.returncode == 0
    copy = tmp_path / "d3"
    assert not any(p.is_symlink() for p in copy.rglob("*"))
    assert (copy / "link.fits").read_bytes() == b"A" * 3000
    assert (copy / "nightly" / "c.fits").read_bytes() == b"C" * 5000
    assert (copy / "outside").read_bytes() == Path("/etc/hostname").read_bytes()
    assert run("mirror", tree, tmp_path / "d4", "--links", "--copy-links").returncode == 2


def test_an_unreadable_directory_is_reported_and_the_rest_mirrored(tmp_path, tree):
    write_tree(tree / "private", {"secret.fits": b"S" * 100})
    os.chmod(tree / "private", 0o000)
    dst = tmp_path / "dst"
    write_tree(dst / "private", {"old.fits": b"keep me"})
    try:
        result = run("mirror", tree, dst, "--delete", unprivileged=True)
    finally:
        os.chmod(tree / "private", 0o755)
    assert result.returncode == 3, result.stderr
    assert "private/: cannot read directory: Permission denied" in result.stderr
    assert (dst / "a.fits").read_bytes() == b"A" * 3000 and (dst / "night" / "c.fits").exists()
    assert (dst / "private" / "old.fits").read_bytes() == b"keep me"  # never deleted under an unlisted directory


def test_a_single_file_as_source(tmp_path, tree):
    result = run("mirror", tree / "night" / "c.fits", tmp_path / "one", "-i")
    assert result.returncode == 0 and result.stdout == ">f+++++++++ c.fits\n"
    assert read_tree(tmp_path / "one") == {"c.fits": b"C" * 5000}
    refused = run("mirror", tree / "night" / "c.fits", tmp_path / "one", "--delete")
    assert refused.returncode == 2 and "single file" in one_line(refused)


# -- errors cron users meet --------------------------------------------------------------

def test_unwritable_outputs_are_one_line_errors(tmp_path, tree):
    for args in (["mirror", tree, tmp_path / "d", f"--log-file={tmp_path}/missing/run.log"],
                 ["manifest", tree, f"--output={tmp_path}/missing/m.jsonl"],
                 ["compare", tree, tree, f"--report={tmp_path}/missing/r.txt", "--checksum"],
                 ["audit", tree, f"--manifest={tmp_path}"]):
        result = run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert str(tmp_path) in one_line(result)


def test_a_closed_pipe_ends_quietly(tree):
    for command in (f"{FITSYNC} --help | head -1", f"{FITSYNC} mirror {tree} {tree}-copy -ii | head -1"):
        result = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr and "pipe" not in result.stderr.lower(), result.stderr


def test_unknown_options_and_commands_get_suggestions(tree, tmp_path):
    result = run("mirror", tree, tmp_path / "d", "--checksums")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "fitsync: unknown option --checksums; did you mean --checksum?",
        "usage: fitsync mirror SRC DST [options]  ('fitsync mirror --help' lists them)"]
    command = run("mirorr", tree, tmp_path / "d")
    assert command.returncode == 2 and "did you mean mirror?" in one_line(command)
    short = run("mirror", tree, tmp_path / "d", "-x")
    assert short.returncode == 2 and "unknown option -x" in short.stderr


def test_hosts_that_do_not_resolve_fail_at_once(tmp_path):
    env = {"FITSYNC_CONFIG": str(tmp_path / "remotes.toml"), "HOME": str(tmp_path)}
    started = time.monotonic()
    result = run("mirror", "saao:/data", tmp_path / "saao", env=env)
    assert time.monotonic() - started < 5  # no retries with back-off for a name that does not exist
    assert result.returncode == 4
    line = one_line(result)
    assert "no host 'saao' resolves" in line and str(tmp_path / "remotes.toml") in line
    assert "fitsync config template sftp" in line
    assert run("mirror", "nohost.invalid:/x", tmp_path / "n", env=env).returncode == 4


def test_dropbox_answering_a_web_page_is_one_line(tmp_path, dropbox_server):
    server = dropbox_server
    server.put_file("/VAST/a.fits", b"A" * 100, mtime=1_577_836_800)
    server.inject("files/list_folder", "html", count=10)
    result = run("mirror", "dropbox:/VAST", tmp_path / "v", f"--ca-bundle={server.ca_file}", "--retries=1",
                 env={"FITSYNC_DROPBOX_TOKEN": "good-token", "FITSYNC_CONFIG": str(tmp_path / "none.toml")})
    assert result.returncode == 4
    assert "not the API's JSON" in result.stderr.strip().splitlines()[-1]


def test_config_template_expands_home_and_makes_directories(tmp_path):
    result = run("config", "template", "sftp", "--output=~/.config/fitsync/remotes.toml", env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    written = tmp_path / ".config" / "fitsync" / "remotes.toml"
    assert written.exists() and (written.stat().st_mode & 0o777) == 0o600


# -- rsync and rclone habits -------------------------------------------------------------

def test_short_options_and_aliases(tmp_path, tree):
    assert run("-V").stdout.startswith("fitsync ")
    dry = run("mirror", tree, tmp_path / "d", "-n")
    assert dry.returncode == 0 and not (tmp_path / "d").exists()
    assert dry.stdout.splitlines() == [">f+++++++++ a.fits", "cd+++++++++ night/", ">f+++++++++ night/b.log",
                                       ">f+++++++++ night/c.fits"]
    assert "would copy 7.8 KiB of new files" in dry.stderr
    assert run("mirror", tree, tmp_path / "d", "-q", "-j", "3", "--transfers=2").stderr == ""
    (tree / "a.fits").write_bytes(b"B" * 3000)  # same size; the mtime moves
    os.utime(tree / "a.fits", (1_700_000_000, 1_700_000_000))
    os.utime(tmp_path / "d" / "a.fits", (1_700_000_000, 1_700_000_000))
    changed = run("mirror", tree, tmp_path / "d", "-ci", "-v")
    assert changed.stdout.splitlines() == [">fc........ a.fits (rewritten)"]  # copied whole: a local source
    assert run("mirror", tree, tmp_path / "d", "--itemize-changes").stdout == ""
    listed = run("mirror", tree, tmp_path / "d", "-ii").stdout.splitlines()
    assert listed == [".f          a.fits", ".f          night/b.log", ".f          night/c.fits"]


def test_more_filters_and_a_bandwidth_limit(tmp_path, tree):
    (tmp_path / "ex.txt").write_text("# logs are not wanted\n*.log\n")
    write_tree(tree, {"big.fits": b"B" * 700_000, "tiny.txt": b"t"})
    result = run("mirror", tree, tmp_path / "d", f"--exclude-from={tmp_path / 'ex.txt'}", "--min-size=2k",
                 "--max-size=600k")
    assert result.returncode == 0
    assert sorted(read_tree(tmp_path / "d")) == ["a.fits", "night/c.fits"]
    os.utime(tree / "a.fits", (time.time(), time.time()))
    young = run("mirror", tree, tmp_path / "old", "--min-age=1h", "--include-from", str(tmp_path / "ex.txt"),
                "--exclude=*.txt")
    assert young.returncode == 0 and "a.fits" not in read_tree(tmp_path / "old")
    started = time.monotonic()
    assert run("mirror", tree / "big.fits", tmp_path / "slow", "--bwlimit=400k").returncode == 0
    assert time.monotonic() - started > 1.2  # 700 kB at 400 KiB/s: at least 1.3 s less a half-second credit
    assert (tmp_path / "slow" / "big.fits").stat().st_size == 700_000


def test_the_trailing_slash_note(tmp_path, tree):
    result = run("mirror", tree, tmp_path / "backup" / "src")
    assert "the contents of" in result.stderr and "rsync" in result.stderr
    assert run("mirror", f"{tree}/", tmp_path / "backup" / "src").stderr.count("note:") == 0


# -- progress and feedback ----------------------------------------------------------------

def test_progress_on_every_hashing_command(tmp_path, tree):
    manifest = run("manifest", tree, f"--output={tmp_path / 'm.jsonl'}", "-P")
    assert "scan" in manifest.stderr and "wrote a jsonl manifest of 3 files (7.8 KiB)" in manifest.stderr
    assert "scan" in run("audit", tree, f"--manifest={tmp_path / 'm.jsonl'}", "-P").stderr
    assert "scan" in run("compare", tree, tree, "--checksum", "-P").stderr
    assert "scan" not in run("compare", tree, tree, "--checksum").stderr  # not a terminal, no -P: no bar
    assert run("manifest", tree, f"--output={tmp_path / 'q.jsonl'}", "-q").stderr == ""


def test_delta_progress_counts_matched_bytes(tmp_path):
    header = b"SIMPLE  =                    T" + b" " * 50 + b"END" + b" " * 77
    data = bytes(range(256)) * 4096
    write_tree(tmp_path / "s", {"big.fits": header.ljust(2880, b" ") + data})
    fitsync.mirror(tmp_path / "s", tmp_path / "d")
    edited = header.replace(b"T", b"F", 1).ljust(2880, b" ") + data
    write_tree(tmp_path / "s", {"big.fits": edited}, mtime=1_800_000_000.0)
    events = []
    result = fitsync.mirror(tmp_path / "s", tmp_path / "d", progress=events.append, jobs=1, whole_file=False)
    assert result.files_updated == 1 and result.bytes_transferred < 100_000
    assert sum(e.bytes for e in events if isinstance(e, BytesDone)) == len(edited)  # bar reaches its total
    assert [e for e in events if isinstance(e, Totals)] == [Totals("transfer", 1, len(edited))]


def test_the_log_file_of_every_command(tmp_path, tree):
    log = tmp_path / "cron.log"
    run("mirror", tree, tmp_path / "d", f"--log-file={log}", "-q")
    run("compare", tree, tmp_path / "d", f"--log-file={log}", "-q")
    run("audit", tmp_path / "d", f"--log-file={log}", "--manifest=/nonexistent.jsonl")
    run("manifest", tree, f"--output={tmp_path / 'm.jsonl'}", f"--log-file={log}")
    run("missing", tree, "--template={type}.{ext}", "--expect=ext=fits", f"--log-file={log}")
    text = log.read_text()
    assert text.count("start: fitsync") == 5 and text.count("end: exit") == 5
    assert "summary: 3 files: 3 new" in text and "copied 7.8 KiB" in text
    assert "fatal: " in text and "/nonexistent.jsonl" in text
    assert "summary: wrote a jsonl manifest of 3 files" in text
    secret = run("mirror", "https://user:hunter2@127.0.0.1:1/x/", tmp_path / "h", f"--log-file={log}", "--retries=0")
    assert secret.returncode != 0
    assert "hunter2" not in log.read_text() and "user:***@127.0.0.1" in log.read_text()


def test_shell_completion_is_made_from_the_usage_text(tmp_path):
    script = run("completion", "bash").stdout
    completed = subprocess.run(["bash", "-c", script + "\nCOMP_WORDS=(fitsync mirror --chec); COMP_CWORD=2; "
                                "_fitsync; echo ${COMPREPLY[@]}; COMP_WORDS=(fitsync man); COMP_CWORD=1; "
                                "_fitsync; echo ${COMPREPLY[@]}"], capture_output=True, text=True)
    assert completed.stdout.split("\n")[:2] == ["--checksum", "manifest"]
    zsh = run("completion", "zsh").stdout
    (tmp_path / "_fitsync").write_text(zsh)
    assert subprocess.run(["zsh", "-n", str(tmp_path / "_fitsync")]).returncode == 0
    assert zsh.startswith("#compdef fitsync") and "--bwlimit=" in zsh and " -j " in zsh
    assert run("completion", "fish").returncode == 2


def test_readme_has_the_rsync_table_and_remotes_section():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "## Coming from rsync / rclone" in readme and "## Remotes" in readme
    for option in ("--dry-run", "--itemize-changes", "--bwlimit", "--copy-links", "--exclude-from"):
        assert option in readme
