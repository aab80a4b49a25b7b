"""The Dropbox backend at the Remote level, against the local API v2 server.

Every test drives the unmodified ``dropbox`` SDK over TLS to
tests/dropbox_fixture.py, which keeps real bytes and real content hashes.
"""

from __future__ import annotations

import logging
import os
import random

import pytest

from dropbox_fixture import dropbox_server  # noqa: F401  (pytest fixture)
from fitsync.options import RemoteOptions
from fitsync.dbhash import content_hash
from fitsync.errors import (
    AuthenticationFailed,
    BadInput,
    ConnectionFailed,
    NotFound,
    SourceChanged,
    TransferFailed,
    VerificationFailed,
)
from fitsync.remotes.base import ReadOnlyRemote
from fitsync.remotes.dropbox import Credentials, DropboxRemote, read_old_ini
from fitsync.remotes.retry import RetryPolicy

LINK = "https://www.dropbox.com/sh/k3yk3yk3y/AAAsecretpart?dl=0"
PASSWORD = "s3cret-link-pw"


class Sleeps(list):
    """Records the waits instead of sleeping, so the tests stay fast."""

    def __call__(self, seconds):
        self.append(seconds)


def remote(server, root="/", *, shared=False, password=PASSWORD, token="good-token", **kw):
    creds = Credentials("the test", access_token=token, ca_bundle=server.ca_file)
    if shared:
        creds.shared_url, creds.password = LINK, password
    sleeps = Sleeps()
    r = DropboxRemote(f"dropbox:{root}", root, creds,
                      retry=RetryPolicy(attempts=3, base_delay=0.01, sleep=sleeps), **kw)
    r.sleeps = sleeps
    return r


@pytest.fixture
def log(caplog):
    """Records of fitsync's loggers at every level, even after a CLI run in this
    process has stopped them propagating to the root logger."""
    loggers = [logging.getLogger("fitsync"), logging.getLogger("dropbox")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(caplog.handler)
        lg.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    yield caplog
    for lg, level in saved:
        lg.removeHandler(caplog.handler)
        lg.setLevel(level)


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# -- listing --------------------------------------------------------------------

def test_recursive_listing_follows_the_cursor(dropbox_server):
    srv = dropbox_server
    srv.page_size = 3
    files = {f"Release/d{i % 3}/sub/f{i:02d}.fits": blob(100 + i, i) for i in range(11)}
    for path, data in files.items():
        srv.put_file("/" + path, data, mtime=1_600_000_000 + len(data))
    srv.put_file("/Other/not-listed.txt", b"x")
    r = remote(srv, "/Release")
    entries = {e.path: e for e in r.list()}
    assert set(entries) == {p[len("Release/"):] for p in files}
    for path, data in files.items():
        e = entries[path[len("Release/"):]]
        assert e.size == len(data)
        assert e.mtime == 1_600_000_000 + len(data)  # client_modified
        assert e.hashes == {"dropbox": content_hash(data)}
    # 11 files + 6 folders + the root folder = 18 entries: 6 pages of 3
    assert srv.calls["files/list_folder"] == 1
    assert srv.calls["files/list_folder/continue"] == 5
    assert srv.content_requests == 0


def test_listing_a_missing_folder_is_not_found(dropbox_server):
    r = remote(dropbox_server, "/nope")
    assert not r.exists()
    with pytest.raises(NotFound, match="does not exist"):
        list(r.list())


def test_shared_link_walks_nested_folders(dropbox_server):
    srv = dropbox_server
    srv.page_size = 2
    layout = {
        "top.txt": b"top",
        "EPOCH01/COMBINED/STOKESI_IMAGES/a.fits": blob(3000),
        "EPOCH01/COMBINED/STOKESI_IMAGES/b.fits": blob(2000, 2),
        "EPOCH01/TILES/STOKESV_SELAVY/c.xml": b"<xml/>",
        "EPOCH02/deep/er/and/deeper/d.txt": b"deep",
    }
    for rel, data in layout.items():
        srv.put_file("/Shared/VAST/" + rel, data)
    srv.add_folder("/Shared/VAST/EMPTY")
    srv.add_shared_link(LINK, "/Shared/VAST", PASSWORD)
    r = remote(srv, "/", shared=True)
    entries = {e.path: e for e in r.list()}
    assert set(entries) == set(layout)
    assert all(entries[p].hashes["dropbox"] == content_hash(d) for p, d in layout.items())
    assert srv.calls["sharing/get_shared_link_metadata"] == 1
    assert srv.calls["files/list_folder/continue"] > 0  # paging inside a link, too
    # a root inside the link
    sub = remote(srv, "/EPOCH01/COMBINED", shared=True)
    assert {e.path for e in sub.list()} == {"STOKESI_IMAGES/a.fits", "STOKESI_IMAGES/b.fits"}
    assert sub.open_read("STOKESI_IMAGES/b.fits").read() == layout["EPOCH01/COMBINED/STOKESI_IMAGES/b.fits"]
    assert_read_only(sub)


def assert_read_only(r) -> None:
    assert "write" not in r.capabilities and "delete" not in r.capabilities
    with pytest.raises(ReadOnlyRemote, match="shared link"):
        r.write_atomic("x.txt", [b"x"])
    with pytest.raises(ReadOnlyRemote):
        r.delete("x.txt")


def test_names_fitsync_cannot_hold_are_reported_not_mangled(dropbox_server, log):
    srv = dropbox_server
    long_name = "\u00e9" * 200 + ".fits"  # 200 characters: fine on Dropbox, 405 bytes on disk
    srv.put_file("/R/ok.fits", b"ok")
    srv.put_file("/R/" + long_name, b"long")
    srv.put_file("/R/back\\slash.txt", b"bs")
    r = remote(srv, "/R")
    assert [e.path for e in r.list()] == ["ok.fits"]
    rejected = dict(r.rejected_names)
    assert set(rejected) == {long_name, "back\\slash.txt"}
    assert "255 bytes" in rejected[long_name]
    assert "rename it on Dropbox" in log.text


# -- authentication ---------------------------------------------------------------

def test_wrong_link_password_fails_once_and_is_not_retried(dropbox_server):
    srv = dropbox_server
    srv.put_file("/S/a.txt", b"a")
    srv.add_shared_link(LINK, "/S", PASSWORD)
    r = remote(srv, "/", shared=True, password="wrong-password")
    with pytest.raises(AuthenticationFailed) as first:
        r.exists()
    for again in (lambda: list(r.list()), lambda: r.open_read("a.txt"), lambda: r.stat("a.txt")):
        with pytest.raises(AuthenticationFailed):
            again()
    assert srv.password_failures == 1  # one wrong password sent, ever
    message = str(first.value)
    assert "password was refused" in message and "not locked" in message
    assert "wrong-password" not in message and "AAAsecretpart" not in message
    assert r.sleeps == []


def test_missing_password_says_so(dropbox_server):
    srv = dropbox_server
    srv.add_shared_link(LINK, "/S", PASSWORD)
    with pytest.raises(AuthenticationFailed, match="needs a password"):
        list(remote(srv, "/", shared=True, password=None).list())


@pytest.mark.parametrize("token,expect", [
    ("expired-token", "has expired"),
    ("made-up-token", "not valid"),
])
def test_refused_token_fails_at_once(dropbox_server, token, expect):
    srv = dropbox_server
    srv.expired_tokens.add("expired-token")
    srv.put_file("/a.txt", b"a")
    r = remote(srv, "/", token=token)
    with pytest.raises(AuthenticationFailed, match=expect) as err:
        list(r.list())
    assert token not in str(err.value)
    calls = sum(srv.calls.values())
    with pytest.raises(AuthenticationFailed):
        r.open_read("a.txt")
    assert sum(srv.calls.values()) == calls  # remembered: nothing more is sent
    assert r.sleeps == []


def test_refresh_token_gets_an_access_token(dropbox_server):
    srv = dropbox_server
    srv.put_file("/a.txt", b"abc")
    srv.refresh_tokens["refresh-1"] = ("app-key", "app-secret")
    creds = Credentials("the test", app_key="app-key", app_secret="app-secret", refresh_token="refresh-1",
                        ca_bundle=srv.ca_file)
    r = DropboxRemote("dropbox:/", "/", creds)
    assert [e.path for e in r.list()] == ["a.txt"]
    assert srv.calls["oauth2/token"] == 1
    bad = DropboxRemote("dropbox:/", "/", Credentials("the test", app_key="app-key", app_secret="nope",
                                                      refresh_token="refresh-1", ca_bundle=srv.ca_file))
    with pytest.raises(AuthenticationFailed, match="refresh token"):
        list(bad.list())
    assert srv.calls["oauth2/token"] == 2


# -- rate limits and server errors ----------------------------------------------

def test_429_waits_what_retry_after_says(dropbox_server, log):
    srv = dropbox_server
    srv.put_file("/d/a.txt", b"abc")
    srv.inject("files/list_folder", "429", count=2, retry_after=7)
    srv.inject("files/download", "429", count=1, retry_after=3)
    r = remote(srv, "/d")
    assert [e.path for e in r.list()] == ["a.txt"]
    assert r.open_read("a.txt").read() == b"abc"
    assert r.sleeps == [7, 7, 3]
    assert "rate limit (HTTP 429)" in log.text and "waiting 7 s" in log.text


def test_429_beyond_the_cap_is_reported_not_waited(dropbox_server):
    srv = dropbox_server
    srv.inject("files/list_folder", "429", count=1, retry_after=3600)
    r = remote(srv, "/")
    with pytest.raises(TransferFailed, match="asks to wait 3600 s"):
        list(r.list())
    assert r.sleeps == []


def test_endless_429_gives_up(dropbox_server):
    srv = dropbox_server
    srv.inject("files/list_folder", "429", count=100, retry_after=1)
    r = remote(srv, "/")
    with pytest.raises(TransferFailed, match="still rate limiting"):
        list(r.list())
    assert r.sleeps == [1, 1, 1]


def test_5xx_is_retried_with_backoff(dropbox_server):
    srv = dropbox_server
    srv.put_file("/a.bin", blob(5000))
    srv.inject("files/download", "503", count=2)
    srv.inject("files/list_folder", "500", count=1)
    r = remote(srv, "/")
    assert [e.path for e in r.list()] == ["a.bin"]
    assert r.open_read("a.bin").read() == blob(5000)
    assert len(r.sleeps) == 3
    assert r.sleeps[2] > r.sleeps[1] * 0.9  # 0.01*2 with jitter is at least 0.01
    srv.inject("files/download", "500", count=10)
    with pytest.raises(TransferFailed, match="server error HTTP 500.*gave up after 3 retries"):
        r.open_read("a.bin").read()


# -- downloads ------------------------------------------------------------------

def test_download_cut_mid_stream_resumes_with_range(dropbox_server, log):
    srv = dropbox_server
    data = blob(3 << 20)
    srv.put_file("/big.fits", data)
    r = remote(srv, "/")
    list(r.list())
    srv.inject("files/download", "cut", count=2, cut_after=1 << 20)
    got = r.open_read("big.fits").read()
    assert got == data
    assert srv.content_requests == 3
    starts = [int(r[len("bytes="):-1]) for r in srv.range_requests]
    assert len(starts) == 2 and 0 < starts[0] <= 1 << 20 < starts[1] <= 2 << 20
    # each resume starts where the delivered bytes end: little is fetched twice
    assert srv.content_bytes - len(data) == (1 << 20) - starts[0] + (2 << 20) - starts[1] < 1 << 17
    assert "download cut at byte 1048576" in log.text


def test_cut_on_an_endpoint_without_range_restarts_and_says_so(dropbox_server, log):
    srv = dropbox_server
    srv.shared_link_range = False
    data = blob(600_000, 3)
    srv.put_file("/S/x.fits", data)
    srv.add_shared_link(LINK, "/S", PASSWORD)
    r = remote(srv, "/", shared=True)
    list(r.list())
    srv.inject("sharing/get_shared_link_file", "cut", count=1, cut_after=250_000)
    assert r.open_read("x.fits").read() == data
    assert "ignored an HTTP Range request" in log.text
    assert "restarting the download from byte 0" in log.text
    assert srv.content_requests == 2


def test_download_cut_every_time_gives_up(dropbox_server):
    srv = dropbox_server
    srv.put_file("/x.bin", blob(10_000))
    srv.inject("files/download", "cut", count=50, cut_after=0)
    r = remote(srv, "/")
    with pytest.raises(ConnectionFailed, match="cut 4 times at byte 0"):
        r.open_read("x.bin").read()


def test_corrupt_download_never_reaches_eof(dropbox_server):
    srv = dropbox_server
    srv.put_file("/x.bin", blob(10_000))
    r = remote(srv, "/")
    list(r.list())
    srv.inject("files/download", "corrupt")
    with pytest.raises(VerificationFailed, match="content hash"):
        r.open_read("x.bin").read()


def test_changed_remote_file_is_detected_then_fetched_anew(dropbox_server):
    srv = dropbox_server
    srv.put_file("/c.txt", b"version one")
    r = remote(srv, "/")
    (entry,) = list(r.list())
    srv.put_file("/c.txt", b"version two!")
    with pytest.raises(SourceChanged, match="changed on Dropbox"):
        r.open_read("c.txt").read()
    fresh = r.stat("c.txt")
    assert fresh.size == 12 and fresh.hashes["dropbox"] == content_hash(b"version two!")
    assert r.open_read("c.txt").read() == b"version two!"


def test_change_between_a_cut_and_its_resume_is_detected(dropbox_server):
    srv = dropbox_server
    srv.put_file("/c.bin", blob(400_000))
    r = remote(srv, "/")
    list(r.list())
    srv.inject("files/download", "cut", cut_after=100_000)
    # The file changes while fitsync waits to resume (same size, new content).
    r.retry.sleep = lambda seconds: srv.put_file("/c.bin", blob(400_000, 9))
    with pytest.raises(SourceChanged):
        r.open_read("c.bin").read()
    (resumed,) = srv.range_requests
    assert 0 < int(resumed[len("bytes="):-1]) <= 100_000


def test_seek_and_ranges(dropbox_server):
    srv = dropbox_server
    data = blob(100_000)
    srv.put_file("/r.bin", data)
    r = remote(srv, "/")
    f = r.open_read("r.bin")
    f.seek(70_000)
    assert f.read() == data[70_000:]
    assert r.read_range("r.bin", 10, 20) == data[10:30]
    assert list(r.read_ranges("r.bin", [(0, 5), (99_990, 100)])) == [data[:5], data[99_990:]]
    assert srv.range_requests[0] == "bytes=70000-"


def test_dropbox_digest_needs_no_download(dropbox_server):
    srv = dropbox_server
    srv.put_file("/h.bin", blob(9000))
    r = remote(srv, "/")
    list(r.list())
    assert r.digest("h.bin", "dropbox") == content_hash(blob(9000))
    assert srv.content_requests == 0


# -- uploads --------------------------------------------------------------------

def test_upload_small_file_in_one_request(dropbox_server):
    import blake3

    srv = dropbox_server
    r = remote(srv, "/up")
    data = blob(70_000)
    r.write_atomic("a/b.fits", [data[:1000], data[1000:]], mtime=1_650_000_000.8,
                   expected_digest=blake3.blake3(data).hexdigest())
    assert srv.get_file("/up/a/b.fits") == data
    assert srv.files["/up/a/b.fits"].client_modified == 1_650_000_000
    assert srv.calls["files/upload"] == 1 and srv.calls["files/upload_session/start"] == 0
    (entry,) = r.list()
    assert entry.mtime == 1_650_000_000 and r.mtime_resolution == 1.0


def test_large_upload_uses_a_session_verified_by_content_hash(dropbox_server):
    import blake3

    srv = dropbox_server
    srv.max_single_upload = 1 << 20  # as files/upload refuses > 150 MiB, scaled down
    r = remote(srv, "/up", upload_chunk=1 << 20)
    data = blob((3 << 20) + 12345)
    pieces = [data[i:i + 300_000] for i in range(0, len(data), 300_000)]
    r.write_atomic("big.fits", pieces, mtime=1_650_000_000, expected_digest=blake3.blake3(data).hexdigest())
    assert srv.get_file("/up/big.fits") == data
    assert srv.calls["files/upload_session/start"] == 1
    assert srv.calls["files/upload_session/append_v2"] == 2
    assert srv.calls["files/upload_session/finish"] == 1
    assert srv.calls["files/upload"] == 0


def test_upload_session_survives_a_5xx(dropbox_server):
    srv = dropbox_server
    r = remote(srv, "/up", upload_chunk=1 << 20)
    data = blob((2 << 20) + 1)
    srv.inject("files/upload_session/append_v2", "503")
    r.write_atomic("x.bin", [data])
    assert srv.get_file("/up/x.bin") == data


def test_upload_whose_source_digest_differs_commits_nothing(dropbox_server):
    srv = dropbox_server
    r = remote(srv, "/up", upload_chunk=1 << 20)
    with pytest.raises(VerificationFailed, match="source digest"):
        r.write_atomic("x.bin", [blob(3 << 20)], expected_digest="00" * 32)
    with pytest.raises(VerificationFailed):
        r.write_atomic("y.bin", [b"small"], expected_digest="00" * 32)
    assert srv.files == {}
    assert srv.calls["files/upload_session/finish"] == 0 and srv.calls["files/upload"] == 0


def test_names_dropbox_cannot_hold_are_refused_not_renamed(dropbox_server):
    srv = dropbox_server
    r = remote(srv, "/up")
    with pytest.raises(BadInput, match="cannot hold the name 'dir/Thumbs.db'.*never renames"):
        r.write_atomic("dir/Thumbs.db", [b"x"])
    r.write_atomic("Field.fits", [b"one"])
    with pytest.raises(BadInput, match="ignore case.*'field.fits' would overwrite 'Field.fits'"):
        r.write_atomic("field.fits", [b"two"])
    assert {k: v.data for k, v in srv.files.items()} == {"/up/field.fits": b"one"}


def test_delete(dropbox_server):
    srv = dropbox_server
    srv.put_file("/d/a.txt", b"a")
    r = remote(srv, "/d")
    r.delete("a.txt")
    r.delete("a.txt")  # already gone: fine
    assert srv.files == {}


# -- configuration --------------------------------------------------------------

def write_ini(tmp_path, mode=0o600, body=None):
    path = tmp_path / "dropbox.ini"
    path.write_text(body if body is not None else
                    f"[dropbox]\nshared_url = {LINK}\npassword = {PASSWORD}\naccess_token = good-token\n")
    os.chmod(path, mode)
    return str(path)


def test_old_ini_config(tmp_path, dropbox_server):
    srv = dropbox_server
    srv.put_file("/S/EPOCH01/a.fits", b"abc")
    srv.add_shared_link(LINK, "/S", PASSWORD)
    ini = write_ini(tmp_path)
    creds = read_old_ini(ini)
    assert (creds.shared_url, creds.password, creds.access_token) == (LINK, PASSWORD, "good-token")
    assert PASSWORD not in repr(creds) and "good-token" not in repr(creds)
    r = DropboxRemote.from_url("dropbox:/EPOCH01", RemoteOptions(dropbox_config=str(ini), ca_bundle=srv.ca_file))
    assert [e.path for e in r.list()] == ["a.fits"]


def test_old_ini_config_refused_when_others_can_read_it(tmp_path):
    with pytest.raises(BadInput, match=r"other users can access it.*chmod 600"):
        read_old_ini(write_ini(tmp_path, 0o644))


@pytest.mark.parametrize("body,message", [
    ("[other]\nx = 1\n", "no \\[dropbox\\] section"),
    ("[dropbox]\nshared_url = x\n", "holds no Dropbox credentials"),
    ("not an ini", "not a valid INI"),
])
def test_bad_ini_config(tmp_path, body, message):
    with pytest.raises(BadInput, match=message):
        read_old_ini(write_ini(tmp_path, body=body))


def test_dropbox_url_without_credentials_says_what_to_do(monkeypatch):
    monkeypatch.delenv("FITSYNC_DROPBOX_TOKEN", raising=False)
    from fitsync.errors import UsageError

    with pytest.raises(UsageError, match="needs credentials"):
        DropboxRemote.from_url("dropbox:/x", RemoteOptions())


def test_named_remote_config(dropbox_server):
    srv = dropbox_server
    srv.put_file("/S/in/link.txt", b"link")
    srv.add_shared_link(LINK, "/S", PASSWORD)
    conf = {"type": "dropbox", "access_token": "good-token", "shared_url": LINK, "password": PASSWORD,
            "ca_bundle": srv.ca_file}
    r = DropboxRemote.from_config("vast", dict(conf, name="vast"), "/in", RemoteOptions())
    assert r.url == "vast:/in" and [e.path for e in r.list()] == ["link.txt"]
    based = DropboxRemote.from_config("vast", dict(conf, path="/in"), "", RemoteOptions())
    assert [e.path for e in based.list()] == ["link.txt"]
    with pytest.raises(BadInput, match="unknown key"):
        DropboxRemote.from_config("vast", dict(conf, passwd="x"), "/", RemoteOptions())


def test_named_remote_secrets_from_environment(dropbox_server, monkeypatch):
    srv = dropbox_server
    srv.put_file("/S/a.txt", b"a")
    srv.add_shared_link(LINK, "/S", PASSWORD)
    conf = {"type": "dropbox", "access_token_env": "T_VAR", "shared_url": LINK, "password_env": "P_VAR",
            "ca_bundle": srv.ca_file}
    monkeypatch.setenv("T_VAR", "good-token")
    monkeypatch.setenv("P_VAR", PASSWORD)
    assert [e.path for e in DropboxRemote.from_config("v", conf, "/", RemoteOptions()).list()] == ["a.txt"]
    monkeypatch.delenv("P_VAR")
    with pytest.raises(BadInput, match="password_env names P_VAR, which is not set"):
        DropboxRemote.from_config("v", conf, "/", RemoteOptions())


def test_secrets_never_reach_the_log(dropbox_server, log):
    srv = dropbox_server
    srv.put_file("/S/a.txt", blob(5000))
    srv.add_shared_link(LINK, "/S", PASSWORD)
    srv.inject("files/list_folder", "429", retry_after=1)
    srv.inject("sharing/get_shared_link_file", "cut", cut_after=10)
    srv.inject("sharing/get_shared_link_file", "503")
    r = remote(srv, "/", shared=True)
    list(r.list())
    r.open_read("a.txt").read()
    bad = remote(srv, "/", shared=True, password="wrong-pw-123")
    with pytest.raises(AuthenticationFailed) as err:
        list(bad.list())
    text = log.text + str(err.value)
    assert "rate limit" in text and "download cut" in text and "Request to files/list_folder" in text
    for secret in (PASSWORD, "wrong-pw-123", "good-token", "AAAsecretpart"):
        assert secret not in text


def test_empty_file_round_trip(dropbox_server):
    import blake3

    srv = dropbox_server
    r = remote(srv, "/e")
    r.write_atomic("empty.fits", iter(()), mtime=1_600_000_000, expected_digest=blake3.blake3(b"").hexdigest())
    (entry,) = r.list()
    assert entry.size == 0 and entry.hashes["dropbox"] == content_hash(b"")
    assert r.open_read("empty.fits").read() == b""
    assert srv.content_requests == 0  # nothing to fetch
