"""Make DST an exact, verified copy of SRC, moving only new, changed or corrupt data.

Usage:
  fitsync mirror SRC DST [--checksum] [--delete] [--dry-run] [--itemize] [--manifest=FILE]
                         [--jobs=N] [--retries=N] [--log-file=FILE] [--json] [--quiet] [--progress]
                         [--no-fits-check] [--include=PAT]... [--exclude=PAT]... [--include-from=FILE]...
                         [--exclude-from=FILE]... [--files-from=FILE] [--since=WHEN] [--max-age=DURATION]
                         [--min-age=DURATION] [--max-size=SIZE] [--min-size=SIZE] [--date=DAY] [--template=T]
                         [--profile=NAME] [--where=EXPR]... [--production=NAME] [--runlist=FILE] [--keep-local]
                         [--allow-root=DIR]... [--extract] [--extract-max=SIZE] [--links] [--copy-links] [--unsafe-links]
                         [--bwlimit=RATE] [--max-delete=N] [--allow-empty-source] [--fsync] [--inplace]
                         [--no-whole-file] [--dask=ADDRESS] [--batch-files=N] [--max-connections=N]
                         [--accept-new-host-key]
                         [--ca-bundle=FILE] [--allow-password-in-url]
                         [--dropbox-config=FILE] [--verify-key=PUBKEY] [--timeout=SECONDS] [--verbose]
  fitsync mirror --help

SRC's contents are mirrored into DST whether or not SRC ends in '/' (rclone's
rule: 'mirror data backup' fills backup/, never backup/data/). SRC may also
be a single file, which is mirrored into the directory DST.

Options:
  --allow-password-in-url  Accept https://user:password@host/ (every local user can read it).
  -c, --checksum         Compare content even when size and mtime agree (bytes side
                         by side for two local trees, digests otherwise); a
                         destination copy whose content differs is repaired.
  --delete               Delete destination files absent from the source (never
                         after a failed transfer; never all of them because the
                         source lists nothing, unless --allow-empty-source).
  --max-delete=N         With --delete: delete nothing when more than N files would go.
  --allow-empty-source   With --delete: let a source that lists no files empty DST.
  --fsync                Sync each file to disk before it is renamed into place, and
                         its directory after (local destinations; survives power loss).
  --inplace              Write the changed ranges of a local destination's files
                         into the files themselves (no second copy), each range's
                         old bytes first saved in an undo journal: after a crash
                         the next run, or fitsync recover, rolls the file back.
                         Readers may see a mix of versions during the update.
  --no-whole-file        Update changed files from a local source as deltas too
                         (by default they are copied whole unless the destination
                         can share the old copy's blocks, as rsync does locally).
  --dask=ADDRESS         Move the files on a Dask cluster's workers: local:N,
                         tcp://HOST:PORT or a scheduler file (docs/cluster.md).
  --batch-files=N        Files per batch on a cluster (default 5000, or 1/64 of fewer).
  --max-connections=N    On a cluster: connections to a remote location at once,
                         over all workers (default 8).
  -n, --dry-run          Print what a real run would do; change nothing.
  -i, --itemize          One line per changed file in rsync's --itemize-changes
                         format (>f+++++++++ new, >f.st...... updated, >fc........
                         repaired, *deleting); -ii lists unchanged files too.
                         An updated file's line ends with how it was built:
                         (cloned), (in place), (rewritten) or (kernel copy);
                         a new file that went on after the bytes an
                         interrupted run kept ends with (resumed).
                         Alias: --itemize-changes.
  --manifest=FILE        Verify destination files against this manifest of the
                         source; any mismatch is corruption to repair.
  -j N, --jobs=N         Files transferred and hashed at once [default: 2].
                         Alias: --transfers.
  --retries=N            Retries per file for transient failures [default: 3].
  --log-file=FILE        Append a timestamped log to FILE: the command line
                         (secrets masked), start, every file, summary, end.
  --json                 Print a JSON summary on stdout at the end.
  -q, --quiet            Print nothing but errors.
  -P, --progress         Show the progress bar even when stderr is not a terminal.
  --no-fits-check        Do not skip source FITS files whose structure is incomplete.
  --include=PAT          Include paths matching PAT (rsync rules; first match wins).
  --exclude=PAT          Exclude paths matching PAT.
  --include-from=FILE    Include patterns from FILE, one per line (# comments).
  --exclude-from=FILE    Exclude patterns from FILE, one per line (# comments).
  --files-from=FILE      Only the paths listed in FILE (one per line, # comments).
  --since=WHEN           Only files modified since WHEN (2026-11-01, 30d).
  --max-age=DURATION     Only files younger than DURATION (30d, 12h).
  --min-age=DURATION     Only files older than DURATION (1h: not still being written).
  --max-size=SIZE        Only files of at most SIZE (500M, 2GiB; 1.5GB is 1000-based).
  --min-size=SIZE        Only files of at least SIZE.
  --date=DAY             Only files of one day (YYYY-MM-DD).
  --template=T           Name the fields of a path, e.g. '{yyyy}/{mmdd}/{name}'.
  --profile=NAME         A saved template profile.
  --where=EXPR           Select by template field: field=v1,v2 or field=@file.
  --production=NAME      IACT data store: copy this production's files.
  --runlist=FILE         IACT data store: only these OBS_IDs (one per line).
  --keep-local           IACT data store: local index rows win when merging.
  --allow-root=DIR       IACT data store: allow index paths inside DIR.
  --extract              Unpack downloaded .tar, .tgz and .tar.gz archives (each at
                         most 100 times its size, at least 1 GiB; 100,000 members).
  --extract-max=SIZE     The most one archive may unpack to, e.g. 500G.
  --links                Copy symlinks as symlinks (local trees); links that point
                         outside SRC are skipped and reported.
  --copy-links           Copy the files and directories symlinks point to.
  --unsafe-links         With --links, also copy links that point outside SRC.
  --bwlimit=RATE         Read at most RATE bytes per second from the source, e.g.
                         10M (all files together).
  --accept-new-host-key  Trust and record an SSH host key seen for the first time.
  --ca-bundle=FILE       CA certificates for HTTPS.
  --dropbox-config=FILE  Dropbox INI config ([dropbox] shared_url, password, access_token).
  --verify-key=PUBKEY    Refuse a manifest whose Ed25519 signature does not verify.
  --timeout=SECONDS      An SSH connection silent for SECONDS is lost: it is closed,
                         re-established and the work resumed, up to --retries
                         times (default 60; 0: wait for ever).
  -v, --verbose          Log more detail to the log file.
"""

from __future__ import annotations

import sys

from fitsync.cli.options import int_option, print_json, remote_options, selection
from fitsync.errors import UsageError
from fitsync.paths import shown
from fitsync.progress import Reporter, log
from fitsync.units import human_bytes, human_rate


def run(opts: dict) -> int:
    from fitsync import api

    connect = remote_options(opts)
    select = selection(opts)
    options = api.mirror_options(
        checksum=bool(opts["--checksum"]), delete=bool(opts["--delete"]), dry_run=bool(opts["--dry-run"]),
        manifest=opts["--manifest"] or None, jobs=int_option(opts, "--jobs", 2, minimum=1),
        retries=int_option(opts, "--retries", 3), fits_check=not opts["--no-fits-check"], select=select,
        verify_key=connect.verify_key, links=links_mode(opts), bwlimit=opts["--bwlimit"] or None,
        max_delete=int_option(opts, "--max-delete", 0) if opts["--max-delete"] is not None else None,
        allow_empty_source=bool(opts["--allow-empty-source"]), fsync=bool(opts["--fsync"]),
        extract_max=opts["--extract-max"] or None, inplace=bool(opts["--inplace"]),
        whole_file=False if opts["--no-whole-file"] else None, cluster=opts["--dask"] or None,
        batch_files=int_option(opts, "--batch-files", None, minimum=1),
        max_connections=int_option(opts, "--max-connections", None, minimum=1))
    # With --json, stdout carries only the summary object: itemized lines go to
    # stderr, or with --itemize into the object's "files" list instead.
    itemize = 0 if opts["--json"] and opts["--itemize"] else max(int(opts["--itemize"]), int(options.dry_run))
    reporter = Reporter(itemize=itemize, quiet=opts["--quiet"], out=sys.stderr if opts["--json"] else None,
                        show_progress=True if opts["--progress"] and not opts["--quiet"] else None)
    if not opts["--quiet"]:
        note_rsync_habit(opts["SRC"], opts["DST"])
    result = api.run_mirror(opts["SRC"], opts["DST"], options, connect, select, bool(opts["--extract"]), reporter)
    report(result, opts)
    return result.exit_code


def note_rsync_habit(src: str, dst: str) -> None:
    """rsync copies SRC itself into DST unless SRC ends in '/'; fitsync always
    copies SRC's contents. Where the two differ visibly, say which happens."""
    name = src.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    if src.endswith("/") or not name or name in (".", ".."):
        return
    if dst.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1] == name:
        print(f"fitsync: note: the contents of {src} go into {dst} (not into {dst.rstrip('/')}/{name}, "
              "as rsync would do without a trailing slash)", file=sys.stderr)


def links_mode(opts: dict) -> str:
    """What to do with symlinks in the source: skip (reported), links, or follow."""
    if opts["--links"] and opts["--copy-links"]:
        raise UsageError("--links copies symlinks as links and --copy-links follows them; give one")
    if opts["--unsafe-links"] and not opts["--links"]:
        raise UsageError("--unsafe-links goes with --links")
    if opts["--copy-links"]:
        return "follow"
    if opts["--links"]:
        return "unsafe-links" if opts["--unsafe-links"] else "links"
    return "skip"


def report(result, opts: dict) -> None:
    summary = summary_line(result)
    log.info("summary: %s", summary)
    if opts["--json"]:
        print_json(result.to_dict(files=bool(opts["--itemize"])))
    elif not opts["--quiet"]:
        print(summary, file=sys.stderr)
    for failure in result.failures:
        print(f"fitsync: failed: {shown(failure['path'])}: {failure['reason']}", file=sys.stderr)


def summary_line(result) -> str:
    counts = (f"{result.files_total} files: {result.files_new} new, {result.files_updated} updated, "
              f"{result.files_repaired} repaired, {result.files_unchanged} unchanged, "
              f"{result.files_deleted} deleted, {result.files_failed} failed"
              + (f", {result.files_incomplete} incomplete (skipped)" if result.files_incomplete else "")
              + (f", {result.links_copied} symlinks" if result.links_copied else "")
              + (f", {result.links_skipped} symlinks skipped (--links or --copy-links copies them)"
                 if result.links_skipped else ""))
    if result.dry_run:
        moved = f"would copy {human_bytes(result.bytes_transferred)} of new files"
        if result.bytes_to_update:
            moved += f" and at most {human_bytes(result.bytes_to_update)} by delta"
        return f"{counts}; {moved}"
    processed = result.bytes_transferred + result.bytes_reused
    rate = f" ({human_rate(processed, result.seconds)})" if processed else ""
    return (f"{counts}; copied {human_bytes(result.bytes_transferred)}, reused {human_bytes(result.bytes_reused)} "
            f"in {result.seconds:.2f} s{rate}")
