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

This module holds the remote (construction, listing, requests and their
classification); reads are in http_read.py, the wire in http_wire.py.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import logging
import os
import re
import threading
import urllib.parse
from typing import Iterator

from fitsync.errors import AuthenticationFailed, BadInput, ConnectionFailed, NotFound, TransferFailed, UsageError
from fitsync.options import RemoteOptions
from fitsync.paths import safe_relpath
from fitsync.remotes.http_read import HttpReading
from fitsync.remotes.retry import RetryPolicy, retrying
from fitsync.remotes.http_wire import (Connections, Exchange, HEAD_WORKERS, MAX_INDEX_PAGE_BYTES,
                                       MAX_INDEX_PAGES, MAX_REDIRECTS, Pinned, REDIRECTS, RETRY_STATUSES,
                                       Transient, USER_AGENT, check_status, http_date, index_links, int_header,
                                       manifest_name, netrc_auth, tls_context, total_size)
from fitsync.remotes.base import Capability, Entry, Remote

log = logging.getLogger("fitsync.http")


# -- the remote ------------------------------------------------------------------

class HttpRemote(HttpReading, Remote):
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
        self._context = tls_context(ca_bundle) if parts.scheme == "https" else None
        self._connections = Connections(self._context, self.timeout)  # urllib3's pools
        self._pinned: dict[str, Pinned] = {}
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
            remote._auth = netrc_auth(parts.hostname)
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
                check_status(ex, url)
                data = ex.read_small(MAX_MANIFEST_BYTES)
                if data.lstrip()[:1] == b"<":  # a "soft 404": an HTML page where the file is not
                    log.debug("%s is an HTML page, not a manifest; taken as absent", url)
                    return None, 0.0
                return data, http_date(ex.header("Last-Modified"))

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
                 f"Server: {server}" if server else "Apache/nginx autoindex", len(files), manifest_name())
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
                    f"{manifest_name()} at {self.base}; ask the publisher for one ('fitsync manifest ROOT --blocks')"
                ) from None
            with ex:
                check_status(ex, url)
                kind = (ex.header("Content-Type") or "").lower()
                if "html" not in kind:
                    raise BadInput(
                        f"{url} is not an index page (Content-Type {kind or 'missing'}) and the root has no "
                        f"{manifest_name()}; publish one with 'fitsync manifest ROOT --blocks'"
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
                check_status(ex, url)
                size = int_header(ex.header("Content-Length"))
                if size is None:
                    return None
                self._pin(path, ex, size)
                return Entry(path, size, http_date(ex.header("Last-Modified")))

        entry = self._retrying("HEAD " + url, attempt)
        if entry is None:
            entry = self._probe_entry(path, url)
        return entry

    def _probe_entry(self, path: str, url: str) -> Entry:
        def attempt():
            with self._send("GET", url, {"Range": "bytes=0-0"}) as ex:
                check_status(ex, url)
                total = total_size(ex)
                if total is None:
                    raise TransferFailed(f"{url}: the server tells neither Content-Length nor Content-Range")
                self._pin(path, ex, total)
                return Entry(path, total, http_date(ex.header("Last-Modified")))

        return self._retrying("GET " + url, attempt)

    # -- HTTP plumbing ---------------------------------------------------------------
    def _url_of(self, path: str) -> str:
        return self.base + urllib.parse.quote(safe_relpath(path))

    def _send(self, method: str, url: str, headers: dict | None = None) -> Exchange:
        """Send one request, following redirects; map failures to errors.

        Returns the exchange for any status the caller handles (2xx, 412,
        416...); raises NotFound, AuthenticationFailed, ConnectionFailed or
        Transient for the rest."""
        origin = urllib.parse.urlsplit(self.base).netloc
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            request_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if self._auth and parts.netloc == origin:  # credentials never follow a redirect elsewhere
                request_headers["Authorization"] = self._auth
            request_headers.update(headers or {})
            ex = self._connections.exchange(method, url, request_headers)
            if ex.status in REDIRECTS and ex.header("Location"):
                location = urllib.parse.urljoin(url, ex.header("Location"))
                ex.release()
                if urllib.parse.urlsplit(url).scheme == "https" and location.startswith("http:"):
                    raise ConnectionFailed(f"{url} redirects to plain http ({location}); refusing the downgrade")
                url = location
                continue
            return self._classify(ex, method, url)
        raise TransferFailed(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _classify(self, ex: Exchange, method: str, url: str) -> Exchange:
        status = ex.status
        if status in (404, 410):
            ex.release()
            raise NotFound(f"{url} does not exist on the server (HTTP {status})")
        if status in (401, 403):
            ex.release()
            denied = AuthenticationFailed(f"{url}: access denied (HTTP {status}); check the URL and credentials")
            denied.http_status = status
            raise denied
        if status in RETRY_STATUSES:
            retry_after = int_header(ex.header("Retry-After"))
            ex.release()
            raise Transient(f"{url}: HTTP {status}", retry_after=retry_after)
        return ex

    def _retrying(self, what: str, attempt):
        return retrying(attempt, self.retry, transient=lambda exc: isinstance(exc, Transient), describe=str,
                        give_up=lambda exc, count: self._give_up(what, exc, count),
                        retry_after=lambda exc: exc.retry_after)

    def _give_up(self, what: str, exc: Transient, attempts: int) -> Exception:
        if exc.connecting:
            return ConnectionFailed(f"cannot connect: {exc} ({attempts} attempts); check the URL and the network")
        return TransferFailed(f"{what}: {exc} ({attempts} attempts)")

    def close(self) -> None:
        self._connections.close()
