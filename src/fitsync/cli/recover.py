"""Finish updates in place that a crash or kill interrupted.

Usage:
  fitsync recover DST [--json] [--quiet]
  fitsync recover --help

'fitsync mirror --inplace' saves the old bytes of every range before it
overwrites them. If the run was killed or the machine crashed, each file
it was updating is put back to its old version, or, where every new byte
reached the disk and the file verifies against the source's digest, kept
as the new one. Every mirror into DST does this first; run it by hand to
make the files whole without mirroring. Exit 0 (also when nothing was
interrupted), 2 for a DST that is not a local directory, 5 when another
fitsync holds DST's lock.

Options:
  --json    Print [{"path": ..., "outcome": ...}] on stdout.
  --quiet   Print nothing but errors.
"""

from __future__ import annotations

import sys

from fitsync.errors import EXIT_OK


def run(opts: dict) -> int:
    from fitsync import api
    from fitsync.cli.options import print_json
    from fitsync.paths import shown

    done = api.recover(opts["DST"])
    if opts["--json"]:
        print_json(done)
    elif not opts["--quiet"]:
        for row in done:
            print(f"{shown(row['path'] or '?')}: {row['outcome']}")
        print(f"recovered {len(done)} interrupted update(s) in place" if done else "nothing to recover",
              file=sys.stderr)
    return EXIT_OK
