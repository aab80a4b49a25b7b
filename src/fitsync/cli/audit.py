"""Audit a copy: against a manifest, or FITS files by their own structure and checksums.

Usage:
  fitsync audit TARGET [--manifest=FILE | --against=LOCATION] [--fits] [--json] [--jobs=N] [--verify-key=PUBKEY]
                       [--include=PAT]... [--exclude=PAT]... [--files-from=FILE] [--since=WHEN]
                       [--max-age=DURATION] [--date=DAY] [--template=T] [--profile=NAME] [--where=EXPR]...
                       [--include-from=FILE]... [--exclude-from=FILE]... [--min-age=DURATION] [--max-size=SIZE]
                       [--min-size=SIZE] [--log-file=FILE] [--progress]
                       [--accept-new-host-key] [--timeout=SECONDS] [--ca-bundle=FILE] [--allow-password-in-url] [--dropbox-config=FILE] [--quiet]
                       [--dask=ADDRESS] [--batch-files=N] [--shards=DIR] [--resume]
  fitsync audit --help

Options:
  --allow-password-in-url  Accept https://user:password@host/ (every local user can read it).
  --include-from=FILE  Include patterns from FILE, one per line (# comments).
  --exclude-from=FILE  Exclude patterns from FILE, one per line (# comments).
  --min-age=DURATION   Only files older than DURATION.
  --max-size=SIZE      Only files of at most SIZE (500M, 2GiB).
  --min-size=SIZE      Only files of at least SIZE.
  --log-file=FILE      Append a timestamped log to FILE.
  -P, --progress       Show a progress bar even when stderr is not a terminal.
  --manifest=FILE       The manifest to check against [default: TARGET/fitsync-manifest.jsonl].
  --against=LOCATION    Check against another copy by content (a Dropbox folder's
                        listed content hashes need no download).
  --fits                Also check every FITS file's structure, CHECKSUM/DATASUM and gzip CRC.
  --json                Print the per-file lists as JSON.
  -j N, --jobs=N              Files hashed at once [default: 2].
  --verify-key=PUBKEY   Refuse a manifest whose Ed25519 signature does not verify.
  -q, --quiet               Print nothing; the exit code tells.
  --dask=ADDRESS        Hash a manifest audit's files on a Dask cluster: local:N,
                        tcp://HOST:PORT or a scheduler file (docs/cluster.md).
  --batch-files=N       Files per batch on a cluster (default 5000, or 1/64 of fewer).
  --shards=DIR          On a cluster: keep each finished batch's findings in DIR.
  --resume              Take the batches a killed run kept in --shards=DIR.
  --timeout=SECONDS     An SSH connection silent for SECONDS is lost (default 60; 0: never).

Exit codes: 0 every file ok; 1 missing, corrupt or extra files (or broken FITS files).
"""

from __future__ import annotations

import sys

from fitsync.cli.options import int_option, print_json, progress_bar, remote_options, selection
from fitsync.fitsaudit import format_table
from fitsync.paths import shown
from fitsync.progress import log


def run(opts: dict) -> int:
    from fitsync import api

    given = opts["--manifest"]
    result = api.audit(opts["TARGET"], manifest=given if given and given != "TARGET/fitsync-manifest.jsonl" else None,
                       fits=bool(opts["--fits"]), against=opts["--against"] or None, select=selection(opts),
                       jobs=int_option(opts, "--jobs", 2, minimum=1), remote_options=remote_options(opts),
                       progress=progress_bar(opts), cluster=opts["--dask"] or None,
                       batch_files=int_option(opts, "--batch-files", None, minimum=1),
                       shards=opts["--shards"] or None, resume=bool(opts["--resume"]))
    log.info("summary: %s", "clean" if result.clean else "differences found")
    if opts["--json"]:
        print_json(result.to_dict())
    elif not opts["--quiet"]:
        for report in (result.against, result.manifest):
            if report is not None:
                _print_manifest_report(report)
        if result.fits is not None:
            print(format_table(result.fits))
    return result.exit_code


def _print_manifest_report(report) -> None:
    for path in sorted(report.missing):
        print(f"missing  {shown(path)}")
    for item in sorted(report.corrupt, key=lambda c: c["path"]):
        print(f"corrupt  {shown(item['path'])}  ({item['reason']})")
    for path in sorted(report.extra):
        print(f"extra    {shown(path)}")
    for item in sorted(report.fits_problems, key=lambda p: p["path"]):
        print(f"fits     {shown(item['path'])}  ({item['reason']})")
    counts = report.to_dict()["counts"]
    print(
        f"{counts['ok']} ok, {counts['missing']} missing, {counts['corrupt']} corrupt, {counts['extra']} extra",
        file=sys.stderr,
    )
