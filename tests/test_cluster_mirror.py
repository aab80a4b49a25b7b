"""Mirrors on a real Dask LocalCluster (worker processes): from the HTTP
fixture and from the stock SSH host, the destination equals a single
process's, byte for byte and mtime for mtime; deletes wait for every batch;
a worker killed mid-run loses no file; and the installed CLI does the same."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import blake3

import fitsync
from conftest import WorkerKiller, write_tree
from http_fixture import HttpFixture
from sshd_fixture import home, sshd  # noqa: F401  (fixtures)

FITSYNC = str(Path(sys.executable).with_name("fitsync"))


def fits_bytes(rng: random.Random, n: int) -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    1",
             f"NAXIS1  = {n:>20}", "END"]
    header = b"".join(c.ljust(80).encode() for c in cards)
    header += b" " * (-len(header) % 2880)
    return header + rng.randbytes(n) + b"\0" * (-n % 2880)


def make_pair(src: Path, dst: Path, n: int = 120, seed: int = 3) -> None:
    """A source tree and an older destination: some files missing, some
    changed (deltas), some stale (for --delete), the rest equal."""
    rng = random.Random(seed)
    files, old = {}, {}
    for i in range(n):
        name = f"night{i % 4}/run{i:04d}.fits" if i % 3 else f"night{i % 4}/notes{i:04d}.txt"
        data = fits_bytes(rng, rng.choice((2000, 30_000, 400_000))) if name.endswith(".fits") else rng.randbytes(500)
        files[name] = data
        if i % 5 == 1:
            changed = bytearray(data)
            changed[len(changed) // 2] ^= 0xFF
            old[name] = bytes(changed)
        elif i % 5 != 2:
            old[name] = data
    write_tree(src, files)
    write_tree(dst, {**old, "stale/gone.txt": b"stale", "night0/stale.fits": b"stale"}, mtime=1_600_000_000.0)


def snapshot(root: Path) -> dict:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == ".fitsync" or path.is_dir():
            continue
        st = path.stat()
        out[str(rel)] = (blake3.blake3(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns, oct(st.st_mode))
    return out


def both_ways(source: str, tmp_path: Path, cluster, **kw):
    """(single-process result, cluster result): the same mirror into two copies of the old destination."""
    import shutil

    shutil.copytree(tmp_path / "dst", tmp_path / "dst-cluster", copy_function=shutil.copy2)
    single = fitsync.mirror(source, str(tmp_path / "dst"), delete=True, **kw)
    spread = fitsync.mirror(source, str(tmp_path / "dst-cluster"), delete=True, cluster=cluster, batch_files=15, **kw)
    return single, spread


COUNTS = ("files_new", "files_updated", "files_repaired", "files_deleted", "files_failed", "exit_code")


def test_a_cluster_mirror_from_http_equals_one_process(client, tmp_path):
    make_pair(tmp_path / "site" / "tree", tmp_path / "dst")
    with HttpFixture(str(tmp_path / "site"), "ranges") as srv:
        single, spread = both_ways(f"{srv.url}/tree/", tmp_path, client)
    assert [getattr(spread, k) for k in COUNTS] == [getattr(single, k) for k in COUNTS]
    assert single.files_new and single.files_updated and single.files_deleted == 2 and single.exit_code == 0
    assert snapshot(tmp_path / "dst-cluster") == snapshot(tmp_path / "dst")
    assert sorted(a.path for a in spread.files) == sorted(a.path for a in single.files)


def test_a_cluster_mirror_from_a_stock_ssh_host_equals_one_process(sshd, home, tmp_path):
    """Each worker opens its own SSH connection and agent (the host's stock python3)."""
    make_pair(tmp_path / "tree", tmp_path / "dst", n=60)
    url = f"sftp://127.0.0.1:{sshd.port}{tmp_path / 'tree'}"
    single, spread = both_ways(url, tmp_path, "local:2")
    assert [getattr(spread, k) for k in COUNTS] == [getattr(single, k) for k in COUNTS]
    assert single.files_updated and single.bytes_reused  # deltas against the stock host
    assert snapshot(tmp_path / "dst-cluster") == snapshot(tmp_path / "dst")


def test_deletes_wait_for_every_batch(client, tmp_path):
    """A file that fails on a worker (it vanished from the source after the
    plan) keeps every delete from happening, as in one process."""
    from fitsync.events import Totals

    make_pair(tmp_path / "src", tmp_path / "dst", n=40)
    victim = tmp_path / "src" / "night2" / "run0002.fits"

    def vanish_once_planned(event):
        if isinstance(event, Totals) and event.phase == "transfer":
            victim.unlink()

    result = fitsync.mirror(str(tmp_path / "src"), str(tmp_path / "dst"), delete=True, cluster=client,
                            batch_files=5, progress=vanish_once_planned, retries=0)
    assert result.files_failed == 1 and result.exit_code == 3
    assert result.failures[0]["path"] == "night2/run0002.fits"
    assert (tmp_path / "dst" / "stale" / "gone.txt").exists() and result.files_deleted == 0


def test_a_killed_worker_loses_no_file(client, tmp_path):
    make_pair(tmp_path / "src", tmp_path / "dst", n=400)
    dst = tmp_path / "dst"
    before = len(list(dst.rglob("*.fits")))
    with WorkerKiller(client, lambda: len(list(dst.rglob("*.fits"))) >= before + 20) as killer:
        result = fitsync.mirror(str(tmp_path / "src"), str(dst), delete=True, cluster=client, batch_files=10)
    assert killer.killed.is_set(), "the run ended before a worker could be killed"
    assert result.exit_code == 0 and result.files_failed == 0
    assert {k: v[:2] for k, v in snapshot(dst).items()} == {k: v[:2] for k, v in snapshot(tmp_path / "src").items()}
    client.wait_for_workers(2, timeout=60)


def test_the_mirror_command_on_a_local_cluster(tmp_path):
    make_pair(tmp_path / "src", tmp_path / "dst", n=50)
    run = subprocess.run([FITSYNC, "mirror", tmp_path / "src", tmp_path / "dst", "--delete", "--dask=local:2",
                          "--batch-files=8", "--itemize"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "*deleting   stale/gone.txt" in run.stdout and ">f+++++++++ night" in run.stdout
    assert {k: v[:3] for k, v in snapshot(tmp_path / "dst").items()} == \
        {k: v[:3] for k, v in snapshot(tmp_path / "src").items()}
    bad = subprocess.run([FITSYNC, "mirror", tmp_path / "src", tmp_path / "d2", "--dask=local:1", "--bwlimit=1M"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--bwlimit cannot be shared among a cluster's workers" in bad.stderr


def test_an_index_page_listing_is_stated_by_the_workers(client, tmp_path, monkeypatch):
    """A server without a manifest is listed from its index pages and a HEAD
    a file: on a cluster the workers make the HEADs, not the client (whose
    listing would otherwise be the serial part of the run)."""
    from fitsync.remotes import http

    def no_head_here(self, path):
        raise AssertionError(f"the client made a HEAD for {path}")

    make_pair(tmp_path / "site" / "tree", tmp_path / "dst", n=45)
    monkeypatch.setattr(http.HttpRemote, "_head_entry", no_head_here)  # this process only, not the workers
    with HttpFixture(str(tmp_path / "site"), "ranges") as srv:
        result = fitsync.mirror(f"{srv.url}/tree/", str(tmp_path / "dst"), delete=True, cluster=client)
        made = fitsync.manifest(f"{srv.url}/tree/", output=str(tmp_path / "m.jsonl"), cluster=client, fits=False)
    assert result.exit_code == 0 and result.files_new and result.files_updated
    assert {k: v[:3] for k, v in snapshot(tmp_path / "dst").items()} == \
        {k: v[:3] for k, v in snapshot(tmp_path / "site" / "tree").items()}
    assert made.files == 45


def test_a_cluster_push_to_a_stock_ssh_host_equals_one_process(sshd, home, tmp_path):
    """The other direction: the workers push (deltas patched by the host's
    agent) while the client holds the destination's lock."""
    import shutil

    make_pair(tmp_path / "src", tmp_path / "dst", n=40)
    shutil.copytree(tmp_path / "dst", tmp_path / "dst-cluster", copy_function=shutil.copy2)
    single = fitsync.mirror(str(tmp_path / "src"), f"sftp://127.0.0.1:{sshd.port}{tmp_path / 'dst'}", delete=True)
    spread = fitsync.mirror(str(tmp_path / "src"), f"sftp://127.0.0.1:{sshd.port}{tmp_path / 'dst-cluster'}",
                            delete=True, cluster="local:2", batch_files=8)
    assert [getattr(spread, k) for k in COUNTS] == [getattr(single, k) for k in COUNTS]
    assert single.files_updated and single.bytes_reused and single.files_deleted == 2
    assert {k: v[:3] for k, v in snapshot(tmp_path / "dst-cluster").items()} == \
        {k: v[:3] for k, v in snapshot(tmp_path / "dst").items()}
