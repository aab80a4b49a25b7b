"""``audit --manifest`` and ``compare --checksum`` with ``--dask=ADDRESS``:
the files to hash checked on a cluster.

The client pairs the listings (with the manifest, or A with B) as one
process does: missing, extra and size mismatches need no read. The files
left to hash are cut into batches of consecutive paths (engine.cluster: at
most ~5,000 files or 4 GiB), and each worker hashes its batch (for an audit
with ``fits``, the FITS checks share the read; for a compare, both sides)
and returns only what it found: the paths that agree, those that differ
with a reason, the FITS reports. At most ``window`` batches are in flight.
A killed worker's batch is rerun by Dask; its result arrives once, so
nothing is counted twice.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Callable

from fitsync.engine import cluster as clusters
from fitsync.options import RemoteOptions


def map_batches(cluster, entries: list, batch_files, submit: Callable) -> list:
    """Run ``submit(executor, run_id, batch)`` (returning a future) for each
    batch of ``entries`` (path order) on ``cluster``; the futures' results
    in batch order."""
    run_id = os.urandom(8).hex()
    found: dict = {}
    pending: dict = {}
    listed = sorted(entries, key=lambda e: e.path)
    with clusters.executor_for(cluster) as (executor, window):
        try:
            for batch in clusters.batches(listed, max_files=clusters.batch_size(len(listed), batch_files)):
                while len(pending) >= window:
                    _take(wait(pending, return_when=FIRST_COMPLETED).done, pending, found)
                pending[submit(executor, run_id, batch)] = batch.index
            while pending:
                _take(wait(pending, return_when=FIRST_COMPLETED).done, pending, found)
        finally:
            for future in pending:
                future.cancel()
    return [found[i] for i in sorted(found)]


def _take(done, pending: dict, found: dict) -> None:
    for future in done:
        found[pending.pop(future)] = future.result()


# -- audit --------------------------------------------------------------------------

def check_on_cluster(cluster, root: str, options: RemoteOptions, to_hash: list, want: dict, recorded: dict, *,
                     fits: bool, jobs: int, batch_files=None) -> list:
    """What ``audit_batch`` found in every batch of ``to_hash`` (Entries).
    ``want`` maps a path to its manifest BLAKE3, ``recorded`` to its manifest FITS fields."""
    def submit(executor, run_id, batch):
        rows = [(path, size, mtime, want[path], recorded[path]) for path, size, mtime in batch.files]
        return executor.submit(audit_batch, run_id, root, options, rows, fits, jobs)

    return map_batches(cluster, to_hash, batch_files, submit)


def audit_batch(run_id: str, root: str, options: RemoteOptions, rows: list, fits: bool, jobs: int) -> dict:
    """On a worker: hash one batch of (path, size, mtime, manifest BLAKE3,
    manifest FITS fields) and return what agrees and what does not."""
    from fitsync.engine.audit import AuditReport, check_entries
    from fitsync.remotes.base import Entry

    remote = clusters._worker_remote(run_id, root, options)
    entries = [Entry(path, size, mtime) for path, size, mtime, _, _ in rows]
    remote.remember(entries)
    report = AuditReport()
    check_entries(remote, entries, {r[0]: r[3] for r in rows}, {r[0]: r[4] for r in rows}, report,
                  fits=fits, jobs=jobs)
    return {"ok": report.ok, "corrupt": report.corrupt, "fits": report.fits, "fits_problems": report.fits_problems}


# -- compare ------------------------------------------------------------------------

def compare_on_cluster(cluster, roots: tuple, options: RemoteOptions, pairs: list, algo: str, *, jobs: int,
                       batch_files=None) -> list:
    """What ``compare_batch`` found in every batch of ``pairs`` (an Entry of
    A and of B for each path hashed on both sides, with ``algo``)."""
    known = {a.path: (dict(a.hashes), dict(b.hashes)) for a, b in pairs}

    def submit(executor, run_id, batch):
        rows = [(path, size, mtime, *known[path]) for path, size, mtime in batch.files]
        return executor.submit(compare_batch, run_id, roots, options, rows, algo, jobs)

    return map_batches(cluster, [a for a, _ in pairs], batch_files, submit)


def compare_batch(run_id: str, roots: tuple, options: RemoteOptions, rows: list, algo: str, jobs: int) -> dict:
    """On a worker: hash one batch on both sides (digests the listings carry
    are taken as they are) and sort each path into identical, differ or errors."""
    from fitsync.engine.compare import judge_pairs
    from fitsync.remotes.base import Entry

    sides = [clusters._worker_remote(run_id, root, options) for root in roots]
    left = [Entry(path, size, mtime, hashes_a) for path, size, mtime, hashes_a, _ in rows]
    right = [Entry(path, size, mtime, hashes_b) for path, size, mtime, _, hashes_b in rows]
    sides[0].remember(left)
    sides[1].remember(right)
    return judge_pairs(sides[0], sides[1], left, right, algo, jobs)
