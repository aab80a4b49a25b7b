"""HTTP(S) on the wire for remotes/http.py: urllib3's keep-alive pools, TLS
and timeouts, one exchange (a response being read), and the parsing of what servers send
(status, Content-Range, multipart framing, dates), index pages and ~/.netrc."""

from __future__ import annotations

import base64
import http.client
import logging
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Iterator

import urllib3

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


# -- connections: urllib3's pools, TLS and timeouts ---------------------------------
# urllib3 keeps the connections (a pool per origin, a socket checked before it
# is reused); fitsync keeps what is its own: redirects without credentials to
# other hosts, the classification of answers, retries (remotes/retry.py).

class Connections:
    """Keep-alive connections to every origin a remote talks to, shared by threads."""

    def __init__(self, context: ssl.SSLContext | None, timeout: float):
        self.manager = urllib3.PoolManager(
            num_pools=4, maxsize=POOL_SIZE, block=False, retries=False,
            ssl_context=context or tls_context(None),
            timeout=urllib3.Timeout(connect=timeout or None, read=timeout or None))

    def exchange(self, method: str, url: str, headers: dict) -> "Exchange":
        """Send one request (no redirect followed) and return its answer unread.
        A kept-alive connection the server closed in the meantime is replaced
        by a fresh one once (urllib3's read retry); every other failure is the
        caller's to retry (remotes/retry.py)."""
        parts = urllib.parse.urlsplit(url)
        try:
            try:
                resp = self.manager.request(method, url, headers=headers, redirect=False, retries=_STALE_ONCE,
                                            preload_content=False, decode_content=False)
            except urllib3.exceptions.MaxRetryError as exc:
                raise exc.reason from None
        except urllib3.exceptions.SSLError as exc:
            raise tls_failure(_ssl_error_of(exc), parts.hostname, parts.port) from None
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as exc:
            raise Transient(f"{parts.hostname}:{parts.port}: {describe(_cause_of(exc))}", connecting=True) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(f"{parts.hostname}:{parts.port}: {describe(_cause_of(exc))}") from None
        return Exchange(url, resp)

    def close(self) -> None:
        self.manager.clear()


def _cause_of(exc: BaseException) -> BaseException:
    """The OS error under urllib3's wrapping (what "Connection refused" was
    raised as), else ``exc`` itself."""
    return _first_in_chain(exc, lambda e: isinstance(e, OSError) and not isinstance(e, urllib3.exceptions.HTTPError)) \
        or exc


def _ssl_error_of(exc: BaseException) -> ssl.SSLError:
    return _first_in_chain(exc, lambda e: isinstance(e, ssl.SSLError)) or ssl.SSLError(str(exc))


def _first_in_chain(exc: BaseException, wanted) -> BaseException | None:
    """The first exception ``wanted`` accepts among ``exc``, its ``reason`` and
    arguments (where urllib3 keeps what it wrapped) and its causes and
    contexts; each visited once."""
    todo, seen = [exc], set()
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if wanted(current):
            return current
        linked = (getattr(current, "reason", None), *current.args, current.__cause__, current.__context__)
        todo += [e for e in linked if isinstance(e, BaseException)]
    return None


# One more try, only for an answer that never came on a reused connection.
_STALE_ONCE = urllib3.Retry(total=1, connect=0, read=1, redirect=0, status=0, other=0, raise_on_redirect=False,
                            raise_on_status=False)

_READ_ERRORS = (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException)


class Exchange:
    """One response being read; its connection goes back to the pool only
    when the response was read to its end."""

    def __init__(self, url: str, resp):
        self.url = url
        self.resp = resp
        self.status = resp.status
        self._pending = b""  # read past a line (multipart framing), handed out first

    def header(self, name: str) -> str | None:
        return self.resp.headers.get(name)

    def readinto(self, view) -> int:
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            self._pending = self._pending[n:]
            return n
        try:
            return self.resp.readinto(view)
        except _READ_ERRORS as exc:
            raise Transient(f"connection lost while reading ({describe(_cause_of(exc))})") from None

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
        self._pending = b""
        try:
            self.resp.read(limit)
        except _READ_ERRORS:
            pass

    def readline(self, limit: int = 1024) -> bytes:
        """One line of multipart framing (at most ``limit`` bytes); what was
        read past it is kept for the next read."""
        while b"\n" not in self._pending and len(self._pending) < limit:
            try:
                more = self.resp.read1(max(limit, READ_CHUNK >> 4))
            except _READ_ERRORS as exc:
                raise Transient(f"connection lost while reading ({describe(_cause_of(exc))})") from None
            if not more:
                break
            self._pending += more
        end = self._pending.find(b"\n")
        cut = min(limit, end + 1 if end >= 0 else len(self._pending))
        line, self._pending = self._pending[:cut], self._pending[cut:]
        return line

    def read_small(self, limit: int) -> bytes:
        """The whole body of a response expected to be small (a manifest, an index page)."""
        length = _int_or_none(self.resp.headers.get("Content-Length"))
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
            except _READ_ERRORS as exc:
                raise Transient(f"connection lost while reading ({describe(_cause_of(exc))})") from None
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                raise BadInput(f"{self.url} is larger than the {limit} bytes expected")
            chunks.append(chunk)

    def release(self) -> None:
        """Give the connection back when the body was read to its end; else close it."""
        resp, self.resp = self.resp, None
        if resp is None:
            return
        if self._pending or not _at_end(resp):
            resp.close()  # bytes still on the wire: this socket cannot carry another request
        resp.release_conn()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _at_end(resp) -> bool:
    """Whether nothing of ``resp``'s body is left (a HEAD answer, or one read to its end)."""
    if resp.length_remaining is not None:
        return resp.length_remaining == 0
    try:
        return resp.read(1) == b""  # a body of unknown length: is there more?
    except _READ_ERRORS:
        return False


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


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


def tls_failure(exc: ssl.SSLError, host: str | None, port: int | None) -> ConnectionFailed:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionFailed(
            f"TLS certificate of {host} is not trusted ({exc.verify_message}); "
            "if it is signed by your own CA, pass --ca-bundle=FILE"
        )
    reason = getattr(exc, "reason", None) or exc
    return ConnectionFailed(f"TLS with {host}:{port} failed ({reason}); check that the URL's scheme matches the server")


def manifest_name() -> str:
    from fitsync.release import MANIFEST_NAME

    return MANIFEST_NAME
