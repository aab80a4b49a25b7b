"""Audit a copy: against a manifest, or FITS files by their own structure and checksums.

Usage:
  fitsync audit TARGET [--manifest=FILE | --against=LOCATION] [--fits] [--json] [--jobs=N] [--verify-key=PUBKEY]
                       [--include=PAT]... [--exclude=PAT]... [--files-from=FILE] [--since=WHEN]
                       [--max-age=DURATION] [--date=DAY] [--template=T] [--profile=NAME] [--where=EXPR]...
                       [--accept-new-host-key] [--timeout=SECONDS] [--ca-bundle=FILE] [--dropbox-config=FILE] [--quiet]
  fitsync audit --help

Options:
  --manifest=FILE       The manifest to check against [default: TARGET/fitsync-manifest.jsonl].
  --against=LOCATION    Check against another copy by content (a Dropbox folder's
                        listed content hashes need no download).
  --fits                Also check every FITS file's structure, CHECKSUM/DATASUM and gzip CRC.
  --json                Print the per-file lists as JSON.
  --jobs=N              Files hashed at once [default: 2].
  --verify-key=PUBKEY   Refuse a manifest whose Ed25519 signature does not verify.
  --quiet               Print nothing; the exit code tells.
  --timeout=SECONDS     An SSH connection silent for SECONDS is lost (default 60; 0: never).

Exit codes: 0 every file ok; 1 missing, corrupt or extra files (or broken FITS files).
"""

from __future__ import annotations

import os
import sys

from fitsync.audit import AuditReport, audit_against_manifest
from fitsync.cli.common import int_option, load_manifest, load_selection, open_source, print_json
from fitsync.compare import compare_trees
from fitsync.errors import EXIT_DIFFERENCES, EXIT_OK, NotFound, UsageError
from fitsync.manifest import DEFAULT_NAME
from fitsync.remotes import open_remote


def run(opts: dict) -> int:
    manifest_path = None if opts["--against"] else _manifest_path(opts)
    if manifest_path is None and not opts["--against"] and not opts["--fits"]:
        raise UsageError(
            f"no manifest for {opts['TARGET']}: pass --manifest=FILE, --against=LOCATION, "
            "or --fits to check FITS files by their own structure"
        )
    output = {}
    clean = True
    if opts["--against"]:
        report = _audit_against(opts)
        clean = report.clean
        output["against"] = report.to_json()
        if not opts["--json"] and not opts["--quiet"]:
            _print_manifest_report(report)
    if manifest_path is not None:
        manifest = load_manifest(manifest_path, opts)
        with open_remote(opts["TARGET"], opts) as target:
            report = audit_against_manifest(
                target, manifest, ignore={DEFAULT_NAME, DEFAULT_NAME + ".sig"}, selection=load_selection(opts),
                jobs=int_option(opts, "--jobs", 2, minimum=1), fits=bool(opts["--fits"]))
        clean = clean and report.clean
        output["manifest"] = report.to_json()
        if not opts["--json"] and not opts["--quiet"]:
            _print_manifest_report(report)
    elif opts["--fits"]:
        from fitsync import fitsaudit

        local_root = os.path.abspath(opts["TARGET"])
        reports = fitsaudit.audit_tree(local_root, jobs=int_option(opts, "--jobs", 2, minimum=1))
        clean = clean and all(r.status == fitsaudit.STATUS_OK for r in reports)
        output["fits"] = [r.to_dict() for r in reports]
        if not opts["--json"] and not opts["--quiet"]:
            print(fitsaudit.format_table(reports))
    if opts["--json"]:
        output["clean"] = clean
        print_json(output)
    return EXIT_OK if clean else EXIT_DIFFERENCES


def _audit_against(opts: dict) -> AuditReport:
    """Audit TARGET against another copy: compare by content, in audit's terms."""
    with open_source(opts["--against"], opts) as reference, open_remote(opts["TARGET"], opts) as target:
        for side, name in ((reference, opts["--against"]), (target, opts["TARGET"])):
            if not side.exists():
                raise NotFound(f"{name} does not exist; check the path")
        diff = compare_trees(reference, target, checksum=True, selection=load_selection(opts),
                             jobs=int_option(opts, "--jobs", 2, minimum=1))
    return AuditReport(
        ok=diff.identical,
        missing=diff.only_a,
        corrupt=diff.differ + diff.errors,
        extra=diff.only_b,
    )


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
    for item in sorted(report.fits_problems, key=lambda p: p["path"]):
        print(f"fits     {item['path']}  ({item['reason']})")
    counts = report.to_json()["counts"]
    print(
        f"{counts['ok']} ok, {counts['missing']} missing, {counts['corrupt']} corrupt, {counts['extra']} extra",
        file=sys.stderr,
    )
