"""Which keys (tiles, fields, nights) lack any of their expected files."""

from __future__ import annotations

import logging
from typing import Optional

from fitsync.errors import UsageError
from fitsync.formats.manifest import write_atomically
from fitsync.options import RemoteOptions, Selection
from fitsync.templates_paths import MissingReport, find_missing, parse_where

log = logging.getLogger("fitsync")


def find_missing_keys(src: str, expect: str, select: Selection, *, output: Optional[str], report: Optional[str],
                      options: RemoteOptions) -> MissingReport:
    """``fitsync.missing``: list ``src``, find the keys that lack files, and
    write ``output`` (keys, one per line) and ``report`` (every key) if asked."""
    from fitsync.remotes import open_remote
    from fitsync.selection import build_selection

    if not (select.template or select.profile):
        raise UsageError("missing needs --template=T (or --profile=NAME) to find the keys in the paths")
    expected = parse_where(expect, option="--expect")
    selection = build_selection(select)
    with open_remote(src, options) as remote:
        if remote.exists():
            paths = [e.path for e in remote.list() if selection.matches(e)]
        else:
            # A download directory that does not exist yet lacks everything.
            log.warning("%s does not exist; every key is missing", src)
            paths = []
    found = find_missing(paths, selection.template, selection.where, expected)
    log.info("missing %s: %s", src, found.summary_line())
    if output:
        write_atomically(output, lambda out: out.writelines(found.key_text(k) + "\n" for k in found.missing))
    if report:
        write_atomically(report, lambda out: out.write(found.report_text()))
    return found
