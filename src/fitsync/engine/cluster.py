"""Manifests on a cluster: batches of files hashed by workers, written as shards, merged in order.

The client lists the tree and cuts it into batches of consecutive paths (at
most BATCH_FILES files or BATCH_BYTES bytes; a larger file is a batch of its
own). Each batch is one task on a ``concurrent.futures.Executor`` (a Dask
``Client.get_executor()``, or any other executor whose workers import
fitsync): the worker opens the root (once per worker process), hashes the
batch, writes its manifest lines to ``SHARDS/batch-NNNNNN.jsonl``
atomically, and returns a small summary. At most WINDOW_PER_THREAD tasks per
worker thread are in flight, so the client and the scheduler hold a window,
not the tree. The client journals each finished batch (``SHARDS/journal``);
a rerun with ``resume`` skips the batches the journal and their shards vouch
for. The merge writes the header and concatenates the shards in order: the
result is byte for byte the single-process manifest (with the same
``created`` time; SOURCE_DATE_EPOCH fixes it for both).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Executor, wait
from dataclasses import dataclass, field
from functools import cached_property
from typing import IO, Iterator, NamedTuple, Optional

from fitsync.errors import UsageError
from fitsync.options import RemoteOptions

BATCH_FILES = 5000
BATCH_BYTES = 4 << 30
MIN_BATCHES = 64  # a small tree is cut finer, so that every worker of a cluster has batches
WINDOW_PER_THREAD = 3
DEFAULT_CONNECTIONS = 8  # requests at once to one remote location from the whole cluster
JOURNAL = "journal"


@dataclass(frozen=True)
class Batch:
    """Consecutive files of the listing: ``files`` are (path, size, mtime)."""

    index: int
    files: tuple

    @cached_property
    def key(self) -> str:
        """What the batch covers, for the journal: a rerun over a changed listing redoes it."""
        text = json.dumps(self.files, separators=(",", ":"))
        return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()

    def write_list(self, shard_dir: str) -> str:
        """The batch's files, one JSON array a line, for the worker to read:
        a task then carries a file name, not thousands of entries (Dask keeps
        recent messages, tasks included, in logs of 1,000 each)."""
        path = batch_file(shard_dir, self.index, ".list")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as out:
            for item in self.files:
                out.write(json.dumps(item, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        return path


def batch_file(shard_dir: str, index: int, suffix: str = ".jsonl") -> str:
    """A batch's shard (.jsonl) or file list (.list) in ``shard_dir``."""
    return os.path.join(shard_dir, f"batch-{index:06d}{suffix}")


def read_list(path: str) -> list:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [tuple(json.loads(line)) for line in f]


@dataclass
class ShardSummary:
    """What a worker returns for a batch: counts and errors, never the lines."""

    index: int
    files: int = 0
    bytes: int = 0
    errors: list = field(default_factory=list)


def batches(listed, max_files: int = BATCH_FILES, max_bytes: int = BATCH_BYTES) -> Iterator[Batch]:
    """``listed`` (Entries in path order) cut into batches, lazily."""
    current: list = []
    size = 0
    index = 0
    for entry in listed:
        if current and (len(current) >= max_files or size + entry.size > max_bytes):
            yield Batch(index, tuple(current))
            index += 1
            current, size = [], 0
        current.append((entry.path, entry.size, entry.mtime))
        size += entry.size
    if current:
        yield Batch(index, tuple(current))


# -- on a worker ----------------------------------------------------------------------

_REMOTES: dict = {}  # per worker process: the open roots (and their connections) of the current run
_REMOTES_LOCK = threading.Lock()


def _worker_remote(run_id: str, root: str, options: RemoteOptions, source: bool = False):
    """The root, opened once per run on this worker: its connections serve all
    the run's batches here, and a later run (over a tree that may have
    changed) starts afresh. ``source``: opened as a mirror's source is (a
    release manifest's server is listed and served from its manifest)."""
    key = (run_id, root, options, source)
    with _REMOTES_LOCK:  # a worker with several threads runs several batches at once
        if key not in _REMOTES:
            from fitsync.remotes import open_remote, open_source

            for old in [k for k in _REMOTES if k[0] != run_id]:
                with contextlib.suppress(Exception):  # a connection already gone
                    _REMOTES.pop(old).close()
            _REMOTES[key] = (open_source if source else open_remote)(root, options)
        return _REMOTES[key]


def hash_shard(run_id: str, root: str, options: RemoteOptions, index: int, list_path: str, shard_dir: str,
               blocks: bool, fits: bool, jobs: int, also: tuple = ()) -> ShardSummary:
    """Hash one batch (its files listed in ``list_path``) on a worker and write
    its manifest lines as a shard (temporary name, then rename: a rerun
    replaces it, never appends)."""
    from fitsync.engine.entries import build_entries
    from fitsync.formats.manifest import jsonl_body
    from fitsync.remotes.base import Entry

    remote = _worker_remote(run_id, root, options)
    listed = [Entry(path, size, mtime) for path, size, mtime in read_list(list_path)]
    remote.remember(listed)
    entries, errors = build_entries(remote, listed, blocks=blocks, fits_fields=fits, jobs=jobs, also=also)
    final = batch_file(shard_dir, index)
    tmp = f"{final}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            out.write(jsonl_body(entries))
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return ShardSummary(index, len(entries), sum(e.size for e in entries),
                        [{"path": p, "reason": r} for p, r in sorted(errors.items())])


# -- on the client ----------------------------------------------------------------------

class Journal:
    """Finished batches, one line each (index and key), appended and flushed as they finish."""

    def __init__(self, shard_dir: str, resume: bool, settings: str = ""):
        self.path = os.path.join(shard_dir, JOURNAL)
        self.done: dict = {}
        self._settings = settings  # what a shard holds besides the defaults: a resume with others redoes it
        if resume and os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[0].isdigit():
                        self.done[int(parts[0])] = parts[1]
        self._out = open(self.path, "a" if resume else "w", encoding="utf-8")

    def finished(self, batch: Batch, shard_dir: str) -> bool:
        return (self.done.get(batch.index) == self._key(batch)
                and os.path.exists(batch_file(shard_dir, batch.index)))

    def record(self, batch: Batch) -> None:
        self._out.write(f"{batch.index} {self._key(batch)}\n")
        self._out.flush()
        os.fsync(self._out.fileno())  # a killed client must not lose what it journalled

    def _key(self, batch: Batch) -> str:
        if not self._settings:
            return batch.key
        return hashlib.blake2b((self._settings + batch.key).encode(), digest_size=16).hexdigest()

    def close(self) -> None:
        self._out.close()


@dataclass
class ClusterRun:
    """What a cluster manifest did: batches done now, batches a resume skipped."""

    batches: int = 0
    skipped: int = 0
    summaries: dict = field(default_factory=dict)


def batch_size(n_files: int, asked: Optional[int] = None) -> int:
    """Files per batch: as asked, else BATCH_FILES, or fewer for a tree of
    under MIN_BATCHES * BATCH_FILES files (a function of the listing alone,
    so a resume on a cluster of another size finds the same batches)."""
    if asked is not None:
        return asked
    return min(BATCH_FILES, max(1, -(-n_files // MIN_BATCHES)))


def _sized(listed: Iterator, asked: Optional[int]) -> tuple:
    """(the same entries, files per batch): a listing that ends within
    MIN_BATCHES * BATCH_FILES entries is counted first (batch_size); a longer
    one is never held whole, and goes in batches of BATCH_FILES."""
    if asked is not None:
        return listed, asked
    head = list(itertools.islice(listed, MIN_BATCHES * BATCH_FILES))
    size = batch_size(len(head)) if len(head) < MIN_BATCHES * BATCH_FILES else BATCH_FILES
    return itertools.chain(head, listed), size


def run_batches(executor: Executor, window: int, root: str, options: RemoteOptions, listed, shard_dir: str,
                *, blocks: bool, fits: bool, jobs: int, resume: bool, on_batch=None,
                max_files: Optional[int] = None, also: tuple = ()) -> ClusterRun:
    """Hash every batch of ``listed`` (an iterable of Entries in path order,
    consumed as it comes) on ``executor``, ``window`` tasks at most in flight."""
    listed, max_files = _sized(iter(listed), max_files)
    os.makedirs(shard_dir, exist_ok=True)
    settings = "" if (not blocks and fits and not also) else json.dumps([blocks, fits, list(also)])
    journal = Journal(shard_dir, resume, settings)
    run = ClusterRun()
    run_id = os.urandom(8).hex()
    pending: dict = {}
    try:
        for batch in batches(listed, max_files=max_files):
            if journal.finished(batch, shard_dir):
                run.skipped += 1
                run.summaries[batch.index] = _summary_from_shard(batch, shard_dir)
                continue
            while len(pending) >= window:
                _collect(wait(pending, return_when=FIRST_COMPLETED).done, pending, journal, run, on_batch)
            future = executor.submit(hash_shard, run_id, root, options, batch.index, batch.write_list(shard_dir),
                                     shard_dir, blocks, fits, jobs, also)
            pending[future] = batch
        while pending:
            _collect(wait(pending, return_when=FIRST_COMPLETED).done, pending, journal, run, on_batch)
    finally:
        for future in pending:
            future.cancel()
        journal.close()
    return run


def _collect(done, pending: dict, journal: Journal, run: ClusterRun, on_batch) -> None:
    for future in done:
        batch = pending.pop(future)
        summary = future.result()  # a task that failed for good fails the run here
        if not summary.errors:  # a batch with failed files is redone by a resume
            journal.record(batch)
        run.batches += 1
        run.summaries[batch.index] = summary
        if on_batch:
            on_batch(batch, summary)


def _summary_from_shard(batch: Batch, shard_dir: str) -> ShardSummary:
    """A skipped batch's counts, from its shard (errors are not kept: a resume redoes a batch that had any)."""
    files = size = 0
    with open(batch_file(shard_dir, batch.index), encoding="utf-8") as f:
        for line in f:
            files += 1
            size += json.loads(line)["size"]
    return ShardSummary(batch.index, files, size)


def merge(out: IO[str], run: ClusterRun, shard_dir: str, blocks: bool) -> None:
    """The header, then every shard in batch order: the bytes the single-process
    writer gives (totals from the summaries, in the header or on a trailer)."""
    from fitsync.formats.manifest import header_line, streamed_header_line, totals_in_header, trailer_line

    summaries = [run.summaries[i] for i in sorted(run.summaries)]
    files, size = sum(s.files for s in summaries), sum(s.bytes for s in summaries)
    leading = totals_in_header(files, blocks)
    out.write(header_line(files, size, blocks) if leading else streamed_header_line(blocks))
    for summary in summaries:
        with open(batch_file(shard_dir, summary.index), encoding="utf-8") as f:
            for piece in iter(lambda: f.read(1 << 20), ""):
                out.write(piece)
    if not leading:
        out.write(trailer_line(files, size))


# -- executors ---------------------------------------------------------------------------

def open_executor(address: str):
    """(executor, window, closer) for ``--dask=ADDRESS``: ``local:N`` (a
    LocalCluster of N worker processes), a scheduler file (as dask-jobqueue
    and dask-mpi write it), or a scheduler address (tcp://host:8786)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--dask needs Dask: pip install 'fitsync[dask]'") from None
    if address.startswith("local:"):
        try:
            workers = int(address[len("local:"):])
        except ValueError:
            workers = 0
        if workers < 1:
            raise UsageError(f"--dask=local:N needs a number of workers of 1 or more, not {address!r}")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
        return executor_of(client) + (lambda: (client.close(), cluster.close()),)
    if os.path.isfile(address):
        client = Client(scheduler_file=address)
    else:
        client = Client(address)
    return executor_of(client) + (client.close,)


class OpenCluster(NamedTuple):
    """An executor opened once for a whole run (its listing, then its batches)."""

    executor: Executor
    window: int


@contextlib.contextmanager
def executor_for(cluster):
    """(executor, window) for ``cluster`` (an address as --dask takes it, a
    Dask Client, an Executor or an OpenCluster) while the block runs; a
    cluster started here for an address is closed after it."""
    if isinstance(cluster, OpenCluster):
        yield cluster
        return
    if not isinstance(cluster, str):
        yield executor_of(cluster)
        return
    executor, window, closer = open_executor(cluster)
    try:
        yield executor, window
    finally:
        closer()


def executor_of(cluster) -> tuple:
    """(executor, window) for a Dask Client or any concurrent.futures Executor."""
    if hasattr(cluster, "get_executor") and hasattr(cluster, "nthreads"):
        threads = sum(cluster.nthreads().values()) or 1
        return cluster.get_executor(), WINDOW_PER_THREAD * threads
    if isinstance(cluster, Executor):
        return cluster, WINDOW_PER_THREAD * (os.cpu_count() or 1)
    raise UsageError(f"cluster must be a dask.distributed.Client or a concurrent.futures.Executor, not {cluster!r}")


def remove_shards(shard_dir: str) -> None:
    """Drop the shards and the journal of a run whose output is written, and
    the temporaries of a killed run that was writing one (its resume wrote
    them again); the directory too, when nothing else is in it."""
    for name in os.listdir(shard_dir):
        if name == JOURNAL or (name.startswith("batch-") and name.endswith((".jsonl", ".list", ".tmp"))):
            os.unlink(os.path.join(shard_dir, name))
    with contextlib.suppress(OSError):  # something else is in it
        os.rmdir(shard_dir)


def default_shard_dir(output: Optional[str]) -> str:
    if not output:
        raise UsageError("a manifest on a cluster needs --output=FILE (its shards go beside it) or --shards=DIR")
    return output + ".shards"


# -- listings whose files are stat'ed one by one --------------------------------------

class StatOnCluster:
    """``Remote.stat_listed`` on a cluster: the stats a listing needs one file
    at a time (HTTP index pages: a HEAD each) are made by the workers, in as
    many batches as the cluster has threads, instead of a few at a time by
    the client, whose listing would otherwise be the serial part of the run."""

    def __init__(self, opened: OpenCluster, root: str, options: RemoteOptions, max_connections: Optional[int] = None):
        self.opened, self.root, self.options = opened, root, options
        # Requests at once to the server from the whole cluster: a server caps
        # its connections (and each worker keeps one open between batches).
        self.max_connections = max_connections or DEFAULT_CONNECTIONS

    def __call__(self, paths: list) -> list:
        from fitsync.engine.cluster_checks import map_batches
        from fitsync.remotes.base import Entry

        threads = max(1, self.opened.window // WINDOW_PER_THREAD)
        per_batch = min(BATCH_FILES, max(1, -(-len(paths) // threads)))
        at_once = max(1, self.max_connections // threads)

        def submit(executor, run_id, batch):
            return executor.submit(stat_batch, run_id, self.root, self.options, [p for p, _, _ in batch.files],
                                   at_once)

        names = [Entry(path, 0, 0.0) for path in paths]
        found = {row[0]: Entry(*row) for rows in map_batches(self.opened, names, per_batch, submit) for row in rows}
        return [found[path] for path in paths]


def stat_batch(run_id: str, root: str, options: RemoteOptions, paths: list, at_once: int) -> list:
    """On a worker: (path, size, mtime) of each of ``paths``, ``at_once`` at a time."""
    remote = _worker_remote(run_id, root, options)
    return [(e.path, e.size, e.mtime) for e in remote.stat_many(paths, at_once)]
