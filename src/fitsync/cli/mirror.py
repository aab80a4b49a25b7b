"""Make DST an exact, verified copy of SRC, moving only new, changed or corrupt data.

Usage:
  fitsync mirror SRC DST [--checksum] [--delete] [--dry-run] [--itemize] [--manifest=FILE]
                         [--jobs=N] [--retries=N] [--log-file=FILE] [--json] [--quiet]
                         [--no-fits-check] [--include=PAT]... [--exclude=PAT]... [--files-from=FILE]
                         [--since=WHEN] [--max-age=DURATION] [--date=DAY] [--template=T] [--profile=NAME]
                         [--where=EXPR]... [--production=NAME] [--runlist=FILE] [--keep-local]
                         [--allow-root=DIR]... [--extract] [--accept-new-host-key] [--ca-bundle=FILE]
                         [--dropbox-config=FILE] [--verify-key=PUBKEY] [--timeout=SECONDS] [--verbose]
  fitsync mirror --help

Options:
  --checksum             Compare content even when size and mtime agree (bytes side
                         by side for two local trees, digests otherwise); a
                         destination copy whose content differs is repaired.
  --delete               Delete destination files absent from the source (never
                         after a failed transfer).
  --dry-run              Print what a real run would do; change nothing.
  --itemize              One line per file: new, delta, repair, delete, unchanged.
  --manifest=FILE        Verify destination files against this manifest of the
                         source; any mismatch is corruption to repair.
  --jobs=N               Files transferred and hashed at once [default: 2].
  --retries=N            Retries per file for transient failures [default: 3].
  --log-file=FILE        Append a timestamped log to FILE.
  --json                 Print a JSON summary on stdout at the end.
  --quiet                Print nothing but errors.
  --no-fits-check        Do not skip source FITS files whose structure is incomplete.
  --include=PAT          Include paths matching PAT (rsync rules; first match wins).
  --exclude=PAT          Exclude paths matching PAT.
  --files-from=FILE      Only the paths listed in FILE (one per line, # comments).
  --since=WHEN           Only files modified since WHEN (2026-11-01, 30d).
  --max-age=DURATION     Only files younger than DURATION (30d, 12h).
  --date=DAY             Only files of one day (YYYY-MM-DD).
  --template=T           Name the fields of a path, e.g. '{yyyy}/{mmdd}/{name}'.
  --profile=NAME         A saved template profile.
  --where=EXPR           Select by template field: field=v1,v2 or field=@file.
  --production=NAME      IACT data store: copy this production's files.
  --runlist=FILE         IACT data store: only these OBS_IDs (one per line).
  --keep-local           IACT data store: local index rows win when merging.
  --allow-root=DIR       IACT data store: allow index paths inside DIR.
  --extract              Unpack downloaded .tar, .tgz and .tar.gz archives.
  --accept-new-host-key  Trust and record an SSH host key seen for the first time.
  --ca-bundle=FILE       CA certificates for HTTPS.
  --dropbox-config=FILE  Dropbox INI config ([dropbox] shared_url, password, access_token).
  --verify-key=PUBKEY    Refuse a manifest whose Ed25519 signature does not verify.
  --timeout=SECONDS      An SSH connection silent for SECONDS is lost: it is closed,
                         re-established and the work resumed, up to --retries
                         times (default 60; 0: wait for ever).
  --verbose              Log more detail to the log file.
"""

from __future__ import annotations

import sys

from fitsync.cli.options import int_option, print_json, remote_options, selection
from fitsync.paths import shown
from fitsync.progress import Reporter


def run(opts: dict) -> int:
    from fitsync import api

    connect = remote_options(opts)
    select = selection(opts)
    options = api.mirror_options(
        checksum=bool(opts["--checksum"]), delete=bool(opts["--delete"]), dry_run=bool(opts["--dry-run"]),
        manifest=opts["--manifest"] or None, jobs=int_option(opts, "--jobs", 2, minimum=1),
        retries=int_option(opts, "--retries", 3), fits_check=not opts["--no-fits-check"], select=select,
        verify_key=connect.verify_key)
    # With --json, stdout carries only the summary object; itemized lines go to
    # stderr (with --itemize they are in the object's "files" list instead).
    itemize = (opts["--itemize"] or options.dry_run) and not (opts["--json"] and opts["--itemize"])
    reporter = Reporter(itemize=itemize, quiet=opts["--quiet"], out=sys.stderr if opts["--json"] else None)
    result = api.run_mirror(opts["SRC"], opts["DST"], options, connect, select, bool(opts["--extract"]), reporter)
    report(result, opts)
    return result.exit_code


def report(result, opts: dict) -> None:
    if opts["--json"]:
        print_json(result.to_dict(files=bool(opts["--itemize"])))
    elif not opts["--quiet"]:
        verb = "would copy" if result.dry_run else "copied"
        print(
            f"{result.files_total} files: {result.files_new} new, {result.files_updated} updated, "
            f"{result.files_repaired} repaired, {result.files_unchanged} unchanged, "
            f"{result.files_deleted} deleted, {result.files_failed} failed"
            + (f", {result.files_incomplete} incomplete (skipped)" if result.files_incomplete else "")
            + f"; {verb} {result.bytes_transferred} bytes, reused {result.bytes_reused} "
            f"in {result.seconds:.2f} s",
            file=sys.stderr,
        )
    for failure in result.failures:
        print(f"fitsync: failed: {shown(failure['path'])}: {failure['reason']}", file=sys.stderr)
