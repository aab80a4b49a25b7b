"""Which keys (tiles, fields, nights) lack any of their expected files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from fitsync.errors import UsageError
from fitsync.formats.manifest import write_atomically
from fitsync.options import RemoteOptions, Selection
from fitsync.templates_paths import PathTemplate, WhereClause, parse_where

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


# -- expected sets --------------------------------------------------------------

@dataclass
class MissingReport:
    """Which keys (tuples of field values) lack which expected values."""

    key_fields: tuple[str, ...]
    expect_field: str
    expected: list[str]
    keys: list[tuple[str, ...]]  # every key checked, in order
    missing: dict  # key -> the expected values it lacks

    @property
    def complete(self) -> int:
        return len(self.keys) - len(self.missing)

    def key_text(self, key: tuple[str, ...]) -> str:
        return "\t".join(key)  # one field: the value as listed, ready for --where=FIELD=@file

    @property
    def exit_code(self) -> int:
        return 1 if self.missing else 0

    def summary_line(self) -> str:
        what = "/".join(self.key_fields) or "key"
        return f"{len(self.missing)} of {len(self.keys)} {what} keys lack expected {self.expect_field} files"

    def report_text(self) -> str:
        lines = [f"# {self.summary_line()}; {self.complete} complete",
                 f"# expected {self.expect_field}: {', '.join(self.expected)}"]
        for key in self.keys:
            lacking = self.missing.get(key)
            status = f"lacks {', '.join(lacking)}" if lacking else "complete"
            lines.append(f"{self.key_text(key)}\t{status}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        from fitsync import __version__

        return {"version": __version__, "key_fields": list(self.key_fields), "expect_field": self.expect_field,
                "expected": list(self.expected), "keys": len(self.keys), "complete": self.complete,
                "missing": {self.key_text(k): list(v) for k, v in self.missing.items()}}


def find_missing(paths, template: PathTemplate, where: list[WhereClause], expect: WhereClause) -> MissingReport:
    """Which keys lack a file for some expected value of ``expect.field``.

    The keys are the values of the fields given by positive --where lists
    (all their combinations); without such a list, the keys are those seen in
    ``paths``. Paths that do not fit the template or the --where clauses are
    ignored.
    """
    if expect.field not in template.fields:
        raise UsageError(f"--expect: the template {template.text!r} has no field {expect.field!r}")
    if not expect.is_value_list:
        raise UsageError("--expect takes a list of values (FIELD=v1,v2 or FIELD=@file), not a pattern or !=")
    listed = [c for c in where if c.is_value_list and c.field != expect.field]
    key_fields = tuple(dict.fromkeys(c.field for c in listed)) or tuple(
        f for f in template.fields if f != expect.field
    )
    present: dict[tuple, set] = {}
    for path in paths:
        values = template.parse(path)
        if values is None or not all(c.allows(values) for c in where):
            continue
        value = expect.values.canonical(values[expect.field])
        key = tuple(_canonical_key(f, values[f], listed) for f in key_fields)
        present.setdefault(key, set())
        if value is not None:
            present[key].add(value)
    keys = _universe(key_fields, listed) if listed else sorted(present)
    expected = expect.values.values
    missing = {}
    for key in keys:
        lacking = [v for v in expected if v not in present.get(key, ())]
        if lacking:
            missing[key] = lacking
    return MissingReport(key_fields, expect.field, list(expected), keys, missing)


def _canonical_key(field_name: str, value: str, listed: list[WhereClause]) -> str:
    for clause in listed:
        if clause.field == field_name:
            canonical = clause.values.canonical(value)
            if canonical is not None:
                return canonical
    return value


def _universe(key_fields: tuple[str, ...], listed: list[WhereClause]) -> list[tuple[str, ...]]:
    import itertools

    lists = []
    for name in key_fields:
        values: list[str] = []
        for clause in listed:
            if clause.field == name:
                values = [v for v in clause.values.values if not values or v in values]
        lists.append(values)
    return [tuple(k) for k in itertools.product(*lists)]
