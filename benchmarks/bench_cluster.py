"""Manifests on a Dask cluster: what batching costs, and how workers scale on a far source.

Run by hand:  PYTHONPATH=src python3 benchmarks/bench_cluster.py [--rounds=5] [--files=20000]
    [--only=local|latency|mirror-latency|memory] [--entries=1000000,10000000]

- local: FILES files of 8 KiB. `fitsync manifest` in one process, and with
  `--dask=ADDRESS` on an already running LocalCluster of 2 worker processes
  (its start-up, ~1.5 s, is not what batching costs), beside `b3sum` of the
  same files; interleaved (A B C A B C), the files read into the page cache
  before each timed run, medians of --rounds.
- latency: 320 files of 4 KiB on the HTTP test server with 20 ms added to
  every request, hashed through `fitsync.manifest(cluster=client)` on
  LocalClusters of 1, 2, 4 and 8 single-threaded workers (one file at a time
  per worker); throughput relative to 1 worker, medians of 3.
- mirror-latency: the same files copied (`fitsync.mirror(cluster=client)`,
  each file verified and renamed into place) into a fresh directory.

- memory: the peak RSS of one process holding the client, the scheduler and
  two worker threads (a LocalCluster with processes=False) while a cluster
  manifest of --entries synthetic files streams through it (a generator-backed
  remote: names made on the fly, each "digest" the BLAKE3 of its name), and
  the single-process manifest of the smallest size beside it. Each size runs
  in a fresh process.

Results go to stdout and to benchmarks/work/bench_cluster.json.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from timing import installed_env, warm  # noqa: E402

LATENCY = 0.02


def make_files(root: Path, n: int, size: int) -> None:
    for i in range(n):
        path = root / f"d{i % 100:02d}" / f"f{i:06d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def timed(argv: list, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed: {proc.stderr[-2000:]}")
    return elapsed


def bench_local(work: Path, n: int, rounds: int) -> dict:
    from dask.distributed import Client, LocalCluster

    tree = work / "tree"
    make_files(tree, n, 8192)
    env = dict(installed_env(), SOURCE_DATE_EPOCH="1700000000")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    fitsync = [sys.executable, "-m", "fitsync", "manifest", str(tree), "--quiet"]
    tools = {
        "fitsync manifest": fitsync + [f"--output={work / 'single.jsonl'}"],
        "fitsync manifest --dask (2 workers)": fitsync + [f"--output={work / 'cluster.jsonl'}",
                                                          f"--dask={cluster.scheduler_address}"],
        "b3sum": ["sh", "-c", f"find {tree} -type f -print0 | xargs -0 b3sum > /dev/null"],
    }
    times: dict = {name: [] for name in tools}
    try:
        for _ in range(rounds):
            for name, argv in tools.items():
                warm(str(tree))
                times[name].append(timed(argv, env))
    finally:
        client.close()
        cluster.close()
    if (work / "single.jsonl").read_bytes() != (work / "cluster.jsonl").read_bytes():
        raise RuntimeError("the cluster manifest differs from the single-process one")
    medians = {name: statistics.median(t) for name, t in times.items()}
    single = medians["fitsync manifest"]
    print(f"\nlocal: {n} files of 8 KiB, medians of {rounds}")
    for name, secs in medians.items():
        print(f"  {name:40s} {secs:7.3f} s   {n / secs:9.0f} files/s   throughput {single / secs:5.2f}x single")
    return {"files": n, "seconds": medians, "cluster_vs_single": round(single / medians[
        "fitsync manifest --dask (2 workers)"], 3), "b3sum_vs_single": round(single / medians["b3sum"], 3)}


def bench_latency(work: Path, rounds: int, what: str = "manifest", published: bool = False) -> dict:
    """``what``: "manifest" (hash the files where they are) or "mirror" (copy them here, verified).
    ``published``: the server publishes a fitsync manifest, so the listing is one GET, not a HEAD a file."""
    import fitsync
    from dask.distributed import Client, LocalCluster

    site = work / f"site-{what}-{published}"
    make_files(site / "tree", 320, 4096)
    for d in (site / "tree").iterdir():  # one directory: one index page, listed once by the client
        for f in d.iterdir():
            f.rename(site / "tree" / f.name)
        d.rmdir()
    if published:
        fitsync.manifest(str(site / "tree"), output=str(site / "tree" / "fitsync-manifest.jsonl"), fits=False)
    results: dict = {}
    # The server runs in a process of its own: in this one its threads would
    # share a GIL with the client's event loop.
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); from http_fixture import "
         "HttpFixture; s = HttpFixture(sys.argv[2], 'ranges', latency=float(sys.argv[3])); print(s.url, flush=True); "
         "time.sleep(1e9)", str(HERE.parent / "tests"), str(site), str(LATENCY)],
        stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip() + "/tree/"
        listing = statistics.median(_listing_time(url) for _ in range(rounds))
        for workers in (1, 2, 4, 8):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
            client = Client(cluster)
            try:
                runs = []
                for _ in range(rounds):
                    copy = work / f"copy-{workers}"
                    shutil.rmtree(copy, ignore_errors=True)
                    t0 = time.perf_counter()
                    if what == "manifest":
                        fitsync.manifest(url, output=str(work / f"http-{workers}.jsonl"), cluster=client, fits=False,
                                         jobs=1)
                    else:
                        result = fitsync.mirror(url, str(copy), cluster=client, jobs=1)
                        if result.files_new < 320 or result.exit_code:
                            raise RuntimeError(f"the cluster mirror copied {result.files_new} of 320 files")
                    runs.append(time.perf_counter() - t0)
                results[workers] = statistics.median(runs)
            finally:
                client.close()
                cluster.close()
    finally:
        server.kill()
    how = ("the published manifest, one GET" if published else
           "the index page, then a HEAD per file: made by the workers, at most 8 at once over the cluster")
    print(f"\n{what} latency: 320 files over HTTP, {LATENCY * 1000:.0f} ms a request, medians of {rounds}; "
          f"listing: {how} (by one process, 4 HEADs at a time: {listing:.2f} s)")
    base = results[1]
    for workers, secs in results.items():
        print(f"  {workers} workers: {secs:6.2f} s   speed-up {base / secs:5.2f}x")
    return {"seconds": results, "listing_seconds_one_process": listing,
            "speedup": {w: round(base / s, 2) for w, s in results.items()}}


def _listing_time(url: str) -> float:
    from fitsync.remotes import open_remote

    t0 = time.perf_counter()
    with open_remote(url) as remote:
        list(remote.list())
    return time.perf_counter() - t0


def memory_child(entries: int, mode: str, work: Path) -> int:
    """One run in this (fresh) process; prints the peak RSS in MiB."""
    import resource

    import fitsync
    from fitsync import remotes

    remotes.register_scheme("synthetic", "synthetic:Backend")  # benchmarks/synthetic.py
    t0 = time.perf_counter()
    if mode == "cluster":
        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            fitsync.manifest(f"synthetic://{entries}", output=str(work / "m.jsonl"), cluster=client, fits=False)
    else:
        fitsync.manifest(f"synthetic://{entries}", output=str(work / "m.jsonl"), fits=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"entries": entries, "mode": mode, "peak_rss_mib": round(peak, 1), "seconds": round(seconds, 1)}))
    return 0


def bench_memory(work: Path, sizes: list) -> dict:
    runs = [(sizes[0], "single")] + [(n, "cluster") for n in sizes]
    out = []
    for entries, mode in runs:
        proc = subprocess.run([sys.executable, __file__, "--child", f"--entries={entries}", f"--mode={mode}",
                               f"--work={work}"], env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                   [str(HERE), str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print("\nmemory: peak RSS of client + scheduler + workers in one process")
    for row in out:
        print(f"  {row['mode']:8s} {row['entries']:>11,d} entries   {row['peak_rss_mib']:8.1f} MiB   {row['seconds']:7.1f} s")
    cluster = [r for r in out if r["mode"] == "cluster"]
    if len(cluster) > 1:
        print(f"  growth {cluster[0]['entries']:,d} -> {cluster[-1]['entries']:,d}: "
              f"{cluster[-1]['peak_rss_mib'] / cluster[0]['peak_rss_mib']:.2f}x")
    return {"runs": out}


def main(argv: list) -> int:
    opts = dict(a.lstrip("-").split("=", 1) for a in argv if "=" in a)
    if "--child" in argv:
        return memory_child(int(opts["entries"]), opts["mode"], Path(opts["work"]))
    rounds = int(opts.get("rounds", 5))
    out: dict = {}
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir=HERE / "work" if (HERE / "work").is_dir() else None))
    try:
        if opts.get("only") in (None, "local"):
            out["local"] = bench_local(work, int(opts.get("files", 20000)), rounds)
        if opts.get("only") in (None, "latency"):
            out["latency"] = bench_latency(work, min(rounds, 3))
        if opts.get("only") in (None, "mirror-latency"):
            out["mirror_latency"] = bench_latency(work, min(rounds, 3), "mirror")
            out["mirror_latency_published"] = bench_latency(work, min(rounds, 3), "mirror", published=True)
        if opts.get("only") in (None, "memory"):
            out["memory"] = bench_memory(work, [int(n) for n in opts.get("entries", "1000000,10000000").split(",")])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (HERE / "work").mkdir(exist_ok=True)
    (HERE / "work" / "bench_cluster.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
