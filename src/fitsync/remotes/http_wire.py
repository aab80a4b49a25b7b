"""HTTP(S) on the wire for remotes/http.py: keep-alive connection pools,
one exchange (a response being read), and the parsing of what servers send
(status, Content-Range, multipart framing, dates), index pages and ~/.netrc."""

from __future__ import annotations

import base64
import http.client
import logging
import os
import re
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Iterator

from fitsync.errors import BadInput, ConnectionFailed, NotFound, SourceChanged, TransferFailed


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

RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
REDIRECTS = {301, 302, 303, 307, 308}


class Transient(Exception):
    """A failure worth retrying: reset connection, timeout, 5xx, short body."""

    def __init__(self, reason: str, *, connecting: bool = False, retry_after: float | None = None):
        super().__init__(reason)
        self.connecting = connecting
        self.retry_after = retry_after


class Broken(Exception):
    """The server answered a range request in a way we cannot use."""


@dataclass
class Pinned:
    """What identifies the version of a file we started reading."""

    etag: str | None
    last_modified: str | None
    size: int | None


# -- connections -----------------------------------------------------------------

class Pool:
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


class Exchange:
    """One response being read; gives its connection back when done."""

    def __init__(self, url: str, conn, pool: Pool, resp: http.client.HTTPResponse):
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
            raise Transient(f"connection lost while reading ({describe(exc)})") from None

    def read_exact_into(self, view) -> None:
        """Fill ``view`` or raise Transient: a body cut short is a dropped connection."""
        got = 0
        total = len(view)
        while got < total:
            n = self.readinto(view[got:])
            if not n:
                raise Transient(f"the server closed the connection after {got} of {total} bytes")
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
            raise Transient(f"connection lost while reading ({describe(exc)})") from None

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
                raise Transient(f"connection lost while reading ({describe(exc)})") from None
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


def netrc_auth(host: str) -> str | None:
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


# -- helpers ---------------------------------------------------------------------

def ascending_runs(ranges: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
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


def range_header(spans) -> str:
    return "bytes=" + ",".join(f"{a}-{b - 1}" for a, b in spans)


def check_status(ex: Exchange, url: str) -> None:
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


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        raise Broken(f"unreadable Content-Range {value!r}")
    first, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if last < first or (total is not None and last >= total):
        raise Broken(f"impossible Content-Range {value!r}")
    return first, last, total


def content_range(ex: Exchange, url: str) -> tuple[int, int, int | None]:
    value = ex.header("Content-Range")
    if value is None:
        raise Broken(f"{url}: HTTP 206 without Content-Range")
    return parse_content_range(value)


def total_size(ex: Exchange) -> int | None:
    if ex.status == 206 and ex.header("Content-Range"):
        return parse_content_range(ex.header("Content-Range"))[2]
    return int_header(ex.header("Content-Length"))


def multipart_boundary(content_type: str) -> str | None:
    m = re.search(r'boundary\s*=\s*(?:"([^"]+)"|([^;,\s]+))', content_type, re.IGNORECASE)
    return (m.group(1) or m.group(2)) if m else None


def skip_to_delimiter(ex: Exchange, delimiter: bytes) -> bytes:
    """The first delimiter line, after an optional preamble (a few lines at most)."""
    for _ in range(MAX_PART_HEADER_LINES):
        line = ex.readline()
        if not line:
            raise Broken("multipart answer ended before its first part")
        if line.rstrip(b"\r\n") == delimiter:
            return line
    raise Broken("multipart delimiter not found where expected")


def part_headers(ex: Exchange) -> dict[str, str]:
    headers = {}
    for _ in range(MAX_PART_HEADER_LINES):
        line = ex.readline()
        if not line:
            raise Transient("the connection closed inside a multipart answer")
        if line in (b"\r\n", b"\n"):
            return headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise Broken("malformed multipart part header")
        headers[name.strip().lower()] = value.strip()
    raise Broken("too many multipart part headers")


def int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None


def http_date(value: str | None) -> float:
    if not value:
        return 0.0
    import email.utils

    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.0


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    if ca_bundle is None:
        return ssl.create_default_context()
    if not os.path.isfile(ca_bundle):
        raise NotFound(f"CA bundle {ca_bundle} does not exist; give a PEM file of CA certificates to --ca-bundle")
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (ssl.SSLError, ValueError):
        raise BadInput(f"--ca-bundle {ca_bundle} holds no readable PEM CA certificate") from None


def tls_failure(exc: ssl.SSLError, pool: Pool) -> ConnectionFailed:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionFailed(
            f"TLS certificate of {pool.host} is not trusted ({exc.verify_message}); "
            "if it is signed by your own CA, pass --ca-bundle=FILE"
        )
    return ConnectionFailed(
        f"TLS with {pool.host}:{pool.port} failed ({exc.reason or exc}); check that the URL's scheme matches the server"
    )


def manifest_name() -> str:
    from fitsync.release import MANIFEST_NAME

    return MANIFEST_NAME
