"""Manifests on a real Dask LocalCluster (worker processes): byte-identical to
one process, a killed worker loses and duplicates nothing, a killed client
resumes only its unfinished batches, and the SFTP and HTTP fixtures serve
as sources there too."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import fitsync
from fitsync.engine import cluster as clusters
from conftest import WorkerKiller
from http_fixture import HttpFixture
from sshd_fixture import home, sshd  # noqa: F401  (fixtures)

HESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hess-dl3-dr1"
EPOCH = "1700000000"


@pytest.fixture(autouse=True)
def fixed_creation_time(monkeypatch):
    """Both manifests carry the same "created" (SOURCE_DATE_EPOCH)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


def make_tree(root: Path, n: int = 600, seed: int = 5) -> None:
    rng = random.Random(seed)
    for i in range(n):
        path = root / f"d{i % 7}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(0, 5000)))
    for fits in sorted(HESS.glob("data/*.fits.gz"))[:3]:  # real FITS files: their fields are recorded too
        shutil.copy(fits, root / fits.name)


def single_process(root: Path, out: Path, **kw) -> bytes:
    fitsync.manifest(str(root), output=str(out), **kw)
    return out.read_bytes()


@pytest.mark.parametrize("blocks,also,streamed", [(False, (), False), (True, (), False),
                                                  (False, ("adler32", "md5"), False), (False, (), True),
                                                  (True, (), True)])
def test_a_cluster_manifest_is_byte_identical_to_one_made_by_one_process(client, tmp_path, monkeypatch, blocks,
                                                                         also, streamed):
    if streamed:  # a manifest too long for its totals to lead: version 2, totals on the trailer
        monkeypatch.setattr("fitsync.formats.manifest.HEADER_TOTALS_UP_TO", 100)
        monkeypatch.setattr("fitsync.formats.manifest.BLOCKS_HEADER_TOTALS_UP_TO", 100)
    make_tree(tmp_path / "tree")
    want = single_process(tmp_path / "tree", tmp_path / "single.jsonl", blocks=blocks, also=also)
    result = fitsync.manifest(str(tmp_path / "tree"), output=str(tmp_path / "cluster.jsonl"), blocks=blocks,
                              cluster=client, batch_files=50, also=also)
    assert (tmp_path / "cluster.jsonl").read_bytes() == want
    assert (b'"end": "fitsync-manifest"' in want.splitlines()[-1]) == streamed
    assert result.batches == 13 and result.batches_skipped == 0 and result.files == 603
    assert not (tmp_path / "cluster.jsonl.shards").exists()  # shards and journal gone once merged


@pytest.mark.parametrize("fits", [False, True])
def test_a_cluster_audit_finds_exactly_what_one_process_finds(client, tmp_path, fits):
    root = tmp_path / "tree"
    make_tree(root)
    manifest = tmp_path / "m.jsonl"
    fitsync.manifest(str(root), output=str(manifest))
    (root / "d1" / "f00001.bin").unlink()  # missing
    (root / "d2" / "extra.bin").write_bytes(b"not in the manifest")  # extra
    victim = root / "d3" / "f00003.bin"
    victim.write_bytes(bytes(b ^ 1 for b in victim.read_bytes()))  # corrupt, same size
    (root / "d4" / "f00004.bin").write_bytes(b"short")  # size mismatch
    fits_file = sorted(root.glob("*.fits.gz"))[0]
    data = bytearray(fits_file.read_bytes())
    data[len(data) // 2] ^= 0x10  # a gzip member that no longer checks
    fits_file.write_bytes(bytes(data))
    alone = fitsync.audit(str(root), manifest=str(manifest), fits=fits)
    spread = fitsync.audit(str(root), manifest=str(manifest), fits=fits, cluster=client, batch_files=40)
    assert spread.to_dict() == alone.to_dict()
    report = alone.to_dict()["manifest"]
    assert report["counts"] == {"ok": 599, "missing": 1, "corrupt": 3, "extra": 1}
    assert bool(report.get("fits_problems")) == fits


def test_a_cluster_compare_finds_exactly_what_one_process_finds(client, tmp_path):
    make_tree(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "d0" / "f00007.bin").unlink()  # only on A
    (tmp_path / "b" / "d1" / "new.bin").write_bytes(b"only on B")
    victim = tmp_path / "b" / "d5" / "f00005.bin"
    victim.write_bytes(bytes(b ^ 1 for b in victim.read_bytes()))  # differs, same size
    alone = fitsync.compare(str(tmp_path / "a"), str(tmp_path / "b"), checksum=True)
    spread = fitsync.compare(str(tmp_path / "a"), str(tmp_path / "b"), checksum=True, cluster=client,
                             batch_files=37)
    assert spread.to_dict() == alone.to_dict()
    assert alone.to_dict()["counts"] == {"only_a": 1, "only_b": 1, "differ": 1, "identical": 601, "errors": 0}
    with HttpFixture(str(tmp_path / "b"), "ranges") as srv:  # B served over HTTP: the workers download it
        over_http = fitsync.compare(str(tmp_path / "a"), srv.url + "/", checksum=True, cluster=client,
                                    batch_files=37)
    assert over_http.to_dict()["counts"] == alone.to_dict()["counts"]
    assert over_http.differ == alone.differ


def test_the_audit_command_on_a_local_cluster(tmp_path):
    make_tree(tmp_path / "tree", n=200)
    fitsync.manifest(str(tmp_path / "tree"), output=str(tmp_path / "tree" / "fitsync-manifest.jsonl"))
    (tmp_path / "tree" / "d0" / "f00000.bin").write_bytes(b"changed")
    runs = [_fitsync("audit", tmp_path / "tree", "--json", *extra) for extra in ([], ["--dask=local:2"])]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [1, 1], outputs
    assert json.loads(outputs[0][0]) == json.loads(outputs[1][0])
    assert "Traceback" not in outputs[1][1]


def test_any_executor_will_do(tmp_path):
    make_tree(tmp_path / "tree", n=120)
    want = single_process(tmp_path / "tree", tmp_path / "single.jsonl")
    with ThreadPoolExecutor(3) as pool:
        fitsync.manifest(str(tmp_path / "tree"), output=str(tmp_path / "pool.jsonl"), cluster=pool, batch_files=7)
    assert (tmp_path / "pool.jsonl").read_bytes() == want


def test_a_killed_worker_loses_no_batch_and_duplicates_none(client, tmp_path):
    make_tree(tmp_path / "tree", n=3000)
    want = single_process(tmp_path / "tree", tmp_path / "single.jsonl")
    shards = tmp_path / "shards"
    journal = shards / clusters.JOURNAL
    with WorkerKiller(client, lambda: journal.exists() and journal.read_text().count("\n") >= 2) as killer:
        result = fitsync.manifest(str(tmp_path / "tree"), output=str(tmp_path / "cluster.jsonl"), cluster=client,
                                  shards=str(shards), batch_files=10)
    assert killer.killed.is_set(), "the run ended before a worker could be killed"
    assert (tmp_path / "cluster.jsonl").read_bytes() == want
    assert result.batches == 301 and result.files == 3003
    client.wait_for_workers(2, timeout=60)  # the nanny brings the killed worker back for the next test


def _fitsync(*args, **kw) -> subprocess.Popen:
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
    return subprocess.Popen([sys.executable, "-m", "fitsync", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _kill_once_journalled(run: subprocess.Popen, journal: Path, batches: int = 3) -> int:
    """SIGKILL ``run`` (the client and its LocalCluster's workers) once its
    journal holds ``batches`` finished batches; how many it held then."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= batches:
            break
        time.sleep(0.005)
    assert run.poll() is None, f"the run ended before it could be killed: {run.communicate()}"
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate()
    return journal.read_text().count("\n")


def test_a_killed_client_resumes_and_redoes_only_the_unfinished_batches(tmp_path):
    make_tree(tmp_path / "tree", n=4000)
    want = single_process(tmp_path / "tree", tmp_path / "single.jsonl")
    out, shards = tmp_path / "cluster.jsonl", tmp_path / "cluster.jsonl.shards"
    first = _fitsync("manifest", tmp_path / "tree", f"--output={out}", "--dask=local:2", "--batch-files=10")
    done_before = _kill_once_journalled(first, shards / clusters.JOURNAL)
    assert not out.exists() and 3 <= done_before < 403
    second = _fitsync("manifest", tmp_path / "tree", f"--output={out}", "--dask=local:2", "--batch-files=10",
                      "--resume")
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert f"in 401 batches on the cluster ({done_before} done by an earlier run)" in err
    assert out.read_bytes() == want


def test_a_killed_audit_resumes_and_redoes_only_the_unfinished_batches(tmp_path):
    """audit --manifest --dask --shards: each finished batch's findings are
    kept and journalled; --resume after a killed client takes those and
    checks only the rest, and finds what one process finds."""
    tree, manifest, shards = tmp_path / "tree", tmp_path / "m.jsonl", tmp_path / "shards"
    make_tree(tree, n=4000)
    fitsync.manifest(str(tree), output=str(manifest), fits=False)
    victim = max((tree / "d3").glob("*.bin"), key=lambda p: p.stat().st_size)
    victim.write_bytes(bytes(b ^ 1 for b in victim.read_bytes()))  # corrupt, same size
    alone = fitsync.audit(str(tree), manifest=str(manifest)).to_dict()
    args = ["audit", tree, f"--manifest={manifest}", "--dask=local:2", "--batch-files=10", f"--shards={shards}",
            "--json"]
    done_before = _kill_once_journalled(_fitsync(*args), shards / clusters.JOURNAL)
    second = _fitsync(*args, "--resume", f"--log-file={tmp_path / 'audit.log'}")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 1, err  # the corrupt file
    assert f"{done_before} of 401 batches were taken from {shards}" in (tmp_path / "audit.log").read_text()
    assert json.loads(out)["manifest"] == alone["manifest"]
    assert not shards.exists()  # kept only until the report is made
    refused = _fitsync("audit", tree, f"--manifest={manifest}", "--resume")
    _, refusal = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "--shards=DIR" in refusal


def test_an_sftp_source_on_the_cluster(sshd, home, tmp_path):
    """Each worker opens its own SSH connection and agent (the host's stock
    python3), with its own HOME's keys and known hosts: the workers here are
    started after the client HOME is in place, as on a site where they run
    under the user's account."""
    make_tree(tmp_path / "tree", n=200)
    url = f"sftp://127.0.0.1:{sshd.port}{tmp_path / 'tree'}"
    want = single_process(url, tmp_path / "single.jsonl")
    fitsync.manifest(url, output=str(tmp_path / "cluster.jsonl"), cluster="local:2", batch_files=40)
    assert (tmp_path / "cluster.jsonl").read_bytes() == want


def test_an_http_source_on_the_cluster(client, tmp_path):
    make_tree(tmp_path / "site" / "tree", n=150)
    with HttpFixture(str(tmp_path / "site"), "ranges") as srv:
        url = f"{srv.url}/tree/"
        want = single_process(url, tmp_path / "single.jsonl", fits=False)
        fitsync.manifest(url, output=str(tmp_path / "cluster.jsonl"), cluster=client, batch_files=25, fits=False)
    assert (tmp_path / "cluster.jsonl").read_bytes() == want


def test_bad_cluster_arguments_are_one_line_errors(tmp_path, cli, monkeypatch):
    make_tree(tmp_path / "tree", n=5)
    bad = cli("manifest", tmp_path / "tree", f"--output={tmp_path / 'm.jsonl'}", "--dask=local:zero")
    assert bad.code == 2 and bad.err.strip() == \
        "fitsync: --dask=local:N needs a number of workers of 1 or more, not 'local:zero'"
    fmt = cli("manifest", tmp_path / "tree", f"--output={tmp_path / 'm.txt'}", "--dask=local:1", "--format=b3sum")
    assert fmt.code == 2 and "--format=jsonl" in fmt.err
    no_checksum = cli("compare", tmp_path / "tree", tmp_path / "tree", "--dask=local:1")
    assert no_checksum.code == 2 and no_checksum.err.strip() == \
        "fitsync: --dask hashes the files of both sides: it needs --checksum"
    against = cli("audit", tmp_path / "tree", f"--against={tmp_path / 'tree'}", "--dask=local:1")
    assert against.code == 2 and against.err.strip().startswith("fitsync: --dask checks a copy against a manifest")
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # as where Dask is not installed
    missing = cli("manifest", tmp_path / "tree", f"--output={tmp_path / 'm.jsonl'}", "--dask=local:1")
    assert missing.code == 2 and missing.err.strip() == "fitsync: --dask needs Dask: pip install 'fitsync[dask]'"
