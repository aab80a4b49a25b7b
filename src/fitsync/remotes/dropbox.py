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
import configparser
import datetime as dt
import io
import logging
import os
import stat as stat_mod
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable, Iterator

import requests
import urllib3

from fitsync.dbhash import DropboxContentHasher
from fitsync.errors import (
    AuthenticationFailed,
    BadInput,
    ConnectionFailed,
    NotFound,
    SourceChanged,
    TransferFailed,
    UnsafePath,
    UsageError,
    VerificationFailed,
)
from fitsync.options import RemoteOptions
from fitsync.paths import safe_relpath
from fitsync.remotes.retry import Retries, RetryPolicy
from fitsync.remotes.base import Capability, Entry, ReadOnlyRemote, Remote

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
DOWNLOAD_READ = 1 << 20
# What a broken download stream can raise (urllib3 below requests, or the socket).
_STREAM_ERRORS = (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError)


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


@dataclass
class Credentials:
    """Where to log in. Secret fields are kept out of repr()."""

    source: str  # said in messages: which file or variable the secrets came from
    access_token: str | None = field(default=None, repr=False)
    app_key: str | None = field(default=None, repr=False)
    app_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    shared_url: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None

    def check(self) -> None:
        if not (self.access_token or self.refresh_token):
            raise BadInput(
                f"{self.source} holds no Dropbox credentials; give access_token, or app_key, "
                "app_secret and refresh_token (see `fitsync config template dropbox`)")
        if self.refresh_token and not self.app_key:
            raise BadInput(f"{self.source}: a refresh_token needs the app_key (and app_secret) it was issued to")


# -- credentials from files and options ------------------------------------------

def refuse_if_others_can_read(path: str) -> None:
    """Secrets in a file other users can read are refused, like ssh does with keys."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise NotFound(f"Dropbox config {path} does not exist") from None
    if mode & 0o077:
        raise BadInput(
            f"{path} holds Dropbox secrets but other users can access it "
            f"(mode {stat_mod.filemode(mode)}); run `chmod 600 {path}` and try again")


def read_old_ini(path: str) -> Credentials:
    """The VAST download script's INI: ``[dropbox]`` shared_url, password, access_token."""
    refuse_if_others_can_read(path)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise BadInput(f"{path} is not a valid INI file ({type(exc).__name__}); "
                       "expected a [dropbox] section") from None
    if not parser.has_section("dropbox"):
        raise BadInput(f"{path} has no [dropbox] section (expected shared_url, password, access_token)")
    section = parser["dropbox"]

    def value(key: str) -> str | None:
        text = section.get(key, "").strip()
        return text or None

    creds = Credentials(
        source=f"--dropbox-config {path}",
        access_token=value("access_token"),
        app_key=value("app_key"),
        app_secret=value("app_secret"),
        refresh_token=value("refresh_token"),
        shared_url=value("shared_url"),
        password=value("password"),
    )
    creds.check()
    return creds


_SECRET_KEYS = ("access_token", "app_secret", "refresh_token", "password")
_PLAIN_KEYS = ("app_key", "shared_url", "ca_bundle")


def credentials_from_config(name: str, conf: dict) -> Credentials:
    """A configured remote's table (fitsync.config has already refused a file
    holding secrets that other users can read). Each secret may instead be
    named by an environment variable: ``password_env = "VAST_LINK_PASSWORD"``."""
    known = {"type", "name", "path", "upload_chunk_mib", *_PLAIN_KEYS, *_SECRET_KEYS,
             *(key + "_env" for key in _SECRET_KEYS)}
    unknown = sorted(set(conf) - known)
    if unknown:
        raise BadInput(f"remote {name!r}: unknown key(s) {', '.join(unknown)}; "
                       "see `fitsync config template dropbox`")
    values = {}
    for key in (*_PLAIN_KEYS, *_SECRET_KEYS, "path"):
        value = conf.get(key)
        if value is not None and not isinstance(value, str):
            raise BadInput(f"remote {name!r}: {key} must be a string")
        values[key] = value or None
    for key in _SECRET_KEYS:
        variable = conf.get(key + "_env")
        if variable:
            if values[key]:
                raise BadInput(f"remote {name!r}: give {key} or {key}_env, not both")
            values[key] = os.environ.get(str(variable)) or None
            if values[key] is None:
                raise BadInput(f"remote {name!r}: {key}_env names {variable}, which is not set")
    creds = Credentials(
        source=f"remote {name!r} in the config",
        access_token=values["access_token"],
        app_key=values["app_key"],
        app_secret=values["app_secret"],
        refresh_token=values["refresh_token"],
        shared_url=values["shared_url"],
        password=values["password"],
        ca_bundle=values["ca_bundle"],
    )
    creds.check()
    return creds


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

class DropboxRemote(Remote):
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
                session = _session(self.jobs + 2, c.ca_bundle)
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
                    f"TLS verification of the Dropbox server failed ({_first_line(exc)}); "
                    "behind an intercepting proxy, pass its CA with --ca-bundle=FILE") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                self._back_off(tries, what, f"connection problem: {_first_line(exc)}", ConnectionFailed)
            except dbx_errors.BadInputError as exc:
                raise BadInput(f"Dropbox rejected the request for {what}: {_first_line(exc.message)}") from None
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

    # -- reading --------------------------------------------------------
    def digest(self, path: str, algo: str = "blake3") -> str:
        """Dropbox's content hash comes from the metadata; other algorithms read the file."""
        if algo == "dropbox":
            value = self._known(safe_relpath(path)).hashes.get("dropbox")
            if value:
                return value
        return super().digest(path, algo)

    def open_read(self, path: str) -> BinaryIO:
        rel = safe_relpath(path)
        return io.BufferedReader(_Download(self, rel, self._known(rel), self._revs.get(rel)),
                                 buffer_size=DOWNLOAD_READ)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        rel = safe_relpath(path)
        entry = self._known(rel)
        end = min(offset + length, entry.size)
        if end <= offset:
            return b""
        tries = self.retry.tracker()
        while True:
            meta, resp = self._content(rel, offset, end - 1)
            try:
                self._check_same_version(rel, meta, self._revs.get(rel), entry)
                data = resp.content
                if resp.status_code != 206:
                    self._note_no_range(rel)
                    data = data[offset:end]
            except _STREAM_ERRORS as exc:
                self._back_off(tries, f"reading {rel}", f"interrupted download ({_first_line(exc)})",
                               ConnectionFailed)
                continue
            finally:
                resp.close()
            if len(data) != end - offset:
                raise SourceChanged(f"{rel}: Dropbox sent {len(data)} bytes for a {end - offset}-byte range; "
                                    "the file changed; it will be fetched again")
            return data

    def _note_no_range(self, rel: str) -> None:
        if not self._range_warned:
            self._range_warned = True
            log.warning("Dropbox ignored an HTTP Range request for %s; interrupted downloads from this "
                        "link restart from the beginning", rel)

    def _content(self, rel: str, first: int = 0, last: int | None = None):
        """(metadata, streaming response) of a download, from ``first`` to ``last`` inclusive."""
        from dropbox import exceptions as dbx_errors, sharing

        headers = None
        if first or last is not None:
            headers = {"Range": f"bytes={first}-{'' if last is None else last}"}
        try:
            if self.shared:
                arg = sharing.GetSharedLinkMetadataArg(self.creds.shared_url, self._api_path(rel),
                                                       self.creds.password)
                # The SDK's helper takes no headers; its public request() does (same route).
                return self._call(f"downloading {rel}", self.client.request, sharing.get_shared_link_file,
                                  "sharing", arg, None, extra_headers=headers)
            return self._call(f"downloading {rel}", self.client.files_download, self._api_path(rel),
                              extra_headers=headers)
        except dbx_errors.ApiError as exc:
            if self.shared:
                raise self._link_error(exc, rel) from None
            raise self._path_error(exc, rel) from None

    def _check_same_version(self, rel: str, meta, listed_rev: str | None, entry: Entry) -> None:
        changed = (listed_rev is not None and meta.rev != listed_rev) or meta.size != entry.size
        content_hash = getattr(meta, "content_hash", None)
        if content_hash and entry.hashes.get("dropbox") and content_hash != entry.hashes["dropbox"]:
            changed = True
        if changed:
            self._listed.pop(rel, None)  # the next stat() asks Dropbox again
            raise SourceChanged(f"{rel} changed on Dropbox since it was listed; it will be fetched again")

    # -- writing --------------------------------------------------------
    def _require_writable(self, what: str) -> None:
        if self.shared:
            raise ReadOnlyRemote(f"{self.url} is a shared link, which fitsync only reads; cannot {what}")

    def write_atomic(self, path, chunks: Iterable[bytes], *, mtime=None, expected_digest=None) -> None:
        """Upload. Dropbox commits a file only when the last request completes, so
        nothing partial is ever visible under ``path``; the BLAKE3 of the bytes is
        checked before that commit and the content hash after it."""
        self._require_writable(f"write {path}")
        rel = safe_relpath(path)
        self._refuse_case_clash(rel)
        _Upload(self, rel, mtime).run(chunks, expected_digest)
        self._by_lower[rel.lower()] = rel
        self._listed.pop(rel, None)

    def _refuse_case_clash(self, rel: str) -> None:
        other = self._by_lower.get(rel.lower())
        if other is not None and other != rel:
            raise BadInput(f"Dropbox names ignore case: {rel!r} would overwrite {other!r}; "
                           "rename one of them locally (fitsync never renames files itself)")

    def _write_error(self, exc, rel: str):
        text = str(exc.error)
        for reason in ("disallowed_name", "malformed_path"):
            if reason in text:
                return BadInput(f"Dropbox cannot hold the name {rel!r} ({reason}); rename it locally "
                                "(fitsync never renames files itself)")
        if "insufficient_space" in text:
            return TransferFailed(f"the Dropbox account is full; {rel} was not uploaded")
        if "no_write_permission" in text:
            return AuthenticationFailed(f"no permission to write {self._where(rel)} on Dropbox")
        if "content_hash_mismatch" in text:
            return VerificationFailed(f"{rel}: Dropbox received bytes that do not match their content hash")
        return TransferFailed(f"Dropbox refused the upload of {rel} ({text})")

    def delete(self, path: str) -> None:
        self._require_writable(f"delete {path}")
        rel = safe_relpath(path)
        from dropbox import exceptions as dbx_errors

        try:
            self._call(f"deleting {rel}", self.client.files_delete_v2, self._api_path(rel))
        except dbx_errors.ApiError as exc:
            error = self._path_error(exc, rel)
            if not isinstance(error, NotFound):
                raise error from None
        self._listed.pop(rel, None)
        self._by_lower.pop(rel.lower(), None)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class _NamedCASession(requests.Session):
    """A session whose CA bundle (--ca-bundle) wins over REQUESTS_CA_BUNDLE and
    CURL_CA_BUNDLE. requests lets those variables override a session's
    ``verify``; proxies from the environment still apply."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None:
            settings["verify"] = self.verify
        return settings


def _session(max_connections: int, ca_bundle: str | None) -> requests.Session:
    import dropbox

    sdk_session = dropbox.create_session(max_connections=max_connections, ca_certs=ca_bundle)
    if ca_bundle is None:
        return sdk_session
    session = _NamedCASession()
    session.verify = ca_bundle
    session.mount("https://", sdk_session.get_adapter("https://"))
    return session


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class _Download(io.RawIOBase):
    """A sequential, seekable reader of one Dropbox file.

    A connection cut mid-stream is resumed from the current byte with an HTTP
    Range request; if the endpoint ignores Range, the download restarts and
    the bytes already delivered are skipped (and this is logged). Read from
    the start, the bytes are checked against Dropbox's content hash before
    the last of them is returned, so a wrong download can never look complete.
    """

    def __init__(self, remote: DropboxRemote, rel: str, entry: Entry, rev: str | None):
        self._remote = remote
        self._rel = rel
        self._entry = entry
        self._rev = rev
        self._pos = 0
        self._resp = None
        self._hasher: DropboxContentHasher | None = DropboxContentHasher()
        self._verified = False
        self._tries = remote.retry.tracker()
        self._failed_at = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._entry.size}[whence]
        target = max(0, base + offset)
        if target != self._pos:
            self._drop()
            self._pos = target
            # Only a read from byte 0 sees every byte, so only then can it check the hash.
            self._hasher = DropboxContentHasher() if target == 0 else None
        return self._pos

    def readinto(self, buffer) -> int:
        size = self._entry.size
        while self._pos < size:
            if self._resp is None:
                self._connect()
            want = min(len(buffer), size - self._pos)
            try:
                data = self._resp.raw.read(want, decode_content=True)
            except _STREAM_ERRORS as exc:
                self._interrupted(_first_line(exc))
                continue
            if not data:
                self._interrupted("the server closed the connection early")
                continue
            n = len(data)
            if self._hasher is not None:
                self._hasher.update(data)
            if self._pos + n == size:
                # Checked before the last bytes are handed over: a reader that stops at
                # the listed size (without reading to EOF) is protected too.
                self._pos += n
                self._finish()
                self._pos -= n
            buffer[:n] = data
            self._pos += n
            return n
        self._finish()
        return 0

    def _connect(self) -> None:
        remote = self._remote
        meta, resp = remote._content(self._rel, self._pos) if self._pos else remote._content(self._rel)
        try:
            remote._check_same_version(self._rel, meta, self._rev, self._entry)
            self._rev = meta.rev
            if self._pos and resp.status_code != 206:
                remote._note_no_range(self._rel)
                log.warning("%s: restarting the download from byte 0 (skipping %d bytes already received)",
                            self._rel, self._pos)
                self._skip(resp, self._pos)
            elif self._pos and not resp.headers.get("Content-Range", "").startswith(f"bytes {self._pos}-"):
                raise TransferFailed(f"{self._rel}: Dropbox answered a Range request with the wrong range")
        except BaseException:
            resp.close()
            raise
        self._resp = resp

    @staticmethod
    def _skip(resp, count: int) -> None:
        while count:
            data = resp.raw.read(min(count, DOWNLOAD_READ), decode_content=True)
            if not data:
                raise ConnectionError("connection closed while skipping to the resume point")
            count -= len(data)

    def _interrupted(self, why: str) -> None:
        self._drop()
        if self._pos > self._failed_at:
            self._tries.progressed()  # progress since the last cut: a fresh set of retries
        self._failed_at = self._pos
        self._tries.failed(
            f"{self._rel}: download cut at byte {self._pos} of {self._entry.size} ({why}); resuming from there",
            lambda count: ConnectionFailed(f"{self._rel}: the download was cut {count} times at byte {self._pos} "
                                           f"of {self._entry.size} ({why}); giving up"))

    def _finish(self) -> None:
        self._drop()
        if self._verified or self._hasher is None:
            return
        expected = self._entry.hashes.get("dropbox")
        got = self._hasher.hexdigest()
        self._verified = True
        if expected and got != expected:
            raise VerificationFailed(
                f"{self._rel}: the downloaded bytes do not match Dropbox's content hash; it will be fetched again")

    def _drop(self) -> None:
        if self._resp is not None:
            try:
                self._resp.close()
            except Exception:  # closing a broken connection may fail; it is discarded anyway
                pass
            self._resp = None

    def close(self) -> None:
        self._drop()
        super().close()


class _Upload:
    """One file up to Dropbox: a single request, or an upload session in chunks."""

    def __init__(self, remote: DropboxRemote, rel: str, mtime: float | None):
        self.remote = remote
        self.rel = rel
        self.path = remote._api_path(rel)
        self.mtime = mtime
        self.session_id: str | None = None
        self.offset = 0

    def run(self, chunks: Iterable[bytes], expected_digest: str | None) -> None:
        import blake3

        received = blake3.blake3()
        content = DropboxContentHasher()
        buffer = bytearray()
        chunk = self.remote.upload_chunk
        for piece in chunks:
            received.update(piece)
            content.update(piece)
            buffer += piece
            while len(buffer) > chunk:  # strictly more: the last chunk always goes with the commit
                self._send(bytes(buffer[:chunk]))
                del buffer[:chunk]
        # Checked before the commit: a mismatch leaves Dropbox untouched.
        if expected_digest is not None and received.hexdigest() != expected_digest:
            raise VerificationFailed(f"{self.rel}: the bytes read for upload do not match the source digest")
        meta = self._commit(bytes(buffer))
        if meta.content_hash != content.hexdigest():
            raise VerificationFailed(
                f"{self.rel}: Dropbox stored content that does not match what was sent "
                "(content hash differs); run again to upload it anew")
        log.debug("uploaded %s (%d bytes%s)", self.rel, meta.size,
                  ", upload session" if self.session_id else "")

    def _commit_info(self):
        from dropbox import files

        modified = None
        if self.mtime is not None:
            modified = dt.datetime.fromtimestamp(int(self.mtime), dt.timezone.utc).replace(tzinfo=None)
        return files.CommitInfo(path=self.path, mode=files.WriteMode.overwrite, client_modified=modified,
                                mute=True)

    def _send(self, data: bytes) -> None:
        from dropbox import files

        client = self.remote.client
        if self.session_id is None:
            result = self._api(client.files_upload_session_start, data)
            self.session_id = result.session_id
        else:
            cursor = files.UploadSessionCursor(session_id=self.session_id, offset=self.offset)
            self._append(client, cursor, data)
        self.offset += len(data)

    def _append(self, client, cursor, data: bytes) -> None:
        from dropbox import exceptions as dbx_errors

        try:
            self._api(client.files_upload_session_append_v2, data, cursor, raw_errors=True)
        except dbx_errors.ApiError as exc:
            # A retried append whose first try did arrive: the server is already past it.
            err = exc.error
            if err.is_incorrect_offset() and err.get_incorrect_offset().correct_offset == cursor.offset + len(data):
                return
            raise self.remote._write_error(exc, self.rel) from None

    def _commit(self, data: bytes):
        from dropbox import files

        client = self.remote.client
        commit = self._commit_info()
        if self.session_id is None:
            return self._api(client.files_upload, data, commit.path, mode=commit.mode,
                             client_modified=commit.client_modified, mute=True)
        cursor = files.UploadSessionCursor(session_id=self.session_id, offset=self.offset)
        return self._api(client.files_upload_session_finish, data, cursor, commit)

    def _api(self, fn, *args, raw_errors: bool = False, **kwargs):
        from dropbox import exceptions as dbx_errors

        try:
            return self.remote._call(f"uploading {self.rel}", fn, *args, **kwargs)
        except dbx_errors.ApiError as exc:
            if raw_errors:
                raise
            raise self.remote._write_error(exc, self.rel) from None
