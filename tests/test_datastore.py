"""IACT data stores: listing productions and copying observation subsets.

The real H.E.S.S. DL3 DR1 release for the acceptance figures; small synthetic
stores (written with astropy) for escaping FILE_DIRs, shared IRFs, BASE_DIR,
--keep-local and hostile index tables.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from fitsync import __version__
from fitsync.options import Selection
from fitsync.datastore import mirror_production, read_master
from fitsync.datastore_locator import Locator, split_location
from fitsync.errors import UnsafePath
from fitsync.remotes.local import LocalRemote
from fitsync.engine.mirror import Mirror, MirrorOptions

RUNLIST_1 = [20136, 20137, 20151]
RUNLIST_2 = [20301, 20302, 20137]


def write_runlist(path: Path, ids, comment: str = "# runs\n") -> Path:
    path.write_text(comment + "".join(f"{i}  # obs\n" for i in ids))
    return path


def store_rows(dst: Path, production: str | None = None):
    """(hdu table, obs table, master entry) of a written store, with every
    row's file resolved, checked to be inside DST and opened with astropy."""
    master = json.loads((dst / "master.json").read_text())
    entry = next(d for d in master["datasets"] if production is None or d["name"] == production)
    hdu = Table.read(dst / entry["hduindx"])
    obs = Table.read(dst / entry["obsindx"])
    index_dir = (dst / entry["hduindx"]).parent
    for row in hdu:
        path = (index_dir / str(row["FILE_DIR"]) / str(row["FILE_NAME"])).resolve()
        assert str(path).startswith(str(dst.resolve()) + os.sep), path
        with fits.open(path) as hdul:
            assert str(row["HDU_NAME"]).strip().upper() in [h.name.upper() for h in hdul]
    return hdu, obs, entry


def data_files(dst: Path) -> list[str]:
    return sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.fits*")
                  if p.is_file() and ".fitsync" not in p.parts and "index" not in p.name)


# -- the real H.E.S.S. DL3 DR1 release ----------------------------------------------------


def test_datasets_reads_the_index_and_says_what_master_json_claims(cli, hess):
    result = cli("datasets", hess)
    assert result.code == 0, result.err
    assert "hess_dl3_dr1" in result.out
    assert "observations: 105 (master.json says 106)" in result.out
    assert "105 files" in result.out
    as_json = cli("datasets", hess, "--json")
    assert as_json.code == 0
    assert as_json.json()["version"] == __version__  # the versioned --json schema (docs/api.md)
    (summary,) = as_json.json()["productions"]
    assert summary["observations"] == 105 and summary["declared"]["Total observations"] == 106
    assert summary["events"] == 1046156  # sum of EVENT_COUNT, not master.json's 662826
    assert summary["files"] == 105 and summary["missing_files"] == []
    assert summary["disk_bytes"] == sum(p.stat().st_size for p in (hess / "data").iterdir())
    assert abs(summary["livetime_s"] / 3600 - 44.79) < 0.01


def test_subset_copy_then_growing_it(cli, hess, tmp_path):
    dst = tmp_path / "subset"
    first = cli("mirror", hess, dst, "--production=hess_dl3_dr1", f"--runlist={write_runlist(tmp_path / 'r1.txt', RUNLIST_1)}")
    assert first.code == 0, first.err
    expected = [f"data/hess_dl3_dr1_obs_id_{i:06d}.fits.gz" for i in sorted(RUNLIST_1)]
    assert data_files(dst) == expected
    for rel in expected:
        assert (dst / rel).read_bytes() == (hess / rel).read_bytes()
    hdu, obs, entry = store_rows(dst, "hess_dl3_dr1")
    assert sorted(set(int(x) for x in hdu["OBS_ID"])) == RUNLIST_1
    assert len(hdu) == 6 * 3  # six HDUs per observation
    assert sorted(int(x) for x in obs["OBS_ID"]) == RUNLIST_1
    assert entry["Total observations"] == 3
    source = Table.read(hess / "obs-index.fits.gz")
    src_rows = source[np.isin(source["OBS_ID"], RUNLIST_1)]
    assert list(obs["LIVETIME"]) == pytest.approx(list(src_rows["LIVETIME"]))
    inode = (dst / expected[0]).stat().st_ino

    second = cli("mirror", hess, dst, "--production=hess_dl3_dr1", f"--runlist={write_runlist(tmp_path / 'r2.txt', RUNLIST_2)}")
    assert second.code == 0, second.err
    grown = sorted(set(RUNLIST_1) | set(RUNLIST_2))
    assert data_files(dst) == [f"data/hess_dl3_dr1_obs_id_{i:06d}.fits.gz" for i in grown]
    hdu, obs, entry = store_rows(dst, "hess_dl3_dr1")
    assert sorted(set(int(x) for x in hdu["OBS_ID"])) == grown
    assert len(hdu) == 6 * len(grown)
    assert sorted(int(x) for x in obs["OBS_ID"]) == grown
    assert entry["Total observations"] == len(grown)
    assert (dst / expected[0]).stat().st_ino == inode  # nothing already there was copied again


def test_unknown_production_lists_the_names(cli, hess, tmp_path):
    result = cli("mirror", hess, tmp_path / "d", "--production=hess_dr2")
    assert result.code == 2
    assert "hess_dl3_dr1" in result.err and "hess_dr2" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "d" / "data").exists()


def test_obs_ids_not_in_the_index_are_reported_by_number(cli, hess, tmp_path):
    runlist = write_runlist(tmp_path / "r.txt", [20136, 99999, 12345])
    result = cli("mirror", hess, tmp_path / "d", "--production=hess_dl3_dr1", f"--runlist={runlist}")
    assert result.code == 1
    assert "99999" in result.err and "12345" in result.err
    assert data_files(tmp_path / "d") == ["data/hess_dl3_dr1_obs_id_020136.fits.gz"]
    hdu, _, _ = store_rows(tmp_path / "d")
    assert set(int(x) for x in hdu["OBS_ID"]) == {20136}


def test_bad_runlist_line_is_named(cli, hess, tmp_path):
    runlist = tmp_path / "r.txt"
    runlist.write_text("20136\nCrab\n")
    result = cli("mirror", hess, tmp_path / "d", "--production=hess_dl3_dr1", f"--runlist={runlist}")
    assert result.code == 2 and "r.txt:2" in result.err


def test_interrupted_copy_completes_on_rerun_without_recopying(cli, hess, tmp_path):
    dst = tmp_path / "d"
    runlist = write_runlist(tmp_path / "r.txt", RUNLIST_1)
    src, dst_remote = LocalRemote(str(hess)), LocalRemote(str(dst))
    opts = Selection(production="hess_dl3_dr1", runlist=str(runlist))

    def interrupted(paths):
        Mirror(src, dst_remote, MirrorOptions(only_paths=set(paths[:1]), fits_check=False)).run()
        raise KeyboardInterrupt  # the user pressed ^C after the first file

    with pytest.raises(KeyboardInterrupt):
        mirror_production(src, dst_remote, src.root, opts, None, False, interrupted)
    assert data_files(dst) == ["data/hess_dl3_dr1_obs_id_020136.fits.gz"]
    assert not (dst / "hdu-index.fits.gz").exists()  # no index names files that are not there
    inode = (dst / "data/hess_dl3_dr1_obs_id_020136.fits.gz").stat().st_ino

    again = cli("mirror", hess, dst, "--production=hess_dl3_dr1", f"--runlist={runlist}")
    assert again.code == 0, again.err
    hdu, obs, _ = store_rows(dst)
    assert sorted(set(int(x) for x in hdu["OBS_ID"])) == RUNLIST_1
    assert (dst / "data/hess_dl3_dr1_obs_id_020136.fits.gz").stat().st_ino == inode


def test_observation_with_a_failed_file_gets_no_index_rows(hess, tmp_path):
    dst = tmp_path / "d"
    src, dst_remote = LocalRemote(str(hess)), LocalRemote(str(dst))
    opts = Selection(production="hess_dl3_dr1", runlist=str(write_runlist(tmp_path / "r.txt", RUNLIST_1)))

    def all_but_last(paths):
        return Mirror(src, dst_remote, MirrorOptions(only_paths=set(paths[:-1]), fits_check=False)).run()

    assert mirror_production(src, dst_remote, src.root, opts, None, False, all_but_last) == 3
    hdu, obs, _ = store_rows(dst)
    assert sorted(set(int(x) for x in hdu["OBS_ID"])) == [20136, 20137]


# -- synthetic stores ----------------------------------------------------------------------


def _fits_file(path: Path, hdu_names: list[str], payload: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    hdus = [fits.PrimaryHDU()]
    for name in hdu_names:
        table = fits.BinTableHDU(Table({"X": np.arange(4, dtype="f4") + payload}), name=name.upper())
        hdus.append(table)
    fits.HDUList(hdus).writeto(path, overwrite=True)


def make_store(store: Path, obs_ids, *, index_dir: str = "", data_dir: str = "data", irf_dir: str = "caldb",
               index_file_dir: str | None = None, irf_file_dir: str | None = None, base_dir: str | None = None,
               name: str = "synthetic", extra_rows=()) -> None:
    """A small GADF store: one events file per observation, one IRF file shared by all."""
    index_path = store / index_dir if index_dir else store
    _fits_file(store / irf_dir / "irf_file.fits", ["aeff", "edisp"])
    rows = []
    for obs_id in obs_ids:
        _fits_file(store / data_dir / f"obs_{obs_id}.fits", ["events", "gti"], payload=obs_id)
        fdir = index_file_dir if index_file_dir is not None else os.path.relpath(store / data_dir, index_path)
        idir = irf_file_dir if irf_file_dir is not None else os.path.relpath(store / irf_dir, index_path)
        rows += [(obs_id, "events", "events", fdir, f"obs_{obs_id}.fits", "EVENTS"),
                 (obs_id, "gti", "gti", fdir, f"obs_{obs_id}.fits", "GTI"),
                 (obs_id, "aeff", "aeff_2d", idir, "irf_file.fits", "AEFF"),
                 (obs_id, "edisp", "edisp_2d", idir, "irf_file.fits", "EDISP")]
    rows += list(extra_rows)
    hdu = Table(rows=rows, names=["OBS_ID", "HDU_TYPE", "HDU_CLASS", "FILE_DIR", "FILE_NAME", "HDU_NAME"])
    hdu.meta["EXTNAME"] = "HDU_INDEX"
    if base_dir is not None:
        hdu.meta["BASE_DIR"] = base_dir
    obs = Table({"OBS_ID": list(obs_ids), "LIVETIME": [1800.0] * len(obs_ids), "ONTIME": [1900.0] * len(obs_ids),
                 "EVENT_COUNT": [100 * (i + 1) for i in range(len(obs_ids))]})
    obs.meta["EXTNAME"] = "OBS_INDEX"
    index_path.mkdir(parents=True, exist_ok=True)
    hdu.write(index_path / "hdu-index.fits.gz", overwrite=True)
    obs.write(index_path / "obs-index.fits.gz", overwrite=True)
    prefix = f"{index_dir}/" if index_dir else ""
    master = {"datasets": [{"name": name, "hduindx": prefix + "hdu-index.fits.gz", "obsindx": prefix + "obs-index.fits.gz",
                            "Total observations": len(obs_ids)}]}
    (store / "master.json").write_text(json.dumps(master))


def test_shared_irf_is_copied_once_and_indexes_resolve(cli, tmp_path):
    store, dst = tmp_path / "store", tmp_path / "dst"
    make_store(store, [1, 2, 3, 4], index_dir="index/all")
    src, dst_remote = LocalRemote(str(store)), LocalRemote(str(dst))
    asked = []

    def record(paths):
        asked.append(list(paths))
        return Mirror(src, dst_remote, MirrorOptions(only_paths=set(paths), fits_check=False)).run()

    opts = Selection(production="synthetic", runlist=str(write_runlist(tmp_path / "r", [2, 3])))
    assert mirror_production(src, dst_remote, src.root, opts, None, False, record) == 0
    assert asked == [["caldb/irf_file.fits", "data/obs_2.fits", "data/obs_3.fits"]]
    hdu, obs, entry = store_rows(dst, "synthetic")
    assert entry["hduindx"] == "index/all/hdu-index.fits.gz"
    assert set(hdu["FILE_DIR"]) == {"../../data", "../../caldb"}
    assert entry["Total observations"] == 2 and entry["Total events"] == 200 + 300


def test_escaping_file_dir_is_refused_unless_its_root_is_allowed(cli, tmp_path):
    """The CTA 1DC layout: the store is index/, data and caldb are up ../../ from index/all."""
    top = tmp_path / "1dc"
    make_store(top, [10, 11], index_dir="index/all", data_dir="data/baseline/gps",
               irf_dir="caldb/data/cta/1dc/bcf/South_z20_50h")
    (top / "index" / "master.json").write_text((top / "master.json").read_text().replace("index/all/", "all/"))
    store, dst = top / "index", tmp_path / "dst"

    refused = cli("mirror", store, dst, "--production=synthetic")
    assert refused.code == 2
    assert "outside the store root" in refused.err and "--allow-root" in refused.err
    assert not dst.exists() or data_files(dst) == []

    allowed = cli("mirror", store, dst, "--production=synthetic", f"--allow-root={top}", "--json")
    assert allowed.code == 0, allowed.err
    summary = allowed.json()  # the files outside the store root are counted like the others
    assert summary["files_new"] == 3 and summary["files_total"] == 3 and summary["bytes_transferred"] > 0
    assert data_files(dst) == [
        "_outside/1dc/caldb/data/cta/1dc/bcf/South_z20_50h/irf_file.fits",
        "_outside/1dc/data/baseline/gps/obs_10.fits",
        "_outside/1dc/data/baseline/gps/obs_11.fits",
    ]
    assert (dst / "_outside/1dc/data/baseline/gps/obs_10.fits").read_bytes() == \
        (top / "data/baseline/gps/obs_10.fits").read_bytes()
    hdu, obs, _ = store_rows(dst)
    assert sorted(set(int(x) for x in hdu["OBS_ID"])) == [10, 11]
    listing = cli("datasets", store, f"--allow-root={top}")
    assert listing.code == 0 and "outside the store root" in listing.out


@pytest.mark.parametrize("file_dir, file_name", [("/etc", "passwd"), ("data", "../../x.fits"), ("data", "a/b.fits"),
                                                 ("../../../../../../tmp", "x.fits")])
def test_hostile_index_rows_are_refused(tmp_path, file_dir, file_name):
    store = tmp_path / "store"
    make_store(store, [1], extra_rows=[(1, "psf", "psf_table", file_dir, file_name, "PSF")])
    src = LocalRemote(str(store))
    calls = []
    opts = Selection(production="synthetic")
    with pytest.raises(UnsafePath):
        mirror_production(src, LocalRemote(str(tmp_path / "dst")), src.root, opts, None, False, calls.append)
    assert calls == []  # refused before anything was copied


def test_base_dir_keyword_is_honoured(tmp_path):
    store = tmp_path / "store"
    make_store(store, [5, 6], index_dir="idx", index_file_dir="obs", irf_file_dir="irfs", base_dir="../files")
    (store / "files").mkdir()
    os.rename(store / "data", store / "files" / "obs")
    os.rename(store / "caldb", store / "files" / "irfs")
    src, dst_remote = LocalRemote(str(store)), LocalRemote(str(tmp_path / "dst"))

    def mirror(paths):
        return Mirror(src, dst_remote, MirrorOptions(only_paths=set(paths), fits_check=False)).run()

    assert mirror_production(src, dst_remote, str(store), Selection(production="synthetic"), None, False, mirror) == 0
    hdu, _, _ = store_rows(tmp_path / "dst")
    assert "BASE_DIR" not in hdu.meta  # rewritten FILE_DIRs make it unnecessary
    assert set(hdu["FILE_DIR"]) == {"../files/obs", "../files/irfs"}


def test_remote_rows_win_unless_keep_local(cli, tmp_path):
    store, dst = tmp_path / "store", tmp_path / "dst"
    make_store(store, [1, 2])
    assert cli("mirror", store, dst, "--production=synthetic").code == 0
    # Someone edited the destination's obs index (e.g. a local quality flag).
    obs = Table.read(dst / "obs-index.fits.gz")
    obs["LIVETIME"][obs["OBS_ID"] == 1] = 42.0
    obs.write(dst / "obs-index.fits.gz", overwrite=True)

    kept = cli("mirror", store, dst, "--production=synthetic", "--keep-local")
    assert kept.code == 0, kept.err
    assert Table.read(dst / "obs-index.fits.gz")["LIVETIME"][0] == 42.0

    replaced = cli("mirror", store, dst, "--production=synthetic")
    assert replaced.code == 0
    assert Table.read(dst / "obs-index.fits.gz")["LIVETIME"][0] == 1800.0


def test_other_productions_in_dst_master_json_are_kept(cli, tmp_path):
    store, dst = tmp_path / "store", tmp_path / "dst"
    make_store(store, [1])
    dst.mkdir()
    (dst / "master.json").write_text(json.dumps({"datasets": [{"name": "older", "hduindx": "o/h.fits",
                                                               "obsindx": "o/o.fits"}]}))
    assert cli("mirror", store, dst, "--production=synthetic").code == 0
    names = [d["name"] for d in json.loads((dst / "master.json").read_text())["datasets"]]
    assert names == ["older", "synthetic"]


def test_datasets_reports_files_missing_from_the_store(cli, tmp_path):
    store = tmp_path / "store"
    make_store(store, [1, 2])
    (store / "data" / "obs_2.fits").unlink()
    result = cli("datasets", store)
    assert result.code == 1
    assert "missing:" in result.out and "data/obs_2.fits" in result.out
    copy = cli("mirror", store, tmp_path / "dst", "--production=synthetic")
    assert copy.code == 1  # observation 2 cannot be complete
    hdu, _, _ = store_rows(tmp_path / "dst")
    assert set(int(x) for x in hdu["OBS_ID"]) == {1}


def test_store_without_master_json_is_one_default_production(cli, tmp_path):
    store = tmp_path / "store"
    make_store(store, [7])
    (store / "master.json").unlink()
    assert [p.name for p in read_master(LocalRemote(str(store)))] == ["default"]
    assert "default" in cli("datasets", store).out


def test_master_json_with_escaping_index_path_is_refused(cli, tmp_path):
    store = tmp_path / "store"
    make_store(store, [1])
    (store / "master.json").write_text(json.dumps({"datasets": [{"name": "x", "hduindx": "../h.fits",
                                                                 "obsindx": "o.fits"}]}))
    result = cli("datasets", store)
    assert result.code == 2 and "'..'" in result.err


def test_gzip_bomb_index_is_refused(tmp_path):
    from fitsync.datastore_files import gunzip_bounded
    from fitsync.errors import BadInput

    bomb = gzip.compress(b"\0" * (2 << 20))
    with pytest.raises(BadInput, match="expands past"):
        gunzip_bounded(bomb, "hdu-index.fits.gz", limit=1 << 20)


def test_locations_split_for_every_kind_of_store():
    assert split_location("sftp://user@host:2222/data/store") == ("sftp://user@host:2222", "/data/store")
    assert split_location("dropbox:/IACT/store") == ("dropbox:", "/IACT/store")
    assert split_location("/data/x/../store") == ("", "/data/store")
    remote = Locator("sftp://h/data/cta/1dc/index", ["/data/cta/1dc"])
    assert remote.allowed == [("sftp://h/data/cta/1dc", "/data/cta/1dc")]


def test_remote_store_over_http(cli, hess, tmp_path):
    """STORE can be remote: the real release served over HTTP (index pages, HEAD, GET)."""
    from http_fixture import HttpFixture

    with HttpFixture(str(hess.parent), autoindex="apache") as server:
        url = f"{server.url}/{hess.name}/"
        listing = cli("datasets", url)
        assert listing.code == 0, listing.err
        assert "observations: 105 (master.json says 106)" in listing.out
        runlist = write_runlist(tmp_path / "r.txt", RUNLIST_1)
        copy = cli("mirror", url, tmp_path / "dst", "--production=hess_dl3_dr1", f"--runlist={runlist}")
        assert copy.code == 0, copy.err
    hdu, _, _ = store_rows(tmp_path / "dst")
    assert sorted(set(int(x) for x in hdu["OBS_ID"])) == RUNLIST_1
    for rel in data_files(tmp_path / "dst"):
        assert (tmp_path / "dst" / rel).read_bytes() == (hess / rel).read_bytes()


def test_dry_run_writes_nothing(cli, tmp_path):
    store, dst = tmp_path / "store", tmp_path / "dst"
    make_store(store, [1, 2])
    result = cli("mirror", store, dst, "--production=synthetic", "--dry-run")
    assert result.code == 0, result.err
    assert "data/obs_1.fits" in result.out  # what a real run would copy
    assert not dst.exists() or not any(p.is_file() and ".fitsync" not in p.parts for p in dst.rglob("*"))
