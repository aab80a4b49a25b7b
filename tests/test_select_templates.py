"""Path templates, --where values (lists, files, CSV columns), profiles, expected sets."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fitsync.errors import BadInput, NotFound, UsageError
from fitsync.remotes.base import Entry
from fitsync.options import Selection
from fitsync.selection import build_selection
from fitsync.engine.missing import find_missing
from fitsync.templates_paths import (
    compile_template,
    date_period,
    load_profile,
    parse_where,
    shipped_profile_names,
)

VAST = "EPOCH{epoch}/{kind}/STOKES{stokes}_{product}/{field}.EPOCH{epoch}.{stokes}.{ext}"


def opts(include=(), exclude=(), **kw) -> Selection:
    """A selection as the command line gives it: includes, then excludes."""
    return Selection(filters=tuple(f"+ {p}" for p in include) + tuple(f"- {p}" for p in exclude), **kw)


def test_the_issue_template_parses_vast_paths():
    t = compile_template(VAST)
    assert t.parse("EPOCH01/COMBINED/STOKESI_IMAGES/VAST_0918+00A.EPOCH01.I.fits") == {
        "epoch": "01", "kind": "COMBINED", "stokes": "I", "product": "IMAGES", "field": "VAST_0918+00A", "ext": "fits"}
    values = t.parse("EPOCH09/COMBINED/STOKESV_SELAVY/VAST_1739-25A.EPOCH09.V.selavy.components.txt")
    assert values["ext"] == "selavy.components.txt" and values["field"] == "VAST_1739-25A"
    # a repeated field must repeat its value
    assert t.parse("EPOCH01/COMBINED/STOKESI_IMAGES/VAST_0918+00A.EPOCH02.I.fits") is None
    assert t.parse("EPOCH01/COMBINED/QC/plot.png") is None


def test_field_patterns_globs_braces_and_directories():
    t = compile_template(r"{type}_{tile:[0-9]{3}\.[0-9]{3}}.tgz")
    assert t.parse("final_cat_271.282.tgz") == {"type": "final_cat", "tile": "271.282"}
    assert t.parse("final_cat_27.282.tgz") is None
    assert compile_template("raw/**/{name}.fits").parse("raw/a/b/x.fits") == {"name": "x"}
    assert compile_template("{{literal}}/{x}").parse("{literal}/v") == {"x": "v"}
    directory = compile_template("{instrument}/{yyyy}/")
    assert directory.parse("shoc/2026/1101/a.fits") == {"instrument": "shoc", "yyyy": "2026"}
    assert directory.parse("shoc/notayear/a.fits") is None


@pytest.mark.parametrize("bad", ["", "/", "{unclosed", "a}b", "{1bad}", "{x:(}", "{x:(?P<y>a)}"])
def test_bad_templates_are_one_line_errors(bad):
    with pytest.raises(BadInput) as info:
        compile_template(bad)
    assert "\n" not in str(info.value)


_VALUE = st.text(st.sampled_from("abcXYZ019+-_"), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(instrument=_VALUE, name=_VALUE, day=st.dates(dt.date(1990, 1, 1), dt.date(2090, 12, 31)))
def test_formatted_paths_parse_back(instrument, name, day):
    t = compile_template("{instrument}/{yyyy}/{mmdd}/{name}.fits")
    path = f"{instrument}/{day:%Y}/{day:%m%d}/{name}.fits"
    values = t.parse(path)
    assert values == {"instrument": instrument, "yyyy": f"{day:%Y}", "mmdd": f"{day:%m%d}", "name": name}
    assert t.period(values) == (day, day + dt.timedelta(days=1))


def test_date_periods():
    assert date_period({"yyyymmdd": "20261101"}) == (dt.date(2026, 11, 1), dt.date(2026, 11, 2))
    assert date_period({"date": "2026-12-31"}) == (dt.date(2026, 12, 31), dt.date(2027, 1, 1))
    assert date_period({"yyyy": "2026", "mm": "12"}) == (dt.date(2026, 12, 1), dt.date(2027, 1, 1))
    assert date_period({"yyyy": "2026"}) == (dt.date(2026, 1, 1), dt.date(2027, 1, 1))
    assert date_period({"yyyy": "2026", "mmdd": "0230"}) is None


# -- --where ---------------------------------------------------------------------


def test_where_lists_integers_globs_and_negation():
    t = compile_template(VAST)
    p = "EPOCH08/COMBINED/STOKESV_SELAVY/VAST_0918+00A.EPOCH08.V.selavy.islands.xml"
    values = t.parse(p)
    assert parse_where("epoch=1,2,8,9").allows(values)  # 08 == 8
    assert not parse_where("epoch=1,2").allows(values)
    assert parse_where("ext=selavy.*").allows(values)
    assert not parse_where("ext!=*.xml").allows(values)
    assert parse_where("stokes!=I").allows(values)


@pytest.mark.parametrize("bad", ["stokes", "=I", "stokes=", "stokes=,", "9x=1"])
def test_bad_where_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        parse_where(bad)


def test_where_values_from_text_file(tmp_path):
    tiles = tmp_path / "tile_numbers.txt"
    tiles.write_text("# CFIS tiles\n271.282\n\n271.283  # second\n271.282\n")
    clause = parse_where(f"tile=@{tiles}")
    assert clause.values.values == ["271.282", "271.283"]


def test_where_values_from_find_sources_csv(tmp_path):
    """find_sources.py --find-fields output: the field_name column, read once per field."""
    csv_file = tmp_path / "find_fields_output.csv"
    csv_file.write_text(
        "ra,dec,name,sbid,field_name\n"
        "321.749583333333,-44.2686111111111,Q 2123-4429B,9673,VAST_2112-43A\n"
        "348.945,-59.0544444444444,\"ESO 148-IG02, core\",9673,VAST_2256-56A\n"
        "1.0,2.0,other,9673,VAST_2112-43A\n"
    )
    assert parse_where(f"field=@{csv_file}").values.values == ["VAST_2112-43A", "VAST_2256-56A"]
    assert parse_where(f"field=@{csv_file}:sbid").values.values == ["9673"]
    with pytest.raises(BadInput, match="columns: ra, dec, name, sbid, field_name"):
        parse_where(f"field=@{csv_file}:nope")
    with pytest.raises(BadInput, match="COLUMN"):
        parse_where(f"epoch=@{csv_file}")


def test_where_file_missing_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        parse_where(f"tile=@{tmp_path}/nope.txt")


def test_where_needs_a_template_and_a_known_field():
    with pytest.raises(UsageError, match="needs a --template"):
        build_selection(opts(where=["stokes=I"]))
    with pytest.raises(UsageError, match="no field 'colour'"):
        build_selection(opts(template=VAST, where=["colour=red"]))


def test_vast_scenario_selection_with_the_issue_template():
    sel = build_selection(opts(template=VAST, where=[
        "field=VAST_0918+00A,VAST_1739-25A", "epoch=1,2,8,9", "kind=COMBINED", "stokes=I,V",
        "product=IMAGES,SELAVY", "ext=fits,selavy.components.txt"]))
    keep = "EPOCH02/COMBINED/STOKESV_SELAVY/VAST_1739-25A.EPOCH02.V.selavy.components.txt"
    assert sel.matches(Entry(keep, 1, 0))
    for drop in ["EPOCH03x/COMBINED/STOKESI_IMAGES/VAST_0918+00A.EPOCH03x.I.fits",
                 "EPOCH01/COMBINED/STOKESQ_IMAGES/VAST_0918+00A.EPOCH01.Q.fits",
                 "EPOCH01/COMBINED/STOKESI_SELAVY/VAST_0918+00A.EPOCH01.I.selavy.islands.txt",
                 "EPOCH01/COMBINED/STOKESI_IMAGES/VAST_0012+00A.EPOCH01.I.fits",
                 "EPOCH01/TILES/STOKESI_IMAGES/VAST_0918+00A.EPOCH01.I.fits",
                 "EPOCH01/COMBINED/QC/VAST_0918+00A.png"]:
        assert not sel.matches(Entry(drop, 1, 0)), drop


# -- profiles ----------------------------------------------------------------------


def test_shipped_profiles_are_documented_data_whose_example_fits():
    names = shipped_profile_names()
    assert {"vast-pilot", "saao-nightly", "shapepipe"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert profile["description"] and profile["example"]
        template = compile_template(profile["template"], profile.get("fields"))
        assert template.parse(profile["example"]) is not None, name


def test_vast_profile_maps_the_download_script_options():
    sel = build_selection(opts(profile="vast-pilot", where=["map!=_bkg", "ext!=*.xml"]))
    assert sel.matches(Entry("EPOCH01/COMBINED/STOKESI_RMSMAPS/VAST_0918+00A.EPOCH01.I_rms.fits", 1, 0))
    assert not sel.matches(Entry("EPOCH01/COMBINED/STOKESI_RMSMAPS/VAST_0918+00A.EPOCH01.I_bkg.fits", 1, 0))
    assert not sel.matches(Entry("EPOCH01/COMBINED/STOKESI_SELAVY/VAST_0918+00A.EPOCH01.I.selavy.components.xml", 1, 0))
    assert not sel.matches(Entry("EPOCH01/VAST_epoch1.csv", 1, 0))


@pytest.fixture(autouse=True)
def no_user_profiles(monkeypatch, tmp_path):
    monkeypatch.setenv("FITSYNC_PROFILES", str(tmp_path / "no-profiles.toml"))


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(NotFound, match="available: .*saao-nightly.*shapepipe.*vast-pilot"):
        load_profile("nope")
    with pytest.raises(UsageError):
        load_profile("../etc/passwd")


def test_user_profiles_from_the_config_file_win_and_combine(monkeypatch, tmp_path):
    config = tmp_path / "fitsync" / "profiles.toml"
    config.parent.mkdir()
    config.write_text(
        '[my-survey]\n'
        'description = "raw frames"\n'
        'template = "{camera}/{yyyymmdd}/{frame}.fits.fz"\n'
        'exclude = ["*.tmp.fits.fz"]\n'
        '[my-survey.fields]\ncamera = "cam[0-9]"\n'
        '[my-survey.where]\ncamera = ["cam1", "cam2"]\n'
        '[shapepipe]\ntemplate = "mine/{type}_{tile}.tgz"\n'
    )
    # beside the remotes file that fitsync.config uses
    monkeypatch.delenv("FITSYNC_PROFILES")
    monkeypatch.setenv("FITSYNC_CONFIG", str(tmp_path / "fitsync" / "remotes.toml"))
    sel = build_selection(opts(profile="my-survey", since="2026-11-01"), now=dt.datetime(2026, 11, 30))
    assert sel.matches(Entry("cam1/20261101/f001.fits.fz", 1, 0))
    assert not sel.matches(Entry("cam3/20261101/f001.fits.fz", 1, 0))  # profile where
    assert not sel.matches(Entry("cam1/20261031/f001.fits.fz", 1, 0))  # before --since, by path date
    assert not sel.matches(Entry("cam1/20261101/f001.tmp.fits.fz", 1, 0))  # profile exclude
    override = build_selection(opts(profile="my-survey", where=["camera=cam3"]))
    assert override.matches(Entry("cam3/20261101/f001.fits.fz", 1, 0))  # command line replaces it
    assert load_profile("shapepipe")["template"] == "mine/{type}_{tile}.tgz"


def test_bad_user_profile_is_reported(monkeypatch, tmp_path):
    config = tmp_path / "profiles.toml"
    config.write_text('[x]\ntemplat = "{a}"\n')
    monkeypatch.setenv("FITSYNC_PROFILES", str(config))
    with pytest.raises(BadInput, match="unknown keys: templat"):
        load_profile("x")


# -- expected sets -----------------------------------------------------------------

TYPES = ["final_cat", "logs", "pipeline_flag"]


def _shapepipe():
    profile = load_profile("shapepipe")
    return compile_template(profile["template"], profile["fields"])


def test_find_missing_over_a_tile_list(tmp_path):
    tiles = tmp_path / "tiles.txt"
    tiles.write_text("271.282\n271.283\n271.284\n")
    paths = [f"{t}_{tile}.tgz" for tile in ("271.282", "271.284") for t in TYPES]
    paths.remove("logs_271.284.tgz")
    paths += ["final_cat_999.999.tgz", "README.txt"]
    report = find_missing(paths, _shapepipe(), [parse_where(f"tile=@{tiles}")], parse_where("type=" + ",".join(TYPES)))
    assert report.key_fields == ("tile",)
    assert report.keys == [("271.282",), ("271.283",), ("271.284",)]
    assert report.missing == {("271.283",): TYPES, ("271.284",): ["logs"]}
    assert report.complete == 1


def test_find_missing_without_a_list_uses_the_keys_present():
    paths = ["final_cat_100.100.tgz", "logs_100.100.tgz", "final_cat_100.101.tgz"]
    report = find_missing(paths, _shapepipe(), [], parse_where("type=final_cat,logs"))
    assert report.keys == [("100.100",), ("100.101",)]
    assert report.missing == {("100.101",): ["logs"]}


def test_find_missing_rejects_patterns_as_expectations():
    with pytest.raises(UsageError):
        find_missing([], _shapepipe(), [], parse_where("type=final_*"))
    with pytest.raises(UsageError):
        find_missing([], _shapepipe(), [], parse_where("colour=red"))


def test_regex_of_default_fields_stays_in_one_component():
    t = compile_template("{a}/{b}")
    assert t.parse("x/y/z") is None
    assert re.search(r"\[\^/\]", t.regex.pattern)
