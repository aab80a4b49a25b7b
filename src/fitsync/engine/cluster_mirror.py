"""``mirror --dask=ADDRESS``: a mirror's transfers on a cluster's workers.

The client does what only one process may do: it takes the destination's
lock, lists both sides, plans, and afterwards deletes (only when every batch
succeeded, from the plan) and reports. The files to move are cut into
batches of consecutive paths (engine.cluster: at most ~5,000 files or
4 GiB), at most ``window`` batches in flight. Each worker opens the two
locations once per run and keeps its own connections (SSH agents, HTTP
pools, Dropbox clients); it moves its batch with the same per-file code as a
single process (Mirror.transfer_with_retries: verified, retried, resumable)
and returns only its MirrorResult. Where either side is reached over a
network, a ``distributed.Semaphore`` caps the batches moving at once, so that
the connections to one server stay within ``max_connections``. A worker
killed mid-batch has its batch rerun by Dask: files it had finished are
found unchanged or resumed from their partial data, never counted twice.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from fitsync.engine import cluster as clusters
from fitsync.engine.cluster_checks import map_batches
from fitsync.engine.plan import Action, Item
from fitsync.options import RemoteOptions
from fitsync.paths import shown
from fitsync.remotes.base import Capability

log = logging.getLogger("fitsync")


@dataclass(frozen=True)
class Locations:
    """What a worker needs to open both sides itself."""

    src: str
    dst: str
    options: RemoteOptions


def transfer_on_cluster(mirror, transfers: list[Item]) -> None:
    """Move ``transfers`` on ``mirror.options.cluster`` and merge what each
    batch did into ``mirror.result``, as if this process had moved them."""
    options = mirror.options
    by_path = {item.path: item for item in transfers}
    worker_options = _for_workers(options)
    networked = not all(Capability.LOCAL in r.capabilities for r in (mirror.src, mirror.dst))
    leases = max(1, (options.max_connections or clusters.DEFAULT_CONNECTIONS) // max(1, options.jobs))

    def submit(executor, run_id, batch):
        items = [by_path[path] for path, _, _ in batch.files]
        cap = (f"fitsync-{run_id}", leases) if networked and _is_dask(executor) else None
        return executor.submit(mirror_batch, run_id, options.locations, worker_options, items, cap)

    for done in map_batches(options.cluster, [item.src for item in transfers], options.batch_files, submit):
        _merge(mirror, done, by_path)


def _for_workers(options):
    """The options a worker's Mirror runs with: no cluster (it moves its own
    batch), no callbacks of the client's, nothing needed only to plan."""
    worker = copy.copy(options)
    worker.cluster = worker.progress = worker.manifest = worker.selection = None
    return worker


def _is_dask(executor) -> bool:
    return type(executor).__module__.startswith("distributed")


def _merge(mirror, done: tuple, by_path: dict) -> None:
    result, aborted = done
    mine = mirror.result
    for name in ("files_new", "files_updated", "files_repaired", "files_failed", "files_incomplete",
                 "bytes_transferred", "bytes_reused"):
        setattr(mine, name, getattr(mine, name) + getattr(result, name))
    mine.failures.extend(result.failures)
    mine.incomplete.extend(result.incomplete)
    mine.files.extend(result.files)
    for action in result.files:
        _report(mirror, action, by_path[action.path])
    if aborted is not None and mirror.aborted is None:
        mirror.aborted = aborted


def _report(mirror, action, item: Item) -> None:
    if action.action == "failed":
        log.error("%s: %s", shown(action.path), action.error)
    elif action.action != Action.INCOMPLETE.value:
        mirror.reporter.item(item, built=action.built)
    if mirror.progress is not None:
        from fitsync.events import FileFinished

        mirror.progress(FileFinished(action.path, action.action, action.bytes_moved, action.bytes_reused,
                                     error=action.error))


# -- on a worker --------------------------------------------------------------------

def mirror_batch(run_id: str, locations: Locations, options, items: list[Item], cap) -> tuple:
    """Move one batch with a Mirror of this worker's own; (its MirrorResult,
    the error that should end the whole run or None)."""
    from fitsync.engine.mirror import Mirror
    from fitsync.progress import Reporter

    src = clusters._worker_remote(run_id, locations.src, locations.options, source=True)
    dst = clusters._worker_remote(run_id, locations.dst, locations.options)
    src.remember([item.src for item in items])  # sizes the client listed: no HEAD (or stat) again here
    worker = Mirror(src, dst, options, Reporter(quiet=True, show_progress=False))
    worker.configure_remotes()  # what Mirror.run does first in one process
    worker.prepare_destination_for_transfers(items)
    if cap is None:
        worker.transfer_all(items)
    else:
        from distributed import Semaphore

        with Semaphore(max_leases=cap[1], name=cap[0]):
            worker.transfer_all(items)
    return worker.result, worker.aborted

