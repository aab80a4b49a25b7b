"""``audit --manifest --dask=ADDRESS``: the files to hash checked on a cluster.

The client pairs the target's listing with the manifest, as a one-process
audit does (missing, extra and size mismatches need no read). The files
left to hash are cut into batches of consecutive paths (engine.cluster:
at most ~5,000 files or 4 GiB) and each worker hashes its batch, with the
FITS checks in the same read under ``fits``, and returns only what it
found: the paths that agree, the corrupt ones with a reason, and the FITS
reports. At most ``window`` batches are in flight. A killed worker's batch
is rerun by Dask; its result arrives once, so nothing is counted twice.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, wait

from fitsync.engine import cluster as clusters
from fitsync.options import RemoteOptions


def check_on_cluster(cluster, root: str, options: RemoteOptions, to_hash: list, want: dict, recorded: dict, *,
                     fits: bool, jobs: int, batch_files=None) -> list:
    """What ``audit_batch`` found in every batch of ``to_hash`` (Entries), in
    batch order. ``want`` maps a path to its manifest BLAKE3, ``recorded``
    to its manifest FITS fields."""
    closer = None
    if isinstance(cluster, str):
        executor, window, closer = clusters.open_executor(cluster)
    else:
        executor, window = clusters.executor_of(cluster)
    run_id = os.urandom(8).hex()
    found: dict = {}
    pending: dict = {}
    listed = sorted(to_hash, key=lambda e: e.path)
    try:
        for batch in clusters.batches(listed, max_files=clusters.batch_size(len(listed), batch_files)):
            while len(pending) >= window:
                _take(wait(pending, return_when=FIRST_COMPLETED).done, pending, found)
            rows = [(path, size, mtime, want[path], recorded[path]) for path, size, mtime in batch.files]
            pending[executor.submit(audit_batch, run_id, root, options, rows, fits, jobs)] = batch.index
        while pending:
            _take(wait(pending, return_when=FIRST_COMPLETED).done, pending, found)
    finally:
        for future in pending:
            future.cancel()
        if closer is not None:
            closer()
    return [found[i] for i in sorted(found)]


def _take(done, pending: dict, found: dict) -> None:
    for future in done:
        found[pending.pop(future)] = future.result()


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
