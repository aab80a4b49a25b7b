"""Read-only HTTP(S) remote: releases served by any web server.

``https://host/path/`` is listed from the release manifest at that root
(``fitsync-manifest.jsonl``, see fitsync.release) or, without one, by
walking Apache/nginx index pages and asking each file's size and date with
HEAD. With a manifest written with ``--blocks`` the remote offers block
signatures, so the mirror engine updates an old copy zsync-style: it rolls
over the local file and asks only for the missing ranges, which are
coalesced and fetched in multi-range requests.

What servers get wrong is detected once and worked around, never looped on:
a server that ignores Range (answers 200) gets plain full downloads; one
whose multi-range answers are broken gets one range per request. TLS is
verified (``--ca-bundle=FILE`` adds a CA); transient failures are retried
with exponential backoff and downloads resume where they stopped; ETag,
Last-Modified and the total size pin each file, so a file replaced while we
read it raises SourceChanged instead of splicing two versions.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import http.client
import io
import logging
import os
import re
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import BinaryIO, Iterator

from fitsync.errors import (
    AuthenticationFailed,
    BadInput,
    ConnectionFailed,
    NotFound,
    SourceChanged,
    TransferFailed,
    UsageError,
)
from fitsync.options import RemoteOptions
from fitsync.paths import safe_relpath
from fitsync.remotes.retry import RetryPolicy, retrying
from fitsync.remotes.base import Capability, Entry, Remote

log = logging.getLogger("fitsync.http")

USER_AGENT = "fitsync (+https://github.com/fitsync)"
READ_CHUNK = 1 << 20
# Ranges closer than this are fetched as one: a multipart part costs ~100
# bytes of framing, a separate request a round trip.
GAP_MULTIRANGE = 2880
GAP_SINGLE = 64 << 10
# Apache refuses (answers 200 to) more than 200 ranges by default.
MAX_RANGES_PER_REQUEST = 100
MAX_RANGE_HEADER = 4000
MAX_REDIRECTS = 5
MAX_INDEX_PAGES = 100_000
MAX_INDEX_PAGE_BYTES = 64 << 20
MAX_PART_HEADER_LINES = 32
HEAD_WORKERS = 4
POOL_SIZE = 8

_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}


class _Transient(Exception):
    """A failure worth retrying: reset connection, timeout, 5xx, short body."""

    def __init__(self, reason: str, *, connecting: bool = False, retry_after: float | None = None):
        super().__init__(reason)
        self.connecting = connecting
        self.retry_after = retry_after


class _Broken(Exception):
    """The server answered a range request in a way we cannot use."""


@dataclass
class _Pinned:
    """What identifies the version of a file we started reading."""

    etag: str | None
    last_modified: str | None
    size: int | None


# -- connections -----------------------------------------------------------------

class _Pool:
    """Keep-alive connections to one origin, shared by threads."""

    def __init__(self, scheme: str, host: str, port: int, context: ssl.SSLContext | None, timeout: float):
        self.scheme, self.host, self.port = scheme, host, port
        self.context = context
        self.timeout = timeout
        self._idle: list = []
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return conn, False

    def put(self, conn) -> None:
        with self._lock:
            if len(self._idle) < POOL_SIZE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Exchange:
    """One response being read; gives its connection back when done."""

    def __init__(self, url: str, conn, pool: _Pool, resp: http.client.HTTPResponse):
        self.url = url
        self.conn = conn
        self.pool = pool
        self.resp = resp
        self.status = resp.status

    def header(self, name: str) -> str | None:
        return self.resp.getheader(name)

    def readinto(self, view) -> int:
        try:
            return self.resp.readinto(view)
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(f"connection lost while reading ({_describe(exc)})") from None

    def read_exact_into(self, view) -> None:
        """Fill ``view`` or raise _Transient: a body cut short is a dropped connection."""
        got = 0
        total = len(view)
        while got < total:
            n = self.readinto(view[got:])
            if not n:
                raise _Transient(f"the server closed the connection after {got} of {total} bytes")
            got += n

    def skip(self, count: int) -> None:
        scratch = bytearray(min(count, READ_CHUNK))
        view = memoryview(scratch)
        while count:
            n = min(count, len(scratch))
            self.read_exact_into(view[:n])
            count -= n

    def skip_rest(self, limit: int) -> None:
        """Read what is left of a short body so the connection can be reused."""
        try:
            self.resp.read(limit)
        except (OSError, http.client.HTTPException):
            pass

    def readline(self) -> bytes:
        try:
            return self.resp.readline(1024)
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(f"connection lost while reading ({_describe(exc)})") from None

    def read_small(self, limit: int) -> bytes:
        """The whole body of a response expected to be small (a manifest, an index page)."""
        length = self.resp.length
        if length is not None:
            if length > limit:
                raise BadInput(f"{self.url} is {length} bytes; more than the {limit} expected")
            data = bytearray(length)
            self.read_exact_into(memoryview(data))
            return bytes(data)
        chunks, total = [], 0
        while True:  # no Content-Length (chunked): read to the end, within the limit
            try:
                chunk = self.resp.read1(READ_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _Transient(f"connection lost while reading ({_describe(exc)})") from None
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                raise BadInput(f"{self.url} is larger than the {limit} bytes expected")
            chunks.append(chunk)

    def release(self) -> None:
        """Reuse the connection only when the response was read to its end."""
        resp, self.resp = self.resp, None
        if resp is None:
            return
        if resp.isclosed() and not resp.will_close:
            self.pool.put(self.conn)
        elif resp.length == 0 and not resp.will_close:
            resp.close()
            self.pool.put(self.conn)
        else:
            resp.close()
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# -- index pages ---------------------------------------------------------------

class _LinkParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            for name, value in attrs:
                if name == "href" and value:
                    self.hrefs.append(value)


def index_links(page: str, page_url: str) -> tuple[list[str], list[str]]:
    """Names of the files and subdirectories an index page links to, below it.

    Sorting links (``?C=M;O=A``), the parent directory and links elsewhere
    are dropped, as are names that would not be one path component."""
    parser = _LinkParser()
    parser.feed(page)
    # Compared unescaped: servers escape names differently (nginx leaves "(" as is).
    page_path = urllib.parse.unquote(urllib.parse.urlsplit(page_url).path)
    page_origin = urllib.parse.urlsplit(page_url).netloc
    files, dirs = [], []
    for href in parser.hrefs:
        if href.startswith(("?", "#")):
            continue
        parts = urllib.parse.urlsplit(urllib.parse.urljoin(page_url, href))
        if parts.query or parts.fragment or parts.netloc != page_origin:
            continue
        # A name holding an escaped "/" (%2F) becomes two components here and is dropped below.
        path = urllib.parse.unquote(parts.path)
        if not path.startswith(page_path) or path == page_path:
            continue
        rest = path[len(page_path):]
        is_dir = rest.endswith("/")
        name = rest[:-1] if is_dir else rest
        if not name or "/" in name or name in (".", ".."):
            continue
        (dirs if is_dir else files).append(name)
    return sorted(set(files)), sorted(set(dirs))


def _netrc_auth(host: str) -> str | None:
    """Basic credentials for ``host`` from ~/.netrc (as curl and wget read it), if any."""
    import netrc

    path = os.path.join(os.path.expanduser("~"), ".netrc")
    if not os.path.isfile(path):
        return None
    try:
        found = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:
        raise BadInput(f"cannot read {path}: {exc}; fix the file") from None
    if not found:
        return None
    login, _account, password = found
    return "Basic " + base64.b64encode(f"{login}:{password or ''}".encode()).decode("ascii")


# -- the remote ------------------------------------------------------------------

class HttpRemote(Remote):
    scheme = "https"
    release_aware = True  # lists from its manifest itself; fitsync.release need not wrap it
    timeout = 60.0

    def __init__(self, url: str, *, ca_bundle: str | None = None, retries: int | None = None,
                 verify_key: str | None = None):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{url!r} is not an http:// or https:// URL")
        self._auth = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port:
            netloc += f":{parts.port}"
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        # Credentials stay out of self.url: it appears in messages and logs.
        super().__init__(urllib.parse.urlunsplit((parts.scheme, netloc, path or "/", "", "")))
        self.base = self.url
        self.retry = RetryPolicy.from_option(retries)  # remotes/retry.py: --retries, backoff with jitter
        self.verify_key = verify_key
        self._context = _tls_context(ca_bundle) if parts.scheme == "https" else None
        self._pools: dict[tuple, _Pool] = {}
        self._pools_lock = threading.Lock()
        self._pinned: dict[str, _Pinned] = {}
        self._state_lock = threading.Lock()
        self._listing_lock = threading.Lock()
        self._release = None  # fitsync.release.ReleaseManifest, when the root has one
        self._release_checked = False
        self._entries: dict[str, Entry] | None = None
        self._sizes: dict[str, int] = {}  # from HEAD, for files read without a listing
        self.ranges_work = True  # False once the server answered a Range request with 200
        self.multirange_works = True  # False once a multi-range answer was unusable
        self._single_range_seen = False
        # What the listing came from, for summaries: "release manifest" or "index pages".
        self.listed_from: str | None = None

    @classmethod
    def from_url(cls, url: str, options: RemoteOptions) -> "HttpRemote":
        parts = urllib.parse.urlsplit(url)
        if parts.password is not None and not options.allow_password_in_url:
            # argv is readable by every local user (ps, /proc/PID/cmdline).
            raise UsageError("a password in the URL is visible to every user of this machine; put the user in a "
                             "remotes file entry (username, password_env) or in ~/.netrc, or pass "
                             "--allow-password-in-url")
        remote = cls(url, ca_bundle=options.ca_bundle, retries=options.retries, verify_key=options.verify_key)
        if remote._auth is None and parts.hostname:
            remote._auth = _netrc_auth(parts.hostname)
        return remote

    @classmethod
    def from_config(cls, name: str, conf: dict, path: str, options: RemoteOptions) -> "HttpRemote":
        """A ``type = "https"`` remote: ``url``, and optionally ``username`` with
        ``password_env`` (a variable holding the password; never argv), ``ca_bundle``."""
        base = conf.get("url")
        if not base:
            raise BadInput(f"remote {name!r} in the remotes config has no url; add url = \"https://...\"")
        url = base.rstrip("/") + "/" + path.lstrip("/") if path.strip("/") else base
        remote = cls(url, ca_bundle=options.ca_bundle or conf.get("ca_bundle"),
                     retries=options.retries, verify_key=options.verify_key or conf.get("verify_key"))
        if conf.get("username"):
            variable = conf.get("password_env")
            password = os.environ.get(variable, "") if variable else conf.get("password", "")
            if variable and variable not in os.environ:
                raise AuthenticationFailed(f"remote {name!r}: password_env names {variable}, which is not set")
            credentials = f"{conf['username']}:{password}".encode()
            remote._auth = "Basic " + base64.b64encode(credentials).decode("ascii")
        return remote

    # -- what this remote can do ---------------------------------------------------
    @property
    def capabilities(self) -> frozenset:
        release = self._release_manifest()
        caps = set()
        if self.ranges_work:
            caps.add(Capability.READ_RANGE)
            # Delta pulls need ranges; a server that ignores them gets full downloads.
            if release is not None and release.has_blocks:
                caps.add(Capability.SIGNATURE)
        return frozenset(caps)

    @property
    def listed_hashes(self) -> frozenset:
        return frozenset({"blake3"}) if self._release_manifest() is not None else frozenset()

    @property
    def mtime_resolution(self) -> float:
        # Manifest mtimes are exact; Last-Modified has whole seconds.
        return 1e-6 if self._release_manifest() is not None else 1.0

    # -- listing -------------------------------------------------------------------
    def exists(self) -> bool:
        if self._release_manifest() is not None:
            return True
        try:
            with self._retrying("HEAD " + self.base, lambda: self._send("HEAD", self.base)) as ex:
                return ex.status < 400
        except NotFound:
            return False
        except AuthenticationFailed as exc:
            if getattr(exc, "http_status", None) == 403:
                return True  # there, but not listable: list() says what to do
            raise

    def list(self) -> Iterator[Entry]:
        return iter(sorted(self._listing().values(), key=lambda e: e.path))

    def remember(self, entries) -> None:
        """Sizes a cluster's client listed: a worker reads the files without a HEAD each."""
        for entry in entries:
            self._sizes[entry.path] = entry.size

    def stat(self, path: str) -> Entry:
        path = safe_relpath(path)
        release = self._release_manifest()
        with self._state_lock:
            # A fresh look: whatever was pinned from an earlier read is forgotten.
            self._pinned.pop(path, None)
        if release is not None:
            return release.entry(path)
        entry = self._head_entry(path)
        with self._listing_lock:
            if self._entries is not None:
                self._entries[path] = entry
            self._sizes[path] = entry.size
        return entry

    def _release_manifest(self):
        with self._listing_lock:
            if not self._release_checked:
                from fitsync.release import describe, load_release_manifest

                fetched_mtime = [0.0]

                def fetch(name: str) -> bytes | None:
                    data, mtime = self._fetch_optional(name)
                    if name.endswith(".jsonl") and mtime:
                        fetched_mtime[0] = mtime
                    return data

                release = load_release_manifest(fetch, where=self.base, verify_key=self.verify_key)
                if release is not None:
                    release.mtime = fetched_mtime[0] or release.mtime  # Last-Modified, else "created"
                    log.info("listing %s from %s", self.base, describe(release))
                self._release = release
                self._release_checked = True
            return self._release

    def _listing(self) -> dict[str, Entry]:
        release = self._release_manifest()
        with self._listing_lock:
            if self._entries is not None:
                return self._entries
        if release is not None:
            entries = {e.path: e for e in release.entries()}
            self.listed_from = "release manifest"
        else:
            entries = self._list_index_pages()
            self.listed_from = "index pages"
        with self._listing_lock:
            self._entries = entries
        return entries

    def _fetch_optional(self, name: str) -> tuple[bytes | None, float]:
        """(bytes, Last-Modified) of a small file at the root, (None, 0) if absent."""
        from fitsync.release import MAX_MANIFEST_BYTES

        url = self.base + urllib.parse.quote(name)

        def attempt():
            try:
                ex = self._send("GET", url)
            except NotFound:
                return None, 0.0
            with ex:
                _check_status(ex, url)
                data = ex.read_small(MAX_MANIFEST_BYTES)
                if data.lstrip()[:1] == b"<":  # a "soft 404": an HTML page where the file is not
                    log.debug("%s is an HTML page, not a manifest; taken as absent", url)
                    return None, 0.0
                return data, _http_date(ex.header("Last-Modified"))

        return self._retrying("GET " + url, attempt)

    def _list_index_pages(self) -> dict[str, Entry]:
        files: list[str] = []
        pending = [""]
        seen = set()
        server = None
        while pending:
            prefix = pending.pop()
            if prefix in seen:
                continue
            seen.add(prefix)
            if len(seen) > MAX_INDEX_PAGES:
                raise BadInput(f"{self.base} has more than {MAX_INDEX_PAGES} index pages; give a narrower URL")
            page_url = self.base + urllib.parse.quote(prefix)
            page, server = self._index_page(page_url)
            names, dirs = index_links(page, page_url)
            for name in names:
                files.append(safe_relpath(prefix + name, what="index entry"))
            for name in dirs:
                pending.append(safe_relpath(prefix + name, what="index entry") + "/")
        log.info("listing %s from the server's index pages (%s; %d files, sizes and dates by HEAD); "
                 "no %s there, so no block signatures or digests", self.base,
                 f"Server: {server}" if server else "Apache/nginx autoindex", len(files), _manifest_name())
        entries = self.stat_listed(files) if self.stat_listed is not None else self.stat_many(files)
        return {e.path: e for e in entries}

    def stat_many(self, paths: list, at_once: int | None = None) -> list:
        """A HEAD for each path, ``at_once`` (default HEAD_WORKERS) at a time."""
        with cf.ThreadPoolExecutor(max_workers=at_once or HEAD_WORKERS) as pool:
            return list(pool.map(self._head_entry, paths))

    def _index_page(self, url: str) -> tuple[str, str | None]:
        def attempt():
            try:
                ex = self._send("GET", url)
            except AuthenticationFailed as exc:
                if getattr(exc, "http_status", None) != 403:
                    raise
                raise BadInput(
                    f"{url}: the server does not list this directory (HTTP 403) and there is no "
                    f"{_manifest_name()} at {self.base}; ask the publisher for one ('fitsync manifest ROOT --blocks')"
                ) from None
            with ex:
                _check_status(ex, url)
                kind = (ex.header("Content-Type") or "").lower()
                if "html" not in kind:
                    raise BadInput(
                        f"{url} is not an index page (Content-Type {kind or 'missing'}) and the root has no "
                        f"{_manifest_name()}; publish one with 'fitsync manifest ROOT --blocks'"
                    )
                body = ex.read_small(MAX_INDEX_PAGE_BYTES)
                charset = re.search(r"charset=([\w-]+)", kind)
                return body.decode(charset.group(1) if charset else "utf-8", "replace"), ex.header("Server")

        return self._retrying("GET " + url, attempt)

    def _head_entry(self, path: str) -> Entry:
        url = self._url_of(path)

        def attempt():
            with self._send("HEAD", url) as ex:
                if ex.status == 405:  # no HEAD: ask for one byte instead
                    return None
                _check_status(ex, url)
                size = _int_header(ex.header("Content-Length"))
                if size is None:
                    return None
                self._pin(path, ex, size)
                return Entry(path, size, _http_date(ex.header("Last-Modified")))

        entry = self._retrying("HEAD " + url, attempt)
        if entry is None:
            entry = self._probe_entry(path, url)
        return entry

    def _probe_entry(self, path: str, url: str) -> Entry:
        def attempt():
            with self._send("GET", url, {"Range": "bytes=0-0"}) as ex:
                _check_status(ex, url)
                total = _total_size(ex)
                if total is None:
                    raise TransferFailed(f"{url}: the server tells neither Content-Length nor Content-Range")
                self._pin(path, ex, total)
                return Entry(path, total, _http_date(ex.header("Last-Modified")))

        return self._retrying("GET " + url, attempt)

    # -- reading -------------------------------------------------------------------
    def block_signature(self, path: str, like: str | None = None, digest: bool = True):
        """The manifest's block signature of ``path``; None for a file the
        manifest has none for (the engine then downloads it whole). ``like``
        (a local file sharing blocks) changes nothing: the signature is already here."""
        release = self._release_manifest()
        return release.signature(safe_relpath(path)) if release is not None else None

    def open_read(self, path: str) -> BinaryIO:
        path = safe_relpath(path)
        release = self._release_manifest()
        if release is not None:
            own = release.own_files().get(path)
            if own is not None:  # mirrored as verified, not downloaded twice
                return io.BytesIO(own)
            stream = _HttpStream(self, path, self._known_size(path))
            return io.BufferedReader(release.verifying_reader(path, stream), READ_CHUNK)
        return io.BufferedReader(_HttpStream(self, path, self._known_size(path)), READ_CHUNK)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        return b"".join(self.read_ranges(path, [(offset, length)]))

    def read_ranges(self, path: str, ranges) -> Iterator[bytes]:
        path = safe_relpath(path)
        wanted = [(int(o), int(n)) for o, n in ranges]
        release = self._release_manifest()
        own = release.own_files().get(path) if release is not None else None
        if own is not None:
            return (own[o:o + n] for o, n in wanted)
        return self._read_ranges(path, wanted)

    def _read_ranges(self, path: str, wanted) -> Iterator[bytes]:
        size = self._known_size(path)
        clipped = [(o, max(0, min(n, size - o))) for o, n in wanted]
        for run in _ascending_runs(clipped):
            yield from self._read_run(path, run)

    def _read_run(self, path: str, run) -> Iterator[bytes]:
        wanted = _Wanted(run)
        yield from wanted.take_empty()
        tries = self.retry.tracker()
        url = self._url_of(path)
        while not wanted.done:
            mark = wanted.progress()
            if not self.ranges_work:
                mode, fetch = "whole", self._fetch_whole
            elif self.multirange_works and len(wanted.spans(GAP_MULTIRANGE, 2)) > 1:
                mode, fetch = "multi", self._fetch_multi
            else:
                mode, fetch = "single", self._fetch_single
            try:
                yield from fetch(path, wanted)
            except _Broken as exc:
                # Each quirk lowers what we ask of the server, so this ends in at most two steps.
                if mode == "multi":
                    self._multirange_unusable(url, str(exc))
                elif mode == "single":
                    self._range_answers_unusable(url, str(exc))
                else:
                    raise TransferFailed(f"{url}: {exc}") from None
            except _Transient as exc:
                if wanted.progress() != mark:
                    tries.progressed()  # bytes arrived since the last failure
                tries.failed(str(exc), lambda count, exc=exc: self._give_up(f"reading {path}", exc, count),
                             exc.retry_after)

    def _fetch_whole(self, path: str, wanted: "_Wanted") -> Iterator[bytes]:
        url = self._url_of(path)
        with self._send("GET", url, self._conditions(path)) as ex:
            _check_status(ex, url)
            if ex.status != 200:
                raise _Broken(f"{url}: expected the whole file, got HTTP {ex.status}")
            size = _int_header(ex.header("Content-Length"))
            self._pin(path, ex, size)
            yield from wanted.take_run(ex, 0, size if size is not None else 1 << 62)

    def _fetch_single(self, path: str, wanted: "_Wanted") -> Iterator[bytes]:
        start, end = wanted.spans(GAP_SINGLE, 1)[0]
        url = self._url_of(path)
        with self._send("GET", url, {"Range": f"bytes={start}-{end - 1}", **self._conditions(path)}) as ex:
            _check_status(ex, url)
            if ex.status == 200:
                self._ranges_ignored(url)
                size = _int_header(ex.header("Content-Length"))
                self._pin(path, ex, size)
                yield from wanted.take_run(ex, 0, size if size is not None else 1 << 62)
                return
            first, last, total = _content_range(ex, url)
            self._pin(path, ex, total)
            if first > start:
                self._range_answers_unusable(url, f"asked for bytes {start}-{end - 1}, got {first}-{last}")
                return
            self._single_range_seen = True
            yield from wanted.take_run(ex, first, last + 1 - first)
            if wanted.next_needed() is not None and wanted.next_needed() < min(end, last + 1):
                raise _Transient("the server sent fewer bytes than its Content-Range promised")

    def _fetch_multi(self, path: str, wanted: "_Wanted") -> Iterator[bytes]:
        spans = wanted.spans(GAP_MULTIRANGE, MAX_RANGES_PER_REQUEST)
        header = _range_header(spans)
        batch_end = spans[-1][1]
        url = self._url_of(path)
        with self._send("GET", url, {"Range": header, **self._conditions(path)}) as ex:
            _check_status(ex, url)
            if ex.status == 200:
                size = _int_header(ex.header("Content-Length"))
                self._pin(path, ex, size)
                if self._single_range_seen:
                    # Single ranges work here; only multi-range is refused. Drop this answer.
                    self._multirange_unusable(url, "it answered with the whole file")
                    return
                self._ranges_ignored(url)
                yield from wanted.take_run(ex, 0, size if size is not None else 1 << 62)
                return
            kind = ex.header("Content-Type") or ""
            if kind.lower().startswith("multipart/byteranges"):
                yield from self._take_parts(path, ex, wanted, kind)
            else:
                first, last, total = _content_range(ex, url)
                self._pin(path, ex, total)
                yield from wanted.take_run(ex, first, last + 1 - first)
            needed = wanted.next_needed()
            if needed is not None and needed < batch_end:
                self._multirange_unusable(url, "its answer lacked some of the ranges asked for")

    def _take_parts(self, path: str, ex: _Exchange, wanted: "_Wanted", kind: str) -> Iterator[bytes]:
        boundary = _boundary(kind)
        if boundary is None:
            raise _Broken("multipart answer without a boundary")
        delimiter = b"--" + boundary.encode("latin-1")
        line = _skip_to_delimiter(ex, delimiter)
        while line.rstrip(b"\r\n") == delimiter:
            headers = _part_headers(ex)
            value = headers.get("content-range")
            if value is None:
                raise _Broken("multipart part without Content-Range")
            first, last, total = _parse_content_range(value)
            self._pin(path, ex, total)
            yield from wanted.take_run(ex, first, last + 1 - first, drain_tail=True)
            line = ex.readline()
            if line in (b"\r\n", b"\n"):
                line = ex.readline()
            if not line:
                raise _Transient("the connection closed inside a multipart answer")
        if line.rstrip(b"\r\n") != delimiter + b"--":
            raise _Broken("malformed multipart framing")
        ex.skip_rest(64 << 10)  # an epilogue, if any: the connection can then be reused

    # -- server quirks, detected once ------------------------------------------------
    def _ranges_ignored(self, url: str) -> None:
        if self.ranges_work:
            self.ranges_work = False
            log.warning("%s answers Range requests with the whole file; using plain full downloads "
                        "(no delta updates from this server)", url)

    def _multirange_unusable(self, url: str, why: str) -> None:
        if self.multirange_works:
            self.multirange_works = False
            log.warning("%s: multi-range answer unusable (%s); fetching one range per request", url, why)

    def _range_answers_unusable(self, url: str, why: str) -> None:
        if self.ranges_work:
            self.ranges_work = False
            log.warning("%s: range answer unusable (%s); using plain full downloads", url, why)

    # -- version pinning ------------------------------------------------------------
    def _known_size(self, path: str) -> int:
        entries = self._entries
        if entries is not None and path in entries:
            return entries[path].size
        release = self._release_manifest()
        if release is not None:
            return release.entry(path).size
        if path in self._sizes:
            return self._sizes[path]
        return self.stat(path).size

    def _pin(self, path: str, ex: _Exchange, size: int | None) -> None:
        """Record the version of ``path`` first seen; raise SourceChanged when a
        later answer is of another version."""
        seen = _Pinned(ex.header("ETag"), ex.header("Last-Modified"), size)
        expected = None
        release = self._release
        if release is not None and path in release.manifest.entries:
            expected = release.manifest.entries[path].size
        if expected is not None and size is not None and size != expected:
            raise SourceChanged(
                f"{path} on the server has {size} bytes but the release manifest lists {expected}; "
                "the release is being updated or its manifest is stale"
            )
        with self._state_lock:
            pinned = self._pinned.setdefault(path, seen)
        changed = (
            (pinned.etag and seen.etag and pinned.etag != seen.etag)
            or (pinned.last_modified and seen.last_modified and pinned.last_modified != seen.last_modified)
            or (pinned.size is not None and size is not None and pinned.size != size)
        )
        if changed:
            raise SourceChanged(
                f"{path} changed on the server while it was being read "
                f"(ETag {pinned.etag} -> {seen.etag}, Last-Modified {pinned.last_modified} -> {seen.last_modified})"
            )

    def _conditions(self, path: str) -> dict:
        """If-Match with the pinned strong ETag: a server that supports it
        refuses (412) to mix versions instead of us finding out afterwards."""
        with self._state_lock:
            pinned = self._pinned.get(path)
        if pinned and pinned.etag and not pinned.etag.startswith("W/"):
            return {"If-Match": pinned.etag}
        return {}

    # -- HTTP plumbing ---------------------------------------------------------------
    def _url_of(self, path: str) -> str:
        return self.base + urllib.parse.quote(safe_relpath(path))

    def _pool(self, scheme: str, host: str, port: int) -> _Pool:
        key = (scheme, host, port)
        with self._pools_lock:
            pool = self._pools.get(key)
            if pool is None:
                context = None
                if scheme == "https":
                    context = self._context or _tls_context(None)
                pool = self._pools[key] = _Pool(scheme, host, port, context, self.timeout)
            return pool

    def _send(self, method: str, url: str, headers: dict | None = None) -> _Exchange:
        """Send one request, following redirects; map failures to errors.

        Returns the exchange for any status the caller handles (2xx, 412,
        416...); raises NotFound, AuthenticationFailed, ConnectionFailed or
        _Transient for the rest."""
        origin = urllib.parse.urlsplit(self.base).netloc
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            pool = self._pool(parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
            request_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if self._auth and parts.netloc == origin:  # credentials never follow a redirect elsewhere
                request_headers["Authorization"] = self._auth
            request_headers.update(headers or {})
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            ex = self._exchange(pool, method, target or "/", request_headers, url)
            if ex.status in _REDIRECTS and ex.header("Location"):
                location = urllib.parse.urljoin(url, ex.header("Location"))
                ex.release()
                if urllib.parse.urlsplit(url).scheme == "https" and location.startswith("http:"):
                    raise ConnectionFailed(f"{url} redirects to plain http ({location}); refusing the downgrade")
                url = location
                continue
            return self._classify(ex, method, url)
        raise TransferFailed(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _exchange(self, pool: _Pool, method: str, target: str, headers: dict, url: str) -> _Exchange:
        for _ in range(2):
            conn, reused = pool.get()
            connecting = conn.sock is None
            try:
                if connecting:
                    conn.connect()
                    connecting = False
                conn.request(method, target, headers=headers)
                return _Exchange(url, conn, pool, conn.getresponse())
            except ssl.SSLError as exc:
                conn.close()
                raise _tls_failure(exc, pool) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and not connecting:  # a keep-alive connection the server had closed: use a fresh one
                    continue
                raise _Transient(f"{pool.host}:{pool.port}: {_describe(exc)}", connecting=connecting) from None
        raise _Transient(f"{pool.host}:{pool.port}: connection closed by the server")

    def _classify(self, ex: _Exchange, method: str, url: str) -> _Exchange:
        status = ex.status
        if status in (404, 410):
            ex.release()
            raise NotFound(f"{url} does not exist on the server (HTTP {status})")
        if status in (401, 403):
            ex.release()
            denied = AuthenticationFailed(f"{url}: access denied (HTTP {status}); check the URL and credentials")
            denied.http_status = status
            raise denied
        if status in _RETRY_STATUSES:
            retry_after = _int_header(ex.header("Retry-After"))
            ex.release()
            raise _Transient(f"{url}: HTTP {status}", retry_after=retry_after)
        return ex

    def _retrying(self, what: str, attempt):
        return retrying(attempt, self.retry, transient=lambda exc: isinstance(exc, _Transient), describe=str,
                        give_up=lambda exc, count: self._give_up(what, exc, count),
                        retry_after=lambda exc: exc.retry_after)

    def _give_up(self, what: str, exc: _Transient, attempts: int) -> Exception:
        if exc.connecting:
            return ConnectionFailed(f"cannot connect: {exc} ({attempts} attempts); check the URL and the network")
        return TransferFailed(f"{what}: {exc} ({attempts} attempts)")

    def close(self) -> None:
        with self._pools_lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


class _HttpStream(io.RawIOBase):
    """Sequential, seekable reader of one file that resumes with Range after
    a dropped connection and refuses to splice two versions."""

    def __init__(self, remote: HttpRemote, path: str, size: int):
        self._remote = remote
        self._path = path
        self._size = size
        self._pos = 0
        self._ex: _Exchange | None = None
        self._tries = remote.retry.tracker()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset, io.SEEK_END: self._size + offset}[whence]
        if target != self._pos:
            self._drop()
            self._pos = max(0, target)
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self._size or not len(buffer):
            return 0
        view = memoryview(buffer)[: self._size - self._pos]
        while True:
            try:
                if self._ex is None:
                    self._open()
                n = self._ex.readinto(view)
                if not n:
                    raise _Transient(f"the server closed the connection at byte {self._pos} of {self._size}")
            except _Transient as exc:
                self._drop()
                self._tries.failed(str(exc), lambda count, exc=exc: self._remote._give_up(
                    f"downloading {self._path}", exc, count), exc.retry_after)
                continue
            self._tries.progressed()
            self._pos += n
            if self._pos >= self._size:
                self._drop()
            return n

    def _open(self) -> None:
        remote = self._remote
        url = remote._url_of(self._path)
        headers = remote._conditions(self._path)
        if self._pos and remote.ranges_work:
            headers["Range"] = f"bytes={self._pos}-"
        ex = remote._send("GET", url, headers)
        try:
            _check_status(ex, url)
            if ex.status == 206:
                try:
                    first, _, total = _content_range(ex, url)
                except _Broken as exc:
                    remote._range_answers_unusable(url, str(exc))
                    raise _Transient(str(exc)) from None
                remote._pin(self._path, ex, total)
                if first != self._pos:
                    remote._range_answers_unusable(url, f"asked for bytes from {self._pos}, got from {first}")
                    raise _Transient("resuming needs a plain download")
            else:
                size = _int_header(ex.header("Content-Length"))
                remote._pin(self._path, ex, size)
                if self._pos:  # resume refused: read again from the start, keep the rest
                    remote._ranges_ignored(url)
                    ex.skip(self._pos)
        except BaseException:
            ex.release()
            raise
        self._ex = ex

    def _drop(self) -> None:
        if self._ex is not None:
            self._ex.release()
            self._ex = None

    def close(self) -> None:
        self._drop()
        super().close()


class _Wanted:
    """The ranges still to deliver, ascending; fills them from runs of file
    bytes as answers arrive and yields each one complete, in order."""

    def __init__(self, ranges: list[tuple[int, int]]):
        self.ranges = ranges
        self.index = 0
        self.buffer: bytearray | None = None
        self.filled = 0

    @property
    def done(self) -> bool:
        return self.index >= len(self.ranges)

    def progress(self) -> tuple[int, int]:
        return self.index, self.filled

    def next_needed(self) -> int | None:
        if self.done:
            return None
        return self.ranges[self.index][0] + self.filled

    def take_empty(self) -> Iterator[bytes]:
        while not self.done and self.ranges[self.index][1] == 0:
            self.index += 1
            yield b""

    def spans(self, gap: int, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` (start, end) spans covering what is left, ranges
        closer than ``gap`` merged; the header stays below MAX_RANGE_HEADER."""
        spans: list[list[int]] = []
        text = 6
        for i in range(self.index, len(self.ranges)):
            offset, length = self.ranges[i]
            if i == self.index:
                offset, length = offset + self.filled, length - self.filled
            if not length:
                continue
            if spans and offset - spans[-1][1] <= gap:
                spans[-1][1] = max(spans[-1][1], offset + length)
                continue
            text += len(f"{offset}-{offset + length - 1},")
            if len(spans) >= limit or (spans and text > MAX_RANGE_HEADER):
                break
            spans.append([offset, offset + length])
        return [(a, b) for a, b in spans]

    def take_run(self, ex: _Exchange, start: int, length: int, drain_tail: bool = False) -> Iterator[bytes]:
        """Consume the run of file bytes [start, start+length) from ``ex``,
        yielding every range it completes. Bytes not wanted are skipped; the
        run's tail past the last wanted range is read only with ``drain_tail``
        (a multipart part), else left for the connection's close."""
        pos, end = start, start + length
        while not self.done:
            offset, size = self.ranges[self.index]
            need = offset + self.filled
            if need >= end:
                break
            if need < pos:
                raise _Broken(f"the answer starts at byte {pos}, after byte {need} which is still needed")
            if need > pos:
                ex.skip(need - pos)
                pos = need
            take = min(offset + size, end) - need
            if self.buffer is None:
                self.buffer = bytearray(size)
            ex.read_exact_into(memoryview(self.buffer)[self.filled:self.filled + take])
            pos += take
            self.filled += take
            if self.filled == size:
                data = bytes(self.buffer)
                self.buffer, self.filled = None, 0
                self.index += 1
                yield data
                yield from self.take_empty()
        if drain_tail and end > pos:
            ex.skip(end - pos)


# -- helpers ---------------------------------------------------------------------

def _ascending_runs(ranges: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    """Split ranges into runs where each starts at or after the previous end."""
    run: list[tuple[int, int]] = []
    end = -1
    for offset, length in ranges:
        if run and offset < end:
            yield run
            run = []
        run.append((offset, length))
        end = offset + length
    if run:
        yield run


def _range_header(spans) -> str:
    return "bytes=" + ",".join(f"{a}-{b - 1}" for a, b in spans)


def _check_status(ex: _Exchange, url: str) -> None:
    if ex.status == 412:
        ex.release()
        raise SourceChanged(f"{url} changed on the server while it was being read (HTTP 412)")
    if ex.status == 416:
        ex.release()
        raise SourceChanged(f"{url} is shorter on the server than listed (HTTP 416)")
    if not 200 <= ex.status < 300:
        ex.release()
        raise TransferFailed(f"{url}: HTTP {ex.status} {ex.resp.reason if ex.resp else ''}".rstrip())


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def _parse_content_range(value: str) -> tuple[int, int, int | None]:
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        raise _Broken(f"unreadable Content-Range {value!r}")
    first, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if last < first or (total is not None and last >= total):
        raise _Broken(f"impossible Content-Range {value!r}")
    return first, last, total


def _content_range(ex: _Exchange, url: str) -> tuple[int, int, int | None]:
    value = ex.header("Content-Range")
    if value is None:
        raise _Broken(f"{url}: HTTP 206 without Content-Range")
    return _parse_content_range(value)


def _total_size(ex: _Exchange) -> int | None:
    if ex.status == 206 and ex.header("Content-Range"):
        return _parse_content_range(ex.header("Content-Range"))[2]
    return _int_header(ex.header("Content-Length"))


def _boundary(content_type: str) -> str | None:
    m = re.search(r'boundary\s*=\s*(?:"([^"]+)"|([^;,\s]+))', content_type, re.IGNORECASE)
    return (m.group(1) or m.group(2)) if m else None


def _skip_to_delimiter(ex: _Exchange, delimiter: bytes) -> bytes:
    """The first delimiter line, after an optional preamble (a few lines at most)."""
    for _ in range(MAX_PART_HEADER_LINES):
        line = ex.readline()
        if not line:
            raise _Broken("multipart answer ended before its first part")
        if line.rstrip(b"\r\n") == delimiter:
            return line
    raise _Broken("multipart delimiter not found where expected")


def _part_headers(ex: _Exchange) -> dict[str, str]:
    headers = {}
    for _ in range(MAX_PART_HEADER_LINES):
        line = ex.readline()
        if not line:
            raise _Transient("the connection closed inside a multipart answer")
        if line in (b"\r\n", b"\n"):
            return headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise _Broken("malformed multipart part header")
        headers[name.strip().lower()] = value.strip()
    raise _Broken("too many multipart part headers")


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None


def _http_date(value: str | None) -> float:
    if not value:
        return 0.0
    import email.utils

    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    if ca_bundle is None:
        return ssl.create_default_context()
    if not os.path.isfile(ca_bundle):
        raise NotFound(f"CA bundle {ca_bundle} does not exist; give a PEM file of CA certificates to --ca-bundle")
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (ssl.SSLError, ValueError):
        raise BadInput(f"--ca-bundle {ca_bundle} holds no readable PEM CA certificate") from None


def _tls_failure(exc: ssl.SSLError, pool: _Pool) -> ConnectionFailed:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionFailed(
            f"TLS certificate of {pool.host} is not trusted ({exc.verify_message}); "
            "if it is signed by your own CA, pass --ca-bundle=FILE"
        )
    return ConnectionFailed(
        f"TLS with {pool.host}:{pool.port} failed ({exc.reason or exc}); check that the URL's scheme matches the server"
    )


def _manifest_name() -> str:
    from fitsync.release import MANIFEST_NAME

    return MANIFEST_NAME
