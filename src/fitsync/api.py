"""The public functions: what ``import fitsync`` offers, and what every CLI command calls.

Each takes locations as the CLI does (a path, a URL or ``NAME:path`` of a
configured remote), keyword options named as the CLI's, and returns a
result dataclass (fitsync.results) with ``to_dict()``. Nothing here prints,
exits, or touches the caller's logging; failures raise the typed errors of
``fitsync.errors``, whose ``exit_code`` is what the CLI exits with.
"""

from __future__ import annotations

import os
from typing import IO, TYPE_CHECKING, Any, Iterator, List, Optional, Sequence, Union

from fitsync.errors import NotFound, TransferFailed, UsageError
from fitsync.options import RemoteOptions, Selection
from fitsync.remotes import open_source
from fitsync.remotes.base import Remote
from fitsync.results import AuditResult, ManifestResult, MirrorResult

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.datastore_summary import Summary
    from fitsync.events import ProgressCallback
    from fitsync.engine.compare import CompareReport
    from fitsync.engine.missing import MissingReport

Location = Union[str, "os.PathLike[str]"]

MANIFEST_FORMATS = ("jsonl", "b3sum", "sha256sum", "bagit")
LINK_MODES = ("skip", "links", "unsafe-links", "follow")  # symlinks in a source: rsync's (none), -l, -l --unsafe-links, -L


def _spec(location: Location) -> str:
    if isinstance(location, (str, os.PathLike)):
        return os.fspath(location)
    raise UsageError(f"a location is a path, URL or NAME:path, not {type(location).__name__}")


def _remote_options(given: Optional[RemoteOptions], jobs: Optional[int] = None, retries: Optional[int] = None,
                    verify_key: Optional[str] = None) -> RemoteOptions:
    """The caller's RemoteOptions with the function's own jobs/retries/verify_key filled in."""
    import dataclasses

    options = given or RemoteOptions()
    changes = {name: value for name, value in (("jobs", jobs), ("retries", retries), ("verify_key", verify_key))
               if value is not None and getattr(options, name) is None}
    return dataclasses.replace(options, **changes) if changes else options


def open(location: Location, *, remote_options: Optional[RemoteOptions] = None) -> Remote:  # noqa: A001
    """Open a location as a ``Remote`` (a context manager: ``with fitsync.open(...) as r``).

    ``r.list()`` yields its files (``Entry``: path, size, mtime), ``r.stat(path)``
    one, ``r.open_read(path)`` a binary file object.
    """
    from fitsync.remotes import open_remote

    return open_remote(_spec(location), remote_options)


def mirror(src: Location, dst: Location, *, checksum: bool = False, delete: bool = False, dry_run: bool = False,
           select: Optional[Selection] = None, jobs: int = 2, retries: int = 3, manifest: Optional[Location] = None,
           progress: Optional[ProgressCallback] = None, fits_check: bool = True, extract: bool = False,
           links: str = "skip", bwlimit: Union[str, int, None] = None, max_delete: Optional[int] = None,
           allow_empty_source: bool = False, fsync: bool = False, extract_max: Union[str, int, None] = None,
           verify_key: Optional[str] = None, remote_options: Optional[RemoteOptions] = None,
           raise_on_failure: bool = False, inplace: bool = False,
           whole_file: Optional[bool] = None, cluster: Any = None, batch_files: Optional[int] = None,
           max_connections: Optional[int] = None) -> MirrorResult:
    """Make ``dst`` an exact, verified copy of ``src``, moving only new, changed or corrupt data.

    ``checksum`` compares content even where size and mtime agree; ``delete``
    removes destination files the source lacks (never after a failure);
    ``manifest`` checks the destination against a manifest of the source;
    ``select`` narrows the files (and picks an IACT production); ``progress``
    receives ``fitsync.events``. ``links`` says what becomes of symlinks in a
    local source: "skip" (counted in ``links_skipped``), "links" (copied as
    links, those pointing outside the source skipped), "unsafe-links" (all
    copied as links) or "follow" (their targets copied). ``bwlimit`` caps the
    read rate (bytes per second, or "10M"). ``delete`` refuses a source that
    lists no files unless ``allow_empty_source``, and removes nothing when it
    would remove more than ``max_delete``. ``fsync`` makes each file in a local
    destination durable before its rename. ``extract`` unpacks downloaded tar
    archives, at most ``extract_max`` bytes each (default 100 times the
    archive's size, at least 1 GiB). ``inplace`` writes the changed ranges of a
    local destination's files into the files themselves, under an undo journal
    (rolled back after a crash; see ``recover``). ``whole_file=False`` makes a
    local source's changed files travel as deltas even where copying them whole
    costs less. Each entry of ``result.files`` says how the file was ``built``.
    ``cluster`` (as for ``manifest``) moves the files on a cluster's workers,
    in batches of at most ``batch_files``, with at most ``max_connections``
    connections to a remote location at once (docs/cluster.md).
    Per-file failures are listed in the result;
    with ``raise_on_failure`` they raise ``TransferFailed`` (its ``result``
    attribute holds the result).
    """
    from fitsync.progress import Reporter

    connect = _remote_options(remote_options, jobs, retries, verify_key)
    options = mirror_options(checksum=checksum, delete=delete, dry_run=dry_run, jobs=jobs, retries=retries,
                             manifest=manifest, fits_check=fits_check, select=select, progress=progress,
                             verify_key=connect.verify_key, links=links, bwlimit=bwlimit, max_delete=max_delete,
                             allow_empty_source=allow_empty_source, fsync=fsync, extract_max=extract_max,
                             inplace=inplace, whole_file=whole_file, cluster=cluster, batch_files=batch_files,
                             max_connections=max_connections)
    reporter = Reporter(quiet=True, show_progress=False)  # events go to ``progress``; nothing is printed
    return run_mirror(src, dst, options, connect, select, extract, reporter, raise_on_failure)


def mirror_options(*, checksum: bool, delete: bool, dry_run: bool, jobs: int, retries: int,
                   manifest: Optional[Location], fits_check: bool, select: Optional[Selection],
                   verify_key: Optional[str], progress: Optional[ProgressCallback] = None, links: str = "skip",
                   bwlimit: Union[str, int, None] = None, max_delete: Optional[int] = None,
                   allow_empty_source: bool = False, fsync: bool = False,
                   extract_max: Union[str, int, None] = None, inplace: bool = False,
                   whole_file: Optional[bool] = None, cluster: Any = None, batch_files: Optional[int] = None,
                   max_connections: Optional[int] = None):
    """The engine's MirrorOptions for ``mirror``'s arguments (the CLI builds them here too)."""
    from fitsync.engine.mirror import MirrorOptions
    from fitsync.units import parse_size

    if jobs < 1 or retries < 0:
        raise UsageError("jobs must be at least 1 and retries 0 or more")
    if links not in LINK_MODES:
        raise UsageError(f"links={links!r}: choose one of {', '.join(LINK_MODES)}")
    rate = parse_size(str(bwlimit), "--bwlimit") if bwlimit is not None else None
    if rate is not None and rate < 1024:
        raise UsageError(f"--bwlimit={bwlimit} is below 1 KiB/s; give a rate such as 500k or 10M")
    if cluster is not None and rate is not None:
        raise UsageError("--bwlimit cannot be shared among a cluster's workers; leave it out with --dask")
    if (batch_files is not None and batch_files < 1) or (max_connections is not None and max_connections < 1):
        raise UsageError("batch_files and max_connections must be at least 1")
    return MirrorOptions(checksum=checksum, delete=delete, dry_run=dry_run, jobs=jobs, retries=retries,
                         cluster=cluster, batch_files=batch_files, max_connections=max_connections,
                         manifest=_loaded_manifest(manifest, verify_key), fits_check=fits_check,
                         selection=select.matcher() if select else None, progress=progress, links=links,
                         bwlimit=rate,
                         max_delete=max_delete, allow_empty_source=allow_empty_source, fsync=fsync,
                         inplace=inplace, whole_file=whole_file,
                         extract_max=parse_size(str(extract_max), "--extract-max") if extract_max else None)


def _loaded_manifest(manifest: Optional[Location], verify_key: Optional[str]):
    """The source's manifest, read (and its signature checked) only when one is given."""
    if manifest is None:
        return None
    from fitsync.formats.manifest import load_manifest

    return load_manifest(_spec(manifest), verify_key)


def run_mirror(src: Location, dst: Location, options, connect: RemoteOptions, select: Optional[Selection],
               extract: bool, reporter, raise_on_failure: bool = False) -> MirrorResult:
    """``mirror`` with its options built and a Reporter of the caller's (the
    CLI's itemized lines and progress bar)."""
    from fitsync.engine.mirror import Mirror
    from fitsync.remotes import Capability

    if options.cluster is not None:
        from fitsync.engine import cluster as clusters

        if not isinstance(options.cluster, clusters.OpenCluster):
            asked = options.cluster
            with clusters.executor_for(asked) as opened:  # open once: the listing's stats, then the batches
                options.cluster = clusters.OpenCluster(*opened)
                try:
                    return run_mirror(src, dst, options, connect, select, extract, reporter, raise_on_failure)
                finally:
                    options.cluster = asked
    source, source_spec = _source_tree(_spec(src), options, connect)
    with source, open(dst, remote_options=connect) as target:
        if options.cluster is not None:
            from fitsync.engine.cluster import StatOnCluster
            from fitsync.engine.cluster_mirror import Locations

            options.locations = Locations(source_spec, _spec(dst), connect)  # each worker opens both itself
            source.stat_listed = StatOnCluster(options.cluster, source_spec, connect, options.max_connections)
        if extract and Capability.LOCAL not in target.capabilities:
            raise UsageError(f"--extract unpacks archives in a local destination; {_spec(dst)} is not one")
        if select is not None and select.production:
            result = _mirror_production(source, target, _spec(src), select, connect, options, reporter)
        else:
            if extract:
                from fitsync.extract import extracted_paths

                # What earlier runs unpacked is not in the source; delete must keep it.
                options.protected = set(extracted_paths(target.local_root()))
            result = Mirror(source, target, options, reporter).run()
            if extract and not options.dry_run:
                _extract(target, result, options.extract_max)
    if raise_on_failure and result.files_failed:
        error = TransferFailed(f"{result.files_failed} files failed; the first: "
                               f"{result.failures[0]['path']}: {result.failures[0]['reason']}")
        error.result = result  # type: ignore[attr-defined]
        raise error
    return result


def _extract(target: Remote, result: MirrorResult, max_bytes: Optional[int]) -> None:
    """--extract after a mirror: unpack its archives, bounded; a refused one is a failure of the run."""
    from fitsync.errors import EXIT_FAILED
    from fitsync.extract import extract_archives, extracted_paths, is_archive

    listed = [e.path for e in target.list()]
    mirrored = set(listed) - extracted_paths(target.local_root())
    failures: List[dict] = []
    extract_archives(target.local_root(), [p for p in listed if is_archive(p)], mirrored, max_bytes, failures)
    for failure in failures:
        result.files_failed += 1
        result.failures.append(failure)
        result.exit_code = EXIT_FAILED


def _source_tree(spec: str, options, connect: RemoteOptions) -> tuple:
    """(the opened tree to mirror from, its spec): ``spec`` itself, or, when
    it names a single file, its directory with only that file selected
    (rsync's single-file copy). The first remote opened is the one used when
    it is a tree: an SSH source is not connected to twice."""
    source = open_source(spec, connect)
    if source.exists():
        return source, spec
    parent, name = _parent_and_name(spec)
    if parent is None or not name:
        return source, spec  # neither a tree nor a file: the mirror says it does not exist
    try:
        with open(parent, remote_options=connect) as directory:
            directory.stat(name)
    except (NotFound, UsageError):
        return source, spec
    source.close()
    if options.delete:
        raise UsageError(f"--delete needs a directory as SRC; {spec} is a single file")
    options.only_paths = {name} if options.only_paths is None else options.only_paths & {name}
    return open_source(parent, connect), parent


def _parent_and_name(spec: str) -> tuple:
    """(parent location, last name) of a location, or (None, None) if it has none."""
    head, sep, name = spec.rstrip("/").rpartition("/")
    if sep:
        at_top = head.endswith(":") or ("://" in head and head.count("/") == 2)  # host:/f, sftp://host/f
        return (head + "/" if at_top else head or "/"), name
    prefix, colon, rest = spec.partition(":")
    if colon and rest and "/" not in prefix:
        return prefix + ":", rest  # host:file, NAME:file
    return (".", spec) if not colon else (None, None)


def _mirror_production(source: Remote, target: Remote, store_spec: str, select: Selection, connect: RemoteOptions,
                       options, reporter) -> MirrorResult:
    """An IACT production: its files, then the subset index tables (datastore.mirror_production)."""
    from fitsync.datastore import mirror_production
    from fitsync.engine.mirror import Mirror

    results: List[MirrorResult] = []

    def mirror_paths(paths):
        options.only_paths = set(paths)
        results.append(Mirror(source, target, options, reporter).run())
        return results[-1]

    code = mirror_production(source, target, store_spec, select, connect, options.dry_run, mirror_paths)
    result = results[-1] if results else MirrorResult(dry_run=options.dry_run)
    result.exit_code = max(code, result.exit_code)
    return result


def manifest(root: Location, *, output: Union[Location, IO[str], None] = None, blocks: bool = False, format: str = "jsonl",
             sign: Optional[str] = None, select: Optional[Selection] = None, jobs: int = 2, fits: bool = True,
             remote_options: Optional[RemoteOptions] = None, progress: Optional[ProgressCallback] = None,
             cluster: Any = None, shards: Optional[str] = None, resume: bool = False,
             batch_files: Optional[int] = None, also: Sequence[str] = ()) -> ManifestResult:
    """Hash every file under ``root`` (BLAKE3; sizes, mtimes, FITS fields).

    With ``output`` (a path, written atomically, or a text stream), write a
    manifest in ``format``: jsonl (docs/manifest.md), b3sum, sha256sum, or
    bagit (``output`` is then the bag directory, by default ROOT's parent).
    ``sign`` signs a jsonl file with an Ed25519 key file. Without ``output``,
    the result is an iterator over the entries, hashed as it is read.
    ``blocks`` adds block signatures (release manifests for delta downloads).
    ``also`` adds more digests to each jsonl line, from the same read:
    "adler32" and "md5" (what Rucio and FTS check replicas with), "sha256".

    ``cluster`` hashes on a cluster (docs/cluster.md): a
    ``dask.distributed.Client``, any ``concurrent.futures.Executor`` whose
    workers import fitsync, or an address as ``--dask`` takes it
    ("local:4", "tcp://host:8786", a scheduler file). Batches of files are
    written as shards to ``shards`` (default: OUTPUT.shards) and merged in
    order; ``resume`` skips the batches a killed earlier run finished;
    ``batch_files`` caps a batch (default 5,000, fewer in trees of under
    320,000 files; a batch also stops at 4 GiB). The
    manifest is byte for byte the one a single process writes.
    """
    from fitsync.engine import manifest as manifests

    if format not in MANIFEST_FORMATS:
        raise UsageError(f"unknown manifest format {format!r}; choose one of {', '.join(MANIFEST_FORMATS)}")
    stream = output if output is not None and hasattr(output, "write") else None
    path = None if output is None or stream is not None else _spec(output)  # type: ignore[arg-type]
    if sign and (format != "jsonl" or path is None):
        raise UsageError("--sign needs --format=jsonl and --output=FILE")
    from fitsync.hashes import parse_also

    extras = parse_also(also)
    if extras and format != "jsonl":
        raise UsageError(f"--also adds digests to jsonl lines; --format={format} has no place for them")
    connect = _remote_options(remote_options, jobs)
    result = ManifestResult(root=_spec(root), format=format, output=path)
    if output is None and format != "bagit":
        result.entries = _stream_entries(root, result, blocks, fits, select, jobs, connect, progress, extras)
        return result
    if cluster is not None and output is None:
        raise UsageError("a manifest on a cluster needs an output (a path or a stream)")
    manifests.write(result, stream, blocks=blocks, fits=fits, selection=select, jobs=jobs, options=connect,
                    sign=sign, progress=progress, cluster=cluster, shards=shards, resume=resume,
                    batch_files=batch_files, also=extras)
    return result


def _stream_entries(root: Location, result: ManifestResult, blocks: bool, fits: bool, select: Optional[Selection],
                    jobs: int, connect: RemoteOptions, progress: Optional[ProgressCallback],
                    also: tuple = ()) -> Iterator:
    """Entries of ``root`` in path order, hashed a batch at a time as the listing comes."""
    from fitsync.engine import manifest as manifests

    with open(root, remote_options=connect) as remote:
        listed = manifests.iter_listed_files(remote, result, select)
        for entries in manifests.hashed_batches(remote, listed, result, progress, blocks=blocks, fits=fits, jobs=jobs,
                                                also=also):
            yield from entries


def audit(target: Location, *, manifest: Optional[Location] = None, fits: bool = False,
          against: Optional[Location] = None, select: Optional[Selection] = None, jobs: int = 2,
          verify_key: Optional[str] = None, remote_options: Optional[RemoteOptions] = None,
          progress: Optional[ProgressCallback] = None, cluster: Any = None,
          batch_files: Optional[int] = None, shards: Optional[str] = None, resume: bool = False) -> AuditResult:
    """Check a copy: against a manifest (default: ``target``'s own
    fitsync-manifest.jsonl, if any), against another copy (``against``, by
    content), and/or each FITS file by its own structure and checksums (``fits``).
    ``cluster`` (as for ``manifest``) hashes the files of a manifest audit on
    a cluster's workers, in batches of at most ``batch_files``; it finds
    exactly what one process finds. With ``shards`` (a directory) each
    finished batch's findings are kept there, and ``resume`` after a killed
    run takes them instead of checking those batches again.
    """
    from fitsync.engine.audit import audit_location

    connect = _remote_options(remote_options, jobs, verify_key=verify_key)
    return audit_location(_spec(target), manifest=None if manifest is None else _spec(manifest), fits=fits,
                        against=None if against is None else _spec(against), selection=select, jobs=jobs,
                        options=connect, progress=progress, cluster=cluster,
                        batch_files=_batching(cluster, batch_files, shards, resume))


def _batching(cluster, batch_files: Optional[int], shards: Optional[str], resume: bool):
    """``batch_files`` as the cluster checks take it: with ``shards``, a
    Batching that keeps each batch's findings for ``resume``."""
    if shards is None:
        if resume:
            raise UsageError("--resume takes the batches an earlier run kept: give its --shards=DIR")
        return batch_files
    if cluster is None:
        raise UsageError("--shards keeps the batches of a run on a cluster: give --dask too")
    from fitsync.engine.cluster_checks import Batching

    return Batching(files=batch_files, shards=_spec(shards), resume=resume)


def compare(a: Location, b: Location, *, checksum: bool = False, select: Optional[Selection] = None, jobs: int = 2,
            report: Optional[Location] = None, remote_options: Optional[RemoteOptions] = None,
            progress: Optional[ProgressCallback] = None, cluster: Any = None,
            batch_files: Optional[int] = None, shards: Optional[str] = None, resume: bool = False) -> CompareReport:
    """List files only on ``a``, only on ``b``, differing and identical
    (``CompareReport``; ``agree`` is True when there is no difference). With
    ``checksum`` contents are compared, else sizes and mtimes. ``report``
    writes rclone-style combined lines (+ - * = !) to that file. ``cluster``
    (as for ``manifest``) hashes the ``checksum`` pairs on a cluster's
    workers; ``shards`` and ``resume`` as for ``audit``."""
    from fitsync.engine.compare import compare_trees
    from fitsync.formats.manifest import write_atomically

    if cluster is not None and not checksum:
        raise UsageError("--dask hashes the files of both sides: it needs --checksum")
    batching = _batching(cluster, batch_files, shards, resume)
    connect = _remote_options(remote_options, jobs)
    with open_source(_spec(a), connect) as first, open_source(_spec(b), connect) as second:
        for side, name in ((first, a), (second, b)):
            if not side.exists():
                raise NotFound(f"{_spec(name)} does not exist; check the path")
        result = compare_trees(first, second, checksum=checksum, selection=select.matcher() if select else None,
                               jobs=jobs, progress=progress, cluster=cluster, roots=(_spec(a), _spec(b)),
                               options=connect, batch_files=batching)
    if report is not None:
        lines = result.combined_lines()
        write_atomically(_spec(report), lambda out: out.writelines(line + "\n" for line in lines))
    return result


def datasets(store: Location, *, allow_root: Sequence[str] = (), remote_options: Optional[RemoteOptions] = None
             ) -> List[Summary]:
    """The productions of an IACT data store (its master.json, or bare index
    tables), each a ``fitsync.datastore_summary.Summary``: observations, events,
    livetime, files and bytes, and the files its index lists but the store lacks."""
    from fitsync.datastore import read_master
    from fitsync.datastore_locator import Locator
    from fitsync.datastore_summary import summarize

    spec = _spec(store)
    connect = remote_options or RemoteOptions()
    locator = Locator(spec, allow_root, connect)
    try:
        with open(spec, remote_options=connect) as remote:
            if not remote.exists():
                raise NotFound(f"{spec} does not exist; check the path")
            return [summarize(remote, production, locator) for production in read_master(remote)]
    finally:
        locator.close()


def missing(src: Location, *, expect: str, select: Selection, output: Optional[Location] = None,
            report: Optional[Location] = None, remote_options: Optional[RemoteOptions] = None) -> MissingReport:
    """Which keys (tiles, fields, nights) lack any expected file
    (``MissingReport``). ``select`` needs a template or profile naming the
    fields; its ``where`` lists give the keys. ``expect`` is
    ``field=v1,v2`` or ``field=@file``. ``output`` receives the keys that
    lack files, one per line; ``report`` every key and what it lacks."""
    from fitsync.engine.missing import find_missing_keys

    return find_missing_keys(_spec(src), expect, select, output=None if output is None else _spec(output),
                             report=None if report is None else _spec(report),
                             options=remote_options or RemoteOptions())


def recover(dst: Location) -> List[dict]:
    """Finish the updates in place (``mirror(inplace=True)``) that a crash or
    kill interrupted in the local destination ``dst``: each file goes back to
    its old version, or, where every new byte was on disk and verifies, is
    kept as the new one. Returns ``[{"path", "outcome"}]``; empty when
    nothing was interrupted. Every mirror into ``dst`` does this first."""
    from fitsync.engine.inplace_update import recover as recover_journals
    from fitsync.lock import DirectoryLock
    from fitsync.remotes.base import Capability

    target = open(dst)
    if Capability.STAGED not in target.capabilities:
        raise UsageError(f"{_spec(dst)}: recover works on local destinations (updates in place are local only)")
    if not os.path.isdir(target.local_root()):
        raise NotFound(f"{target.local_root()} is not a directory; check the path")
    lock = DirectoryLock(target.state_dir())
    lock.acquire()
    try:
        return [{"path": path, "outcome": outcome} for path, outcome in recover_journals(target)]
    finally:
        lock.release()
        target.close()
