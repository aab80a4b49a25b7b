"""End to end: `fitsync mirror` / `compare` of a VAST-style release on the local Dropbox server.

The release is synthetic and small but has the VAST Pilot layout:
EPOCHnn/COMBINED|TILES/STOKES{I,Q,U,V}_{IMAGES,RMSMAPS,BKGMAPS,SELAVY}/...
with FITS images and Selavy XML/TXT catalogues.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from conftest import read_tree
from dropbox_fixture import dropbox_server  # noqa: F401  (pytest fixture)

LINK = "https://www.dropbox.com/sh/vastpilot00/AAvastsecret?dl=0"
PASSWORD = "vast-pilot-pw"
FIELDS = ("VAST_0918+00A", "VAST_1739-25A")


def fits_bytes(seed: int, n_data: int) -> bytes:
    """A small valid single-HDU FITS file (8-bit image)."""
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    1",
             f"NAXIS1  = {n_data:20d}", f"OBJECT  = 'seed {seed}'", "END"]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode("ascii")
    data = random.Random(seed).randbytes(n_data)
    return header + data + b"\0" * (-n_data % 2880)


def vast_release() -> dict[str, bytes]:
    """File names as in the VAST Pilot release (and fitsync's vast-pilot profile)."""
    files = {}
    seed = 0
    for epoch in ("EPOCH01", "EPOCH02", "EPOCH03x", "EPOCH08", "EPOCH09"):
        for kind in ("COMBINED", "TILES"):
            for stokes in ("I", "Q", "U", "V"):
                for field in FIELDS:
                    seed += 1
                    base = f"{field}.{epoch}.{stokes}"
                    top = f"{epoch}/{kind}/STOKES{stokes}"
                    files[f"{top}_IMAGES/{base}.fits"] = fits_bytes(seed, 3000 + seed * 37)
                    files[f"{top}_RMSMAPS/{base}_rms.fits"] = fits_bytes(seed + 500, 2000)
                    files[f"{top}_BKGMAPS/{base}_bkg.fits"] = fits_bytes(seed + 900, 1500)
                    files[f"{top}_SELAVY/{base}.selavy.components.xml"] = (
                        f"<VOTABLE><!-- {base} components --></VOTABLE>\n".encode())
                    files[f"{top}_SELAVY/{base}.selavy.components.txt"] = (
                        f"# island_id component_id ra dec {seed}\n".encode() * 3)
        files[f"{epoch}/QC/{epoch}_flux_ratios.txt"] = f"qc {epoch}\n".encode()
    files["README.txt"] = b"VAST Pilot Survey, synthetic test release\n"
    return files


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    """`dropbox:` resolves through a remote named "dropbox" when one is configured:
    keep the user's own remotes file out of these tests."""
    monkeypatch.setenv("FITSYNC_CONFIG", str(tmp_path / "no-remotes.toml"))


@pytest.fixture
def release(dropbox_server, monkeypatch):
    """The release in the user's own Dropbox at /VAST, also behind a password-protected link."""
    srv = dropbox_server
    files = vast_release()
    for i, (rel, data) in enumerate(sorted(files.items())):
        srv.put_file("/VAST/" + rel, data, mtime=1_577_836_800 + i * 60)
    srv.add_shared_link(LINK, "/VAST", PASSWORD)
    srv.page_size = 50  # many pages for the listing, as with 42,000 files
    srv.reset_counters()
    monkeypatch.setenv("FITSYNC_DROPBOX_TOKEN", "good-token")
    return files


def corrupt(path: Path) -> None:
    """Flip one byte, keeping size and mtime: only a content comparison can tell."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_vast_mirror_rerun_and_checksum_repair(cli, release, dropbox_server, tmp_path):
    srv = dropbox_server
    dst = tmp_path / "vast"
    ca = ["--ca-bundle", srv.ca_file]

    # 1. initial download: every file, verified
    run = cli("mirror", "dropbox:/VAST", dst, "--json", "--jobs=2", *ca)
    assert run.code == 0, run.err
    summary = run.json()
    assert summary["files_new"] == len(release) == summary["files_total"]
    assert summary["files_failed"] == 0
    assert read_tree(dst) == release
    assert srv.content_requests == len(release)
    some = sorted(release)[5]
    assert (dst / some).stat().st_mtime == srv.files["/vast/" + some.lower()].client_modified

    # 2. re-run: nothing moves, not one content request
    srv.reset_counters()
    run = cli("mirror", "dropbox:/VAST", dst, "--json", *ca)
    assert run.code == 0, run.err
    assert run.json()["files_unchanged"] == len(release)
    assert run.json()["bytes_transferred"] == 0
    assert srv.content_requests == 0

    # 3. three corrupted local files: --checksum repairs exactly those, comparing by content hash
    victims = sorted(release)[1::37][:3]
    for rel in victims:
        corrupt(dst / rel)
    srv.reset_counters()
    run = cli("mirror", "dropbox:/VAST", dst, "--checksum", "--json", *ca)
    assert run.code == 0, run.err
    summary = run.json()
    assert summary["files_repaired"] == 3, summary
    assert summary["files_unchanged"] == len(release) - 3
    assert srv.content_requests == 3  # identical files were never downloaded
    assert srv.calls["files/download"] == 3
    assert read_tree(dst) == release

    # 4. compare --checksum: no download at all
    srv.reset_counters()
    run = cli("compare", dst, "dropbox:/VAST", "--checksum", *ca)
    assert run.code == 0, run.out + run.err
    assert srv.content_requests == 0
    corrupt(dst / victims[0])
    run = cli("compare", dst, "dropbox:/VAST", "--checksum", "--json", *ca)
    assert run.code == 1, run.out + run.err
    assert [d["path"] for d in run.json()["differ"]] == [victims[0]]
    assert srv.content_requests == 0


def test_old_script_config_mirror_through_the_shared_link(cli, release, dropbox_server, tmp_path):
    srv = dropbox_server
    ini = tmp_path / "vast.ini"
    ini.write_text(f"[dropbox]\nshared_url = {LINK}\npassword = {PASSWORD}\naccess_token = good-token\n")
    ini.chmod(0o600)
    dst = tmp_path / "epoch01"
    run = cli("mirror", "dropbox:/EPOCH01/COMBINED", dst, "--dropbox-config", ini, "--ca-bundle", srv.ca_file,
              "--json")
    assert run.code == 0, run.err
    want = {k[len("EPOCH01/COMBINED/"):]: v for k, v in release.items() if k.startswith("EPOCH01/COMBINED/")}
    assert read_tree(dst) == want and run.json()["files_new"] == len(want)
    assert srv.calls["sharing/get_shared_link_file"] == len(want)
    assert srv.password_failures == 0


def test_wrong_password_in_old_config_exits_4_once(cli, release, dropbox_server, tmp_path):
    srv = dropbox_server
    ini = tmp_path / "vast.ini"
    ini.write_text(f"[dropbox]\nshared_url = {LINK}\npassword = not-the-pw\naccess_token = good-token\n")
    ini.chmod(0o600)
    run = cli("mirror", "dropbox:/", tmp_path / "d", "--dropbox-config", ini, "--ca-bundle", srv.ca_file)
    assert run.code == 4
    assert srv.password_failures == 1
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and "password was refused" in lines[0] and "Traceback" not in run.err
    assert "not-the-pw" not in run.err + run.out and "AAvastsecret" not in run.err + run.out


def test_world_readable_old_config_is_refused(cli, release, dropbox_server, tmp_path):
    ini = tmp_path / "vast.ini"
    ini.write_text(f"[dropbox]\nshared_url = {LINK}\npassword = {PASSWORD}\naccess_token = good-token\n")
    ini.chmod(0o644)
    run = cli("mirror", "dropbox:/", tmp_path / "d", "--dropbox-config", ini)
    assert run.code == 2 and "chmod 600" in run.err
    assert dropbox_server.calls == {}


def test_expired_token_exits_4(cli, release, dropbox_server, tmp_path, monkeypatch):
    dropbox_server.expired_tokens.add("old-token")
    monkeypatch.setenv("FITSYNC_DROPBOX_TOKEN", "old-token")
    run = cli("mirror", "dropbox:/VAST", tmp_path / "d", "--ca-bundle", dropbox_server.ca_file)
    assert run.code == 4 and "has expired" in run.err and "old-token" not in run.err
    assert len(run.err.strip().splitlines()) == 1


def test_mirror_survives_429_and_5xx_and_a_cut(cli, release, dropbox_server, tmp_path):
    srv = dropbox_server
    srv.inject("files/list_folder/continue", "429", retry_after=1)
    srv.inject("files/download", "503")
    srv.inject("files/download", "cut", cut_after=100)
    dst = tmp_path / "d"
    run = cli("mirror", "dropbox:/VAST/EPOCH02", dst, "--json", "--ca-bundle", srv.ca_file)
    assert run.code == 0, run.err
    want = {k[len("EPOCH02/"):]: v for k, v in release.items() if k.startswith("EPOCH02/")}
    assert read_tree(dst) == want
    assert run.json()["files_failed"] == 0


def test_changed_remote_file_during_mirror_ends_with_the_new_version(cli, release, dropbox_server, tmp_path,
                                                                    monkeypatch):
    srv = dropbox_server
    dst = tmp_path / "d"
    target = "EPOCH08/TILES/STOKESV_SELAVY/VAST_0918+00A.EPOCH08.V.selavy.components.txt"
    new = b"# re-processed catalogue\n" * 5

    # The file is replaced on Dropbox after the listing, at the first download.
    original = srv._take_fault

    def replace_then_fault(route):
        if route == "files/download" and srv.files["/vast/" + target.lower()].data != new:
            srv.put_file("/VAST/" + target, new, mtime=1_700_000_000)
        return original(route)

    monkeypatch.setattr(srv, "_take_fault", replace_then_fault)
    run = cli("mirror", "dropbox:/VAST/EPOCH08", dst, "--json", "--ca-bundle", srv.ca_file)
    assert run.code == 0, run.err
    assert (dst / target[len("EPOCH08/"):]).read_bytes() == new
    assert (dst / target[len("EPOCH08/"):]).stat().st_mtime == 1_700_000_000


def test_named_remote_from_the_remotes_file(cli, release, dropbox_server, tmp_path, monkeypatch):
    srv = dropbox_server
    config = tmp_path / "remotes.toml"
    config.write_text(
        '[vastpilot]\ntype = "dropbox"\n'
        f'shared_url = "{LINK}"\npassword_env = "VAST_PW"\naccess_token = "good-token"\n'
        f'ca_bundle = "{srv.ca_file}"\n')
    config.chmod(0o600)
    monkeypatch.setenv("FITSYNC_CONFIG", str(config))
    monkeypatch.setenv("VAST_PW", PASSWORD)
    dst = tmp_path / "combined"
    run = cli("mirror", "vastpilot:/EPOCH02/COMBINED/STOKESV_IMAGES", dst, "--json")
    assert run.code == 0, run.err
    want = {k.rsplit("/", 1)[1]: v for k, v in release.items() if k.startswith("EPOCH02/COMBINED/STOKESV_IMAGES/")}
    assert read_tree(dst) == want and run.json()["files_new"] == 2
    config.chmod(0o644)  # holds a token: refused when others can read it
    run = cli("mirror", "vastpilot:/EPOCH02", dst)
    assert run.code == 2 and "chmod 600" in run.err


def test_config_template_dropbox_is_valid_and_usable(cli, release, dropbox_server, tmp_path, monkeypatch):
    import tomllib

    out = tmp_path / "remotes.toml"
    run = cli("config", "template", "dropbox", f"--output={out}")
    assert run.code == 0, run.err
    assert out.stat().st_mode & 0o777 == 0o600
    text = out.read_text()
    remotes = tomllib.loads(text)
    assert {r["type"] for r in remotes.values()} == {"dropbox"}
    # fill in the shared-link example and use it as is
    text = text.replace("https://www.dropbox.com/sh/xxxxxxxx/yyyyyyyy?dl=0", LINK)
    text += f'ca_bundle = "{dropbox_server.ca_file}"\n'
    out.write_text(text)
    monkeypatch.setenv("FITSYNC_CONFIG", str(out))
    monkeypatch.setenv("VAST_LINK_PASSWORD", PASSWORD)
    monkeypatch.setenv("DROPBOX_TOKEN", "good-token")
    (tmp_path / "empty").mkdir()
    run = cli("compare", tmp_path / "empty", "vastpilot:/EPOCH01/TILES/STOKESQ_RMSMAPS", "--json")
    assert run.code == 1, run.err
    assert len(run.json()["only_b"]) == 2


def test_push_a_local_tree_to_dropbox(cli, dropbox_server, tmp_path, monkeypatch):
    from conftest import write_tree

    srv = dropbox_server
    monkeypatch.setenv("FITSYNC_DROPBOX_TOKEN", "good-token")
    src = tmp_path / "local"
    files = {"EPOCH01/a.fits": fits_bytes(1, 5000), "EPOCH01/b.xml": b"<x/>", "notes.txt": b"n" * 10}
    write_tree(src, files, mtime=1_700_000_000.6)  # sub-second: Dropbox keeps whole seconds
    ca = ["--ca-bundle", srv.ca_file]
    run = cli("mirror", src, "dropbox:/Backup", "--json", *ca)
    assert run.code == 0, run.err
    assert run.json()["files_new"] == 3
    assert {k: v.data for k, v in srv.files.items()} == {"/backup/" + k.lower(): v for k, v in files.items()}
    assert srv.files["/backup/notes.txt"].client_modified == 1_700_000_000
    srv.reset_counters()
    run = cli("mirror", src, "dropbox:/Backup", "--json", *ca)
    assert run.code == 0 and run.json()["files_unchanged"] == 3
    assert not any(srv.calls[r] for r in ("files/upload", "files/upload_session/start"))

    # names Dropbox cannot hold: reported per file, never renamed; the rest still goes up
    write_tree(src, {"EPOCH01/Thumbs.db": b"t", "EPOCH01/A.fits": b"clash", "c.txt": b"c"})
    run = cli("mirror", src, "dropbox:/Backup", "--json", *ca)
    assert run.code == 3
    failures = {f["path"]: f["reason"] for f in run.json()["failures"]}
    assert set(failures) == {"EPOCH01/Thumbs.db", "EPOCH01/A.fits"}
    assert "cannot hold the name" in failures["EPOCH01/Thumbs.db"]
    assert "ignore case" in failures["EPOCH01/A.fits"]
    assert srv.get_file("/Backup/c.txt") == b"c"
    assert srv.get_file("/Backup/EPOCH01/a.fits") == files["EPOCH01/a.fits"]


def test_vast_selection_recipe_from_the_docs(cli, release, dropbox_server, tmp_path):
    """docs/selection.md's VAST recipe, run as written against the Dropbox source: two fields,
    epochs 1, 2, 8 and 9, combined only, Stokes I and V, field images and selavy components, no QC."""
    srv = dropbox_server
    dst = tmp_path / "VAST_DOWNLOAD"
    run = cli("mirror", "dropbox:/VAST", dst, "--profile=vast-pilot",
              "--where=field=VAST_0918+00A,VAST_1739-25A", "--where=epoch=1,2,8,9", "--where=kind=COMBINED",
              "--where=stokes=I,V", "--where=product=IMAGES,SELAVY", "--where=ext=fits,selavy.components.txt",
              "--ca-bundle", srv.ca_file, "--json")
    assert run.code == 0, run.err
    want = {
        f"{epoch}/COMBINED/STOKES{stokes}_{product}/{field}.{epoch}.{stokes}.{ext}"
        for epoch in ("EPOCH01", "EPOCH02", "EPOCH08", "EPOCH09") for stokes in "IV" for field in FIELDS
        for product, ext in (("IMAGES", "fits"), ("SELAVY", "selavy.components.txt"))
    }
    got = read_tree(dst)
    assert set(got) == want
    assert all(got[p] == release[p] for p in want)
    assert srv.content_requests == len(want) == 32


def test_mirror_never_places_a_corrupt_download(cli, release, dropbox_server, tmp_path):
    srv = dropbox_server
    dst = tmp_path / "d"
    root = "EPOCH09/COMBINED/STOKESI_IMAGES"
    # one corrupted response: caught by the content hash, fetched again
    srv.inject("files/download", "corrupt")
    run = cli("mirror", f"dropbox:/VAST/{root}", dst, "--json", "--jobs=1", "--ca-bundle", srv.ca_file)
    assert run.code == 0, run.err
    assert read_tree(dst) == {k.rsplit("/", 1)[1]: v for k, v in release.items() if k.startswith(root + "/")}
    assert srv.content_requests == 3  # two files, one fetched twice
    # corrupted every time: the file fails and nothing is left under its name
    victim = f"{root}/VAST_0918+00A.EPOCH09.I.fits"
    (dst / victim.rsplit("/", 1)[1]).unlink()
    srv.inject("files/download", "corrupt", count=100)
    run = cli("mirror", f"dropbox:/VAST/{root}", dst, "--json", "--retries=1", "--ca-bundle", srv.ca_file)
    assert run.code == 3
    (failure,) = run.json()["failures"]
    assert "content hash" in failure["reason"]
    assert not (dst / victim.rsplit("/", 1)[1]).exists()


def test_interrupted_large_download_resumes_on_the_next_run(cli, dropbox_server, tmp_path, monkeypatch):
    """A download that fails for good keeps its verified partial file; the next
    run asks Dropbox only for the rest (HTTP Range from the last good chunk)."""
    srv = dropbox_server
    monkeypatch.setenv("FITSYNC_DROPBOX_TOKEN", "good-token")
    data = random.Random(5).randbytes(20 << 20)
    srv.put_file("/Big/cube.fits", data)
    srv.inject("files/download", "cut", count=1, cut_after=9 << 20)
    srv.inject("files/download", "cut", count=100, cut_after=0)
    dst = tmp_path / "d"
    ca = ["--ca-bundle", srv.ca_file]
    run = cli("mirror", "dropbox:/Big", dst, "--retries=0", "--json", *ca)
    assert run.code == 3 and run.json()["files_failed"] == 1
    assert not (dst / "cube.fits").exists()
    srv.faults.clear()
    srv.reset_counters()
    run = cli("mirror", "dropbox:/Big", dst, "--json", *ca)
    assert run.code == 0, run.err
    assert (dst / "cube.fits").read_bytes() == data
    assert srv.range_requests == [f"bytes={8 << 20}-"]  # the journal vouches for the first 8 MiB chunk
    assert srv.content_bytes == len(data) - (8 << 20)
    assert run.json()["bytes_reused"] == 8 << 20
