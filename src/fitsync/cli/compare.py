"""Compare A and B: files only on A, only on B, differing, and identical.

Usage:
  fitsync compare A B [--checksum] [--json] [--report=FILE] [--jobs=N] [--quiet]
                      [--include=PAT]... [--exclude=PAT]... [--files-from=FILE] [--since=WHEN]
                      [--max-age=DURATION] [--date=DAY] [--template=T] [--profile=NAME] [--where=EXPR]...
                      [--include-from=FILE]... [--exclude-from=FILE]... [--min-age=DURATION] [--max-size=SIZE]
                      [--min-size=SIZE] [--log-file=FILE] [--progress]
                      [--accept-new-host-key] [--timeout=SECONDS] [--ca-bundle=FILE] [--allow-password-in-url] [--dropbox-config=FILE]
                      [--dask=ADDRESS] [--batch-files=N] [--shards=DIR] [--resume]
  fitsync compare --help

Options:
  --allow-password-in-url  Accept https://user:password@host/ (every local user can read it).
  --include-from=FILE  Include patterns from FILE, one per line (# comments).
  --exclude-from=FILE  Exclude patterns from FILE, one per line (# comments).
  --min-age=DURATION   Only files older than DURATION.
  --max-size=SIZE      Only files of at most SIZE (500M, 2GiB).
  --min-size=SIZE      Only files of at least SIZE.
  --log-file=FILE      Append a timestamped log to FILE.
  -P, --progress       Show a progress bar even when stderr is not a terminal.
  -c, --checksum       Compare content (digests), not size and mtime.
  --json           Print the lists as JSON.
  --report=FILE    Write rclone-style combined lines: + only on A, - only on B,
                   * differ, = identical, ! error.
  -j N, --jobs=N         Files hashed at once [default: 2].
  -q, --quiet          Print nothing; the exit code tells.
  --dask=ADDRESS       With --checksum, hash both sides on a Dask cluster: local:N,
                       tcp://HOST:PORT or a scheduler file (docs/cluster.md).
  --batch-files=N      Files per batch on a cluster (default 5000, or 1/64 of fewer).
  --shards=DIR         On a cluster: keep each finished batch's findings in DIR.
  --resume             Take the batches a killed run kept in --shards=DIR.
  --timeout=SECONDS  An SSH connection silent for SECONDS is lost (default 60; 0: never).

Prints nothing and exits 0 when A and B agree (so cron mails only problems);
exits 1 when they differ.
"""

from __future__ import annotations

from fitsync.cli.options import int_option, print_json, progress_bar, remote_options, selection
from fitsync.errors import EXIT_DIFFERENCES, EXIT_OK
from fitsync.paths import shown
from fitsync.progress import log


def run(opts: dict) -> int:
    from fitsync import api

    report = api.compare(opts["A"], opts["B"], checksum=bool(opts["--checksum"]), select=selection(opts),
                         jobs=int_option(opts, "--jobs", 2, minimum=1), report=opts["--report"] or None,
                         remote_options=remote_options(opts), progress=progress_bar(opts),
                         cluster=opts["--dask"] or None, batch_files=int_option(opts, "--batch-files", None, minimum=1),
                         shards=opts["--shards"] or None, resume=bool(opts["--resume"]))
    counts = report.to_dict()["counts"]
    log.info("summary: %s", ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items()))
    if opts["--json"]:
        print_json(report.to_dict())
    elif not report.agree and not opts["--quiet"]:
        _print_text(report, opts["A"], opts["B"])
    return EXIT_OK if report.agree else EXIT_DIFFERENCES


def _print_text(report, a: str, b: str) -> None:
    sections = (
        (f"FILES ON {a} THAT ARE NOT ON {b}", [shown(p) for p in report.only_a]),
        (f"FILES ON {b} THAT ARE NOT ON {a}", [shown(p) for p in report.only_b]),
        ("FILES THAT DIFFER", [f"{shown(d['path'])}  ({d['reason']})" for d in report.differ]),
        ("FILES THAT COULD NOT BE COMPARED", [f"{shown(e['path'])}  ({e['reason']})" for e in report.errors]),
    )
    for title, lines in sections:
        if lines:
            print(f"{title} ({len(lines)}):")
            for line in lines:
                print(f"  {line}")
