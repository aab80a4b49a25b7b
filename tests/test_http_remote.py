"""The HTTP(S) remote against real local servers: listing, ranges, quirks, TLS, retries."""

from __future__ import annotations

import logging
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fitsync.errors import BadInput, ConnectionFailed, NotFound, SourceChanged, TransferFailed
from fitsync.engine.entries import build_entries
from fitsync.formats.manifest import DEFAULT_NAME, write_atomically, write_jsonl
from fitsync.options import RemoteOptions
from fitsync.remotes import open_remote
from fitsync.remotes.base import Capability
from fitsync.remotes.http import HttpRemote, index_links
from fitsync.remotes.local import LocalRemote
from http_fixture import HttpFixture, TlsMaterial, render_index


def _random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


BIG = _random_bytes(400_000, 1)
FILES = {
    "a.bin": BIG,
    "sub/b c.bin": b"hello " * 1000,
    "sub/deeper/c.txt": b"c" * 10,
    "empty.dat": b"",
}


def _tree(root) -> None:
    for rel, data in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _remote(url: str, **kw) -> HttpRemote:
    remote = HttpRemote(url, retries=kw.pop("retries", 2), **kw)
    remote.retry.base_delay = 0.01
    return remote


@pytest.fixture
def site(tmp_path):
    _tree(tmp_path / "rel")
    return tmp_path


def _serve(site, behaviour="ranges", **kw) -> HttpFixture:
    return HttpFixture(str(site), behaviour, **kw)


# -- listing ----------------------------------------------------------------------

@pytest.mark.parametrize("style", ["nginx", "apache"])
def test_index_pages_list_every_file_with_exact_sizes(site, style, caplog):
    caplog.set_level(logging.INFO, logger="fitsync")
    with _serve(site, autoindex=style) as srv, _remote(srv.url + "/rel/") as remote:
        listed = {e.path: e.size for e in remote.list()}
        assert listed == {k: len(v) for k, v in FILES.items()}
        assert remote.capabilities == {Capability.READ_RANGE}  # no manifest: no signatures
        assert remote.listed_hashes == frozenset()
        assert remote.mtime_resolution == 1.0
        assert remote.listed_from == "index pages"
    assert "from the server's index pages" in caplog.text


def test_index_links_drop_parent_sorting_and_foreign_links():
    page = (
        '<a href="?C=M;O=A">Last modified</a><a href="/">Parent Directory</a><a href="../">../</a>'
        '<a href="http://elsewhere.example/x.fits">x</a><a href="/other/y.fits">y</a>'
        '<a href="ok%20file.fits">ok</a><a href="sub/">sub/</a><a href="a%2Fb">bad</a>'
        '<a href="#top">top</a><a href="sub/nested.fits">deep link</a>'
    )
    files, dirs = index_links(page, "http://h/rel/")
    assert files == ["ok file.fits"]
    assert dirs == ["sub"]


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\x00"),
                              min_size=1, max_size=30).filter(lambda n: n not in (".", "..")),
                      min_size=1, max_size=8, unique=True),
       style=st.sampled_from(["nginx", "apache"]))
def test_index_page_round_trip(names, style, tmp_path_factory):
    directory = tmp_path_factory.mktemp("idx")
    made = []
    for name in names:
        try:
            (directory / name).write_bytes(b"x")
            made.append(name)
        except OSError:  # names the file system refuses (too long in bytes)
            continue
    page = render_index(style, "/rel/", str(directory))
    files, dirs = index_links(page, "http://h/rel/")
    assert sorted(files) == sorted(made)
    assert dirs == []


def test_manifest_listing_carries_digests_and_lists_itself(site, caplog):
    caplog.set_level(logging.INFO, logger="fitsync")
    root = site / "rel"
    entries, errors = build_entries(LocalRemote(str(root)), list(LocalRemote(str(root)).list()), fits_fields=False)
    assert not errors
    write_atomically(str(root / DEFAULT_NAME), lambda out: write_jsonl(out, entries))
    with _serve(site) as srv, _remote(srv.url + "/rel/") as remote:
        listed = {e.path: e for e in remote.list()}
        assert set(listed) == set(FILES) | {DEFAULT_NAME}
        assert listed["a.bin"].hashes["blake3"] == {e.path: e.blake3 for e in entries}["a.bin"]
        assert remote.listed_hashes == {"blake3"}
        assert remote.listed_from == "release manifest"
        assert Capability.SIGNATURE not in remote.capabilities  # written without --blocks
        assert remote.block_signature("a.bin") is None
        with remote.open_read(DEFAULT_NAME) as f:  # served from the verified copy in memory
            assert f.read() == (root / DEFAULT_NAME).read_bytes()
        index_requests = [r for r in srv.counters.requests if r.path.endswith("/")]
        assert index_requests == []  # the manifest made index pages unnecessary
    assert "release manifest" in caplog.text


def test_manifest_with_escaping_path_is_refused(site):
    root = site / "rel"
    (root / DEFAULT_NAME).write_text(
        '{"format": "fitsync-manifest", "version": 1, "files": 1}\n'
        '{"path": "../../etc/passwd", "size": 1, "mtime": 0, "blake3": "' + "0" * 64 + '"}\n'
    )
    with _serve(site) as srv, _remote(srv.url + "/rel/") as remote:
        with pytest.raises(BadInput, match="escape"):
            list(remote.list())


def test_open_remote_parses_options(site, tmp_path):
    with _serve(site) as srv:
        remote = open_remote(srv.url + "/rel", RemoteOptions(retries=5))
        assert isinstance(remote, HttpRemote) and remote.retry.attempts == 5 and remote.url.endswith("/rel/")
        remote.close()
        with pytest.raises(NotFound, match="CA bundle"):
            open_remote("https://127.0.0.1:1/x/", RemoteOptions(ca_bundle=str(tmp_path / "missing.pem")))


def test_missing_file_and_credentials_are_not_leaked(site):
    with _serve(site) as srv:
        url = srv.url.replace("http://", "http://user:s3cret@") + "/rel/"
        with _remote(url) as remote:
            assert "s3cret" not in remote.url
            with pytest.raises(NotFound) as err:
                remote.stat("nope.bin")
            assert "s3cret" not in str(err.value)


# -- ranges ------------------------------------------------------------------------

def test_nearby_ranges_go_in_one_multirange_request(site):
    ranges = [(0, 100), (10_000, 50), (10_100, 10), (200_000, 30_000), (399_990, 10)]
    with _serve(site) as srv, _remote(srv.url + "/rel/") as remote:
        remote.stat("a.bin")
        srv.counters.reset()
        got = list(remote.read_ranges("a.bin", ranges))
        assert got == [BIG[o:o + n] for o, n in ranges]
        gets = srv.counters.ranged_gets()
        assert len(gets) == 1 and gets[0].range.count(",") == 3  # 10000-10109 coalesced
        wanted = sum(n for _, n in ranges)
        assert srv.counters.body_bytes <= wanted + 40 + 4 * 160 + 50  # ranges, one 40-byte gap, part framing


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranges=st.lists(st.tuples(st.integers(0, len(BIG) + 10), st.integers(0, 70_000)), max_size=25))
def test_read_ranges_returns_exactly_the_bytes_asked(ranges, shared_server):
    remote = shared_server
    got = list(remote.read_ranges("a.bin", ranges))
    assert got == [BIG[o:o + n] for o, n in ranges]


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    site = tmp_path_factory.mktemp("shared")
    _tree(site / "rel")
    with _serve(site) as srv, _remote(srv.url + "/rel/") as remote:
        yield remote


def test_server_ignoring_range_gets_one_plain_download_per_read(site, caplog):
    ranges = [(10, 10), (300_000, 1000)]
    with _serve(site, "ignore-range") as srv, _remote(srv.url + "/rel/") as remote:
        list(remote.list())
        srv.counters.reset()
        assert list(remote.read_ranges("a.bin", ranges)) == [BIG[o:o + n] for o, n in ranges]
        assert len(srv.counters.requests) == 1  # detected at once, not looped on
        assert Capability.READ_RANGE not in remote.capabilities
        srv.counters.reset()
        assert list(remote.read_ranges("a.bin", ranges)) == [BIG[o:o + n] for o, n in ranges]
        assert [r.range for r in srv.counters.requests] == [None]  # plain download, no Range sent any more
        with remote.open_read("a.bin") as f:
            assert f.read() == BIG
    assert caplog.text.count("answers Range requests with the whole file") == 1


@pytest.mark.parametrize("flavour", ["first-only", "garbled"])
def test_broken_multirange_is_detected_once(site, flavour, caplog):
    ranges = [(0, 100), (150_000, 100), (390_000, 100)]
    with _serve(site, "broken-multirange", broken_multirange=flavour) as srv, _remote(srv.url + "/rel/") as remote:
        list(remote.list())
        for _ in range(3):
            assert list(remote.read_ranges("a.bin", ranges)) == [BIG[o:o + n] for o, n in ranges]
        multi = [r for r in srv.counters.ranged_gets() if "," in r.range]
        assert len(multi) == 1  # tried once, then one range per request
        assert not remote.multirange_works and remote.ranges_work
        # Single ranges still work on this server, so delta pulls stay small.
        assert srv.counters.body_bytes < 3 * 100 * 3 + len(BIG)
    assert caplog.text.count("multi-range answer unusable") == 1


def test_download_resumes_after_a_dropped_connection(site):
    with _serve(site, drop_after=150_000) as srv, _remote(srv.url + "/rel/") as remote:
        with remote.open_read("a.bin") as f:
            assert f.read() == BIG
        gets = [r for r in srv.counters.requests if r.method == "GET" and r.path.endswith("a.bin")]
        assert [g.range for g in gets] == [None, "bytes=150000-"]
        assert sum(g.body_bytes for g in gets) == len(BIG)  # nothing fetched twice


def test_seek_then_read_uses_a_range(site):
    with _serve(site) as srv, _remote(srv.url + "/rel/") as remote:
        with remote.open_read("a.bin") as f:
            f.seek(390_000)
            assert f.read() == BIG[390_000:]
        assert srv.counters.ranged_gets()[-1].range == "bytes=390000-"


@pytest.mark.parametrize("honor_if_match", [True, False])
def test_file_changing_between_requests_raises_source_changed(site, honor_if_match):
    versions = [_random_bytes(100_000, 7), _random_bytes(100_000, 8)]
    (site / "rel" / "moving.bin").write_bytes(versions[0])
    with _serve(site, "changing", versions={"/rel/moving.bin": versions},
                honor_if_match=honor_if_match) as srv, _remote(srv.url + "/rel/") as remote:
        assert remote.stat("moving.bin").size == 100_000  # HEAD sees version 0
        with pytest.raises(SourceChanged, match="moving.bin"):
            list(remote.read_ranges("moving.bin", [(0, 10), (50_000, 10)]))
        # A fresh look (what the mirror engine does before its retry) accepts the new version.
        remote.stat("moving.bin")
        assert list(remote.read_ranges("moving.bin", [(0, 10)])) == [versions[1][:10]]


def test_stream_refuses_to_splice_two_versions(site):
    old, new = _random_bytes(200_000, 7), _random_bytes(200_000, 8)
    versions = [old, old, new]  # HEAD and the first GET see the old file; the resume sees the new one
    (site / "rel" / "moving.bin").write_bytes(versions[0])
    with _serve(site, "changing", versions={"/rel/moving.bin": versions}, drop_after=50_000,
                honor_if_match=False) as srv, _remote(srv.url + "/rel/") as remote:
        remote.stat("moving.bin")
        with pytest.raises(SourceChanged):
            with remote.open_read("moving.bin") as f:
                f.read()
        gets = [r for r in srv.counters.requests if r.method == "GET" and r.path.endswith("moving.bin")]
        assert [g.range for g in gets] == [None, "bytes=50000-"]


# -- failures, retries, TLS ---------------------------------------------------------

def test_transient_errors_are_retried_with_backoff(site):
    with _serve(site, fail_first=2) as srv, _remote(srv.url + "/rel/", retries=3) as remote:
        assert remote.read_range("a.bin", 5, 5) == BIG[5:10]
        assert [r.status for r in srv.counters.requests][:2] == [503, 503]


def test_retries_are_bounded(site):
    with _serve(site, fail_first=100) as srv, _remote(srv.url + "/rel/", retries=2) as remote:
        with pytest.raises(TransferFailed, match="3 attempts"):
            remote.stat("a.bin")
        assert len(srv.counters.requests) == 3


def test_unreachable_server_is_a_connection_failure():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    with _remote(f"http://127.0.0.1:{port}/rel/", retries=1) as remote:
        with pytest.raises(ConnectionFailed, match="cannot connect"):
            list(remote.list())


def test_unlistable_directory_without_manifest_says_what_to_do(site):
    with _serve(site, autoindex=None) as srv, _remote(srv.url + "/rel/") as remote:
        with pytest.raises(BadInput, match="does not list this directory.*fitsync manifest"):
            list(remote.list())


def test_tls_is_verified_and_ca_bundle_trusts_a_private_ca(site, tmp_path):
    tls = TlsMaterial(str(tmp_path / "tls"))
    with _serve(site, tls=tls) as srv:
        assert srv.url.startswith("https://")
        with _remote(srv.url + "/rel/") as untrusting:
            with pytest.raises(ConnectionFailed, match="--ca-bundle"):
                list(untrusting.list())
        with _remote(srv.url + "/rel/", ca_bundle=tls.ca_file) as remote:
            assert {e.path for e in remote.list()} == set(FILES)
            assert list(remote.read_ranges("a.bin", [(1, 2), (300_000, 5)])) == [BIG[1:3], BIG[300_000:300_005]]
        # The certificate names 127.0.0.1 only: the same server as "localhost" is refused.
        wrong_name = srv.url.replace("127.0.0.1", "localhost")
        with _remote(wrong_name + "/rel/", ca_bundle=tls.ca_file, retries=0) as remote:
            with pytest.raises(ConnectionFailed, match="not trusted"):
                list(remote.list())


def test_plain_http_client_against_tls_server_fails_clearly(site, tmp_path):
    tls = TlsMaterial(str(tmp_path / "tls"))
    with _serve(site, tls=tls) as srv:
        with _remote(srv.url.replace("https://", "http://") + "/rel/", retries=0) as remote:
            with pytest.raises((ConnectionFailed, TransferFailed)):
                list(remote.list())


def test_html_page_where_the_manifest_should_be_is_not_a_manifest(site, caplog):
    caplog.set_level(logging.INFO, logger="fitsync")
    (site / "rel" / DEFAULT_NAME).write_text("<html><body>Not here</body></html>\n")  # a "soft 404"
    with _serve(site) as srv, _remote(srv.url + "/rel/") as remote:
        assert set(FILES) <= {e.path for e in remote.list()}
    assert "from the server's index pages" in caplog.text


def test_missing_root_does_not_exist(site, cli, tmp_path):
    with _serve(site) as srv:
        with _remote(srv.url + "/nowhere/") as remote:
            assert not remote.exists()
        result = cli("mirror", srv.url + "/nowhere/", tmp_path / "dst")
    assert result.code == 2 and "does not exist" in result.err and "Traceback" not in result.err


def test_index_links_compare_names_unescaped():
    page = '<a href="/rel/a(1).fits">abs</a><a href="b%281%29.fits">rel</a><a href="http://h/rel/c%20d/">dir</a>'
    files, dirs = index_links(page, "http://h/rel/")
    assert files == ["a(1).fits", "b(1).fits"] and dirs == ["c d"]


def test_redirects_are_followed_but_never_to_plain_http(site, tmp_path):
    with _serve(site, redirects={"/moved/a.bin": "/rel/a.bin"}) as srv:
        with _remote(srv.url + "/moved/") as remote:
            assert list(remote.read_ranges("a.bin", [(7, 5), (390_000, 5)])) == [BIG[7:12], BIG[390_000:390_005]]
        tls = TlsMaterial(str(tmp_path / "tls"))
        with _serve(site, tls=tls, redirects={"/rel/a.bin": srv.url + "/rel/a.bin"}) as secure:
            with _remote(secure.url + "/rel/", ca_bundle=tls.ca_file) as remote:
                with pytest.raises(ConnectionFailed, match="downgrade"):
                    remote.read_range("a.bin", 0, 10)
