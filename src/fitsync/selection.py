"""Which files a command works on: filters, file lists, ages, dates, templates.

``build_selection(spec)`` turns a typed ``fitsync.options.Selection`` into the
matcher ``Selection`` (or None when nothing is selected, so callers can skip
the checks). ``matches(entry)``
is True only when every given criterion holds:

- ``--include``/``--exclude`` follow rsync's filter rules: rules are tried in
  the order given and the first match wins; no match means included. A leading
  ``/`` anchors a pattern to the root; otherwise a pattern with a ``/`` matches
  the end of the path at a component boundary and one without matches the
  file or directory name. ``*`` and ``?`` stop at ``/``, ``**`` does not,
  ``dir/***`` matches ``dir`` and everything below it. A trailing ``/``
  matches directories only. As in rsync, an excluded directory hides
  everything below it, so ``--include='*.fits' --exclude='*'`` needs
  ``--include='*/'`` first to descend.
- ``--files-from=FILE``: the paths listed (one per line, ``#`` comments, a
  leading ``/`` ignored as rsync does); a listed directory selects all below.
- ``--since=WHEN`` (``2026-11-01``, ``2026-11-01T18:00``, ``30d``, ``12h``,
  ``today``, ``yesterday``) and ``--max-age=DURATION``: files no older than
  that. ``--date=YYYY-MM-DD``: files of that day (local time).
  With a template that has date fields (``{yyyy}/{mmdd}``) the date in the
  path decides, and a dated day is kept when any part of it lies within the
  window (a nightly pull at 08:00 with ``--max-age=1d`` keeps last night's
  directory); without one the file's mtime decides.
- ``--template``/``--where``/``--profile``: see fitsync.templates_paths. With
  a template, files whose path does not fit it are not selected.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fitsync.errors import BadInput, NotFound, UnsafePath, UsageError
from fitsync.paths import safe_relpath
from fitsync.units import parse_size
from fitsync.remotes.base import Entry
from fitsync.templates_paths import (
    PathTemplate,
    WhereClause,
    compile_template,
    glob_to_regex,
    load_profile,
    parse_where,
    profile_where,
)

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.options import Selection as SelectionOptions

# -- rsync-style filter rules ---------------------------------------------------


@dataclass(frozen=True)
class FilterRule:
    include: bool
    pattern: str
    regex: re.Pattern
    directory_only: bool
    whole_path: bool  # matched against the path (else against the last name)
    leading_slash: bool = False  # matched against "/" + path (a pattern starting with "**")

    def matches(self, path: str, is_dir: bool) -> bool:
        if self.directory_only and not is_dir:
            return False
        if self.leading_slash:
            subject = "/" + path
        else:
            subject = path if self.whole_path else path.rsplit("/", 1)[-1]
        return self.regex.search(subject) is not None


def compile_rule(pattern: str, include: bool) -> FilterRule:
    if not pattern or pattern in ("/",):
        raise UsageError(f"empty {'--include' if include else '--exclude'} pattern; give a pattern such as '*.fits'")
    body = pattern
    directory_only = body.endswith("/") and not body.endswith("***")
    body = body.rstrip("/") if directory_only else body
    anchored = body.startswith("/")
    body = body.lstrip("/") if anchored else body
    subtree = body.endswith("/***")
    if subtree:
        body = body[:-4]
    whole_path = anchored or "/" in body or "**" in body or subtree
    core = glob_to_regex(body)
    if subtree:
        core += r"(?:/.*)?"
    # rsync matches an unanchored pattern that starts with "**" against the
    # path with a "/" in front, so "**/a" also matches a top-level "a".
    leading_slash = not anchored and body.startswith("**")
    if whole_path and not anchored and not leading_slash:
        regex = "(?:^|/)" + core + r"\Z"
    else:
        regex = "^" + core + r"\Z"
    return FilterRule(include, pattern, re.compile(regex, re.DOTALL), directory_only, whole_path, leading_slash)


class FilterRules:
    """Ordered include/exclude rules with rsync's first-match-wins semantics."""

    def __init__(self, rules: list[FilterRule]):
        self.rules = rules
        self._directory_excluded: dict[str, bool] = {}  # listings revisit the same directories

    def first_match(self, path: str, is_dir: bool) -> FilterRule | None:
        for rule in self.rules:
            if rule.matches(path, is_dir):
                return rule
        return None

    def allows(self, path: str) -> bool:
        """A file is selected when no parent directory is excluded and the
        first rule matching the file itself (if any) includes it."""
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if self._excluded_directory("/".join(parts[:depth])):
                return False
        rule = self.first_match(path, is_dir=False)
        return rule is None or rule.include

    def _excluded_directory(self, directory: str) -> bool:
        verdict = self._directory_excluded.get(directory)
        if verdict is None:
            rule = self.first_match(directory, is_dir=True)
            verdict = self._directory_excluded[directory] = rule is not None and not rule.include
        return verdict


MAX_PATTERN_FILE = 16 << 20  # characters; a pattern file is read whole, so it is bounded first


def read_patterns(path: str) -> list[str]:
    """Filter patterns of an --include-from/--exclude-from file, as rsync reads
    them: one per line; blank lines and lines starting with ``#`` or ``;`` skipped."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            text = f.read(MAX_PATTERN_FILE + 1)
    except FileNotFoundError:
        raise NotFound(f"pattern file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read pattern file {path}: {exc}") from None
    if len(text) > MAX_PATTERN_FILE:
        raise BadInput(f"pattern file {path} is larger than {MAX_PATTERN_FILE >> 20} MiB; is it the right file?")
    lines = text.splitlines()
    return [line.rstrip("\r") for line in lines if line.strip() and not line.startswith(("#", ";"))]


# -- --files-from -----------------------------------------------------------------


def read_files_from(path: str) -> frozenset[str]:
    """Paths listed in ``path``: one per line, ``#`` comments, blank lines skipped."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise NotFound(f"--files-from file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read --files-from file {path}: {exc}") from None
    selected = set()
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            selected.add(safe_relpath(text.lstrip("/"), what=f"{path}:{number}: path"))
        except UnsafePath as exc:
            raise UnsafePath(f"{exc}; fix line {number} of {path}") from None
    return frozenset(selected)


# -- times --------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)


def parse_duration(text: str, option: str = "--max-age") -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``1d12h``."""
    compact = (text or "").strip()
    pieces = _DURATION.findall(compact)
    if not pieces or "".join(f"{n}{u}" for n, u in pieces).lower() != re.sub(r"\s+", "", compact).lower():
        raise UsageError(f"{option}={text!r} is not a duration; use a number and a unit: 30d, 12h, 90m, 2w")
    seconds = sum(float(n) * _UNITS[u.lower()] for n, u in pieces)
    return dt.timedelta(seconds=seconds)


def parse_date(text: str, option: str = "--date") -> dt.date:
    value = (text or "").strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(value, fmt).date()
        except ValueError:
            pass
    raise UsageError(f"{option}={text!r} is not a date; use YYYY-MM-DD, e.g. 2026-11-01")


def parse_when(text: str, now: dt.datetime, option: str = "--since") -> dt.datetime:
    """A point in (naive, local) time: a date, a date and time, or a duration ago."""
    value = (text or "").strip()
    lowered = value.lower()
    if lowered in ("today", "yesterday"):
        midnight = dt.datetime.combine(now.date(), dt.time())
        return midnight - dt.timedelta(days=1 if lowered == "yesterday" else 0)
    if re.fullmatch(r"(?:\d+(?:\.\d+)?\s*[smhdw]\s*)+", lowered):
        return now - parse_duration(value, option)
    try:
        return as_local_datetime(dt.datetime.fromisoformat(value.replace(" ", "T", 1) if " " in value else value))
    except ValueError:
        pass
    try:
        return dt.datetime.combine(parse_date(value, option), dt.time())
    except UsageError:
        raise UsageError(
            f"{option}={text!r} is neither a date (2026-11-01, 2026-11-01T18:00) nor a duration (30d, 12h)"
        ) from None


def as_local_datetime(now) -> dt.datetime:
    if now is None:
        return dt.datetime.now()
    if isinstance(now, (int, float)):
        return dt.datetime.fromtimestamp(now)
    if now.tzinfo is not None:
        return now.astimezone().replace(tzinfo=None)
    return now


def _timestamp(moment: dt.datetime) -> float:
    return time.mktime(moment.timetuple()) + moment.microsecond / 1e6


# -- the selection ---------------------------------------------------------------------


@dataclass
class Selection:
    rules: FilterRules | None = None
    files: frozenset | None = None
    since: dt.datetime | None = None  # naive local time
    on_date: dt.date | None = None
    template: PathTemplate | None = None
    where: list[WhereClause] = field(default_factory=list)
    min_size: int | None = None
    max_size: int | None = None
    older_than: float | None = None  # --min-age: only files whose mtime is at or before this

    def matches(self, entry: Entry) -> bool:
        path = entry.path
        if self.min_size is not None and entry.size < self.min_size:
            return False
        if self.max_size is not None and entry.size > self.max_size:
            return False
        if self.older_than is not None and entry.mtime > self.older_than:
            return False
        if self.files is not None and not self._listed(path):
            return False
        if self.rules is not None and not self.rules.allows(path):
            return False
        values = None
        if self.template is not None:
            values = self.template.parse(path)
            if values is None:
                return False
            if not all(clause.allows(values) for clause in self.where):
                return False
        if self.since is None and self.on_date is None:
            return True
        if self.template is not None and self.template.date_fields:
            return self._period_selected(self.template.period(values))
        return self._mtime_selected(entry.mtime)

    def _listed(self, path: str) -> bool:
        if path in self.files:
            return True
        parts = path.split("/")
        return any("/".join(parts[:depth]) in self.files for depth in range(1, len(parts)))

    def _period_selected(self, period) -> bool:
        if period is None:
            return False  # the date fields do not form a real date
        start, end = period
        if self.on_date is not None and not (start <= self.on_date < end):
            return False
        if self.since is not None and dt.datetime.combine(end, dt.time()) <= self.since:
            return False
        return True

    @functools.cached_property
    def _since_timestamp(self) -> float | None:
        return None if self.since is None else _timestamp(self.since)

    def _mtime_selected(self, mtime: float) -> bool:
        if self.since is not None and mtime < self._since_timestamp:
            return False
        if self.on_date is not None and dt.datetime.fromtimestamp(mtime).date() != self.on_date:
            return False
        return True


def build_selection(spec: "SelectionOptions | None", now=None) -> Selection | None:
    """The matcher for the typed selection ``spec`` (fitsync.options.Selection),
    or None when it narrows nothing (so callers can skip the checks).
    ``now`` (datetime or epoch seconds) fixes the clock for tests."""
    if spec is None or not spec.selects_files():
        return None
    now_local = as_local_datetime(now)
    profile = load_profile(spec.profile) if spec.profile else {}
    selection = Selection()
    selection.rules = _rules(spec, profile)
    if spec.files_from:
        selection.files = read_files_from(spec.files_from)
    selection.since = _cutoff(spec, now_local)
    if spec.date:
        selection.on_date = parse_date(spec.date)
    if spec.min_age:
        selection.older_than = _timestamp(now_local - parse_duration(spec.min_age))
    selection.min_size = parse_size(spec.min_size, "--min-size") if spec.min_size else None
    selection.max_size = parse_size(spec.max_size, "--max-size") if spec.max_size else None
    selection.template, selection.where = template_and_where(spec, profile)
    return selection


def _rules(spec: "SelectionOptions", profile: dict) -> FilterRules | None:
    order = spec.ordered_rules()
    order += [(True, p) for p in read_patterns(spec.include_from)] if spec.include_from else []
    order += [(False, p) for p in read_patterns(spec.exclude_from)] if spec.exclude_from else []
    # The profile's rules come after the caller's, so the user's own rules win.
    order += [(True, p) for p in profile.get("include", [])] + [(False, p) for p in profile.get("exclude", [])]
    return FilterRules([compile_rule(p, inc) for inc, p in order]) if order else None


def _cutoff(spec: "SelectionOptions", now: dt.datetime) -> dt.datetime | None:
    cutoffs = []
    if spec.since:
        cutoffs.append(parse_when(spec.since, now))
    if spec.max_age:
        cutoffs.append(now - parse_duration(spec.max_age))
    return max(cutoffs) if cutoffs else None


def template_and_where(spec: "SelectionOptions", profile: dict | None = None
                       ) -> tuple[PathTemplate | None, list[WhereClause]]:
    """The template (the caller's over the profile's) and the where clauses; a
    clause of the caller's on a field replaces the profile's clauses on it."""
    profile = profile if profile is not None else (load_profile(spec.profile) if spec.profile else {})
    text = spec.template or profile.get("template")
    clauses = [parse_where(w) for w in spec.where]
    if profile:
        given = {c.field for c in clauses}
        clauses = [c for c in profile_where(profile) if c.field not in given] + clauses
    if not text:
        if clauses:
            raise UsageError("--where needs a --template (or a --profile with one) to name the fields")
        return None, []
    template = compile_template(text, profile.get("fields"))
    for clause in clauses:
        if clause.field not in template.fields:
            fields = ", ".join(template.fields) or "none"
            raise UsageError(f"{clause.source}: the template {text!r} has no field {clause.field!r} (fields: {fields})")
    return template, clauses
