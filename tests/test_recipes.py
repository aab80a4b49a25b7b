"""Every command of the Recipes in docs/selection.md (and the README), run on
synthetic data of the same shape, so the recipes cannot rot.

The commands are read from the document itself; only the remote locations
are replaced by local directories.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import shlex
import shutil
import tarfile
from pathlib import Path

from test_datastore import make_store, store_rows

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "selection.md"
README = REPO / "README.md"


def recipe_blocks() -> dict[str, list[str]]:
    """{heading: [command, ...]} of the fenced blocks under '## Recipes'."""
    text = DOC.read_text()
    section = text.split("\n## Recipes", 1)[1]
    blocks: dict[str, list[str]] = {}
    heading = None
    for match in re.finditer(r"^### ([^\n]+)$|^```(\w+)\n(.*?)^```", section, re.MULTILINE | re.DOTALL):
        if match.group(1):
            heading = match.group(1).split(":")[0].strip()
        else:
            lines = [ln for ln in match.group(3).splitlines() if ln.strip()]
            blocks.setdefault(heading, []).extend(f"{match.group(2)}\t{ln}" for ln in lines)
    return blocks


def commands(heading: str, kind: str = "sh") -> list[str]:
    return [line.split("\t", 1)[1] for line in recipe_blocks()[heading] if line.startswith(kind + "\t")]


def run_recipe(cli, command: str, places: dict[str, Path]):
    for placeholder in sorted(places, key=len, reverse=True):
        command = command.replace(placeholder, str(places[placeholder]))
    argv = shlex.split(command)
    assert argv[0] == "fitsync", command
    unreplaced = [a for a in argv if re.match(r"^[a-z]+:/|^sftp://|^/data|^/var", a)]
    assert not unreplaced, f"recipe location without a test stand-in: {unreplaced}"
    return cli(*argv[1:])


def fits_bytes(tag: str) -> bytes:
    """A minimal valid FITS file (primary header only) that says what it is."""
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    0",
             f"OBJECT  = '{tag[:60]}'", "END"]
    return "".join(c.ljust(80) for c in cards).ljust(2880).encode("ascii")


def write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and ".fitsync" not in p.relative_to(root).parts} if root.exists() else set()


def test_recipes_are_in_the_readme():
    readme = README.read_text()
    blocks = recipe_blocks()
    assert set(blocks) == {"IACT data store", "SAAO nightly", "VAST", "ShapePipe"}
    for lines in blocks.values():
        for line in lines:
            assert line.split("\t", 1)[1] in readme, f"README lacks the recipe line: {line}"


# -- IACT -------------------------------------------------------------------------


def test_iact_recipes(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "server" / "hess-dl3-dr1"
    make_store(store, [20136, 20137, 20151, 20301], name="hess_dl3_dr1")
    (tmp_path / "crab_runs.txt").write_text("# Crab runs\n20136\n20151\n")
    places = {"sftp://iact.example.org/data/hess-dl3-dr1": store}
    listing, whole, runlist = commands("IACT data store")

    result = run_recipe(cli, listing, places)
    assert result.code == 0 and "hess_dl3_dr1" in result.out and "observations: 4" in result.out

    assert run_recipe(cli, whole, places).code == 0
    hdu, obs, _ = store_rows(tmp_path / "hess-dl3-dr1")
    assert sorted(set(int(x) for x in hdu["OBS_ID"])) == [20136, 20137, 20151, 20301]

    assert run_recipe(cli, runlist, places).code == 0
    hdu, obs, _ = store_rows(tmp_path / "crab")
    assert sorted(set(int(x) for x in hdu["OBS_ID"])) == [20136, 20151]
    assert tree(tmp_path / "crab") >= {"data/obs_20136.fits", "data/obs_20151.fits", "caldb/irf_file.fits"}
    assert "data/obs_20137.fits" not in tree(tmp_path / "crab")


# -- SAAO nightly -----------------------------------------------------------------

FIXED_NIGHT = dt.date(2026, 11, 1)


def saao_nights() -> list[dt.date]:
    today = dt.date.today()
    return sorted({today - dt.timedelta(days=n) for n in (0, 1, 2, 29, 30, 31, 45, 400)} | {FIXED_NIGHT})


def saao_archive(root: Path) -> set[str]:
    files = set()
    for night in saao_nights():
        for instrument in ("shoc", "hipo"):
            for rel in (f"{instrument}/{night:%Y}/{night:%m%d}/a0001.fits",
                        f"{instrument}/{night:%Y}/{night:%m%d}/calib/bias.fits"):
                write(root, rel, fits_bytes(rel))
                files.add(rel)
    write(root, "README.txt", b"not a night")
    return files


def in_last_30(rel: str) -> bool:
    parts = rel.split("/")
    night = dt.date(int(parts[1]), int(parts[2][:2]), int(parts[2][2:]))
    return (dt.date.today() - night).days <= 30  # any part of that day within the last 30 x 24 h


def test_saao_recipes(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    site1, site2, local, logs = tmp_path / "saao", tmp_path / "sutherland", tmp_path / "local", tmp_path / "logs"
    logs.mkdir()
    files = saao_archive(site1)
    shutil.copytree(site1, site2, copy_function=shutil.copy2)
    places = {"saao:/data": site1, "sutherland:/data": site2, "/data/saao": local, "/var/log/fitsync": logs}
    last30, one_night, one_instrument, check = commands("SAAO nightly")

    assert run_recipe(cli, last30, places).code == 0
    expected_30 = {f for f in files if in_last_30(f)}
    assert tree(local) == expected_30 and len({f.split("/")[2] for f in expected_30}) >= 5

    shutil.rmtree(local)
    assert run_recipe(cli, one_night, places).code == 0
    assert tree(local) == {f for f in files if f"/{FIXED_NIGHT:%Y/%m%d}/" in f}

    shutil.rmtree(local)
    assert run_recipe(cli, one_instrument, places).code == 0
    assert tree(local) == {f for f in expected_30 if f.startswith("shoc/")}

    shutil.rmtree(local)
    assert run_recipe(cli, last30, places).code == 0
    recent = sorted(expected_30)[0]
    old = next(f for f in sorted(files) if not in_last_30(f))
    (site2 / recent).write_bytes(fits_bytes("changed at the second site") + b"\0" * 2880)
    (site2 / old).unlink()  # outside the window: not part of the check
    result = run_recipe(cli, check, places)
    assert result.code == 1 and recent in result.out and old not in result.out
    report = (tmp_path / "saao-check.txt").read_text()
    assert recent in report and old not in report

    shutil.copy2(site1 / recent, site2 / recent)
    quiet = run_recipe(cli, check, places)
    assert quiet.code == 0 and quiet.out == ""  # cron mails nothing when the sites agree

    (cron_line,) = [c for c in commands("SAAO nightly", "crontab") if not c.startswith("MAILTO")]
    fields = cron_line.split(None, 5)
    assert fields[:5] == ["30", "8", "*", "*", "*"] and "%" not in fields[5]  # % is special in crontab
    shutil.rmtree(local)
    for part in fields[5].split(" && "):
        ran = run_recipe(cli, part, places)
        assert ran.code == 0 and ran.out == "", part
    assert tree(local) == expected_30
    assert (logs / "saao.log").stat().st_size > 0


# -- VAST -----------------------------------------------------------------------------

VAST_FIELDS = ["VAST_0918+00A", "VAST_1739-25A", "VAST_0012+00A", "VAST_2112-43A"]
VAST_EPOCHS = ["01", "02", "03x", "08", "09", "10x"]


def vast_archive(root: Path) -> set[str]:
    files = set()
    for epoch in VAST_EPOCHS:
        files.add(f"EPOCH{epoch}/VAST_epoch{epoch.lstrip('0')}.csv")
        for field in VAST_FIELDS:
            for stokes in "IQUV":
                base = f"EPOCH{epoch}/COMBINED/STOKES{stokes}"
                name = f"{field}.EPOCH{epoch}.{stokes}"
                files |= {f"{base}_IMAGES/{name}.fits", f"{base}_RMSMAPS/{name}_rms.fits",
                          f"{base}_RMSMAPS/{name}_bkg.fits"}
                files |= {f"{base}_SELAVY/{name}.selavy.{what}.{ext}"
                          for what in ("components", "islands") for ext in ("txt", "xml")}
                if stokes == "V":
                    files.add(f"{base}_SELAVY/n{name}.selavy.components.txt")
                files.add(f"EPOCH{epoch}/TILES/STOKES{stokes}_IMAGES/image.{stokes.lower()}.SB9602.cont.{field}"
                          ".linmos.taylor.0.restored.fits")
            files.add(f"EPOCH{epoch}/COMBINED/QC/{field}.EPOCH{epoch}.I_qc.png")
            files.add(f"EPOCH{epoch}/COMBINED/QC/{field}.EPOCH{epoch}.I.fits")
    for rel in files:
        write(root, rel, fits_bytes(rel) if rel.endswith(".fits") else rel.encode())
    return files


def test_vast_recipes(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "dropbox"
    vast_archive(source)
    (tmp_path / "find_fields_output.csv").write_text(
        "ra,dec,name,sbid,field_name\n"
        "321.75,-44.27,Q 2123-4429B,9673,VAST_2112-43A\n"
        "139.1,0.2,src,9673,VAST_0918+00A\n"
        "321.80,-44.20,other,9673,VAST_2112-43A\n")
    places = {"dropbox:/VAST_PILOT": source}
    scenario, from_csv = commands("VAST")

    assert run_recipe(cli, scenario, places).code == 0
    expected = set()
    for field in ("VAST_0918+00A", "VAST_1739-25A"):
        for epoch in ("01", "02", "08", "09"):
            for stokes in "IV":
                name = f"{field}.EPOCH{epoch}.{stokes}"
                expected |= {f"EPOCH{epoch}/COMBINED/STOKES{stokes}_IMAGES/{name}.fits",
                             f"EPOCH{epoch}/COMBINED/STOKES{stokes}_SELAVY/{name}.selavy.components.txt"}
    got = tree(tmp_path / "VAST_DOWNLOAD")
    assert got == expected
    assert not any("QC" in f for f in got)

    shutil.rmtree(tmp_path / "VAST_DOWNLOAD")
    assert run_recipe(cli, from_csv, places).code == 0
    got = tree(tmp_path / "VAST_DOWNLOAD")
    assert {f.split("/")[-1].split(".EPOCH")[0] for f in got} == {"VAST_0918+00A", "VAST_2112-43A"}
    assert {f.split("/")[1] for f in got} == {"COMBINED"} and all("/STOKESI_" in f for f in got)
    assert len(got) == 2 * len(VAST_EPOCHS) * 7  # image, rms, bkg, 4 selavy files per field and epoch
    assert not any("QC" in f for f in got)


# -- ShapePipe ----------------------------------------------------------------------------

TYPES = ["final_cat", "logs", "pipeline_flag", "setools_mask", "setools_stat", "setools_plot", "psfex_interp_exp"]


def result_archive(path: Path, kind: str, tile: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        data = fits_bytes(f"{kind} {tile}")
        info = tarfile.TarInfo(f"output/run_sp/{kind}/{kind}-{tile.replace('.', '-')}.fits")
        info.size, info.mtime = len(data), 1_700_000_000
        tar.addfile(info, io.BytesIO(data))


def test_shapepipe_recipes(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server, local = tmp_path / "vos", tmp_path / "results"
    tiles = ["271.282", "271.283", "272.282", "272.283"]
    for tile in tiles + ["999.999"]:
        for kind in TYPES:
            if (tile, kind) != ("272.283", "logs"):  # still running on the cluster
                result_archive(server / f"{kind}_{tile}.tgz", kind, tile)
    (tmp_path / "tile_numbers.txt").write_text("\n".join(tiles) + "\n")
    local.mkdir()
    for kind in TYPES:  # 271.282 is already here; 271.283 only partly
        shutil.copy2(server / f"{kind}_271.282.tgz", local / f"{kind}_271.282.tgz")
    shutil.copy2(server / "final_cat_271.283.tgz", local / "final_cat_271.283.tgz")
    before = {p.name: p.stat().st_ino for p in local.iterdir()}
    places = {"canfar:/results": server}
    available, missing, fetch = commands("ShapePipe")

    result = run_recipe(cli, available, places)
    assert result.code == 1 and "272.283: lacks logs" in result.out
    report = (tmp_path / "available.txt").read_text()
    assert "271.282\tcomplete" in report and "272.283\tlacks logs" in report

    result = run_recipe(cli, missing, places)
    assert result.code == 1
    assert (tmp_path / "missing.txt").read_text().split() == ["271.283", "272.282", "272.283"]

    result = run_recipe(cli, fetch, places)
    assert result.code == 0, result.err
    archives = {p.name for p in local.glob("*.tgz")}
    assert archives == {f"{k}_{t}.tgz" for t in tiles for k in TYPES} - {"logs_272.283.tgz"}
    assert not any("999.999" in a for a in archives)
    assert all(local.joinpath(name).stat().st_ino == ino for name, ino in before.items())
    assert (local / "output/run_sp/final_cat/final_cat-272-282.fits").read_bytes() == fits_bytes("final_cat 272.282")

    result = run_recipe(cli, missing, places)
    assert result.code == 1 and (tmp_path / "missing.txt").read_text().split() == ["272.283"]
    (tmp_path / "tile_numbers.txt").write_text("271.282\n272.282\n")
    result = run_recipe(cli, missing, places)
    assert result.code == 0 and result.out == "" and (tmp_path / "missing.txt").read_text() == ""
