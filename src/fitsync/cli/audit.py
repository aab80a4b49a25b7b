"""Audit a copy: against a manifest, or FITS files by their own structure and checksums.

Usage:
  fitsync audit TARGET [--manifest=FILE] [--fits] [--json] [--jobs=N] [--verify-key=PUBKEY]
                       [--include=PAT]... [--exclude=PAT]... [--files-from=FILE] [--since=WHEN]
                       [--max-age=DURATION] [--date=DAY] [--template=T] [--profile=NAME] [--where=EXPR]...
                       [--accept-new-host-key] [--ca-bundle=FILE] [--dropbox-config=FILE] [--quiet]
  fitsync audit --help

Options:
  --manifest=FILE       The manifest to check against [default: TARGET/fitsync-manifest.jsonl].
  --fits                Also check every FITS file's structure, CHECKSUM/DATASUM and gzip CRC.
  --json                Print the per-file lists as JSON.
  --jobs=N              Files hashed at once [default: 2].
  --verify-key=PUBKEY   Refuse a manifest whose Ed25519 signature does not verify.
  --quiet               Print nothing; the exit code tells.

Exit codes: 0 every file ok; 1 missing, corrupt or extra files (or broken FITS files).
"""

from __future__ import annotations

import os
import sys

from fitsync.audit import audit_against_manifest
from fitsync.cli.common import int_option, load_manifest, load_selection, print_json
from fitsync.errors import EXIT_DIFFERENCES, EXIT_OK, UsageError
from fitsync.manifest import DEFAULT_NAME
from fitsync.remotes import open_remote


def run(opts: dict) -> int:
    manifest_path = _manifest_path(opts)
    if manifest_path is None and not opts["--fits"]:
        raise UsageError(
            f"no manifest for {opts['TARGET']}: pass --manifest=FILE, or --fits to check FITS files by their own structure"
        )
    output = {}
    clean = True
    if manifest_path is not None:
        manifest = load_manifest(manifest_path, opts)
        with open_remote(opts["TARGET"], opts) as target:
            report = audit_against_manifest(
                target, manifest, ignore={DEFAULT_NAME, DEFAULT_NAME + ".sig"}, selection=load_selection(opts),
                jobs=int_option(opts, "--jobs", 2, minimum=1))
        clean = report.clean
        output["manifest"] = report.to_json()
        if not opts["--json"] and not opts["--quiet"]:
            _print_manifest_report(report)
    if opts["--fits"]:
        from fitsync import fitsaudit

        local_root = os.path.abspath(opts["TARGET"])
        reports = fitsaudit.audit_tree(local_root, jobs=int_option(opts, "--jobs", 2, minimum=1))
        fits_clean = all(r.status == fitsaudit.STATUS_OK for r in reports)
        clean = clean and fits_clean
        output["fits"] = [r.to_dict() for r in reports]
        if not opts["--json"] and not opts["--quiet"]:
            print(fitsaudit.format_table(reports))
    if opts["--json"]:
        output["clean"] = clean
        print_json(output)
    return EXIT_OK if clean else EXIT_DIFFERENCES


def _manifest_path(opts: dict) -> str | None:
    given = opts["--manifest"]
    if given and given != "TARGET/fitsync-manifest.jsonl":
        return given
    default = os.path.join(opts["TARGET"], DEFAULT_NAME)
    return default if os.path.isfile(default) else None


def _print_manifest_report(report) -> None:
    for path in sorted(report.missing):
        print(f"missing  {path}")
    for item in sorted(report.corrupt, key=lambda c: c["path"]):
        print(f"corrupt  {item['path']}  ({item['reason']})")
    for path in sorted(report.extra):
        print(f"extra    {path}")
    counts = report.to_json()["counts"]
    print(
        f"{counts['ok']} ok, {counts['missing']} missing, {counts['corrupt']} corrupt, {counts['extra']} extra",
        file=sys.stderr,
    )
