"""Real HTTP(S) servers on 127.0.0.1 for the HTTP remote's tests and benchmark.

Each server serves a directory with the parts of HTTP a release mirror meets:
GET/HEAD, ETag and Last-Modified, single and multi-range requests
(multipart/byteranges), If-Match/If-Range, and Apache- or nginx-style index
pages for directories. Behaviours select the misbehaving servers the remote
must survive:

- ``ranges``: Range and multi-range done right.
- ``ignore-range``: every GET answers 200 with the whole file.
- ``broken-multirange``: single ranges work; a multi-range request gets a
  206 with only the first range (``first-only``) or a multipart body whose
  boundary is not the one declared (``garbled``).
- ``changing``: files listed in ``versions`` change content (and validators)
  after each request.
- ``drop_after``: the first GET of each file is cut off after that many body
  bytes, as a dropped connection would, to exercise resume.
- ``fail_first``: the first N requests get 503 Service Unavailable.
- ``fail_always``: url paths whose every GET gets 503 (a file the server
  cannot serve, however often it is asked).
- ``redirects``: {url path: Location} answered with 302 Found.
- ``honor_if_match=False``: If-Match is ignored, as many servers do, so the
  client must notice a changed file from the validators alone.

Servers count requests and the bytes they send, so tests can assert what a
transfer really cost. Threads are daemons with socket timeouts and a bounded
number of concurrent connections; ``close()`` stops everything.
"""

from __future__ import annotations

import datetime
import hashlib
import email.utils
import html
import base64
import os
import posixpath
import re
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tls_material import make_tls

MAX_CONNECTIONS = 32
SOCKET_TIMEOUT = 20.0
BEHAVIOURS = ("ranges", "ignore-range", "broken-multirange", "changing")


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int = 0
    body_bytes: int = 0


@dataclass
class Counters:
    """What the server sent. ``body_bytes`` counts message bodies, including
    multipart framing; ``header_bytes`` the status lines and headers."""

    body_bytes: int = 0
    header_bytes: int = 0
    requests: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.body_bytes = 0
            self.header_bytes = 0
            self.requests = []

    def body_bytes_for(self, url_path_prefix: str) -> int:
        with self.lock:
            return sum(r.body_bytes for r in self.requests if r.path.startswith(url_path_prefix))

    def ranged_gets(self) -> list:
        with self.lock:
            return [r for r in self.requests if r.method == "GET" and r.range]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fitsync-test-httpd/1"
    timeout = SOCKET_TIMEOUT
    server: "_Server"

    # -- plumbing ----------------------------------------------------
    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def _record(self) -> Request:
        req = Request(self.command, urllib.parse.urlsplit(self.path).path, self.headers.get("Range"))
        with self.server.counters.lock:
            self.server.counters.requests.append(req)
        return req

    def _send_headers(self, req: Request, status: int, headers: dict) -> None:
        req.status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        header_len = sum(len(line) for line in getattr(self, "_headers_buffer", [])) + 2
        self.end_headers()
        with self.server.counters.lock:
            self.server.counters.header_bytes += header_len

    # Bytes are counted before they are handed to the socket: a client that
    # has received them may look at the counters at once.
    def _write_body(self, req: Request, data: bytes) -> None:
        self._count(req, len(data))
        self.wfile.write(data)

    def _count(self, req: Request, n: int) -> None:
        req.body_bytes += n
        with self.server.counters.lock:
            self.server.counters.body_bytes += n

    def _send_file_range(self, req: Request, content, offset: int, count: int) -> None:
        """Send ``count`` bytes of ``content`` (bytes or a path) at ``offset``."""
        if isinstance(content, (bytes, bytearray)):
            self._write_body(req, bytes(content[offset : offset + count]))
            return
        self.wfile.flush()
        with open(content, "rb") as f:
            if isinstance(self.connection, ssl.SSLSocket):
                f.seek(offset)
                left = count
                while left:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    self._count(req, len(chunk))
                    self.connection.sendall(chunk)
                    left -= len(chunk)
            else:
                self._count(req, count)
                sent = 0
                try:
                    sent = self.connection.sendfile(f, offset, count)
                finally:
                    if sent != count:
                        self._count(req, sent - count)

    def _simple(self, req: Request, status: int, text: str, extra: dict | None = None) -> None:
        body = (text + "\n").encode()
        headers = {"Content-Type": "text/plain", "Content-Length": str(len(body))}
        headers.update(extra or {})
        self._send_headers(req, status, headers)
        if self.command != "HEAD":
            self._write_body(req, body)

    # -- methods -----------------------------------------------------
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        req = self._record()
        if self.server.gone:  # go_away(): a connection kept alive from before is dropped unanswered
            self.close_connection = True
            return
        if self.server.latency:  # a far server: each request waits this long before its answer
            time.sleep(self.server.latency)
        if self.server.take_failure() or (self.command == "GET" and req.path in self.server.fail_always):
            self._simple(req, 503, "try again later", {"Retry-After": "0"})
            return
        if self.server.basic_auth and self.headers.get("Authorization") != self.server.basic_auth:
            self._simple(req, 401, "login needed", {"WWW-Authenticate": 'Basic realm="release"'})
            return
        if req.path in self.server.redirects:
            self._simple(req, 302, "found", {"Location": self.server.redirects[req.path]})
            return
        target = self.server.resolve(req.path)
        if target is None:
            self._simple(req, 404, "not found")
            return
        if os.path.isdir(target):
            if not req.path.endswith("/"):
                self._simple(req, 301, "moved", {"Location": req.path + "/"})
                return
            self._send_index(req, target)
            return
        content, etag, mtime = self.server.content_of(req.path, target)
        self._send_content(req, content, etag, mtime)

    def _send_index(self, req: Request, directory: str) -> None:
        index = os.path.join(directory, "index.html")
        if os.path.isfile(index):
            content, etag, mtime = self.server.content_of(req.path + "index.html", index)
            self._send_content(req, content, etag, mtime, content_type="text/html")
            return
        if not self.server.autoindex:
            self._simple(req, 403, "directory listing forbidden")
            return
        body = render_index(self.server.autoindex, req.path, directory).encode()
        self._send_headers(req, 200, {"Content-Type": "text/html; charset=utf-8", "Content-Length": str(len(body))})
        if self.command != "HEAD":
            self._write_body(req, body)

    def _send_content(self, req, content, etag, mtime, content_type="application/octet-stream") -> None:
        size = len(content) if isinstance(content, (bytes, bytearray)) else os.path.getsize(content)
        validators = {"ETag": etag, "Last-Modified": email.utils.formatdate(mtime, usegmt=True)}
        if_match = self.headers.get("If-Match") if self.server.honor_if_match else None
        if if_match and if_match.strip() != "*" and etag not in [t.strip() for t in if_match.split(",")]:
            self._simple(req, 412, "precondition failed", validators)
            return
        ranges = self._wanted_ranges(size, etag)
        if ranges == "unsatisfiable":
            self._simple(req, 416, "range not satisfiable", {"Content-Range": f"bytes */{size}", **validators})
            return
        base = {"Accept-Ranges": "bytes", **validators}
        if self.server.behaviour == "ignore-range":
            base.pop("Accept-Ranges")
        if not ranges:
            self._send_headers(req, 200, {"Content-Type": content_type, "Content-Length": str(size), **base})
            if self.command != "HEAD":
                self._send_maybe_dropped(req, content, 0, size)
            return
        if len(ranges) == 1 or self.server.broken_multirange == "first-only":
            start, end = ranges[0]
            headers = {"Content-Type": content_type, "Content-Length": str(end - start + 1),
                       "Content-Range": f"bytes {start}-{end}/{size}", **base}
            self._send_headers(req, 206, headers)
            if self.command != "HEAD":
                self._send_maybe_dropped(req, content, start, end - start + 1)
            return
        self._send_multipart(req, content, size, ranges, base, content_type)

    def _send_maybe_dropped(self, req, content, offset, count) -> None:
        drop = self.server.take_drop(req.path)
        if drop is not None and drop < count:
            self._send_file_range(req, content, offset, drop)
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._send_file_range(req, content, offset, count)

    def _send_multipart(self, req, content, size, ranges, base, content_type) -> None:
        boundary = "fitsync-test-boundary-3d6b6a416f9b"
        declared = boundary if self.server.broken_multirange != "garbled" else "some-other-boundary"
        heads = []
        for start, end in ranges:
            heads.append(
                (f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n"
                 f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n").encode()
            )
        tail = f"\r\n--{boundary}--\r\n".encode()
        total = sum(len(h) for h in heads) + sum(e - s + 1 for s, e in ranges) + len(tail)
        headers = {"Content-Type": f"multipart/byteranges; boundary={declared}", "Content-Length": str(total), **base}
        self._send_headers(req, 206, headers)
        if self.command == "HEAD":
            return
        for head, (start, end) in zip(heads, ranges):
            self._write_body(req, head)
            self._send_file_range(req, content, start, end - start + 1)
        self._write_body(req, tail)

    def _wanted_ranges(self, size: int, etag: str):
        """Satisfiable (start, end) pairs of the Range header; [] for a full
        response; "unsatisfiable" for a 416."""
        header = self.headers.get("Range")
        if not header or self.server.behaviour == "ignore-range" or self.command not in ("GET", "HEAD"):
            return []
        if_range = self.headers.get("If-Range")
        if if_range and if_range.strip() != etag:
            return []
        m = re.fullmatch(r"\s*bytes\s*=\s*(.+)", header)
        if not m:
            return []
        ranges = []
        for spec in m.group(1).split(","):
            spec = spec.strip()
            rm = re.fullmatch(r"(\d*)-(\d*)", spec)
            if not rm or (not rm.group(1) and not rm.group(2)):
                return []
            if not rm.group(1):  # suffix range: the last N bytes
                n = int(rm.group(2))
                if n == 0:
                    continue
                ranges.append((max(0, size - n), size - 1))
                continue
            start = int(rm.group(1))
            end = int(rm.group(2)) if rm.group(2) else size - 1
            if start >= size or end < start:
                continue
            ranges.append((start, min(end, size - 1)))
        return ranges or "unsatisfiable"


def render_index(style: str, url_path: str, directory: str) -> str:
    """An index page in the manner of Apache's mod_autoindex or nginx's autoindex."""
    names = sorted(os.listdir(directory))
    rows = []
    for name in names:
        full = os.path.join(directory, name)
        is_dir = os.path.isdir(full)
        href = urllib.parse.quote(name) + ("/" if is_dir else "")
        label = html.escape(name + ("/" if is_dir else ""))
        st = os.stat(full)
        when = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
        if style == "apache":
            size = "  - " if is_dir else _human(st.st_size)
            rows.append(
                f'<tr><td valign="top"><img src="/icons/unknown.gif" alt="[   ]"></td>'
                f'<td><a href="{href}">{label}</a></td>'
                f'<td align="right">{when:%Y-%m-%d %H:%M}  </td><td align="right">{size}</td><td>&nbsp;</td></tr>'
            )
        else:
            size = "-" if is_dir else str(st.st_size)
            rows.append(f'<a href="{href}">{label}</a>{" " * max(1, 50 - len(label))}{when:%d-%b-%Y %H:%M}{size:>20}')
    title = f"Index of {html.escape(url_path)}"
    if style == "apache":
        return (
            '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n<html>\n <head>\n'
            f"  <title>{title}</title>\n </head>\n <body>\n<h1>{title}</h1>\n  <table>\n"
            '   <tr><th valign="top"><img src="/icons/blank.gif" alt="[ICO]"></th>'
            '<th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th>'
            '<th><a href="?C=S;O=A">Size</a></th><th><a href="?C=D;O=A">Description</a></th></tr>\n'
            '<tr><td valign="top"><img src="/icons/back.gif" alt="[PARENTDIR]"></td>'
            f'<td><a href="{html.escape(posixpath.dirname(url_path.rstrip("/")) or "/")}/">Parent Directory</a></td>'
            "<td>&nbsp;</td><td align=\"right\">  - </td><td>&nbsp;</td></tr>\n"
            + "\n".join(rows)
            + "\n</table>\n<address>Apache/2.4 Server at 127.0.0.1</address>\n</body></html>\n"
        )
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<h1>{title}</h1><hr><pre>"
        '<a href="../">../</a>\r\n' + "\r\n".join(rows) + "\r\n</pre><hr></body>\r\n</html>\r\n"
    )


def _human(n: int) -> str:
    for unit in ("", "K", "M", "G"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: 32 clients connecting at once
    # (8 cluster workers, 4 HEADs each) then wait out SYN retransmits of 1 s
    # and more. nginx and Apache listen with 511.
    request_queue_size = 511

    def __init__(self, root: str, behaviour: str, **kw):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = os.path.abspath(root)
        self.behaviour = behaviour
        self.broken_multirange = kw.get("broken_multirange") if behaviour == "broken-multirange" else None
        self.autoindex = kw.get("autoindex", "nginx")
        self.versions = dict(kw.get("versions") or {})  # url path -> [bytes, ...]
        self.drop_after = kw.get("drop_after")
        self.fail_first = kw.get("fail_first", 0)
        self.fail_always = frozenset(kw.get("fail_always") or ())
        self.gone = False
        self.honor_if_match = kw.get("honor_if_match", True)
        self.latency = kw.get("latency", 0.0)  # seconds added to every request
        self.redirects = dict(kw.get("redirects") or {})
        # ("user", "password"): every request must carry them (HTTP basic authentication)
        login = kw.get("login")
        self.basic_auth = ("Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()) if login else None
        self.counters = Counters()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._served = {}
        self._dropped = set()
        self._state_lock = threading.Lock()
        self.ssl_context: ssl.SSLContext | None = None

    # Bounded concurrency: a connection waits for a free slot, not a new thread per flood.
    def process_request(self, request, client_address):
        if not self._slots.acquire(timeout=SOCKET_TIMEOUT):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def get_request(self):
        sock, addr = super().get_request()
        sock.settimeout(SOCKET_TIMEOUT)
        # As nginx and Apache do: headers and body go out at once, not after a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            # The handshake runs in the connection's own thread (finish_request),
            # so a client that stalls or rejects the certificate blocks no one.
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request, client_address):
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        pass  # clients that hang up early (e.g. after a TLS failure) are part of the tests

    def resolve(self, url_path: str) -> str | None:
        rel = urllib.parse.unquote(url_path).lstrip("/")
        full = os.path.normpath(os.path.join(self.root, rel))
        if full != self.root and not full.startswith(self.root + os.sep):
            return None
        if url_path in self.versions:
            return full
        return full if os.path.exists(full) else None

    def content_of(self, url_path: str, full: str):
        """(bytes-or-path, etag, mtime) of what to serve for this request."""
        if url_path in self.versions and self.behaviour == "changing":
            with self._state_lock:
                n = self._served.get(url_path, 0)
                self._served[url_path] = n + 1
            versions = self.versions[url_path]
            data = versions[min(n, len(versions) - 1)]
            first = versions.index(data)  # the same bytes keep the same validators
            return data, f'"{hashlib.md5(data).hexdigest()[:16]}"', 1_700_000_000 + 60 * first
        st = os.stat(full)
        return full, f'"{st.st_mtime_ns:x}-{st.st_size:x}"', st.st_mtime

    def take_failure(self) -> bool:
        with self._state_lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                return True
        return False

    def take_drop(self, url_path: str) -> int | None:
        if self.drop_after is None:
            return None
        with self._state_lock:
            if url_path in self._dropped:
                return None
            self._dropped.add(url_path)
        return self.drop_after


class HttpFixture:
    """A running server. ``url`` is its base (``http://127.0.0.1:PORT``)."""

    def __init__(self, root: str, behaviour: str = "ranges", *, tls: "TlsMaterial | None" = None, **kw):
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}")
        self.server = _Server(root, behaviour, **kw)
        scheme = "http"
        if tls is not None:
            self.server.ssl_context = tls.server_context()
            scheme = "https"
        host, port = self.server.server_address[:2]
        self.url = f"{scheme}://{host}:{port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def counters(self) -> Counters:
        return self.server.counters

    def go_away(self) -> None:
        """The server goes down: new connections are refused, kept-alive ones dropped."""
        self.server.gone = True
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TlsMaterial:
    """A throwaway CA and a server certificate for 127.0.0.1, made with
    ``cryptography``; files are written under ``directory``."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.ca_file, self.cert_file, self.key_file = make_tls(directory)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx
