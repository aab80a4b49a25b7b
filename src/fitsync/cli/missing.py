"""Report which keys (tiles, fields, nights) lack any of their expected files.

Usage:
  fitsync missing SRC --expect=EXPR [--template=T] [--profile=NAME] [--where=EXPR]...
                      [--output=FILE] [--report=FILE] [--log-file=FILE] [--quiet]
                      [--include=PAT]... [--exclude=PAT]...
                      [--files-from=FILE] [--since=WHEN] [--max-age=DURATION] [--date=DAY]
                      [--accept-new-host-key] [--timeout=SECONDS] [--ca-bundle=FILE] [--dropbox-config=FILE]
  fitsync missing --help

Options:
  --expect=EXPR          The field and values every key must have: type=final_cat,logs
                         or type=@types.txt.
  --template=T           Name the fields of a path, e.g. '{type}_{tile}.tgz'.
  --profile=NAME         A saved template profile.
  --where=EXPR           The keys to check (tile=@tile_numbers.txt) and other filters.
  --output=FILE          Write the keys that lack files, one per line (an empty file
                         when none do); feed it back with --where=tile=@FILE.
  --report=FILE          Write every key with the expected values it lacks.
  --log-file=FILE        Append a timestamped log to FILE.
  --quiet                Print nothing; the exit code tells.
  --timeout=SECONDS      An SSH connection silent for SECONDS is lost (default 60; 0: never).

Keys are the values of the fields given by --where lists; without one, the
keys seen in SRC. Prints nothing and exits 0 when every key is complete (so
cron mails only problems); exits 1 when some key lacks a file.
"""

from __future__ import annotations

import sys

from fitsync.errors import EXIT_DIFFERENCES, EXIT_OK, UsageError
from fitsync.manifest import write_atomically
from fitsync.progress import log, setup_logging
from fitsync.remotes import open_remote
from fitsync.selection import build_selection
from fitsync.templates_paths import find_missing, parse_where

SHOWN = 50  # keys printed on the terminal; --report has them all


def run(opts: dict) -> int:
    setup_logging(opts["--log-file"], opts["--quiet"])
    if not (opts["--template"] or opts["--profile"]):
        raise UsageError("missing needs --template=T (or --profile=NAME) to find the keys in the paths")
    expect = parse_where(opts["--expect"], option="--expect")
    selection = build_selection(opts)
    with open_remote(opts["SRC"], opts) as src:
        if src.exists():
            paths = [e.path for e in src.list() if selection.matches(e)]
        else:
            # A download directory that does not exist yet lacks everything.
            print(f"fitsync: {opts['SRC']} does not exist; every key is missing", file=sys.stderr)
            paths = []
    report = find_missing(paths, selection.template, selection.where, expect)
    log.info("missing %s: %s", opts["SRC"], summary_line(report))
    if opts["--output"]:
        write_atomically(opts["--output"], lambda out: out.writelines(report.key_text(k) + "\n" for k in report.missing))
    if opts["--report"]:
        write_atomically(opts["--report"], lambda out: out.write(report_text(report)))
    if report.missing and not opts["--quiet"]:
        print(summary_line(report))
        for key in list(report.missing)[:SHOWN]:
            print(f"  {report.key_text(key)}: lacks {', '.join(report.missing[key])}")
        if len(report.missing) > SHOWN:
            print(f"  ... and {len(report.missing) - SHOWN} more" + (" (see the report)" if opts["--report"] else ""))
    return EXIT_DIFFERENCES if report.missing else EXIT_OK


def summary_line(report) -> str:
    what = "/".join(report.key_fields) or "key"
    return f"{len(report.missing)} of {len(report.keys)} {what} keys lack expected {report.expect_field} files"


def report_text(report) -> str:
    lines = [f"# {summary_line(report)}; {report.complete} complete",
             f"# expected {report.expect_field}: {', '.join(report.expected)}"]
    for key in report.keys:
        lacking = report.missing.get(key)
        status = f"lacks {', '.join(lacking)}" if lacking else "complete"
        lines.append(f"{report.key_text(key)}\t{status}")
    return "\n".join(lines) + "\n"
