"""Dropbox through the official SDK: your own Dropbox, or a shared link with a password.

Locations:
  * ``dropbox:/path`` -- a folder in your own Dropbox. Credentials come from a
    configured remote named ``dropbox``, from ``--dropbox-config=FILE`` or from
    the ``FITSYNC_DROPBOX_TOKEN`` environment variable.
  * ``NAME:/path`` -- a configured remote of ``type = "dropbox"`` holding an
    access token, or an app key + secret + refresh token; optionally a shared
    link URL and its password, in which case ``/path`` is inside the link.
  * ``--dropbox-config=FILE`` -- the INI file of the VAST download script:
    a ``[dropbox]`` section with ``shared_url``, ``password``, ``access_token``.

What a listing gives: size, mtime = ``client_modified`` (the time the
uploader's machine gave the file; ``server_modified`` changes on every upload
and cannot be set, so it could never match a local copy), and Dropbox's
``content_hash`` in ``Entry.hashes["dropbox"]`` -- so ``--checksum`` compares a
local copy with no download at all.

Errors are handled here, not by the SDK's own loops (they are switched off):
429 waits the server's Retry-After up to a cap; 5xx and dropped connections
back off and retry; a refused token or link password fails at once, and is
remembered, so a wrong password is sent exactly once and can never lock a
link. Secrets are never logged, printed or put in exception messages.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import os
import threading
from collections import deque
from typing import Iterator

import requests

from fitsync.errors import (AuthenticationFailed, BadInput, ConnectionFailed,
                            NotFound, TransferFailed, UnsafePath, UsageError)
from fitsync.options import RemoteOptions
from fitsync.paths import safe_relpath
from fitsync.remotes.retry import Retries, RetryPolicy
from fitsync.remotes.dropbox_auth import Credentials, credentials_from_config, read_old_ini, tls_session
from fitsync.remotes.dropbox_io import DropboxTransfers, first_line
from fitsync.remotes.base import Capability, Entry, Remote

log = logging.getLogger("fitsync.dropbox")
# The SDK logs one INFO line per request, which over 42,000 files drowns fitsync's
# own log, and a WARNING when an expired token cannot be renewed, which fitsync
# already reports as a one-line error. fitsync says what happened itself.
if logging.getLogger("dropbox").level == logging.NOTSET:
    logging.getLogger("dropbox").setLevel(logging.ERROR)

TOKEN_ENV = "FITSYNC_DROPBOX_TOKEN"
LIST_PAGE = 2000  # entries per list_folder page (the API's maximum)
# Uploads: a file up to one chunk goes up in one request; larger files use an
# upload session, one chunk per request. files/upload refuses bodies over
# 150 MiB, so the chunk must stay below that; Dropbox advises multiples of 4 MiB.
UPLOAD_CHUNK = 32 * 1024 * 1024
SINGLE_UPLOAD_LIMIT = 150 * 1024 * 1024


# Dropbox asks clients to back off longer than most servers: the shared
# policy (remotes/retry.py) with these defaults. A rate limit (HTTP 429) is
# waited out as the server asks, up to MAX_RATE_WAIT, not counted as a failure.
DROPBOX_ATTEMPTS = 5
DROPBOX_BASE_DELAY = 1.0
DROPBOX_MAX_DELAY = 60.0
MAX_RATE_WAIT = 300.0  # a Retry-After longer than this is reported, not waited out
DEFAULT_RATE_WAIT = 5.0  # when a 429 carries no Retry-After


def dropbox_policy(attempts: int | None = None) -> RetryPolicy:
    return RetryPolicy(DROPBOX_ATTEMPTS if attempts is None else attempts, base_delay=DROPBOX_BASE_DELAY,
                       max_delay=DROPBOX_MAX_DELAY)


def _root_of(path: str) -> str:
    """'/a/b/' -> '/a/b'; '' or '/' -> '' (the API's name for the top)."""
    path = path.strip()
    if path.strip("/") in ("", "."):
        return ""
    return "/" + safe_relpath(path.lstrip("/"), "Dropbox path")


def _shown_link(url: str) -> str:
    """A shared link for messages: enough to recognise it, not enough to use it."""
    head, sep, tail = url.partition("://")
    if not sep:
        return "<shared link>"
    host, _, rest = tail.partition("/")
    return f"{head}://{host}/{rest[:6]}..." if rest else f"{head}://{host}/"


def _timestamp(value: dt.datetime) -> float:
    # The SDK gives naive datetimes in UTC.
    return float(calendar.timegm(value.utctimetuple()))


# -- the backend -----------------------------------------------------------------

class DropboxRemote(DropboxTransfers, Remote):
    scheme = "dropbox"
    listed_hashes = frozenset({"dropbox"})
    mtime_resolution = 1.0  # client_modified has whole seconds

    def __init__(
        self,
        url: str,
        root: str,
        credentials: Credentials,
        *,
        retry: RetryPolicy | None = None,
        jobs: int = 4,
        upload_chunk: int = UPLOAD_CHUNK,
        timeout: float = 100.0,
    ):
        super().__init__(url)
        self.root = _root_of(root)
        self.creds = credentials
        self.retry = retry or dropbox_policy()
        self.jobs = max(1, jobs)
        if not 0 < upload_chunk <= SINGLE_UPLOAD_LIMIT:
            raise BadInput(f"the Dropbox upload chunk must be between 1 byte and {SINGLE_UPLOAD_LIMIT} bytes")
        self.upload_chunk = upload_chunk
        self.timeout = timeout
        self.shared = credentials.shared_url is not None
        caps = {Capability.READ_RANGE}
        if not self.shared:
            caps |= {Capability.WRITE, Capability.DELETE}
        self.capabilities = frozenset(caps)
        # Names found on Dropbox that fitsync cannot store locally: (path, reason).
        self.rejected_names: list[tuple[str, str]] = []
        self._client = None
        self._client_lock = threading.Lock()
        self._auth_error: AuthenticationFailed | None = None
        self._link_checked = False
        self._listed: dict[str, Entry] = {}
        self._revs: dict[str, str] = {}
        self._by_lower: dict[str, str] = {}
        self._range_warned = False

    # -- construction -------------------------------------------------
    @classmethod
    def from_url(cls, url: str, options: RemoteOptions) -> "DropboxRemote":
        path = url[len("dropbox:"):]
        if path.startswith("//"):
            path = path[1:]
        config_file = options.dropbox_config
        if config_file:
            creds = read_old_ini(config_file)
        elif os.environ.get(TOKEN_ENV):
            creds = Credentials(source=f"the {TOKEN_ENV} variable", access_token=os.environ[TOKEN_ENV])
        else:
            raise UsageError(
                "dropbox:/path needs credentials: configure a remote named 'dropbox' "
                "(`fitsync config template dropbox`), pass --dropbox-config=FILE, "
                f"or set {TOKEN_ENV}")
        return cls._build(url, path, creds, options, {})

    @classmethod
    def from_config(cls, name: str, conf: dict, path: str, options: RemoteOptions) -> "DropboxRemote":
        creds = credentials_from_config(name, conf)
        # NAME:sub/dir is sub/dir under the remote's base ``path`` (in the Dropbox, or in the link).
        base = (conf.get("path") or "").strip("/")
        inner = path.strip("/")
        full = "/".join(p for p in (base, inner) if p)
        return cls._build(f"{name}:{path}", "/" + full, creds, options, conf)

    @classmethod
    def _build(cls, url: str, path: str, creds: Credentials, options: RemoteOptions, conf: dict) -> "DropboxRemote":
        if options.ca_bundle:
            creds.ca_bundle = options.ca_bundle
        if creds.ca_bundle and not os.path.isfile(creds.ca_bundle):
            raise NotFound(f"CA bundle {creds.ca_bundle} does not exist")
        chunk_mib = conf.get("upload_chunk_mib", UPLOAD_CHUNK >> 20)
        if not isinstance(chunk_mib, int) or not 1 <= chunk_mib <= 148:
            raise BadInput("upload_chunk_mib must be a whole number of MiB from 1 to 148")
        retry = dropbox_policy(options.retries)
        return cls(url, path, creds, retry=retry, jobs=options.jobs or 4,
                   upload_chunk=chunk_mib << 20)

    # -- the SDK client and the one place its errors are handled -------------
    @property
    def client(self):
        with self._client_lock:
            if self._client is None:
                import dropbox

                c = self.creds
                session = tls_session(self.jobs + 2, c.ca_bundle)
                self._client = dropbox.Dropbox(
                    oauth2_access_token=c.access_token,
                    oauth2_refresh_token=c.refresh_token,
                    app_key=c.app_key,
                    app_secret=c.app_secret,
                    # fitsync retries itself: with caps, messages, and never after an auth failure.
                    max_retries_on_error=0,
                    max_retries_on_rate_limit=0,
                    user_agent="fitsync",
                    session=session,
                    timeout=self.timeout,
                )
            return self._client

    def _call(self, what: str, fn, *args, **kwargs):
        """Run one SDK call with fitsync's retry rules; ApiError is left to the caller."""
        from dropbox import exceptions as dbx_errors

        if self._auth_error is not None:
            raise self._auth_error
        tries = self.retry.tracker()
        waits = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except dbx_errors.AuthError as exc:
                raise self._auth_failed(exc) from None
            except dbx_errors.RateLimitError as exc:
                waits += 1
                wait = exc.backoff if exc.backoff is not None else DEFAULT_RATE_WAIT
                if wait > MAX_RATE_WAIT:
                    raise TransferFailed(
                        f"Dropbox is rate limiting {what} and asks to wait {wait:.0f} s, longer than "
                        f"fitsync waits ({MAX_RATE_WAIT:.0f} s); run again later") from None
                if waits > self.retry.attempts:
                    raise TransferFailed(
                        f"Dropbox is still rate limiting {what} after {waits - 1} waits; "
                        "run again later, or with fewer --jobs") from None
                log.warning("Dropbox rate limit (HTTP 429) on %s: waiting %.0f s as the server asks "
                            "(wait %d of at most %d)", what, wait, waits, self.retry.attempts)
                self.retry.sleep(wait)
            except dbx_errors.InternalServerError as exc:
                self._back_off(tries, what, f"server error HTTP {exc.status_code}", TransferFailed)
            except requests.exceptions.SSLError as exc:
                raise ConnectionFailed(
                    f"TLS verification of the Dropbox server failed ({first_line(exc)}); "
                    "behind an intercepting proxy, pass its CA with --ca-bundle=FILE") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                self._back_off(tries, what, f"connection problem: {first_line(exc)}", ConnectionFailed)
            except dbx_errors.BadInputError as exc:
                raise BadInput(f"Dropbox rejected the request for {what}: {first_line(exc.message)}") from None
            except dbx_errors.HttpError as exc:
                raise TransferFailed(f"Dropbox answered HTTP {exc.status_code} to {what}") from None
            except (ValueError, AssertionError):
                # The SDK asserts the answer's content type, then decodes its JSON:
                # a proxy's or login portal's page came back instead of the API's answer.
                self._back_off(tries, what, "answer that is not the API's JSON (a proxy or login page on the "
                               "way?)", ConnectionFailed)

    def _back_off(self, tries: Retries, what: str, problem: str, error_type) -> None:
        """Count a transient failure of ``what`` and wait, or give up with ``error_type``."""
        tries.failed(f"Dropbox {problem} on {what}", lambda count: error_type(
            f"Dropbox {problem} on {what}; gave up after {self.retry.attempts} retries"))

    def _auth_failed(self, exc) -> AuthenticationFailed:
        tag = getattr(getattr(exc, "error", None), "_tag", None) or "other"
        if tag == "expired_access_token":
            why = ("the access token has expired; put app_key, app_secret and refresh_token in a "
                   "configured remote (`fitsync config template dropbox`) so fitsync can renew it")
        elif tag == "missing_scope":
            why = ("the Dropbox app lacks a permission fitsync needs (files.metadata.read, "
                   "files.content.read, sharing.read; files.content.write to upload)")
        elif self.creds.refresh_token:
            why = "the refresh token, app key or app secret was refused; create new ones"
        else:
            why = "the access token is not valid (revoked or mistyped); create a new one"
        return self._remember_auth_failure(
            f"Dropbox refused the credentials from {self.creds.source}: {why} (not retried)")

    def _remember_auth_failure(self, message: str) -> AuthenticationFailed:
        # Every later call fails the same way without asking Dropbox again.
        self._auth_error = AuthenticationFailed(message)
        return self._auth_error

    # -- shared links ---------------------------------------------------
    def _link_arg(self):
        from dropbox import files

        return files.SharedLink(url=self.creds.shared_url, password=self.creds.password)

    def _check_link(self) -> None:
        """Ask once whether the link and its password open the root folder."""
        if self._link_checked or not self.shared:
            return
        from dropbox import exceptions as dbx_errors, sharing

        try:
            meta = self._call("the shared link", self.client.sharing_get_shared_link_metadata,
                              self.creds.shared_url, path=self.root or None,
                              link_password=self.creds.password)
        except dbx_errors.ApiError as exc:
            raise self._link_error(exc, self.root or "/") from None
        if not isinstance(meta, sharing.FolderLinkMetadata):
            raise BadInput(f"{self.url} is a file in the shared link, not a folder; name its folder")
        self._link_checked = True

    def _link_error(self, exc, path: str):
        err = exc.error
        if getattr(err, "is_shared_link_access_denied", lambda: False)():
            which = "its password was refused" if self.creds.password else "it needs a password"
            return self._remember_auth_failure(
                f"the shared link {_shown_link(self.creds.shared_url)} from {self.creds.source}: {which}; "
                "check the password (fitsync sends it once and does not retry, so the link is not locked)")
        if getattr(err, "is_shared_link_not_found", lambda: False)():
            return NotFound(f"the shared link {_shown_link(self.creds.shared_url)} from {self.creds.source} "
                            "does not exist or has expired")
        if getattr(err, "is_shared_link_is_directory", lambda: False)():
            return NotFound(f"{path} is a folder in the shared link, not a file")
        return self._path_error(exc, path)

    # -- paths ----------------------------------------------------------
    def _api_path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _relative(self, folder_rel: str, name: str) -> str | None:
        """A listed name joined to its folder, or None (reported) if fitsync cannot hold it."""
        rel = f"{folder_rel}/{name}" if folder_rel else name
        try:
            return safe_relpath(rel, "Dropbox name")
        except UnsafePath as exc:
            self._reject(rel, str(exc))
            return None

    def _reject(self, rel: str, reason: str) -> None:
        self.rejected_names.append((rel, reason))
        log.warning("skipping %r on Dropbox: %s. fitsync does not rename files; rename it on Dropbox "
                    "to copy it", rel, reason)

    def _path_error(self, exc, path: str):
        """Map a route's LookupError/WriteError-style error to fitsync's errors."""
        text = str(getattr(exc, "error", exc))
        if "not_found" in text:
            return NotFound(f"{self._where(path)} does not exist on Dropbox")
        if "not_folder" in text:
            return BadInput(f"{self._where(path)} is a file on Dropbox, not a folder; name the folder that holds it")
        if "not_file" in text:
            return NotFound(f"{self._where(path)} is a folder on Dropbox, not a file")
        if "restricted_content" in text or "unsupported_content" in text:
            return TransferFailed(f"Dropbox does not allow downloading {self._where(path)} ({text})")
        return TransferFailed(f"Dropbox refused the request for {self._where(path)} ({text})")

    def _where(self, path: str) -> str:
        return f"{self.url.rstrip('/')}/{path}" if path and path != "/" else self.url

    # -- listing --------------------------------------------------------
    def exists(self) -> bool:
        if self.shared:
            try:
                self._check_link()
            except NotFound:
                return False
            return True
        if not self.root:
            return True
        from dropbox import exceptions as dbx_errors, files

        try:
            meta = self._call("the root folder", self.client.files_get_metadata, self.root)
        except dbx_errors.ApiError as exc:
            error = self._path_error(exc, "")
            if isinstance(error, NotFound):
                return False
            raise error from None
        if not isinstance(meta, files.FolderMetadata):
            raise BadInput(f"{self.url} is a file on Dropbox, not a folder; name the folder that holds it")
        return True

    def list(self) -> Iterator[Entry]:
        self.rejected_names = []
        listing = self._walk_link() if self.shared else self._walk_own()
        for meta, rel in listing:
            entry = self._remember(meta, rel)
            yield entry

    def _remember(self, meta, rel: str) -> Entry:
        entry = Entry(rel, meta.size, _timestamp(meta.client_modified),
                      {"dropbox": meta.content_hash} if meta.content_hash else {})
        self._listed[rel] = entry
        self._revs[rel] = meta.rev
        self._by_lower[rel.lower()] = rel
        return entry

    def _pages(self, what: str, first_page, path_for_errors: str):
        """Every entry of a list_folder, following the cursor."""
        from dropbox import exceptions as dbx_errors

        try:
            page = self._call(what, first_page)
            while True:
                yield from page.entries
                if not page.has_more:
                    return
                page = self._call(what, self.client.files_list_folder_continue, page.cursor)
        except dbx_errors.ApiError as exc:
            if "reset" in str(exc.error):
                raise TransferFailed(f"Dropbox expired the listing cursor of {self.url}; run again") from None
            if self.shared:
                raise self._link_error(exc, path_for_errors) from None
            raise self._path_error(exc, path_for_errors) from None

    def _walk_own(self):
        """Recursive list_folder: one paged stream for the whole tree."""
        from dropbox import files

        depth = self.root.count("/")  # components of the root to strip from path_display

        def first_page():
            return self.client.files_list_folder(self.root, recursive=True, limit=LIST_PAGE,
                                                 include_non_downloadable_files=False)

        for meta in self._pages(f"listing {self.url}", first_page, ""):
            if not isinstance(meta, files.FileMetadata):
                continue
            # path_display keeps the case of the last component; parents' case may vary
            # (a Dropbox quirk), so rebuild from its parts and the exact name.
            parts = meta.path_display.split("/")[1 + depth:-1]
            rel = self._relative("/".join(parts), meta.name)
            if rel is not None:
                yield meta, rel

    def _walk_link(self):
        """Shared links list one folder at a time (no recursive mode): walk them."""
        from dropbox import files

        self._check_link()
        folders = deque([""])
        while folders:
            folder = folders.popleft()
            api_path = self._api_path(folder)

            def first_page(api_path=api_path):
                return self.client.files_list_folder(api_path, shared_link=self._link_arg(), limit=LIST_PAGE)

            for meta in self._pages(f"listing {self._where(folder)}", first_page, folder or "/"):
                rel = self._relative(folder, meta.name)
                if rel is None:
                    continue
                if isinstance(meta, files.FolderMetadata):
                    folders.append(rel)
                elif isinstance(meta, files.FileMetadata):
                    yield meta, rel

    def stat(self, path: str) -> Entry:
        rel = safe_relpath(path)
        from dropbox import exceptions as dbx_errors, files

        if self.shared:
            parent, _, name = rel.rpartition("/")
            self._check_link()
            for meta, found in self._list_link_folder(parent):
                if found.lower() == rel.lower() and isinstance(meta, files.FileMetadata):
                    return self._remember(meta, found)
            raise NotFound(f"{self._where(rel)} does not exist on Dropbox")
        try:
            meta = self._call(f"looking up {rel}", self.client.files_get_metadata, self._api_path(rel))
        except dbx_errors.ApiError as exc:
            raise self._path_error(exc, rel) from None
        if not isinstance(meta, files.FileMetadata):
            raise NotFound(f"{self._where(rel)} is a folder on Dropbox, not a file")
        return self._remember(meta, rel)

    def _list_link_folder(self, folder: str):
        def first_page():
            return self.client.files_list_folder(self._api_path(folder), shared_link=self._link_arg(),
                                                 limit=LIST_PAGE)

        for meta in self._pages(f"listing {self._where(folder)}", first_page, folder or "/"):
            rel = f"{folder}/{meta.name}" if folder else meta.name
            yield meta, rel

    def _known(self, rel: str) -> Entry:
        entry = self._listed.get(rel)
        return entry if entry is not None else self.stat(rel)

