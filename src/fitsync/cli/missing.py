"""Report which keys (tiles, fields, nights) lack any of their expected files.

Usage:
  fitsync missing SRC --expect=EXPR [--template=T] [--profile=NAME] [--where=EXPR]...
                      [--output=FILE] [--report=FILE] [--log-file=FILE] [--quiet]
                      [--include=PAT]... [--exclude=PAT]...
                      [--files-from=FILE] [--since=WHEN] [--max-age=DURATION] [--date=DAY]
                      [--accept-new-host-key] [--timeout=SECONDS] [--ca-bundle=FILE] [--allow-password-in-url] [--dropbox-config=FILE]
  fitsync missing --help

Options:
  --allow-password-in-url  Accept https://user:password@host/ (every local user can read it).
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

from fitsync.cli.options import remote_options, selection
from fitsync.options import Selection

SHOWN = 50  # keys printed on the terminal; --report has them all


def run(opts: dict) -> int:
    from fitsync import api

    report = api.missing(opts["SRC"], expect=opts["--expect"], select=selection(opts) or Selection(),
                         output=opts["--output"] or None, report=opts["--report"] or None,
                         remote_options=remote_options(opts))
    if report.missing and not opts["--quiet"]:
        print(report.summary_line())
        for key in list(report.missing)[:SHOWN]:
            print(f"  {report.key_text(key)}: lacks {', '.join(report.missing[key])}")
        if len(report.missing) > SHOWN:
            print(f"  ... and {len(report.missing) - SHOWN} more" + (" (see the report)" if opts["--report"] else ""))
    return report.exit_code
