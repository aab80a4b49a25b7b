"""Filters (rsync rules, checked against rsync itself), file lists, ages and dates."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fitsync.errors import NotFound, UnsafePath, UsageError
from fitsync.remotes.base import Entry
from fitsync.cli.options import rule_order
from fitsync.cli.options import selection as cli_selection
from fitsync.options import Selection
from fitsync.selection import (
    FilterRules,
    build_selection,
    compile_rule,
    parse_duration,
    parse_when,
    read_files_from,
)

RSYNC = shutil.which("rsync")

TREE = [
    "top.fits", "top.txt", "README", "a/1.fits", "a/b/2.fits", "a/b/3.txt", "a/b/c/deep.fits",
    "QC/q.png", "x/QC/q.png", "x/y.fits", "EPOCH01/COMBINED/i.fits", "EPOCH01/COMBINED/QC/p.png",
    "EPOCH02/TILES/t.fits", "b/a/1.fits", "[weird]/z.fits", "1.fits", "b/x.fits",
]


def opts(include=(), exclude=(), **kw) -> Selection:
    """A selection as the command line gives it: includes, then excludes."""
    return Selection(filters=tuple(f"+ {p}" for p in include) + tuple(f"- {p}" for p in exclude), **kw)


def selected(rules: list[tuple[bool, str]], paths=TREE) -> list[str]:
    filters = FilterRules([compile_rule(p, inc) for inc, p in rules])
    return sorted(p for p in paths if filters.allows(p))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("filters") / "src"
    for rel in TREE:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


def rsync_selected(root: Path, rules: list[tuple[bool, str]]) -> list[str]:
    """The files rsync itself would transfer with these --include/--exclude rules."""
    args = [RSYNC, "-rn", "--out-format=%n"]
    args += [("--include=" if inc else "--exclude=") + pat for inc, pat in rules]
    args += [f"{root}/", f"{root.parent}/never-created/"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return sorted(line for line in out.splitlines() if line and not line.endswith("/"))


RULE_CASES = [
    [(False, "*.txt")],
    [(False, "/top.fits")],
    [(False, "QC/")],
    [(False, "/QC/")],
    [(True, "*/"), (True, "*.fits"), (False, "*")],
    [(True, "*.fits"), (False, "*")],  # rsync's classic trap: no descent into directories
    [(False, "a/b")],
    [(False, "b/*.txt")],
    [(False, "**/b/*")],
    [(True, "a/***"), (False, "*")],
    [(False, "a/**")],
    [(False, "[ab]")],
    [(False, "?.fits")],
    [(False, "*/QC")],
    [(False, "x/**.fits")],
    [(True, "/EPOCH01/"), (True, "/EPOCH01/**"), (False, "*")],
    [(False, "**.fits")],
    [(False, "/a/*")],
    [(False, "[!t]*.fits")],
    [(False, "COMBINED/QC")],
    [(True, "b/a/*"), (False, "a/")],
    [(True, "*/"), (True, "**/COMBINED/*.fits"), (False, "*")],
    [(False, r"\[weird]")],
    [(True, "top.*"), (False, "top.txt")],  # first match wins
    [(False, "**/a")],  # a leading ** also matches at the top
    [(False, "/**/a")],
    [(False, "a/**/b")],
    [(False, "**1.fits")],
    [(False, "b/**/1.fits")],
]


@pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")  # installed in CI (.ci)
@pytest.mark.parametrize("rules", RULE_CASES, ids=lambda r: " ".join(("+" if i else "-") + p for i, p in r))
def test_filter_rules_select_what_rsync_selects(tree, rules):
    assert selected(rules) == rsync_selected(tree, rules)


_PIECES = st.sampled_from(["a", "b", "QC", "x", "*", "**", "?", "*.fits", "*.txt", "[ab]", "EPOCH0?", "c", "**.fits", "1*"])


@st.composite
def patterns(draw):
    parts = draw(st.lists(_PIECES, min_size=1, max_size=3))
    text = "/".join(parts)
    if draw(st.booleans()):
        text = "/" + text
    if draw(st.booleans()):
        text += "/"
    return text


@pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rules=st.lists(st.tuples(st.booleans(), patterns()), min_size=1, max_size=3))
def test_generated_rules_agree_with_rsync(tree, rules):
    assert selected(rules) == rsync_selected(tree, rules)


@settings(max_examples=200, deadline=None)
@given(name=st.text(st.sampled_from("ab/.x"), min_size=1, max_size=12))
def test_single_star_never_crosses_a_slash(name):
    rule = compile_rule("/a*", include=False)
    path = name.strip("/") or "a"
    assert rule.matches(path, is_dir=False) == (path.startswith("a") and "/" not in path)


def test_rule_order_comes_from_argv():
    argv = ["mirror", "S", "D", "--exclude=top.txt", "--include", "top.*", "--include=*.fits", "--exclude", "*"]
    assert rule_order(argv) == [("--exclude", "top.txt"), ("--include", "top.*"), ("--include", "*.fits"),
                                ("--exclude", "*")]
    cli_opts = {"--include": ["top.*", "*.fits"], "--exclude": ["top.txt", "*"]}
    sel = build_selection(cli_selection(cli_opts, argv))
    assert not sel.matches(Entry("top.txt", 1, 0))  # the exclude came first on the command line
    plain = build_selection(cli_selection(cli_opts, []))
    assert plain.matches(Entry("top.txt", 1, 0))  # without argv: includes first


def test_empty_pattern_is_a_usage_error():
    with pytest.raises(UsageError):
        compile_rule("", include=True)


# -- --files-from ---------------------------------------------------------------


def test_files_from_lists_paths_and_directories(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# VAST style, with leading slashes\n/EPOCH01/COMBINED/i.fits\n\n  x/  \na/b/2.fits\n")
    sel = build_selection(opts(files_from=str(listing)))
    chosen = sorted(p for p in TREE if sel.matches(Entry(p, 1, 0)))
    assert chosen == ["EPOCH01/COMBINED/i.fits", "a/b/2.fits", "x/QC/q.png", "x/y.fits"]


def test_files_from_refuses_escaping_lines_by_number(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("ok.fits\n../../etc/passwd\n")
    with pytest.raises(UnsafePath, match="line 2"):
        read_files_from(str(listing))


def test_files_from_missing_file(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        read_files_from(str(tmp_path / "nope.txt"))


# -- times ---------------------------------------------------------------------------

NOW = dt.datetime(2026, 11, 30, 8, 0)


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("2w", 14 * 86400),
                                           ("1d12h", 129600), ("45s", 45)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["30", "d", "30x", "", "1d 2"])
def test_bad_durations_are_usage_errors(bad):
    with pytest.raises(UsageError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("text, expected", [
    ("2026-11-01", dt.datetime(2026, 11, 1)),
    ("2026-11-01T18:30", dt.datetime(2026, 11, 1, 18, 30)),
    ("30d", dt.datetime(2026, 10, 31, 8, 0)),
    ("12h", dt.datetime(2026, 11, 29, 20, 0)),
    ("today", dt.datetime(2026, 11, 30)),
    ("yesterday", dt.datetime(2026, 11, 29)),
])
def test_since_values(text, expected):
    assert parse_when(text, NOW) == expected


def test_bad_since_is_a_one_line_usage_error():
    with pytest.raises(UsageError, match="neither a date"):
        parse_when("last tuesday", NOW)


def _ts(*args) -> float:
    return time.mktime(dt.datetime(*args).timetuple())


def test_max_age_and_since_by_mtime():
    sel = build_selection(opts(max_age="30d"), now=NOW)
    assert sel.matches(Entry("a.fits", 1, _ts(2026, 11, 1)))
    assert not sel.matches(Entry("a.fits", 1, _ts(2026, 10, 30)))
    both = build_selection(opts(max_age="30d", since="2026-11-20"), now=NOW)  # the later limit wins
    assert not both.matches(Entry("a.fits", 1, _ts(2026, 11, 10)))
    assert both.matches(Entry("a.fits", 1, _ts(2026, 11, 21)))


def test_date_by_mtime_is_the_local_day():
    sel = build_selection(opts(date="2026-11-01"), now=NOW)
    assert sel.matches(Entry("a", 1, _ts(2026, 11, 1, 0, 0, 1)))
    assert sel.matches(Entry("a", 1, _ts(2026, 11, 1, 23, 59)))
    assert not sel.matches(Entry("a", 1, _ts(2026, 11, 2, 0, 0, 1)))


def test_path_dates_decide_over_mtime_and_keep_last_night():
    o = opts(template="{instrument}/{yyyy}/{mmdd}/{file}", max_age="1d")
    sel = build_selection(o, now=NOW)
    old_mtime = _ts(2020, 1, 1)
    assert sel.matches(Entry("shoc/2026/1129/a.fits", 1, old_mtime))  # last night, pulled at 08:00
    assert sel.matches(Entry("shoc/2026/1130/a.fits", 1, old_mtime))
    assert not sel.matches(Entry("shoc/2026/1128/a.fits", 1, _ts(2026, 11, 30)))
    assert not sel.matches(Entry("shoc/2026/1340/a.fits", 1, old_mtime))  # not a date
    assert not sel.matches(Entry("README", 1, old_mtime))  # does not fit the template


def test_thirty_days_of_nights():
    sel = build_selection(opts(template="{yyyy}/{mmdd}/{file}", max_age="30d"), now=NOW)
    days = [NOW.date() - dt.timedelta(days=n) for n in range(40)]
    kept = [d for d in days if sel.matches(Entry(f"{d:%Y}/{d:%m%d}/f.fits", 1, 0))]
    assert kept[0] == NOW.date() and kept[-1] == NOW.date() - dt.timedelta(days=30)
    assert len(kept) == 31


def test_date_with_year_month_template():
    sel = build_selection(opts(template="{yyyy}-{mm}/{file}", date="2026-11-17"), now=NOW)
    assert sel.matches(Entry("2026-11/x.fits", 1, 0))
    assert not sel.matches(Entry("2026-10/x.fits", 1, 0))


def test_no_selection_options_gives_none():
    assert build_selection(opts()) is None


def test_all_criteria_must_hold(tmp_path):
    listing = tmp_path / "l.txt"
    listing.write_text("shoc/\n")
    o = opts(template="{instrument}/{yyyy}/{mmdd}/{file}", where=["instrument=shoc,hipo"],
             exclude=["*.txt"], files_from=str(listing), date="2026-11-01")
    sel = build_selection(o, now=NOW)
    assert sel.matches(Entry("shoc/2026/1101/a.fits", 1, 0))
    assert not sel.matches(Entry("shoc/2026/1101/a.txt", 1, 0))
    assert not sel.matches(Entry("hipo/2026/1101/a.fits", 1, 0))  # not in the file list
    assert not sel.matches(Entry("shoc/2026/1102/a.fits", 1, 0))


def test_selection_applies_to_real_listings(tmp_path):
    """The LocalRemote listing filtered by a selection (what mirror/compare do)."""
    from fitsync.remotes.local import LocalRemote

    for rel in TREE:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    sel = build_selection(opts(include=["*/", "*.fits"], exclude=["QC/", "*"]))
    chosen = sorted(e.path for e in LocalRemote(str(tmp_path)).list() if sel.matches(e))
    assert chosen == sorted(p for p in TREE if p.endswith(".fits"))
    assert os.path.exists(tmp_path / "QC/q.png")  # nothing was touched
