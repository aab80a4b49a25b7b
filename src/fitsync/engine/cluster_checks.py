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
nothing is counted twice. With ``Batching.shards`` each batch's result is
kept there (temporary name, then rename) and journalled as it arrives, so
that ``resume`` after a killed client redoes only the unfinished batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from typing import Callable, Optional

from fitsync.engine import cluster as clusters
from fitsync.options import RemoteOptions


log = logging.getLogger("fitsync")


@dataclass(frozen=True)
class Batching:
    """How the files are cut and what is kept of each batch."""

    files: Optional[int] = None  # files per batch (engine.cluster.batch_size)
    shards: Optional[str] = None  # where each finished batch's result and the journal are kept
    resume: bool = False  # take the batches a killed run journalled from ``shards``
    settings: str = ""  # what else the results depend on: another value redoes every batch


def map_batches(cluster, entries: list, batching, submit: Callable) -> list:
    """Run ``submit(executor, run_id, batch)`` (returning a future) for each
    batch of ``entries`` (path order) on ``cluster``; the futures' results
    in batch order. ``batching``: a Batching, or files per batch."""
    if not isinstance(batching, Batching):
        batching = Batching(files=batching)
    run_id = os.urandom(8).hex()
    found: dict = {}
    pending: dict = {}
    listed = sorted(entries, key=lambda e: e.path)
    journal = _journal(batching)
    reused = 0
    with clusters.executor_for(cluster) as (executor, window):
        try:
            for batch in clusters.batches(listed, max_files=clusters.batch_size(len(listed), batching.files)):
                if journal is not None and journal.finished(batch, batching.shards):
                    found[batch.index] = _read_shard(batching.shards, batch.index)
                    reused += 1
                    continue
                while len(pending) >= window:
                    _take(wait(pending, return_when=FIRST_COMPLETED).done, pending, found, journal, batching)
                pending[submit(executor, run_id, batch)] = batch
            while pending:
                _take(wait(pending, return_when=FIRST_COMPLETED).done, pending, found, journal, batching)
        finally:
            for future in pending:
                future.cancel()
            if journal is not None:
                journal.close()
    if journal is not None:
        log.info("%d of %d batches were taken from %s (done by an earlier run)", reused, len(found),
                 batching.shards)
        clusters.remove_shards(batching.shards)
    return [found[i] for i in sorted(found)]


def settings_key(*parts) -> str:
    """A Batching.settings for results that depend on ``parts`` (JSON-able)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def _journal(batching: Batching):
    if batching.shards is None:
        return None
    os.makedirs(batching.shards, exist_ok=True)
    return clusters.Journal(batching.shards, batching.resume, batching.settings)


def _take(done, pending: dict, found: dict, journal, batching: Batching) -> None:
    for future in done:
        batch = pending.pop(future)
        found[batch.index] = result = future.result()
        if journal is not None:  # kept, then journalled: a journalled batch always has its shard
            _write_shard(batching.shards, batch.index, result)
            journal.record(batch)


def _write_shard(shards: str, index: int, result) -> None:
    path = clusters.batch_file(shards, index)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as out:
        json.dump(result, out, ensure_ascii=False)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _read_shard(shards: str, index: int):
    with open(clusters.batch_file(shards, index), encoding="utf-8", errors="surrogateescape") as f:
        return json.load(f)


# -- audit --------------------------------------------------------------------------

def check_on_cluster(cluster, root: str, options: RemoteOptions, to_hash: list, want: dict, recorded: dict, *,
                     fits: bool, jobs: int, batch_files=None) -> list:
    """What ``audit_batch`` found in every batch of ``to_hash`` (Entries).
    ``want`` maps a path to its manifest BLAKE3, ``recorded`` to its manifest FITS fields."""
    def submit(executor, run_id, batch):
        rows = [(path, size, mtime, want[path], recorded[path]) for path, size, mtime in batch.files]
        return executor.submit(audit_batch, run_id, root, options, rows, fits, jobs)

    batching = _with_settings(batch_files, "audit", root, fits, sorted(want.items()))
    return map_batches(cluster, to_hash, batching, submit)


def _with_settings(batch_files, *parts):
    """A Batching whose kept results are taken only by a resume over the same ``parts``."""
    from dataclasses import replace

    if not isinstance(batch_files, Batching):
        return batch_files
    return replace(batch_files, settings=settings_key(*parts)) if batch_files.shards else batch_files


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

    sides = [(a.path, a.size, a.mtime, b.size, b.mtime) for a, b in pairs]
    return map_batches(cluster, [a for a, _ in pairs], _with_settings(batch_files, "compare", roots, algo, sides),
                       submit)


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
