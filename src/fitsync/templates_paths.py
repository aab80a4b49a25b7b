"""Path templates: name the fields of an archive's layout and select by them.

A template such as ``{instrument}/{yyyy}/{mmdd}/{file}`` describes where files
live. Each ``{name}`` matches one run of characters within a path component
(no ``/``); ``{name:REGEX}`` gives the field its own pattern; the text
between fields is an rsync glob (``*``, ``?``, ``**``, ``[...]``); ``{{`` and
``}}`` are literal braces. A field named twice
must have the same value both times. A template ending in ``/`` matches a
directory: every file below a matching directory is selected.

``--where=field=v1,v2`` keeps files whose field has one of the values;
``--where=field!=v1,v2`` drops them; ``@file`` reads the values from a text
file (one per line, ``#`` comments) or from a CSV column. Values compare as
integers when both sides are integers (epoch ``1`` matches ``EPOCH01``) and as
globs when they contain ``*``, ``?`` or ``[``.

The date fields ``{yyyy}``, ``{mm}``, ``{dd}``, ``{mmdd}``, ``{yyyymmdd}`` and
``{date}`` (``YYYY-MM-DD``) give each path a calendar period that --since,
--max-age and --date compare against (see fitsync.selection).

Named profiles bundle a template with field patterns and default filters. The
shipped ones are TOML files in ``fitsync/profiles``; users add their own as
``[NAME]`` tables in ``profiles.toml`` beside the remotes config file (or the
file named by $FITSYNC_PROFILES). Both are data: nothing in this module knows
about any particular survey.
"""

from __future__ import annotations

import csv
import datetime as dt
import fnmatch
import os
import re
try:
    import tomllib  # novm (tomli below on 3.10)
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib
from dataclasses import dataclass, field
from importlib import resources

from fitsync.errors import BadInput, NotFound, UsageError

DEFAULT_FIELD_PATTERN = r"[^/]+?"
DATE_FIELD_PATTERNS = {
    "yyyy": r"\d{4}",
    "mm": r"\d{2}",
    "dd": r"\d{2}",
    "mmdd": r"\d{4}",
    "yyyymmdd": r"\d{8}",
    "date": r"\d{4}-\d{2}-\d{2}",
}
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_GLOB_CHARS = frozenset("*?[")
_CSV_COLUMN = re.compile(r"^(?P<file>.+\.(?:csv|tsv)):(?P<column>[^/\\]+)$", re.IGNORECASE)


# -- templates --------------------------------------------------------------
@dataclass(frozen=True)
class PathTemplate:
    """A compiled template. ``parse(path)`` returns the field values or None."""

    text: str
    regex: re.Pattern
    fields: tuple[str, ...]

    def parse(self, path: str) -> dict[str, str] | None:
        m = self.regex.match(path)
        return m.groupdict() if m else None

    @property
    def date_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.fields if f in DATE_FIELD_PATTERNS)

    def period(self, values: dict[str, str]) -> tuple[dt.date, dt.date] | None:
        """The calendar period [start, end) that a path's date fields name."""
        if not self.date_fields:
            return None
        return date_period(values)


def compile_template(text: str, field_patterns: dict[str, str] | None = None) -> PathTemplate:
    """Compile ``text``; ``field_patterns`` gives regexes for fields by name."""
    if not text or not text.strip("/"):
        raise BadInput("--template is empty; give a path pattern such as '{instrument}/{yyyy}/{mmdd}/{file}'")
    field_patterns = dict(field_patterns or {})
    body = text.lstrip("/")
    is_directory = body.endswith("/")
    parts, names = _translate(body.rstrip("/"), field_patterns, text)
    tail = r"(?:/.*)?" if is_directory else ""
    try:
        regex = re.compile("".join(parts) + tail + r"\Z", re.DOTALL)
    except re.error as exc:
        raise BadInput(f"template {text!r} has an invalid field pattern: {exc}") from None
    return PathTemplate(text, regex, tuple(names))


def _translate(body: str, field_patterns: dict, original: str) -> tuple[list[str], list[str]]:
    """Regex parts of a template: fields become groups, the text between
    them is an rsync-style glob (``*``, ``?``, ``**``, ``[...]``)."""
    parts: list[str] = []
    names: list[str] = []
    literal: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if body.startswith("{{", i) or body.startswith("}}", i):
            literal.append("\\" + c)
            i += 2
        elif c == "{":
            parts.append(glob_to_regex("".join(literal)))
            literal = []
            end = _closing_brace(body, i, original)
            name, _, own_pattern = body[i + 1 : end].partition(":")
            parts.append(_field_regex(name, own_pattern, field_patterns, names, original))
            i = end + 1
        elif c == "}":
            raise BadInput(f"template {original!r} has an unmatched '}}'; write '}}}}' for a literal brace")
        else:
            literal.append(c)
            i += 1
    parts.append(glob_to_regex("".join(literal)))
    return parts, names


def glob_to_regex(glob: str) -> str:
    """rsync wildcards: ``*`` and ``?`` stay within a name, ``**`` crosses ``/``,
    ``[...]`` is a character class (``[!...]`` negated), ``\\`` escapes."""
    out = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        elif glob.startswith("**", i):
            while i < len(glob) and glob[i] == "*":
                i += 1
            out.append(".*")
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = _class_end(glob, i)
            if end < 0:
                out.append(re.escape(c))
                i += 1
            else:
                inner = glob[i + 1 : end]
                if inner.startswith("!"):
                    inner = "^" + inner[1:]
                out.append("[" + inner.replace("\\", "\\\\") + "]")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _class_end(glob: str, start: int) -> int:
    j = start + 1
    if j < len(glob) and glob[j] in "!^":
        j += 1
    if j < len(glob) and glob[j] == "]":
        j += 1  # a leading ] is a literal member
    end = glob.find("]", j)
    return end


def _closing_brace(body: str, start: int, original: str) -> int:
    """Index of the brace closing the field at ``start``; regex quantifiers nest."""
    depth = 0
    j = start
    while j < len(body):
        if body[j] == "\\":
            j += 2  # an escaped character inside a field pattern
            continue
        if body[j] == "{":
            depth += 1
        elif body[j] == "}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    raise BadInput(f"template {original!r} has an unclosed '{{'; fields look like {{name}} or {{name:REGEX}}")


def _field_regex(name: str, own_pattern: str, field_patterns: dict, names: list, original: str) -> str:
    if not _FIELD_NAME.match(name):
        raise BadInput(f"template {original!r}: {name!r} is not a field name (letters, digits, _)")
    if name in names:
        return f"(?P={name})"  # the same field twice must repeat its value
    names.append(name)
    pattern = own_pattern or field_patterns.get(name) or DATE_FIELD_PATTERNS.get(name) or DEFAULT_FIELD_PATTERN
    if "(?P<" in pattern or "(?P=" in pattern:
        raise BadInput(f"template {original!r}: the pattern of field {name!r} may not name groups")
    return f"(?P<{name}>{pattern})"


# -- dates in paths ---------------------------------------------------------
def date_period(values: dict[str, str]) -> tuple[dt.date, dt.date] | None:
    """The [start, end) dates named by date fields: a day, a month or a year."""
    try:
        if "date" in values:
            day = dt.date.fromisoformat(values["date"])
            return day, day + dt.timedelta(days=1)
        if "yyyymmdd" in values:
            day = dt.datetime.strptime(values["yyyymmdd"], "%Y%m%d").date()
            return day, day + dt.timedelta(days=1)
        if "yyyy" not in values:
            return None
        year = int(values["yyyy"])
        if "mmdd" in values:
            month, mday = int(values["mmdd"][:2]), int(values["mmdd"][2:])
        elif "mm" in values:
            month, mday = int(values["mm"]), int(values["dd"]) if "dd" in values else None
        else:
            return dt.date(year, 1, 1), dt.date(year + 1, 1, 1)
        if mday is None:
            start = dt.date(year, month, 1)
            return start, dt.date(year + month // 12, month % 12 + 1, 1)
        day = dt.date(year, month, mday)
        return day, day + dt.timedelta(days=1)
    except ValueError:
        return None  # e.g. 2026/1340: not a date, so the path has no period


# -- --where ----------------------------------------------------------------
@dataclass
class ValueSet:
    """Values a field may take: exact strings, integers, and globs."""

    values: list[str]
    exact: frozenset = field(init=False)
    numbers: frozenset = field(init=False)
    globs: tuple = field(init=False)

    def __post_init__(self):
        self.exact = frozenset(v for v in self.values if not _GLOB_CHARS & set(v))
        self.numbers = frozenset(int(v) for v in self.exact if _is_int(v))
        self.globs = tuple(re.compile(fnmatch.translate(v)) for v in self.values if _GLOB_CHARS & set(v))

    def __contains__(self, value: str) -> bool:
        if value in self.exact:
            return True
        if self.numbers and _is_int(value) and int(value) in self.numbers:
            return True
        return any(g.match(value) for g in self.globs)

    def canonical(self, value: str) -> str | None:
        """The listed value that ``value`` matches (``1`` for ``01``), or None."""
        if value in self.exact:
            return value
        if _is_int(value):
            for v in self.values:
                if _is_int(v) and int(v) == int(value):
                    return v
        return value if any(g.match(value) for g in self.globs) else None


def _is_int(text: str) -> bool:
    return text.isascii() and text.isdigit()


@dataclass
class WhereClause:
    field: str
    values: ValueSet
    negated: bool = False
    source: str = ""  # the option text, for messages

    def allows(self, fields: dict[str, str]) -> bool:
        return (fields[self.field] in self.values) != self.negated

    @property
    def is_value_list(self) -> bool:
        """A positive list of plain values: it names the keys a set should cover."""
        return not self.negated and not self.values.globs


_WHERE = re.compile(r"^\s*(?P<field>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>!=|=)(?P<values>.*)$", re.DOTALL)


def parse_where(text: str, option: str = "--where") -> WhereClause:
    """``field=v1,v2``, ``field!=v1``, ``field=@file`` or ``field=@file.csv:column``."""
    m = _WHERE.match(text)
    if not m:
        raise UsageError(f"{option}={text!r} is not FIELD=VALUES; e.g. {option}=stokes=I,V or {option}=tile=@tiles.txt")
    name, raw = m.group("field"), m.group("values").strip()
    if raw.startswith("@"):
        values = read_values(raw[1:], name)
    else:
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not values:
            raise UsageError(f"{option}={text!r} lists no values")
    return WhereClause(name, ValueSet(values), m.group("op") == "!=", f"{option}={text}")


def read_values(spec: str, field_name: str) -> list[str]:
    """Values from a text file (one per line) or a CSV column, without duplicates."""
    m = _CSV_COLUMN.match(spec)
    path, column = (m.group("file"), m.group("column")) if m else (spec, None)
    path = os.path.expanduser(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise NotFound(f"values file {path} does not exist (from @{spec})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read values file {path}: {exc}") from None
    if path.lower().endswith((".csv", ".tsv")):
        values = _csv_column(text, path, column or field_name, explicit=column is not None)
    else:
        values = _text_values(text)
    return list(dict.fromkeys(values))


def _text_values(text: str) -> list[str]:
    values = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            values.append(line)
    return values


def _csv_column(text: str, path: str, wanted: str, explicit: bool) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    dialect = "excel-tab" if path.lower().endswith(".tsv") else "excel"
    rows = list(csv.reader(lines, dialect=dialect))
    if not rows:
        raise BadInput(f"CSV file {path} is empty")
    header = [h.strip() for h in rows[0]]
    index = _pick_column(header, wanted, explicit)
    if index is None:
        how = f"name one with @{path}:COLUMN" if not explicit else "check the column name"
        raise BadInput(f"CSV file {path} has no column {wanted!r} (columns: {', '.join(header)}); {how}")
    return [row[index].strip() for row in rows[1:] if len(row) > index and row[index].strip()]


def _pick_column(header: list[str], wanted: str, explicit: bool) -> int | None:
    """Exact name first, then (for a field name) ``<field>_name``/``<field>_id`` or one ``<field>_*``."""
    lowered = [h.lower() for h in header]
    w = wanted.lower()
    if w in lowered:
        return lowered.index(w)
    if explicit:
        return None
    for suffix in ("_name", "_id"):
        if w + suffix in lowered:
            return lowered.index(w + suffix)
    prefixed = [i for i, h in enumerate(lowered) if h.startswith(w + "_")]
    return prefixed[0] if len(prefixed) == 1 else None


# -- profiles ---------------------------------------------------------------
PROFILES_ENV = "FITSYNC_PROFILES"
PROFILE_KEYS = {"description", "template", "fields", "where", "include", "exclude", "example"}


def shipped_profile_names() -> list[str]:
    folder = resources.files("fitsync") / "profiles"
    try:
        return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def load_profile(name: str) -> dict:
    """A profile by name: the user's config first, then the shipped examples."""
    if not _PROFILE_NAME.match(name or ""):
        raise UsageError(f"--profile={name!r} is not a profile name (letters, digits, '-', '_', '.')")
    user = user_profiles()
    if name in user:
        return _checked_profile(name, user[name], "your config")
    resource = resources.files("fitsync") / "profiles" / f"{name}.toml"
    if resource.is_file():
        try:
            data = tomllib.loads(resource.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise BadInput(f"shipped profile {name} is not valid TOML: {exc}") from None
        return _checked_profile(name, data, f"profiles/{name}.toml")
    known = sorted(set(user) | set(shipped_profile_names()))
    raise NotFound(f"no profile named {name!r}; available: {', '.join(known) or 'none'}")


def _checked_profile(name: str, data: dict, origin: str) -> dict:
    unknown = set(data) - PROFILE_KEYS
    if unknown:
        raise BadInput(f"profile {name} ({origin}) has unknown keys: {', '.join(sorted(unknown))}")
    if not isinstance(data.get("template", ""), str):
        raise BadInput(f"profile {name} ({origin}): 'template' must be a string")
    for key in ("fields", "where"):
        if not isinstance(data.get(key, {}), dict):
            raise BadInput(f"profile {name} ({origin}): '{key}' must be a table")
    for key in ("include", "exclude"):
        if not isinstance(data.get(key, []), list):
            raise BadInput(f"profile {name} ({origin}): '{key}' must be a list of patterns")
    return data


def user_profiles() -> dict:
    """The user's profiles: every table of ``profiles.toml`` in fitsync's
    config directory (beside the remotes file), or of $FITSYNC_PROFILES."""
    path = user_profiles_path()
    try:
        with open(path, "rb") as f:
            profiles = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"profiles file {path} cannot be read: {exc}; fix the file") from None
    for name, table in profiles.items():
        if not isinstance(table, dict):
            raise BadInput(f"profiles file {path}: {name!r} must be a [table] holding a profile")
    return profiles


def user_profiles_path() -> str:
    explicit = os.environ.get(PROFILES_ENV)
    if explicit:
        return os.path.expanduser(explicit)
    from fitsync.config import config_path  # the remotes file; profiles live beside it

    return os.path.join(os.path.dirname(config_path()), "profiles.toml")


def profile_where(profile: dict) -> list[WhereClause]:
    """A profile's ``[where]`` table as clauses: ``field = ["a", "b"]`` or ``field = "!a,b"``."""
    clauses = []
    for name, value in profile.get("where", {}).items():
        if isinstance(value, list):
            text = f"{name}={','.join(str(v) for v in value)}"
        elif isinstance(value, str) and value.startswith("!"):
            text = f"{name}!={value[1:]}"
        else:
            text = f"{name}={value}"
        clauses.append(parse_where(text, option="profile where"))
    return clauses
