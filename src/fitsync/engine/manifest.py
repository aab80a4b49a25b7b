"""Making a manifest of a tree: list, hash, write in one of four formats, sign.

``fitsync.manifest`` (api.py) and ``fitsync manifest`` both come here; the
formats themselves are in fitsync.formats.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import IO, Iterator, Optional

from fitsync.errors import NotFound, UnsafePath, UsageError
from fitsync.engine.entries import build_entries
from fitsync.formats.manifest import (DEFAULT_NAME, JsonlWriter, header_totals_limit, write_atomically, write_b3sum,
                                      write_hashlist, write_jsonl)
from fitsync.options import RemoteOptions, Selection
from fitsync.remotes.base import Capability, Entry, Remote
from fitsync.results import ManifestResult

log = logging.getLogger("fitsync")

# A listing longer than a header's totals may wait for (header_totals_limit) is hashed and written in batches of this much.
STREAM_BATCH_FILES = 4096
STREAM_BATCH_BYTES = 4 << 30


def iter_listed_files(remote: Remote, result: ManifestResult, select: Optional[Selection]) -> Iterator:
    """The files of ``remote`` a manifest lists (selected, never the manifest
    itself), as the listing comes: a writer holds a batch, not the tree."""
    if not remote.exists():
        raise NotFound(f"{result.root} does not exist; check the path")
    selection = select.matcher() if select else None
    skip = _own_files(remote, result.output)
    for entry in _listing(remote, selection, result):
        if entry.path in skip or (selection is not None and not selection.matches(entry)):
            continue
        if _is_utf8(entry.path):
            yield entry
        else:  # a name the tree holds but a manifest cannot record is an error of the run
            result.errors.append({"path": entry.path,
                                  "reason": "the name is not UTF-8, which a manifest records; rename the file"})
    result.errors.extend({"path": p, "reason": r} for p, r in remote.rejected_names)


def _listing(remote: Remote, selection, result: ManifestResult) -> Iterator:
    """The tree's listing; with --files-from on a local tree, only the listed
    files, looked up one by one in path order instead of crawling the tree
    (a night's new files in an archive of 10^8, or a GPFS policy scan's
    output). A listed path that is not there is left out, as the filter
    would leave it; a listed directory (which selects all below it) makes
    it a crawl after all."""
    files = getattr(selection, "files", None)
    if files is None or Capability.LOCAL not in remote.capabilities:
        return iter(remote.list())
    looked_up = _looked_up(remote, files, result)
    return iter(remote.list()) if looked_up is None else iter(looked_up)


def _looked_up(remote: Remote, files, result: ManifestResult) -> Optional[list]:
    """Entries of the listed paths, or None when one is a directory."""
    import stat as stat_mod

    from fitsync.remotes.local import STATE_DIR

    found = []
    for path in sorted(files):
        if path == STATE_DIR or path.startswith(STATE_DIR + "/"):
            continue  # fitsync's own state, never part of a tree
        try:
            full = remote.path_of(path)
            st = os.lstat(full)
        except (FileNotFoundError, NotADirectoryError, UnsafePath):
            log.info("%s: listed in --files-from but not in %s", path, remote.url)
            continue
        except OSError as exc:
            result.errors.append({"path": path, "reason": f"cannot read its attributes: {exc.strerror}"})
            continue
        if stat_mod.S_ISDIR(st.st_mode):
            return None
        if stat_mod.S_ISREG(st.st_mode):
            found.append(Entry(path, st.st_size, st.st_mtime_ns / 1e9))
    return found


def _is_utf8(path: str) -> bool:
    """Whether a listed name (bytes that are not UTF-8 arrive as surrogates) is UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def hash_batch(remote: Remote, batch: list, result: ManifestResult, *, blocks: bool, fits: bool, jobs: int,
               on_done=None, also: tuple = ()) -> list:
    """Manifest entries of ``batch`` (sorted by path); failures go to ``result.errors``."""
    entries, errors = build_entries(remote, batch, blocks=blocks, fits_fields=fits, jobs=jobs, on_done=on_done,
                                    also=also)
    _count(result, entries, errors)
    return entries


def _count(result: ManifestResult, entries: list, errors: dict) -> None:
    result.files += len(entries)
    result.bytes += sum(e.size for e in entries)
    result.errors.extend({"path": p, "reason": r} for p, r in sorted(errors.items()))


def write(result: ManifestResult, stream: Optional[IO[str]], *, blocks: bool, fits: bool,
          selection: Optional[Selection], jobs: int, options: RemoteOptions, sign: Optional[str],
          progress=None, cluster=None, shards: Optional[str] = None, resume: bool = False,
          batch_files: Optional[int] = None, also: tuple = ()) -> None:
    """Hash ``result.root`` and write its manifest to ``result.output`` (a
    path) or ``stream``, in ``result.format``; with ``cluster`` (a Dask
    Client, an Executor, or a --dask address) on its workers, batch by batch."""
    from fitsync.remotes import open_remote

    with open_remote(result.root, options) as root:
        if cluster is not None:
            from fitsync.engine import cluster as clusters

            with clusters.executor_for(cluster) as opened:
                opened = clusters.OpenCluster(*opened)
                root.stat_listed = clusters.StatOnCluster(opened, result.root, options)  # HEADs on the workers
                _write_on_cluster(result, stream, iter_listed_files(root, result, selection), opened, shards,
                                  resume, blocks=blocks, fits=fits, jobs=jobs, options=options,
                                  batch_files=batch_files, also=also)
            _sign(result, sign)
            return
        listed = iter_listed_files(root, result, selection)
        limit = header_totals_limit(blocks and result.format == "jsonl")
        head = list(itertools.islice(listed, limit + 1))
        if len(head) > limit and result.format != "bagit":
            stream_out = _streamed(root, itertools.chain(head, listed), result, progress, blocks=blocks,
                                   fits=fits, jobs=jobs, also=also)
            _emit(result.output, stream, stream_out)
            if result.format == "jsonl":
                _sign(result, sign)
            return
        on_done = None
        if progress is not None:
            from fitsync.events import hashing_progress

            on_done = hashing_progress(progress, head)
        if result.format == "bagit":
            _write_bagit(root, head, result, jobs, on_done)
            return
        if result.format == "sha256sum":
            entries, digests = _sha256_batch(root, head, result, jobs, on_done=on_done)
            _emit(result.output, stream, lambda out: write_hashlist(out, entries, digests))
            return
        entries = hash_batch(root, head, result, blocks=blocks, fits=fits, jobs=jobs, on_done=on_done, also=also)
    if result.format == "b3sum":
        _emit(result.output, stream, lambda out: write_b3sum(out, entries))
        return
    _emit(result.output, stream, lambda out: write_jsonl(out, entries, blocks=blocks))
    _sign(result, sign)


def _sha256_batch(root: Remote, batch: list, result: ManifestResult, jobs: int, on_done=None) -> tuple[list, dict]:
    from fitsync.scan import digest_entries

    digests, errors = digest_entries(root, batch, algo="sha256", jobs=jobs, on_done=on_done)
    entries = [e for e in batch if e.path in digests]
    _count(result, entries, errors)
    return entries, digests


def _streamed(root: Remote, listed: Iterator, result: ManifestResult, progress, **hashing):
    """A ``write(out)`` that hashes a long listing batch by batch and writes
    each batch's lines before the next is read: memory holds one batch, not
    the tree (a JSONL manifest's totals then trail: formats.manifest.JsonlWriter)."""

    def write(out) -> None:
        if result.format == "sha256sum":
            for batch in hashed_batches(root, listed, result, progress, hash_one=_sha256_batch, jobs=hashing["jobs"]):
                write_hashlist(out, *batch)
            return
        writer = JsonlWriter(out, hashing["blocks"]) if result.format == "jsonl" else None
        for entries in hashed_batches(root, listed, result, progress, **hashing):
            if writer is None:
                write_b3sum(out, entries)
            else:
                writer.add(entries)
        if writer is not None:
            writer.close()
    return write


def hashed_batches(root: Remote, listed: Iterator, result: ManifestResult, progress, *, hash_one=None,
                   **hashing) -> Iterator:
    """``hash_one(root, batch, result, on_done=..., **hashing)`` (default:
    manifest entries) of each batch of ``listed`` in turn; ``progress`` hears
    of each batch as it is taken (MoreListed), then of each file hashed."""
    from fitsync.events import MoreListed, file_done_reporter

    for batch in _batches(listed):
        on_done = None
        if progress is not None:
            progress(MoreListed("scan", len(batch), sum(e.size for e in batch)))
            on_done = file_done_reporter(progress)
        yield (hash_one or hash_batch)(root, batch, result, on_done=on_done, **hashing)


def _batches(listed: Iterator) -> Iterator[list]:
    """Consecutive runs of the listing: STREAM_BATCH_FILES files or
    STREAM_BATCH_BYTES bytes, whichever comes first, so that every core has
    work in each and no batch holds much."""
    batch, size = [], 0
    for entry in listed:
        batch.append(entry)
        size += entry.size
        if len(batch) >= STREAM_BATCH_FILES or size >= STREAM_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _sign(result: ManifestResult, sign: Optional[str]) -> None:
    if sign and result.output:
        from fitsync.signing import sign_manifest_file

        sign_manifest_file(result.output, sign)
        result.signed = True


def _write_on_cluster(result: ManifestResult, stream, listed: Iterator, cluster, shards: Optional[str], resume: bool,
                      *, blocks: bool, fits: bool, jobs: int, options: RemoteOptions,
                      batch_files: Optional[int], also: tuple = ()) -> None:
    """The JSONL manifest made batch by batch on a cluster (fitsync.engine.cluster)."""
    from fitsync.engine import cluster as clusters

    if result.format != "jsonl":
        raise UsageError("a manifest on a cluster is written in --format=jsonl")
    shard_dir = shards or clusters.default_shard_dir(result.output)
    with clusters.executor_for(cluster) as (executor, window):
        run = clusters.run_batches(executor, window, result.root, options, listed, shard_dir, blocks=blocks,
                                   fits=fits, jobs=jobs, resume=resume, max_files=batch_files, also=also)
    for summary in (run.summaries[i] for i in sorted(run.summaries)):
        result.files += summary.files
        result.bytes += summary.bytes
        result.errors.extend(summary.errors)
    result.batches, result.batches_skipped = run.batches, run.skipped
    _emit(result.output, stream, lambda out: clusters.merge(out, run, shard_dir, blocks))
    if not result.errors:  # kept after failures: a resume redoes only the batches that had any
        clusters.remove_shards(shard_dir)


def _own_files(root: Remote, output: Optional[str]) -> set:
    """A manifest never lists itself (nor its signature)."""
    skip = {DEFAULT_NAME, DEFAULT_NAME + ".sig"}
    local_root = root.local_root()
    if output and local_root:
        rel = os.path.relpath(os.path.abspath(output), local_root)
        if not rel.startswith(".."):
            skip.update({rel.replace(os.sep, "/"), rel.replace(os.sep, "/") + ".sig"})
    return skip


def _emit(path: Optional[str], stream: Optional[IO[str]], write) -> None:
    if path:
        write_atomically(path, write)
    elif stream is not None:
        write(stream)


def _write_bagit(root: Remote, listed: list, result: ManifestResult, jobs: int, on_done) -> None:
    """BagIt 1.0 tag files for a bag whose payload directory is ROOT (named data/)."""
    from fitsync.formats.bagit import write_bag_tags
    from fitsync.remotes.base import Capability
    from fitsync.scan import digest_entries

    if Capability.LOCAL not in root.capabilities:
        raise UsageError(f"--format=bagit needs a local ROOT (the bag's data/ directory), not {result.root}")
    digests, errors = digest_entries(root, listed, algo="sha512", jobs=jobs, on_done=on_done)
    entries = [e for e in listed if e.path in digests]
    _count(result, entries, errors)
    result.output = result.output or os.path.dirname(root.local_root())
    write_bag_tags(result.output, root.local_root(), entries, digests)
