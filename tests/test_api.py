"""The public Python API, called as a pipeline would: real data, real servers,
results checked against the bytes on disk; nothing printed, the caller's
logging untouched."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import blake3
import pytest

import fitsync
from fitsync.errors import NotFound, TransferFailed, UsageError
from fitsync.events import BytesDone, FileFinished, FileStarted, Totals
from conftest import read_tree, write_tree
from dropbox_fixture import dropbox_server  # noqa: F401  (pytest fixture)
from http_fixture import HttpFixture
from sshd_fixture import home, sshd  # noqa: F401  (fixtures)

SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "archive"


@pytest.fixture
def quiet_caller(capfd):
    """The caller's logging as an application sets it up; afterwards, nothing
    on stdout or stderr and the same handlers on the root and fitsync loggers."""
    root = logging.getLogger()
    mine = logging.StreamHandler(sys.stderr)
    mine.setLevel(logging.CRITICAL + 1)  # attached, but prints nothing: its presence is what is checked
    root.addHandler(mine)
    before = (_ours(root), root.level, _ours(logging.getLogger("fitsync")))
    yield
    after = (_ours(root), root.level, _ours(logging.getLogger("fitsync")))
    root.removeHandler(mine)
    assert after == before
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def _ours(logger: logging.Logger) -> list:
    """The logger's handlers but those pytest itself adds and removes around each phase."""
    return [h for h in logger.handlers if not type(h).__module__.startswith("_pytest")]


def b3(path: Path) -> str:
    return blake3.blake3(path.read_bytes()).hexdigest()


def test_mirror_manifest_audit_compare_on_the_sample(tmp_path, quiet_caller):
    dst = tmp_path / "copy"
    result = fitsync.mirror(SAMPLE, dst)
    assert read_tree(dst) == read_tree(SAMPLE)
    assert (result.files_new, result.files_failed, result.exit_code) == (13, 0, 0)
    assert result.bytes_transferred == sum(len(v) for v in read_tree(SAMPLE).values())
    assert sorted(a.path for a in result.files) == sorted(read_tree(SAMPLE))
    assert {a.action for a in result.files} == {"new"} and result.to_dict()["version"] == fitsync.__version__
    assert fitsync.mirror(SAMPLE, dst).files_unchanged == 13  # a re-run moves nothing

    streamed = fitsync.manifest(dst)
    entries = list(streamed)
    assert [e.path for e in entries] == sorted(read_tree(SAMPLE))
    assert all(e.blake3 == b3(dst / e.path) for e in entries)
    assert (streamed.files, streamed.bytes, streamed.errors) == (13, result.bytes_transferred, [])

    written = fitsync.manifest(SAMPLE, output=tmp_path / "release.jsonl")
    assert written.output == str(tmp_path / "release.jsonl") and written.files == 13
    assert fitsync.audit(dst, manifest=tmp_path / "release.jsonl").clean
    victim = dst / "2026-11-02" / "sci_0001.fits"
    data = bytearray(victim.read_bytes())
    data[-100] ^= 1
    stat = victim.stat()
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: only content tells
    audit = fitsync.audit(dst, manifest=tmp_path / "release.jsonl", fits=True)
    assert not audit.clean and audit.exit_code == 1
    assert [c["path"] for c in audit.manifest.corrupt] == ["2026-11-02/sci_0001.fits"]
    assert fitsync.compare(SAMPLE, dst).agree  # sizes and mtimes agree
    differ = fitsync.compare(SAMPLE, dst, checksum=True, report=tmp_path / "diff.txt")
    assert [d["path"] for d in differ.differ] == ["2026-11-02/sci_0001.fits"]
    assert "* 2026-11-02/sci_0001.fits" in (tmp_path / "diff.txt").read_text()
    repaired = fitsync.mirror(SAMPLE, dst, checksum=True)
    assert [(a.path, a.action) for a in repaired.files] == [("2026-11-02/sci_0001.fits", "repair")]
    assert read_tree(dst) == read_tree(SAMPLE)


def test_manifest_formats_and_signing(tmp_path, quiet_caller):
    from fitsync.signing import generate_key_pair

    generate_key_pair(str(tmp_path / "key"))
    signed = fitsync.manifest(SAMPLE, output=tmp_path / "m.jsonl", sign=str(tmp_path / "key"))
    assert signed.signed and (tmp_path / "m.jsonl.sig").exists()
    fitsync.manifest(SAMPLE, output=tmp_path / "m.sha256", format="sha256sum")
    line = (tmp_path / "m.sha256").read_text().splitlines()[0]
    digest, name = line.split("  ", 1)
    assert digest == hashlib.sha256((SAMPLE / name).read_bytes()).hexdigest()
    assert fitsync.audit(SAMPLE, manifest=tmp_path / "m.jsonl", verify_key=str(tmp_path / "key.pub")).clean
    with pytest.raises(UsageError):
        fitsync.manifest(SAMPLE, format="md5")


def test_selection_missing_and_open(tmp_path, quiet_caller):
    tiles = ("271.282", "271.283", "272.001")
    files = {f"{kind}_{tile}.tgz": b"x" * (i + 1) for i, tile in enumerate(tiles) for kind in ("final_cat", "logs")}
    del files["logs_271.283.tgz"]
    write_tree(tmp_path / "results", files)
    (tmp_path / "tiles.txt").write_text("\n".join(tiles) + "\n")
    select = fitsync.Selection(profile="shapepipe", where=[f"tile=@{tmp_path / 'tiles.txt'}"])
    report = fitsync.missing(tmp_path / "results", expect="type=final_cat,logs", select=select,
                             output=tmp_path / "missing.txt")
    assert report.missing == {("271.283",): ["logs"]} and report.exit_code == 1
    assert (tmp_path / "missing.txt").read_text() == "271.283\n"
    only_logs = fitsync.mirror(tmp_path / "results", tmp_path / "logs", select=fitsync.Selection(include=["logs_*"],
                                                                                                  exclude=["*"]))
    assert sorted(read_tree(tmp_path / "logs")) == ["logs_271.282.tgz", "logs_272.001.tgz"]
    assert only_logs.files_new == 2
    with fitsync.open(tmp_path / "results") as remote:
        assert sorted(e.path for e in remote.list()) == sorted(files)
        assert remote.stat("logs_272.001.tgz").size == 3


def test_an_iact_production_and_its_datasets(hess, tmp_path, quiet_caller):
    (summary,) = fitsync.datasets(hess)
    assert (summary.name, summary.observations, summary.files) == ("hess_dl3_dr1", 105, 105)
    (tmp_path / "runs.txt").write_text("23523\n23526\n")
    result = fitsync.mirror(hess, tmp_path / "crab",
                            select=fitsync.Selection(production="hess_dl3_dr1", runlist=str(tmp_path / "runs.txt")))
    copied = sorted(p.name for p in (tmp_path / "crab" / "data").iterdir())
    assert copied == ["hess_dl3_dr1_obs_id_023523.fits.gz", "hess_dl3_dr1_obs_id_023526.fits.gz"]
    assert result.files_new == 2 and result.exit_code == 0
    for name in copied:
        assert b3(tmp_path / "crab" / "data" / name) == b3(hess / "data" / name)
    assert (tmp_path / "crab" / "hdu-index.fits.gz").exists()


def test_ssh_source_and_a_compare_across_hosts(sshd, home, tmp_path, quiet_caller, monkeypatch):
    from fitsync import sshconn

    write_tree(tmp_path / "remote", {"night/a.fits": os.urandom(70_000), "night/b.log": b"log\n"})
    url = f"sftp://127.0.0.1:{sshd.port}{tmp_path / 'remote'}"
    made = []
    monkeypatch.setattr(sshconn, "SshConnection", lambda *a, _made=made, _cls=sshconn.SshConnection: _made.append(1)
                        or _cls(*a))
    result = fitsync.mirror(url, tmp_path / "local")
    assert len(made) == 1  # one SSH connection for the run (the source is opened once)
    assert result.files_new == 2 and read_tree(tmp_path / "local") == read_tree(tmp_path / "remote")
    assert fitsync.compare(url, tmp_path / "local", checksum=True).agree
    assert list(fitsync.manifest(url))[0].blake3 == b3(tmp_path / "remote" / "night/a.fits")
    assert sshconn._POOL == {}  # the calls closed the connections they opened


def test_http_source(tmp_path, quiet_caller):
    write_tree(tmp_path / "site" / "rel", {"a.fits": os.urandom(50_000), "sub/b.txt": b"bee"})
    with HttpFixture(str(tmp_path / "site")) as server:
        result = fitsync.mirror(server.url + "/rel/", tmp_path / "copy")
    assert result.files_new == 2 and read_tree(tmp_path / "copy") == read_tree(tmp_path / "site" / "rel")


def test_named_dropbox_remote(dropbox_server, tmp_path, monkeypatch, quiet_caller):
    srv = dropbox_server
    srv.put_file("/VAST/EPOCH01/a.fits", b"A" * 5000, mtime=1_577_836_800)
    srv.put_file("/VAST/EPOCH01/b.fits", b"B" * 7000, mtime=1_577_836_860)
    config = tmp_path / "remotes.toml"
    config.write_text(f'[vast]\ntype = "dropbox"\naccess_token_env = "TOKEN"\npath = "/VAST"\n'
                      f'ca_bundle = "{srv.ca_file}"\n')
    config.chmod(0o600)
    monkeypatch.setenv("FITSYNC_CONFIG", str(config))
    monkeypatch.setenv("TOKEN", "good-token")
    result = fitsync.mirror("vast:EPOCH01", tmp_path / "v")
    assert read_tree(tmp_path / "v") == {"a.fits": b"A" * 5000, "b.fits": b"B" * 7000}
    assert result.files_new == 2


def test_two_mirrors_in_two_threads(tmp_path, quiet_caller):
    write_tree(tmp_path / "a", {f"f{i:03d}.bin": os.urandom(20_000) for i in range(60)})
    write_tree(tmp_path / "b", {f"g{i:03d}.bin": os.urandom(30_000) for i in range(60)})
    results = {}

    def run(name):
        results[name] = fitsync.mirror(tmp_path / name, tmp_path / f"{name}-copy")

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("a", "b"):
        assert read_tree(tmp_path / f"{name}-copy") == read_tree(tmp_path / name)
        assert results[name].files_new == 60 and results[name].files_failed == 0


def test_progress_events_add_up(tmp_path, quiet_caller):
    write_tree(tmp_path / "src", {f"{i}.bin": os.urandom(1000 * (i + 1)) for i in range(5)})
    events = []
    lock = threading.Lock()

    def collect(event):
        with lock:
            events.append(event)

    fitsync.mirror(tmp_path / "src", tmp_path / "dst", progress=collect)
    totals = [e for e in events if isinstance(e, Totals)]
    assert totals == [Totals("transfer", 5, 15_000)]
    assert sum(e.bytes for e in events if isinstance(e, BytesDone)) == 15_000
    assert sorted(e.path for e in events if isinstance(e, FileStarted)) == [f"{i}.bin" for i in range(5)]
    finished = {e.path: e for e in events if isinstance(e, FileFinished)}
    assert finished["4.bin"].action == "new" and finished["4.bin"].bytes_moved == 5000
    bar = fitsync.progress.tqdm_bar(disable=True)
    write_tree(tmp_path / "src", {"5.bin": b"new"})
    assert fitsync.mirror(tmp_path / "src", tmp_path / "dst", progress=bar).files_new == 1


def test_bad_input_raises_typed_errors(tmp_path, quiet_caller):
    with pytest.raises(NotFound) as missing:
        fitsync.mirror(tmp_path / "absent", tmp_path / "dst")
    assert missing.value.exit_code == 2
    with pytest.raises(UsageError):
        fitsync.Selection(filters=["* no sign"])
    with pytest.raises(UsageError):
        fitsync.mirror(SAMPLE, tmp_path / "dst", jobs=0)
    with pytest.raises(UsageError):
        fitsync.audit(tmp_path / "dst", manifest=tmp_path)  # a directory is not a manifest
    with pytest.raises(UsageError):
        fitsync.mirror(SAMPLE, tmp_path / "dst", select=fitsync.Selection(where=["tile=1"]))  # no template


def test_failures_are_listed_or_raised_on_request(tmp_path, quiet_caller):
    write_tree(tmp_path / "src", {"ok.txt": b"fine", "blocked.txt": b"data"})
    (tmp_path / "dst" / "blocked.txt").mkdir(parents=True)  # a directory where the file must go
    (tmp_path / "dst" / "blocked.txt" / "keep").write_bytes(b"k")
    result = fitsync.mirror(tmp_path / "src", tmp_path / "dst", retries=0)
    assert result.files_failed == 1 and result.exit_code == 3
    assert [(a.path, a.action) for a in result.files if a.error] == [("blocked.txt", "failed")]
    assert (tmp_path / "dst" / "ok.txt").read_bytes() == b"fine"
    with pytest.raises(TransferFailed) as raised:
        fitsync.mirror(tmp_path / "src", tmp_path / "dst", retries=0, raise_on_failure=True)
    assert raised.value.exit_code == 3 and raised.value.result.failures[0]["path"] == "blocked.txt"


def test_ctrl_c_stops_starting_files(tmp_path, quiet_caller):
    write_tree(tmp_path / "src", {f"{i:04d}.bin": os.urandom(2000) for i in range(400)})
    done = []

    def slow(event):  # each file takes a while, so the run would last ~8 s
        if isinstance(event, FileFinished):
            done.append(event.path)
            if len(done) == 5:
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.02)

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fitsync.mirror(tmp_path / "src", tmp_path / "dst", jobs=1, progress=slow)
    assert time.monotonic() - started < 3
    copied = read_tree(tmp_path / "dst")
    assert 5 <= len(copied) < 50
    assert all(copied[p] == (tmp_path / "src" / p).read_bytes() for p in copied)  # nothing half-written
    assert fitsync.mirror(tmp_path / "src", tmp_path / "dst").files_new == 400 - len(copied)


def test_cli_json_is_the_result_dict(cli, tmp_path):
    run = cli("mirror", SAMPLE, tmp_path / "d", "--json", "--itemize")
    assert run.code == 0
    data = run.json()
    assert data["version"] == fitsync.__version__ and data["files_new"] == 13 and data["exit_code"] == 0
    assert {f["action"] for f in data["files"]} == {"new"} and len(data["files"]) == 13
    assert "files" not in cli("mirror", SAMPLE, tmp_path / "d", "--json").json()


def test_cli_main_leaves_the_callers_logging_alone(tmp_path):
    from fitsync.cli.main import main

    logger = logging.getLogger("fitsync")
    mine = logging.NullHandler()
    logger.addHandler(mine)
    before = (list(logger.handlers), logger.level, logger.propagate)
    try:
        assert main(["mirror", str(SAMPLE), str(tmp_path / "d"), "--quiet", f"--log-file={tmp_path / 'log'}"]) == 0
        assert (list(logger.handlers), logger.level, logger.propagate) == before
    finally:
        logger.removeHandler(mine)


def test_help_shows_the_functions_first():
    shown = subprocess.run([sys.executable, "-c", "import fitsync; help(fitsync)"], capture_output=True, text=True,
                           env={**os.environ, "PAGER": "cat", "MANPAGER": "cat"}, check=True).stdout
    description = shown[shown.index("DESCRIPTION"):]
    assert description.index("mirror(src, dst") < description.index("manifest(root") < description.index("open(")
    assert "Make ``dst`` an exact, verified copy" in shown  # the functions' own docstrings follow


def test_a_typed_user_script_passes_mypy_strict():
    script = Path(__file__).with_name("api_user_script.py")
    run = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
                          str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Success" in run.stdout


def test_named_remotes_of_type_file_and_https(tmp_path, monkeypatch, quiet_caller):
    write_tree(tmp_path / "site" / "dr1", {"a.fits": b"A" * 4000, "sub/b.txt": b"bee"})
    with HttpFixture(str(tmp_path / "site")) as server:
        config = tmp_path / "remotes.toml"
        config.write_text(f'[local]\ntype = "file"\npath = "{tmp_path / "site"}"\n'
                          f'[web]\ntype = "https"\nurl = "{server.url}/dr1/"\n')
        monkeypatch.setenv("FITSYNC_CONFIG", str(config))
        from_web = fitsync.mirror("web:sub", tmp_path / "w")
        from_disk = fitsync.mirror("local:dr1", tmp_path / "l")
    assert from_web.files_new == 1 and read_tree(tmp_path / "w") == {"b.txt": b"bee"}
    assert from_disk.files_new == 2 and read_tree(tmp_path / "l") == read_tree(tmp_path / "site" / "dr1")


def test_checksum_compares_bytes_with_a_log_file_too(tmp_path, monkeypatch):
    """A log file once switched local --checksum runs from the byte compare to hashing both sides."""
    from fitsync.cli.main import main
    from fitsync.engine.mirror import Mirror

    write_tree(tmp_path / "s", {"a.fits": b"A" * 5000, "b.fits": b"B" * 5000})
    assert main(["mirror", str(tmp_path / "s"), str(tmp_path / "d"), "-q"]) == 0
    victim = tmp_path / "d" / "b.fits"
    stat = victim.stat()
    victim.write_bytes(b"X" * 5000)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    bulk = []
    original = Mirror.plan_in_bulk
    monkeypatch.setattr(Mirror, "plan_in_bulk", lambda self: bulk.append(1) or original(self))
    assert main(["mirror", str(tmp_path / "s"), str(tmp_path / "d"), "-c", "-q",
                 f"--log-file={tmp_path / 'log'}"]) == 0
    assert bulk and victim.read_bytes() == b"B" * 5000


def test_local_only_features_refuse_remote_locations(tmp_path, sshd, home):
    write_tree(tmp_path / "r", {"a.fits": b"a"})
    url = f"sftp://127.0.0.1:{sshd.port}{tmp_path / 'r'}"
    with pytest.raises(UsageError, match="--extract"):
        fitsync.mirror(SAMPLE, url, extract=True)
    with pytest.raises(UsageError, match="bagit"):
        fitsync.manifest(url, format="bagit", output=tmp_path / "bag")
    with pytest.raises(UsageError, match="--fits"):
        fitsync.audit(url, fits=True)


@pytest.mark.parametrize("spec, parent, name", [
    ("/data/night/a.fits", "/data/night", "a.fits"), ("/a.fits", "/", "a.fits"), ("a.fits", ".", "a.fits"),
    ("sftp://host/data/a.fits", "sftp://host/data", "a.fits"), ("sftp://host/a.fits", "sftp://host/", "a.fits"),
    ("host:dir/a.fits", "host:dir", "a.fits"), ("host:/a.fits", "host:/", "a.fits"), ("host:a.fits", "host:", "a.fits"),
    ("dropbox:/VAST/a.fits", "dropbox:/VAST", "a.fits"),
])
def test_the_directory_of_a_single_file_source(spec, parent, name):
    from fitsync.api import _parent_and_name

    assert _parent_and_name(spec) == (parent, name)
