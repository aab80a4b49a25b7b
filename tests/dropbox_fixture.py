"""A local HTTPS server speaking the Dropbox API v2 routes fitsync uses.

The unmodified ``dropbox`` SDK is pointed at it the way the SDK itself allows:
``dropbox/session.py`` reads ``DROPBOX_API_HOST``, ``DROPBOX_API_CONTENT_HOST``
and ``DROPBOX_API_NOTIFY_HOST`` from the environment *when it is imported*,
and every client takes ``ca_certs``. So this module binds its listening socket
and sets those variables at import time (before anything imports the SDK),
and makes its own CA with ``cryptography``; clients trust it through
``--ca-bundle`` / ``ca_certs``. CLI tests pass ``server.env()`` to the child.

The server keeps real bytes and answers with real content hashes. It counts
requests per route and content (download) requests, and can inject faults:
429 with Retry-After, 5xx, a download cut mid-stream, a corrupted body. Shared links may carry
a password; every wrong password is counted, as a real link would count
them towards locking.
"""

from __future__ import annotations

import atexit
import collections
import datetime as dt
import hashlib
import itertools
import json
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from fitsync.dbhash import content_hash

from tls_material import make_tls

# -- bind first, so the SDK (imported later, lazily) reads our host ---------
_LISTENER = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
_LISTENER.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
_LISTENER.bind(("127.0.0.1", 0))
HOST = f"127.0.0.1:{_LISTENER.getsockname()[1]}"
HOST_ENV = {
    "DROPBOX_API_HOST": HOST,
    "DROPBOX_API_CONTENT_HOST": HOST,
    "DROPBOX_API_NOTIFY_HOST": HOST,
}
os.environ.update(HOST_ENV)

CONTENT_ROUTES = {"files/download", "sharing/get_shared_link_file"}
UPLOAD_ROUTES = {
    "files/upload",
    "files/upload_session/start",
    "files/upload_session/append_v2",
    "files/upload_session/finish",
}
# Names the Dropbox service refuses (its documented ignored files).
DISALLOWED_NAMES = {"desktop.ini", "thumbs.db", ".ds_store", ".dropbox", ".dropbox.attr"}
REAL_SINGLE_UPLOAD_LIMIT = 150 * 1024 * 1024




def _stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(int(t), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_stamp(s: str) -> float:
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()


@dataclass
class StoredFile:
    display: str  # path as the uploader spelled it, e.g. "/EPOCH01/a.fits"
    data: bytes
    client_modified: float
    server_modified: float
    rev: str
    id: str
    content_hash: str = ""

    def __post_init__(self):
        self.content_hash = content_hash(self.data)

    @property
    def name(self) -> str:
        return self.display.rsplit("/", 1)[1]


@dataclass
class SharedLink:
    root: str  # lower-case folder path the link points at
    password: str | None


@dataclass
class Fault:
    route: str
    kind: str  # "429", "500", "503", "cut" (after cut_after bytes), "corrupt" (first byte flipped)
    remaining: int
    retry_after: int = 1
    cut_after: int = 0  # bytes sent before a "cut"


class ApiFailure(Exception):
    def __init__(self, status: int, body, headers: dict | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


def _route_error(tag_obj: dict, summary: str) -> ApiFailure:
    return ApiFailure(409, {"error": tag_obj, "error_summary": summary + "/.."})


def _not_found() -> ApiFailure:
    return _route_error({".tag": "path", "path": {".tag": "not_found"}}, "path/not_found")


class DropboxServer:
    """State plus a TLS HTTP server on ``HOST``. One per test session; tests
    call ``reset()`` (the ``dropbox_server`` pytest fixture does)."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="fitsync-dropbox-")
        self.ca_file, cert_file, key_file = make_tls(self.tmp, dns_names=("localhost",))
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(cert_file, key_file)
        self.host = HOST
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self.reset()

    # -- state --------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.files: dict[str, StoredFile] = {}
            self.folders: dict[str, str] = {"": ""}  # lower -> display
            self.tokens: set[str] = {"good-token"}
            self.expired_tokens: set[str] = set()
            self.refresh_tokens: dict[str, tuple[str, str]] = {}
            self.links: dict[str, SharedLink] = {}
            self.cursors: dict[str, list] = {}
            self.sessions: dict[str, bytearray] = {}
            self.faults: list[Fault] = []
            self.page_size = 1000
            self.max_single_upload = REAL_SINGLE_UPLOAD_LIMIT
            self.shared_link_range = True  # honour Range on sharing/get_shared_link_file
            self.reset_counters()

    def reset_counters(self) -> None:
        with self.lock:
            self.calls: collections.Counter = collections.Counter()
            self.content_requests = 0
            self.content_bytes = 0
            self.range_requests: list[str] = []
            self.password_failures = 0
            self.auth_headers: list[str] = []

    def put_file(self, path: str, data: bytes, mtime: float | None = None) -> StoredFile:
        with self.lock:
            now = time.time()
            self._make_parents(path)
            rec = StoredFile(path, bytes(data), now if mtime is None else mtime, now,
                             f"{next(self._ids):012x}", f"id:{next(self._ids):016x}")
            self.files[path.lower()] = rec
            return rec

    def get_file(self, path: str) -> bytes:
        return self.files[path.lower()].data

    def add_folder(self, path: str) -> None:
        with self.lock:
            self._make_parents(path + "/x")

    def add_shared_link(self, url: str, folder: str, password: str | None = None) -> None:
        with self.lock:
            self.add_folder(folder)
            self.links[url] = SharedLink(folder.lower(), password)

    def inject(self, route: str, kind: str, count: int = 1, **params) -> None:
        with self.lock:
            self.faults.append(Fault(route, kind, count, **params))

    def env(self) -> dict:
        """Environment for a child process that must reach this server."""
        return dict(os.environ, **HOST_ENV)

    def _make_parents(self, path: str) -> None:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            display = "/" + "/".join(parts[:i])
            self.folders.setdefault(display.lower(), display)

    def _take_fault(self, route: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.route == route and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
        return None

    # -- metadata JSON ------------------------------------------------
    def file_meta(self, rec: StoredFile, with_paths: bool = True) -> dict:
        meta = {
            ".tag": "file", "name": rec.name, "id": rec.id,
            "client_modified": _stamp(rec.client_modified),
            "server_modified": _stamp(rec.server_modified),
            "rev": rec.rev, "size": len(rec.data), "is_downloadable": True,
            "content_hash": rec.content_hash,
        }
        if with_paths:
            meta["path_lower"] = rec.display.lower()
            meta["path_display"] = rec.display
        return meta

    def folder_meta(self, lower: str, with_paths: bool = True) -> dict:
        display = self.folders[lower]
        meta = {".tag": "folder", "name": display.rsplit("/", 1)[1], "id": "id:dir" + str(abs(hash(lower)))}
        if with_paths:
            meta["path_lower"] = lower
            meta["path_display"] = display
        return meta

    def children(self, lower: str, recursive: bool, with_paths: bool = True) -> list[dict]:
        prefix = lower + "/"
        out = []
        for key in sorted(self.folders):
            if key.startswith(prefix) and (recursive or "/" not in key[len(prefix):]):
                out.append(self.folder_meta(key, with_paths))
        for key in sorted(self.files):
            if key.startswith(prefix) and (recursive or "/" not in key[len(prefix):]):
                out.append(self.file_meta(self.files[key], with_paths))
        return out

    # -- lifetime -----------------------------------------------------
    def start(self) -> None:
        import dropbox.session

        if dropbox.session.API_HOST != self.host:
            raise RuntimeError(
                "the dropbox SDK was imported before tests/dropbox_fixture.py set "
                "DROPBOX_API_HOST; import dropbox_fixture first")
        server = self
        ctx = self._ctx

        class Handler(_Handler):
            state = server
            tls = ctx

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.httpd.socket.close()
        self.httpd.socket = _LISTENER
        self.httpd.daemon_threads = True
        _LISTENER.listen(64)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: DropboxServer
    tls: ssl.SSLContext

    def setup(self):
        # No Nagle: headers and body are separate writes, and waiting for the
        # client's delayed ACK would add 40 ms to every response.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # TLS handshake in the worker thread, not the accept loop.
        self.request = self.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self._reply_json(405, {"error": "POST only"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        route = self.path.split("?", 1)[0]
        route = route[3:] if route.startswith("/2/") else route.lstrip("/")
        st = self.state
        with st.lock:
            st.calls[route] += 1
            if route in CONTENT_ROUTES:
                st.content_requests += 1
            st.auth_headers.append(self.headers.get("Authorization", ""))
        try:
            fault = st._take_fault(route)
            if fault is not None and fault.kind not in ("cut", "corrupt"):
                self._inject(fault)
                return
            handler = ROUTES.get(route)
            if handler is None:
                raise ApiFailure(400, f"Unknown API function: {route!r}")
            if route != "oauth2/token":
                self._check_token()
            handler(self, body, fault)
        except ApiFailure as exc:
            if isinstance(exc.body, (dict, list)):
                self._reply_json(exc.status, exc.body, exc.headers)
            else:
                self._reply_text(exc.status, str(exc.body), exc.headers)

    # -- helpers ------------------------------------------------------
    def _inject(self, fault: Fault) -> None:
        if fault.kind == "429":
            self._reply_json(429, {
                "error_summary": "too_many_requests/..",
                "error": {"reason": {".tag": "too_many_requests"}, "retry_after": fault.retry_after},
            }, {"Retry-After": str(fault.retry_after)})
        elif fault.kind == "html":  # a proxy's or captive portal's page where the API's JSON belongs
            self._reply_text(200, "<html><body>Please log in to the guest network</body></html>",
                             {"Content-Type": "text/html"})
        else:
            self._reply_text(int(fault.kind), "Internal Server Error")

    def _check_token(self) -> None:
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        st = self.state
        if token in st.expired_tokens:
            tag = "expired_access_token"
        elif token in st.tokens:
            return
        else:
            tag = "invalid_access_token"
        raise ApiFailure(401, {"error_summary": tag + "/..", "error": {".tag": tag}})

    def _arg(self, body: bytes, style: str) -> dict:
        raw = self.headers.get("Dropbox-API-Arg") if style != "rpc" else body.decode()
        try:
            return json.loads(raw or "null") or {}
        except ValueError:
            raise ApiFailure(400, "Error in call: could not decode input as JSON") from None

    def _reply_json(self, status: int, obj, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _reply_text(self, status: int, text: str, headers: dict | None = None) -> None:
        data = text.encode()
        headers = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _send_content(self, data: bytes, result: dict, fault: Fault | None, allow_range: bool) -> None:
        start, status = 0, 200
        rng = self.headers.get("Range")
        end = len(data)
        if rng and allow_range:
            self.state.range_requests.append(rng)
            spec = rng.split("=", 1)[1]
            first, _, last = spec.partition("-")
            start = int(first)
            end = min(len(data), int(last) + 1) if last else len(data)
            if start >= len(data) and len(data):
                raise ApiFailure(416, "Range Not Satisfiable", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
        payload = data[start:end]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Dropbox-API-Result", json.dumps(result))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if fault is not None and fault.kind == "cut":
            payload = payload[:fault.cut_after]
            self.close_connection = True
        elif fault is not None and fault.kind == "corrupt" and payload:
            payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
        self.wfile.write(payload)
        self.wfile.flush()
        with self.state.lock:
            self.state.content_bytes += len(payload)

    def _link(self, url: str, password: str | None) -> SharedLink:
        st = self.state
        link = st.links.get(url)
        if link is None:
            raise _route_error({".tag": "shared_link_not_found"}, "shared_link_not_found")
        if link.password is not None and password != link.password:
            with st.lock:
                st.password_failures += 1
            raise _route_error({".tag": "shared_link_access_denied"}, "shared_link_access_denied")
        return link

    def _lookup(self, lower: str):
        st = self.state
        if lower in st.files:
            return st.files[lower]
        if lower in st.folders:
            return lower
        raise _not_found()


def _clean(path: str | None) -> str:
    """API path -> lower-case key ('' is the root)."""
    if not path:
        return ""
    if not path.startswith("/"):
        raise ApiFailure(400, f"Error in call: 'path': {path!r} did not match pattern")
    return path.rstrip("/").lower()


# -- routes ---------------------------------------------------------------
def _list_folder(h: _Handler, body: bytes, fault) -> None:
    st = h.state
    arg = h._arg(body, "rpc")
    shared = arg.get("shared_link")
    with_paths = True
    if shared:
        if arg.get("recursive"):
            raise ApiFailure(400, "Error in call: recursive is not supported for shared link")
        link = h._link(shared["url"], shared.get("password"))
        base = link.root + _clean(arg.get("path"))
        with_paths = False  # listings through a link carry no paths in the owner's namespace
    else:
        base = _clean(arg.get("path"))
    with st.lock:
        found = h._lookup(base) if base else ""
        if not isinstance(found, str):
            raise _route_error({".tag": "path", "path": {".tag": "not_folder"}}, "path/not_folder")
        entries = st.children(base, bool(arg.get("recursive")), with_paths)
        if arg.get("recursive") and base:
            entries.insert(0, st.folder_meta(base))
        limit = min(arg.get("limit") or 2000, st.page_size)
        h._reply_json(200, _page(st, entries, limit))


def _page(st: DropboxServer, entries: list, limit: int) -> dict:
    page, rest = entries[:limit], entries[limit:]
    cursor = f"cursor-{next(st._ids)}"
    st.cursors[cursor] = (rest, limit)
    return {"entries": page, "cursor": cursor, "has_more": bool(rest)}


def _list_folder_continue(h: _Handler, body: bytes, fault) -> None:
    st = h.state
    arg = h._arg(body, "rpc")
    with st.lock:
        if arg.get("cursor") not in st.cursors:
            raise _route_error({".tag": "reset"}, "reset")
        rest, limit = st.cursors.pop(arg["cursor"])
        h._reply_json(200, _page(st, rest, limit))


def _get_metadata(h: _Handler, body: bytes, fault) -> None:
    st = h.state
    arg = h._arg(body, "rpc")
    lower = _clean(arg.get("path"))
    if not lower:
        raise ApiFailure(400, "Error in call: the root folder is unsupported")
    with st.lock:
        found = h._lookup(lower)
        h._reply_json(200, st.folder_meta(found) if isinstance(found, str) else st.file_meta(found))


def _download(h: _Handler, body: bytes, fault) -> None:
    st = h.state
    arg = h._arg(body, "download")
    with st.lock:
        found = h._lookup(_clean(arg.get("path")))
        if isinstance(found, str):
            raise _route_error({".tag": "path", "path": {".tag": "not_file"}}, "path/not_file")
        meta, data = st.file_meta(found), found.data
    h._send_content(data, meta, fault, allow_range=True)


def _link_metadata(h: _Handler, body: bytes, fault) -> None:
    st = h.state
    arg = h._arg(body, "rpc")
    link = h._link(arg.get("url"), arg.get("link_password"))
    with st.lock:
        found = h._lookup(link.root + _clean(arg.get("path")))
        h._reply_json(200, _link_meta(st, arg["url"], found))


def _link_meta(st: DropboxServer, url: str, found) -> dict:
    perms = {"can_revoke": False, "visibility_policies": [], "can_set_expiry": False,
             "can_remove_expiry": False, "allow_download": True, "can_allow_download": False,
             "can_disallow_download": False, "allow_comments": False, "team_restricts_comments": False}
    if isinstance(found, str):
        return {".tag": "folder", "url": url, "name": st.folders[found].rsplit("/", 1)[1] or "root",
                "link_permissions": perms}
    return {".tag": "file", "url": url, "name": found.name, "link_permissions": perms,
            "client_modified": _stamp(found.client_modified), "server_modified": _stamp(found.server_modified),
            "rev": found.rev, "size": len(found.data)}


def _link_file(h: _Handler, body: bytes, fault) -> None:
    st = h.state
    arg = h._arg(body, "download")
    link = h._link(arg.get("url"), arg.get("link_password"))
    with st.lock:
        found = h._lookup(link.root + _clean(arg.get("path")))
        if isinstance(found, str):
            raise _route_error({".tag": "shared_link_is_directory"}, "shared_link_is_directory")
        meta, data = _link_meta(st, arg["url"], found), found.data
    h._send_content(data, meta, fault, allow_range=st.shared_link_range)


def _check_upload_hash(arg: dict, body: bytes, tag: dict) -> None:
    if arg.get("content_hash") and arg["content_hash"] != content_hash(body):
        raise _route_error(tag, "content_hash_mismatch")


def _commit(h: _Handler, commit: dict, data: bytes, session: str | None, finish: bool) -> None:
    st = h.state
    path = commit["path"]
    name = path.rsplit("/", 1)[1]
    if name.lower() in DISALLOWED_NAMES:
        reason = {".tag": "disallowed_name"}
        if finish:
            raise _route_error({".tag": "path", "path": reason}, "path/disallowed_name")
        raise _route_error({".tag": "path", "reason": reason, "upload_session_id": session or "none"},
                           "path/disallowed_name")
    mode = commit.get("mode", "add")
    mode = mode.get(".tag") if isinstance(mode, dict) else mode
    with st.lock:
        existing = st.files.get(path.lower())
        if existing is not None and mode == "add":
            reason = {".tag": "conflict", "conflict": {".tag": "file"}}
            raise _route_error({".tag": "path", "reason": reason, "upload_session_id": "none"}, "path/conflict")
        mtime = _parse_stamp(commit["client_modified"]) if commit.get("client_modified") else None
        rec = st.put_file(existing.display if existing else path, data, mtime)
        h._reply_json(200, st.file_meta(rec))


def _upload(h: _Handler, body: bytes, fault) -> None:
    arg = h._arg(body, "upload")
    if len(body) > h.state.max_single_upload:
        raise _route_error({".tag": "payload_too_large"}, "payload_too_large")
    _check_upload_hash(arg, body, {".tag": "content_hash_mismatch"})
    _commit(h, arg, body, None, finish=False)


def _session_start(h: _Handler, body: bytes, fault) -> None:
    st = h.state
    arg = h._arg(body, "upload")
    _check_upload_hash(arg, body, {".tag": "content_hash_mismatch"})
    with st.lock:
        sid = f"session-{next(st._ids)}"
        st.sessions[sid] = bytearray(body)
    h._reply_json(200, {"session_id": sid})


def _session_data(h: _Handler, cursor: dict) -> bytearray:
    data = h.state.sessions.get(cursor.get("session_id"))
    if data is None:
        raise _route_error({".tag": "lookup_failed", "lookup_failed": {".tag": "not_found"}}, "not_found")
    if cursor.get("offset") != len(data):
        raise ApiFailure(409, {"error": {".tag": "incorrect_offset", "correct_offset": len(data)},
                               "error_summary": "incorrect_offset/.."})
    return data


def _session_append(h: _Handler, body: bytes, fault) -> None:
    st = h.state
    arg = h._arg(body, "upload")
    _check_upload_hash(arg, body, {".tag": "content_hash_mismatch"})
    with st.lock:
        _session_data(h, arg["cursor"]).extend(body)
    h._reply_json(200, None)


def _session_finish(h: _Handler, body: bytes, fault) -> None:
    st = h.state
    arg = h._arg(body, "upload")
    _check_upload_hash(arg, body, {".tag": "content_hash_mismatch"})
    with st.lock:
        try:
            data = _session_data(h, arg["cursor"])
        except ApiFailure as exc:
            if exc.body.get("error", {}).get(".tag") == "incorrect_offset":
                exc.body["error"] = {".tag": "lookup_failed", "lookup_failed": exc.body["error"]}
            raise
        data.extend(body)
        del st.sessions[arg["cursor"]["session_id"]]
    _commit(h, arg["commit"], bytes(data), arg["cursor"]["session_id"], finish=True)


def _delete(h: _Handler, body: bytes, fault) -> None:
    st = h.state
    arg = h._arg(body, "rpc")
    lower = _clean(arg.get("path"))
    with st.lock:
        if lower not in st.files and lower not in st.folders:
            raise _route_error({".tag": "path_lookup", "path_lookup": {".tag": "not_found"}},
                               "path_lookup/not_found")
        found = h._lookup(lower)
        if isinstance(found, str):
            meta = st.folder_meta(found)
            for key in [k for k in st.files if k.startswith(lower + "/")]:
                del st.files[key]
            for key in [k for k in st.folders if k == lower or k.startswith(lower + "/")]:
                del st.folders[key]
        else:
            meta = st.file_meta(found)
            del st.files[lower]
        h._reply_json(200, {"metadata": meta})


def _oauth_token(h: _Handler, body: bytes, fault) -> None:
    st = h.state
    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
    known = st.refresh_tokens.get(form.get("refresh_token", ""))
    if form.get("grant_type") != "refresh_token" or known is None or known != (
        form.get("client_id"), form.get("client_secret")
    ):
        raise ApiFailure(400, {"error": "invalid_grant", "error_description": "refresh token is malformed"})
    token = "fresh-" + hashlib.sha256(form["refresh_token"].encode()).hexdigest()[:16]
    with st.lock:
        st.tokens.add(token)
    h._reply_json(200, {"access_token": token, "expires_in": 14400, "token_type": "bearer"})


ROUTES = {
    "files/list_folder": _list_folder,
    "files/list_folder/continue": _list_folder_continue,
    "files/get_metadata": _get_metadata,
    "files/download": _download,
    "files/upload": _upload,
    "files/upload_session/start": _session_start,
    "files/upload_session/append_v2": _session_append,
    "files/upload_session/finish": _session_finish,
    "files/delete_v2": _delete,
    "sharing/get_shared_link_metadata": _link_metadata,
    "sharing/get_shared_link_file": _link_file,
    "oauth2/token": _oauth_token,
}

_SERVER: DropboxServer | None = None
_SERVER_LOCK = threading.Lock()


def shared_server() -> DropboxServer:
    """The one server of this test process, started on first use."""
    global _SERVER
    with _SERVER_LOCK:
        if _SERVER is None:
            _SERVER = DropboxServer()
            _SERVER.start()
            atexit.register(_SERVER.stop)
        return _SERVER


@pytest.fixture
def dropbox_server() -> DropboxServer:
    server = shared_server()
    server.reset()
    yield server
    server.reset()
