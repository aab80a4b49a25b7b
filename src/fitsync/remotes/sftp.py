"""SSH remotes: SFTP through paramiko, plus fitsync's agent for remote work.

Locations: ``sftp://[user@]host[:port]/abs/path`` (``/~/rel`` for a path
under the home directory), the scp form ``[user@]host:path`` (relative to the
home directory unless absolute), and named remotes from the remotes config
(``from_config``).

Data always moves over SFTP with large, pipelined requests and a bounded
number outstanding (paramiko's own prefetch is slower and buffers without
bound). When the remote host can run python3, fitsync.agent is started over
the same connection; it lists with nanosecond mtimes, computes digests and
block signatures next to the data, verifies uploads and applies patches, and
only then are SIGNATURE, DIGEST and PATCH advertised. An sftp-only account
(ForceCommand internal-sftp) gets whole-file transfers verified by the
digest of the bytes sent, with a single warning.

A dropped connection is re-established and the operation retried (up to
``--retries``); a sequential read resumes at the byte where it stopped.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import re
import socket
import stat as stat_mod
import struct
import threading
import time
import uuid
from collections import deque
from importlib import resources
from operator import attrgetter
from typing import TYPE_CHECKING, Iterable, Iterator

import paramiko
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_WRITE, int64

from fitsync import __version__
from fitsync import agent as agent_module
from fitsync.errors import (BadInput, ConnectionFailed, FitsyncError, Locked, NotFound, SourceChanged,
                            TransferFailed, UnsafePath, UsageError, VerificationFailed)
from fitsync.hashes import new_hasher
from fitsync.holes import data_runs
from fitsync.options import RemoteOptions
from fitsync.paths import safe_relpath
from fitsync.remotes.base import Capability, Entry, Remote
from fitsync.remotes.retry import RetryPolicy
from fitsync import sshconn
from fitsync.sshconn import DEFAULT_TIMEOUT, SshConnection, SshTarget, connect, resolve_target
from fitsync.threads import put_unless_stopped
from fitsync.threads import await_preloads, preload

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.segments import LocalSegments

log = logging.getLogger(__name__)

STATE_DIR = ".fitsync"
# OpenSSH's sftp-server answers reads of up to 255 KiB; fewer, larger
# requests are what makes paramiko fast.
REQUEST_SIZE = 252 << 10
MAX_OUTSTANDING = 32  # ~8 MiB in flight per stream
# Large sequential reads are striped over this many connections (1 = off).
DEFAULT_LANES = 2
STRIPE_SIZE = 8 << 20
STRIPED_MIN_BYTES = 32 << 20
AGENT_MAGIC = b"FSA1"  # also an absurd SFTP length: internal-sftp quits at once
AGENT_START_TIMEOUT = 30.0
AGENT_IO_TIMEOUT = 600.0
_FRAME = struct.Struct(">I")

_SFTP_URL = re.compile(r"^(?:sftp|ssh)://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?"
                       r"(?P<path>/.*)?$")
_SCP = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>\[[^\]]+\]|[^@/:]+):(?P<path>.*)$")
_WARNED_NO_AGENT: set = set()


def parse_ssh_location(url: str) -> tuple[str | None, str, int | None, str]:
    """(user, host, port, path) from an sftp:// URL or the scp form."""
    m = _SFTP_URL.match(url)
    if m:
        path = m.group("path") or "/~/"
        path = path[3:] or "." if path.startswith("/~/") or path == "/~" else path
        port = int(m.group("port")) if m.group("port") else None
        return m.group("user"), m.group("host").strip("[]"), port, path or "."
    m = _SCP.match(url)
    if m:
        return m.group("user"), m.group("host").strip("[]"), None, m.group("path") or "."
    raise UsageError(f"cannot parse SSH location {url!r}; use sftp://[user@]host[:port]/path or [user@]host:path")


def _seconds(value, name: str, default: float) -> float:
    """A duration in seconds (>= 0) from the caller's options or a config."""
    if value in (None, False, ""):
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):  # also refuses NaN
        raise UsageError(f"{name} must be a number of seconds (0 or more), not {value!r}")
    return seconds


def _timeout(options: RemoteOptions, conf: dict) -> float:
    """The caller's timeout, else the remote's ``timeout`` key, else the default."""
    if options.timeout is not None:
        return _seconds(options.timeout, "timeout", DEFAULT_TIMEOUT)
    return _seconds(conf.get("timeout"), "timeout", DEFAULT_TIMEOUT)


def _whole_number(value, name: str, default: int) -> int:
    if value in (None, False, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a whole number, not {value!r}") from None


# -- pipelined SFTP I/O (on paramiko's request/response machinery) ----------------

class _Replies:
    """Collects asynchronous SFTP replies by request number; paramiko calls
    ``_async_response`` for every reply to a request made with this object."""

    def __init__(self, sftp: paramiko.SFTPClient):
        self.sftp = sftp
        self.done: dict = {}

    def _async_response(self, t, msg, num):
        if t == CMD_DATA:
            self.done[num] = msg.get_string()
            return
        try:
            self.sftp._convert_status(msg)
            self.done[num] = None
        except EOFError:
            self.done[num] = b""
        except OSError as exc:
            self.done[num] = exc

    def request(self, t, *args) -> int:
        return self.sftp._async_request(self, t, *args)

    def wait(self, num: int):
        while num not in self.done:
            self.sftp._read_response()
        value = self.done.pop(num)
        if isinstance(value, Exception):
            raise value
        return value


def read_pipelined(sftp: paramiko.SFTPClient, handle: bytes, ranges: Iterable[tuple[int, int]]) -> Iterator[bytes]:
    """Yield the bytes of each (offset, length) range in order, keeping up to
    MAX_OUTSTANDING requests in flight. A range past the end of the file
    yields fewer bytes."""
    replies = _Replies(sftp)
    pieces: deque = deque()  # (request number, offset, length, index of range)
    wanted = iter(ranges)
    parts: list = []
    current = 0
    ranges_seen = 0
    pending_range = None

    def refill():
        nonlocal pending_range, ranges_seen
        while len(pieces) < MAX_OUTSTANDING:
            if pending_range is None:
                item = next(wanted, None)
                if item is None:
                    return
                pending_range = (item[0], item[1], ranges_seen)
                ranges_seen += 1
                if item[1] == 0:
                    pieces.append((None, item[0], 0, pending_range[2]))
                    pending_range = None
                    continue
            offset, length, index = pending_range
            n = min(length, REQUEST_SIZE)
            pieces.append((replies.request(CMD_READ, handle, int64(offset), n), offset, n, index))
            pending_range = (offset + n, length - n, index) if length > n else None

    refill()
    while pieces:
        num, offset, n, index = pieces.popleft()
        data = replies.wait(num) if num is not None else b""
        while 0 < len(data) < n:  # the server capped the read: ask for the rest
            more = replies.wait(replies.request(CMD_READ, handle, int64(offset + len(data)), n - len(data)))
            if not more:
                break
            data += more
        if index != current:
            yield b"".join(parts)
            parts, current = [], index
        parts.append(data)
        refill()
    if ranges_seen:
        yield b"".join(parts)


def write_pipelined(sftp: paramiko.SFTPClient, handle: bytes, chunks: Iterable[bytes], hashers=()) -> tuple[int, int]:
    """Write ``chunks`` sequentially with bounded outstanding requests; feed
    each hasher. Aligned zero runs are not sent: the server's writes at
    offsets leave them as holes (fitsync.holes), and they cost no bandwidth.
    Returns (the byte count, the end of the last bytes written): where they
    differ the file ends in a hole and needs its size set."""
    replies = _Replies(sftp)
    outstanding: deque = deque()
    offset = written_to = 0
    for chunk in chunks:
        for h in hashers:
            h.update(chunk)
        view = memoryview(chunk).cast("B")
        for run_start, run_end in data_runs(view, offset):
            for start in range(run_start, run_end, REQUEST_SIZE):
                piece = bytes(view[start:min(start + REQUEST_SIZE, run_end)])
                outstanding.append(replies.request(CMD_WRITE, handle, int64(offset + start), piece))
                if len(outstanding) >= MAX_OUTSTANDING:
                    replies.wait(outstanding.popleft())
            written_to = offset + run_end
        offset += len(view)
    while outstanding:
        replies.wait(outstanding.popleft())
    return offset, written_to


def read_striped(remote: "SftpRemote", full: str, start: int, end: int) -> Iterator[bytes]:
    """Yield bytes start..end of ``full`` in order, read by one thread per
    connection lane: lane i reads stripes i, i+k, i+2k... (STRIPE_SIZE each)
    with its own pipeline. Each lane holds at most two stripes ahead, so
    memory stays bounded however slow the consumer is. A lane's error is
    raised here, in order, so the caller can reconnect and resume."""
    import queue

    lanes = remote.lanes
    stripes = [(o, min(STRIPE_SIZE, end - o)) for o in range(start, end, STRIPE_SIZE)]
    queues = [queue.Queue(maxsize=2) for _ in range(lanes)]
    stop = threading.Event()

    def put(q, item) -> bool:
        return put_unless_stopped(q, stop, item)

    def lane_worker(lane: int) -> None:
        try:
            sftp = remote.lane_connection(lane).sftp()
            with sftp.open(full, "rb") as f:
                for offset, length in stripes[lane::lanes]:
                    pieces = [(o, min(REQUEST_SIZE, offset + length - o))
                              for o in range(offset, offset + length, REQUEST_SIZE)]
                    data = b"".join(read_pipelined(sftp, f.handle, pieces))
                    if not put(queues[lane], data):
                        return
        except BaseException as exc:  # handed to the consumer, which decides about retrying
            put(queues[lane], exc)

    threads = [threading.Thread(target=lane_worker, args=(i,), daemon=True, name=f"sftp-lane-{i}")
               for i in range(min(lanes, len(stripes)))]
    for t in threads:
        t.start()
    try:
        for index in range(len(stripes)):
            item = queues[index % lanes].get()
            if isinstance(item, BaseException):
                raise item
            if len(item) < stripes[index][1]:
                raise SourceChanged(f"{full} shrank while it was read")
            yield item
    finally:
        stop.set()
        for t in threads:
            t.join(5)


# -- the agent, client side ---------------------------------------------------------

def agent_payload() -> bytes:
    """The text of fitsync.agent: what the remote host runs."""
    return resources.files("fitsync").joinpath("agent.py").read_bytes()


_BOOTSTRAP = """\
import hashlib, os, sys
v, h = sys.argv[-2], sys.argv[-1]
d = os.path.join(os.path.expanduser("~"), ".cache", "fitsync")
p = os.path.join(d, "agent-%s-%s.py" % (v, h[:16]))
i, o = sys.stdin.buffer, sys.stdout.buffer
if i.read(4) != b"FSA1":
    sys.exit(2)
try:
    with open(p, "rb") as f:
        src = f.read()
except OSError:
    src = b""
if hashlib.sha256(src).hexdigest() != h:
    o.write(b"NEED\\n"); o.flush()
    src = i.read(int(i.readline()))
    if hashlib.sha256(src).hexdigest() != h:
        sys.exit(3)
    try:
        os.makedirs(d, exist_ok=True)
        t = "%s.%d" % (p, os.getpid())
        with open(t, "wb") as f:
            f.write(src)
        os.replace(t, p)
    except OSError:
        pass
else:
    o.write(b"HAVE\\n"); o.flush()
g = {"__name__": "fitsync_agent"}
exec(compile(src, p, "exec"), g)
g["main"]()
"""


# Where a stock server keeps a Python 3 when no ``python`` setting names one:
# python3 on the PATH, RHEL 8's system interpreter, then versioned names.
PYTHON_SEARCH = ("python3", "/usr/libexec/platform-python") + tuple(f"python3.{n}" for n in range(14, 5, -1))


def agent_command(python: str | None, payload: bytes) -> str:
    """The exec command that starts the agent with ``python``, or with the first
    interpreter of PYTHON_SEARCH the host has. The search runs under ``/bin/sh -c``
    so that it means the same whatever the account's login shell is."""
    code = base64.b64encode(_BOOTSTRAP.encode()).decode()
    digest = hashlib.sha256(payload).hexdigest()
    run = f'-c "import base64,sys;exec(base64.b64decode(sys.argv[1]))" {code} {__version__} {digest}'
    if python is not None:
        return f"{python} {run}"
    tried = ", ".join(PYTHON_SEARCH[:2]) + ", python3.N"
    return (f"/bin/sh -c 'for p in {' '.join(PYTHON_SEARCH)}; do "
            f'command -v "$p" >/dev/null 2>&1 && exec "$p" {run}; done; '
            f'echo "no Python 3 found (tried {tried})" >&2; exit 127' + "'")


class AgentUnavailable(Exception):
    pass


class AgentClient:
    """One agent process on the remote host, driven over an exec channel."""

    def __init__(self, conn: SshConnection, python: str | None = None, avoid: tuple = ()):
        self.conn = conn
        self.generation = conn.generation
        payload = agent_payload()
        try:
            self.channel = conn.exec(agent_command(python, payload))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise AgentUnavailable(f"exec refused ({exc})") from None
        self.channel.settimeout(AGENT_START_TIMEOUT)
        self.rfile = self.channel.makefile("rb", 1 << 20)
        try:
            self.channel.sendall(AGENT_MAGIC)
            answer = self.rfile.readline()
            if answer == b"NEED\n":
                self.channel.sendall(b"%d\n" % len(payload) + payload)
            elif answer != b"HAVE\n":
                raise AgentUnavailable(self._why_not())
            self.channel.settimeout(AGENT_IO_TIMEOUT)
            self.info = self.call({"op": "hello", "avoid": list(avoid)})
        except (socket.timeout, EOFError, OSError, paramiko.SSHException) as exc:
            why = f"no answer within {AGENT_START_TIMEOUT:.0f} s" if isinstance(exc, socket.timeout) else str(exc)
            self.close()
            raise AgentUnavailable(f"the agent did not start ({why}; {self._why_not()})") from None
        except AgentUnavailable:
            self.close()
            raise
        self.hashes = set(self.info.get("hashes", ()))

    def _why_not(self) -> str:
        self.channel.status_event.wait(2.0)  # the exit status follows the close closely
        status = self.channel.exit_status if self.channel.exit_status_ready() else "unknown"
        err = b""
        while self.channel.recv_stderr_ready():
            err += self.channel.recv_stderr(4096)
        text = err.decode("utf-8", "replace").strip().splitlines()
        return f"exit status {status}" + (f": {text[-1]}" if text else "")

    # -- framing --
    # Requests sent and not yet answered in full: an agent given back with any
    # outstanding (an exception while streaming literals, an error reply to the
    # first of two pipelined requests) is closed, never reused.
    outstanding = 0

    @property
    def pending(self) -> bool:
        return self.outstanding > 0

    def send(self, header: dict, body: bytes | None = None) -> None:
        if header.get("op") not in ("data", "end"):  # those are parts of a patch request
            self.outstanding += 1
        if body is not None:
            header = dict(header, n=len(body))
        raw = json.dumps(header, separators=(",", ":")).encode()
        self.channel.sendall(_FRAME.pack(len(raw)) + raw + (body or b""))

    received = 0  # bytes read from the agent (for tests and benchmarks)

    def recv(self) -> tuple[dict, bytes | None]:
        raw = self.rfile.read(_FRAME.size)
        if len(raw) != _FRAME.size:
            raise EOFError("the agent closed its channel")
        (length,) = _FRAME.unpack(raw)
        if length > agent_module.MAX_HEADER:
            raise TransferFailed("the fitsync agent sent a malformed reply (header too large)")
        try:
            header = agent_module.parse_frame_header(self.rfile.read(length))
        except ValueError as exc:
            raise TransferFailed(f"the fitsync agent sent a malformed reply ({exc})") from None
        body = self.rfile.read(header["n"]) if "n" in header else None
        if body is not None and len(body) != header["n"]:
            raise EOFError("the agent closed its channel mid-reply")
        self.received += _FRAME.size + length + (len(body) if body is not None else 0)
        return header, body

    def finish(self) -> tuple[dict, bytes | None]:
        """The final reply of a request; streamed parts are skipped."""
        while True:
            header, body = self.recv()
            if "more" not in header:
                self.outstanding -= 1
                _raise_agent_error(header)
                return header, body

    def call(self, header: dict, body: bytes | None = None) -> dict:
        self.send(header, body)
        return self.finish()[0]

    def call_body(self, header: dict) -> bytes:
        """Send a request whose reply carries bytes; return them."""
        self.send(header)
        return self.finish()[1] or b""

    def stream(self, header: dict) -> Iterator[dict]:
        """Every part of a streamed reply, the final one included."""
        self.send(header)
        while True:
            reply, _ = self.recv()
            if "more" not in reply:
                self.outstanding -= 1
            _raise_agent_error(reply)
            yield reply
            if "more" not in reply:
                return

    def close(self) -> None:
        try:
            self.channel.close()
        except Exception:  # closing a dead channel: nothing left to do
            pass


def _raise_agent_error(header: dict) -> None:
    kind = header.get("error")
    if kind is None:
        return
    message = header.get("msg", "agent error")
    if kind == "notfound":
        raise NotFound(message)
    if kind == "verify":
        raise VerificationFailed(message)
    if kind == "bad":
        raise BadInput(message)
    if kind == "symlink":
        raise UnsafePath(message)
    raise TransferFailed(message)


# -- signatures by difference ------------------------------------------------------------

GROUP_BLOCKS = 64  # blocks per group hash: 16 bytes stand for ~1 MiB of blocks


def signature_request(op: str, full: str, digest: bool = True) -> dict:
    """A signature request with this fitsync's block-size policy, so the agent
    (which cannot import it) lays blocks out exactly as fitsync.signature does.
    ``digest=False``: without the whole-file BLAKE3 (the basis of a push)."""
    from fitsync import signature

    request = {"op": op, "path": full, "fits": True,
               "block_records": [signature.MIN_BLOCK_RECORDS, signature.MAX_BLOCK_RECORDS]}
    if not digest:
        request["digest"] = False
    return request


def signature_by_difference(agent: AgentClient, full: str, like: str, digest: bool = True, sums=None):
    """Rebuild the remote file's Signature from a summary, group hashes, and
    the sums of only those blocks ``like`` (a local file) cannot supply.
    Returns None when the rebuilt signature fails the agent's checksum."""
    import mmap

    # The agent computes the full signature while the local blocks are hashed
    # here: the stat answers at once and gives the block size both will use.
    # Asked before anything is imported here, so the agent starts at once.
    agent.send({"op": "stat", "path": full})
    agent.send(signature_request("sigsummary", full, digest))
    try:
        await_preloads()
        from fitsync.segments import LocalSegments
        from fitsync.signature import Signature, default_block_size
        from fitsync.sums import BY_NAME, FAST
    except BaseException:
        for _ in range(2):  # both answers read: the agent stays in step for the next request
            with contextlib.suppress(Exception):
                agent.finish()
        raise

    remote_size = agent.finish()[0]["size"]
    with open(like, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        with (mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else contextlib.nullcontext(b"")) as data:
            local = LocalSegments(data, default_block_size(remote_size), sums or FAST)
            warming = threading.Thread(target=local.warm, daemon=True)
            warming.start()
            try:
                summary = agent.finish()[0]
            finally:
                warming.join()
            layout = _RemoteLayout(summary)
            sums = BY_NAME.get(summary.get("sums", "fast"))
            if sums is None:
                raise TransferFailed(f"{full}: the agent made its signature with unknown sums")
            if layout.block_size != local.block_size or sums != local.sums:  # another policy on the far side
                local = LocalSegments(data, layout.block_size, sums)
            partial = []
            for j in range(len(layout.counts)):
                k = local.find_segment(layout.lengths[j], summary["segments"][j], j)
                if k is not None:
                    layout.fill(layout.firsts[j], local.signature(k), 0, layout.counts[j], local.segments[k][0])
                else:
                    k = local.counterpart(layout.lengths[j], j)
                    if k is not None and layout.counts[j] >= 2 * GROUP_BLOCKS:
                        partial.append((j, k))
            if partial:
                _fill_matching_groups(agent, signature_request("sighashes", full, digest), layout, local, partial)
    missing = layout.missing_ranges()
    if missing:
        body = agent.call_body(dict(signature_request("sigblocks", full, digest), ranges=missing))
        layout.fill_from_wire(missing, body)
    sig = Signature(layout.file_size, layout.block_size, layout.boundaries, layout.weak, bytes(layout.strong),
                    None if summary["digest"] is None else bytes.fromhex(summary["digest"]), sums)
    if struct.unpack("<Q", sig.to_bytes()[-8:])[0] != summary["check"]:
        log.warning("%s: the signature rebuilt from local blocks did not check out; fetching it whole", full)
        return None
    sig.like_offsets = layout.like_offsets
    return sig


def _fill_matching_groups(agent: AgentClient, request: dict, layout: "_RemoteLayout", local: "LocalSegments",
                          pairs: list) -> None:
    """Compare group hashes of remote segment j with local segment k at the same
    block positions; fill the groups that agree."""
    ranges = [[layout.firsts[j], layout.counts[j]] for j, _ in pairs]
    body = agent.call_body(dict(request, group=GROUP_BLOCKS, ranges=ranges))
    pos = 0
    for j, k in pairs:
        sig = local.signature(k)
        same_layout = layout.lengths[j] == local.length(k)
        full_blocks = min(layout.lengths[j], local.length(k)) // layout.block_size
        for g0 in range(0, layout.counts[j], GROUP_BLOCKS):
            n = min(GROUP_BLOCKS, layout.counts[j] - g0)
            remote_hash = body[pos:pos + 16]
            pos += 16
            comparable = g0 + n <= len(sig) and (same_layout or g0 + n <= full_blocks)
            if comparable and local.sums.strong(sig.strong[g0 * 16:(g0 + n) * 16]) == remote_hash:
                layout.fill(layout.firsts[j] + g0, sig, g0, n, local.segments[k][0])


class _RemoteLayout:
    """The remote signature being rebuilt: its layout, sums, and which are known."""

    def __init__(self, summary: dict):
        import numpy as np

        self.file_size = summary["size"]
        self.block_size = summary["block_size"]
        self.boundaries = summary["boundaries"]
        ends = self.boundaries[1:] + [self.file_size]
        self.lengths = [e - b for b, e in zip(self.boundaries, ends)]
        self.counts = [-(-n // self.block_size) for n in self.lengths]
        self.firsts = [sum(self.counts[:j]) for j in range(len(self.counts))]
        n = summary["nblocks"]
        self.weak = np.zeros(n, dtype=np.uint32)
        self.strong = bytearray(16 * n)
        self.known = np.zeros(n, dtype=bool)
        self.like_offsets = np.full(n, -1, dtype=np.int64)  # where the local file holds each block

    def fill(self, first: int, sig, start: int, count: int, local_start: int) -> None:
        """Blocks first.. are blocks start.. of ``sig``, the signature of the
        local segment beginning at byte ``local_start``."""
        import numpy as np

        self.weak[first:first + count] = sig.weak[start:start + count]
        self.strong[16 * first:16 * (first + count)] = sig.strong[16 * start:16 * (start + count)]
        self.known[first:first + count] = True
        self.like_offsets[first:first + count] = local_start + (start + np.arange(count)) * self.block_size

    def missing_ranges(self) -> list:
        import numpy as np

        unknown = np.flatnonzero(~self.known)
        if not len(unknown):
            return []
        breaks = np.flatnonzero(np.diff(unknown) != 1) + 1
        return [[int(run[0]), len(run)] for run in np.split(unknown, breaks)]

    def fill_from_wire(self, ranges: list, body: bytes) -> None:
        import numpy as np

        pos = 0
        for first, count in ranges:
            self.weak[first:first + count] = np.frombuffer(body, dtype="<u4", count=count, offset=pos)
            pos += 4 * count
            self.strong[16 * first:16 * (first + count)] = body[pos:pos + 16 * count]
            pos += 16 * count
            self.known[first:first + count] = True
        if pos != len(body):
            raise TransferFailed("the agent sent block sums of an unexpected length")


# -- the remote ------------------------------------------------------------------------

_CONNECTION_ERRORS = (paramiko.SSHException, EOFError, ConnectionError, socket.timeout, TimeoutError)


class SftpRemote(Remote):
    scheme = "sftp"

    def __init__(self, url: str, target: SshTarget, root: str, *, options: RemoteOptions | None = None,
                 conf: dict | None = None):
        super().__init__(url)
        options = options or RemoteOptions()
        conf = conf or {}
        self.target = target
        self._root_spec = root
        self._root: str | None = None
        self.retry = RetryPolicy.from_option(options.retries, max_delay=8.0)  # remotes/retry.py
        self.jobs = options.jobs or 2
        # The interpreter (or command) that runs the agent, e.g. "env PYTHONPATH=/opt/fitsync python3".
        self.python = conf.get("python") or os.environ.get("FITSYNC_SSH_PYTHON") or None  # None: search the host
        self.use_agent = conf.get("agent", True) and os.environ.get("FITSYNC_SSH_AGENT", "1") != "0"
        # Hide remote modules (testing the stdlib-only path): "blake3,xxhash".
        self.agent_avoid = tuple(x for x in str(conf.get("agent_avoid", os.environ.get(
            "FITSYNC_AGENT_AVOID", ""))).split(",") if x)
        lanes = conf.get("connections") or os.environ.get("FITSYNC_SSH_CONNECTIONS") or DEFAULT_LANES
        self.lanes = max(1, _whole_number(lanes, "connections", DEFAULT_LANES))
        self._conn: SshConnection | None = None
        self._agent_state: bool | None = None  # None = not probed yet
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._agents_lock = threading.Lock()
        self._idle: list[AgentClient] = []
        self._agent_info: dict | None = None
        self._stale_temps: set = set()  # temp files a lost connection kept us from removing

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, options: RemoteOptions) -> "SftpRemote":
        user, host, port, path = parse_ssh_location(url)
        target = resolve_target(host, user=user, port=port,
                                accept_new_host_key=options.accept_new_host_key,
                                timeout=_timeout(options, {}))
        return cls(url, target, path, options=options)

    @classmethod
    def from_config(cls, name: str, conf: dict, path: str, options: RemoteOptions) -> "SftpRemote":
        host = conf.get("host")
        if not host:
            raise BadInput(f"remote {name!r} in the remotes config has no host; add host = \"...\"")
        base = conf.get("path", "")
        root = posixpath.join(base, path) if base and path else (path or base or ".")
        target = resolve_target(host, user=conf.get("user"), port=conf.get("port"),
                                identity_file=conf.get("key_file"),
                                known_hosts=conf.get("known_hosts"),
                                accept_new_host_key=options.accept_new_host_key,
                                timeout=_timeout(options, conf))
        secrets = {k: conf[k] for k in ("password_env", "password") if conf.get(k)}
        if secrets:
            target = dataclasses.replace(target, **secrets)
        return cls(f"{name}:{path}", target, root, options=options, conf=conf)

    # -- connection, retries ------------------------------------------------------
    def connection(self) -> SshConnection:
        """The shared connection, re-established if it died since last use."""
        with self._lock:
            first = self._conn is None
            if first:
                self._conn = connect(self.target, holder=self)
            conn = self._conn
        if first:
            self._get_ready(conn)
        if not conn.alive():
            conn.reconnect(conn.generation)
        return conn

    def _get_ready(self, conn: SshConnection) -> None:
        """Start, in the background, what the run will ask for next: an SFTP
        channel for the calling thread and each of --jobs workers, and the
        first agent. Each waits on the server (see SshConnection.open_spares),
        so side by side they cost the time of one. A failure here is left to
        the operation that needs the thing to meet and report."""
        conn.open_spares(1)
        if self.use_agent:
            threading.Thread(target=self._start_first_agent, args=(conn,), name="fitsync-agent-start",
                             daemon=True).start()
            # The block-signature code (numpy: ~0.1 s to import) loads while
            # the server starts the agent, not after the agent is asked to hash.
            preload("fitsync.signature", "fitsync.delta")
        else:
            conn.open_spares(self.jobs + 1)

    def _start_first_agent(self, conn: SshConnection) -> None:
        try:
            self._checkout(park=True)
        except Exception:  # noqa: BLE001 - reported by the operation that needs the agent
            log.debug("starting the agent on %s ahead of use failed", self.target.describe(), exc_info=True)
        # The workers' channels only now: the shells started for them would
        # otherwise compete with the agent's start for the server's CPU.
        conn.open_spares(self.jobs + 1)

    def lane_connection(self, lane: int) -> SshConnection:
        """An extra connection to the same host (lane 0 is ``connection()``)."""
        if lane == 0:
            return self.connection()
        conn = connect(self.target, lane, holder=self)
        if not conn.alive():
            conn.reconnect(conn.generation)
        return conn

    @property
    def root(self) -> str:
        if self._root is None:
            root = self._root_spec
            if root.startswith("~/") or root == "~":
                root = root[2:] or "."
            if not root.startswith("/"):  # relative to the login directory, which only the server knows
                home = self._call("resolve the root", lambda conn: conn.sftp().normalize("."))
                root = posixpath.normpath(posixpath.join(home, root))
            self._root = root.rstrip("/") or "/"
        return self._root

    def remote_path(self, path: str) -> str:
        return posixpath.join(self.root, safe_relpath(path))

    def _lost(self, exc: BaseException, conn: SshConnection) -> bool:
        """True when ``exc`` means the connection died (not an SFTP error status)."""
        if isinstance(exc, _CONNECTION_ERRORS):
            return True
        if isinstance(exc, OSError) and exc.errno is None and "closed" in str(exc).lower():
            return True  # paramiko's "Socket is closed", raised before the transport notices
        return not conn.alive()

    def _call(self, what: str, fn):
        """Run ``fn(conn)``; on a lost connection reconnect and run it again,
        under the retry policy (remotes/retry.py). Host key and authentication
        failures are not retried."""
        tries = self.retry.tracker()
        while True:
            try:
                conn = self.connection()
            except ConnectionFailed as exc:
                if type(exc) is not ConnectionFailed:
                    raise
                tries.failed(f"cannot reach {self.target.describe()} ({exc})", lambda count, exc=exc: exc)
                continue
            generation = conn.generation
            try:
                return fn(conn)
            except Exception as exc:
                # a plain ConnectionFailed (no SFTP channel on a dying connection) is retried too
                if isinstance(exc, FitsyncError) and type(exc) is not ConnectionFailed:
                    raise
                if not isinstance(exc, FitsyncError) and not self._lost(exc, conn):
                    raise self._sftp_error(exc, what) from None
                self.recover(tries, conn, generation, what, exc)

    def recover(self, tries, conn: SshConnection, generation: int, what: str, exc: BaseException) -> None:
        """A connection lost during ``what``: count it against ``tries`` (a
        retry.Retries), wait, and reconnect; past the policy, ConnectionFailed."""
        why = conn.why_lost(generation, exc)
        where = f"connection to {self.target.describe()} lost during {what}"
        tries.failed(f"{where} ({why})", lambda count: ConnectionFailed(
            f"{where}; gave up after {self.retry.attempts} retries ({why})"))
        try:
            conn.reconnect(generation)
        except ConnectionFailed as again:  # the next try finds it still down, and counts it
            log.warning("reconnect failed: %s", again)

    def _sftp_error(self, exc: Exception, what: str) -> FitsyncError:
        where = f"{self.target.hostname}"
        if isinstance(exc, FileNotFoundError):
            return NotFound(f"{what}: no such file or directory on {where}")
        if isinstance(exc, PermissionError):
            return TransferFailed(f"{what}: permission denied on {where}")
        return TransferFailed(f"{what} on {where} failed: {exc}")

    # -- the agent ------------------------------------------------------------------
    # Agents are pooled: an operation checks one out, and a new one is started
    # only when all are busy (so --jobs N hashes N files at once remotely).
    @contextlib.contextmanager
    def using_agent(self):
        """An idle agent for one operation, or None on hosts without one."""
        client = self._checkout()
        try:
            yield client
        finally:
            if client is not None:
                if client.pending:
                    client.close()  # stopped mid-request: its framing is out of step, never reuse it
                else:
                    with self._agents_lock:
                        self._idle.append(client)

    def _checkout(self, park: bool = False) -> AgentClient | None:
        """An idle agent, else a newly started one. With ``park`` (the start
        ahead of use) an agent is started only if none has been yet, and goes
        to the idle pool before another thread may look there."""
        if not self.use_agent or self._agent_state is False:
            return None
        conn = self.connection()
        client = self._take_idle(conn)
        if client is not None:
            return client
        with self._probe_lock:  # the first start decides, once, whether this host has an agent
            if self._agent_state is False or (park and self._agent_state):
                return None  # no agent here, or another thread already started the first one
            client = self._take_idle(conn)  # started while this thread waited for the lock
            if client is not None:
                return client
            transport = conn.transport
            try:
                client = AgentClient(conn, self.python, self.agent_avoid)
            except AgentUnavailable as exc:
                if self._agent_state is None:
                    self._agent_state = False
                    self._warn_no_agent(str(exc))
                    return None
                transport.join(1.0)  # a dying connection ends its thread: then this is a retryable loss
                if not transport.is_active() or conn.transport is not transport:
                    raise ConnectionFailed(f"connection to {self.target.describe()} lost while starting "
                                           f"the agent") from None
                raise TransferFailed(f"the fitsync agent on {self.target.describe()} stopped: {exc}") from None
            self._agent_state = True
            self._agent_info = client.info
            if park:
                with self._agents_lock:
                    self._idle.append(client)
                return None
        return client

    def _take_idle(self, conn: SshConnection) -> AgentClient | None:
        with self._agents_lock:
            while self._idle:
                client = self._idle.pop()
                if client.generation == conn.generation and not client.channel.closed:
                    return client
                client.close()
        return None

    def agent_info(self) -> dict | None:
        """The agent's hello (hashes, signature code, home), starting it if
        needed; None when the host cannot run it."""
        if self._agent_state is None:
            def probe(conn):
                with self.using_agent():
                    pass
            self._call("start the agent", probe)
        return self._agent_info if self._agent_state else None

    def _agent_call(self, what: str, header: dict) -> dict:
        def once(conn):
            with self.using_agent() as agent:
                return agent.call(header)
        return self._call(what, once)

    def _warn_no_agent(self, why: str) -> None:
        key = self.target.describe()
        if key not in _WARNED_NO_AGENT:
            _WARNED_NO_AGENT.add(key)
            log.warning("%s cannot run the fitsync agent (%s): whole-file transfers only, verified by "
                        "the digest of the bytes sent", key, why)

    @property
    def capabilities(self) -> frozenset:  # type: ignore[override]
        caps = {Capability.READ_RANGE, Capability.WRITE, Capability.DELETE, Capability.LOCK}
        info = self.agent_info()
        if info is not None:
            caps.add(Capability.DIGEST)
            if info.get("signature"):
                caps |= {Capability.SIGNATURE, Capability.PATCH}
        return frozenset(caps)

    @property
    def mtime_resolution(self) -> float:
        """SFTP v3 carries whole seconds; the agent nanoseconds."""
        return 1e-9 if self._agent_state else 1.0

    @property
    def remote_digests(self) -> frozenset:  # type: ignore[override]
        """Digest algorithms computed on the host, without moving data."""
        info = self.agent_info()
        return frozenset(info["hashes"]) if info is not None else frozenset()

    def digest_algo(self) -> str:
        """The whole-file digest both sides can compute here: blake3, else sha256."""
        info = self.agent_info()
        return "blake3" if info is None or "blake3" in info["hashes"] else "sha256"

    # -- listing ------------------------------------------------------------------------
    def exists(self) -> bool:
        def once(conn):
            with self.using_agent() as agent:  # the agent is up first: no wait for an SFTP channel
                if agent is not None:
                    return agent.call({"op": "stat", "path": self.root, "dir": True})["is_dir"]
            return stat_mod.S_ISDIR(conn.sftp().stat(self.root).st_mode)
        try:
            return self._call(f"stat {self.root}", once)
        except NotFound:
            return False

    def list(self) -> Iterator[Entry]:
        """Every file, in the contract's order: plain string order of the paths
        (a walk gives directory order, where "sub/x" comes before "sub.txt")."""
        entries = self._call(f"list {self.root}", self._list_once)
        entries.sort(key=attrgetter("path"))
        return iter(entries)

    def _list_once(self, conn: SshConnection) -> list[Entry]:
        with self.using_agent() as agent:
            if agent is None:
                return list(self._walk_sftp(conn.sftp(), self.root, ""))
            entries = []
            for part in agent.stream({"op": "list", "root": self.root}):
                for rel, size, mtime_ns in part.get("entries", ()):
                    entries.append(Entry(safe_relpath(rel, "remote listing path"), size, mtime_ns / 1e9))
            return entries

    def _walk_sftp(self, sftp: paramiko.SFTPClient, directory: str, prefix: str) -> Iterator[Entry]:
        try:
            items = sorted(sftp.listdir_attr(directory), key=lambda a: a.filename)
        except PermissionError:
            raise TransferFailed(f"cannot read directory {directory} on {self.target.hostname}: "
                                 f"permission denied") from None
        for attr in items:
            if not prefix and attr.filename == STATE_DIR:
                continue
            rel = prefix + attr.filename
            if stat_mod.S_ISDIR(attr.st_mode):
                yield from self._walk_sftp(sftp, posixpath.join(directory, attr.filename), rel + "/")
            elif stat_mod.S_ISREG(attr.st_mode):
                yield Entry(safe_relpath(rel, "remote listing path"), attr.st_size, float(attr.st_mtime))

    def stat(self, path: str) -> Entry:
        full = self.remote_path(path)

        def once(conn):
            with self.using_agent() as agent:
                if agent is not None:
                    reply = agent.call({"op": "stat", "path": full})
                    return Entry(safe_relpath(path), reply["size"], reply["mtime_ns"] / 1e9)
            attr = conn.sftp().stat(full)
            if not stat_mod.S_ISREG(attr.st_mode):
                raise NotFound(f"{full} on {self.target.hostname} is not a regular file")
            return Entry(safe_relpath(path), attr.st_size, float(attr.st_mtime))
        return self._call(f"stat {full}", once)

    # -- reading ---------------------------------------------------------------------
    def read_range(self, path: str, offset: int, length: int) -> bytes:
        return b"".join(self.read_ranges(path, [(offset, length)]))

    def read_ranges(self, path: str, ranges) -> Iterator[bytes]:
        """Stream the ranges in order, pipelined; after a lost connection the
        ranges not yet yielded are asked for again."""
        ranges = list(ranges)
        full = self.remote_path(path)
        done = 0
        tries = self.retry.tracker()
        while done < len(ranges):
            conn = self.connection()
            generation = conn.generation
            try:
                sftp = conn.sftp()
                with sftp.open(full, "rb") as f:
                    for data in read_pipelined(sftp, f.handle, ranges[done:]):
                        done += 1
                        tries.progressed()
                        yield data
            except FitsyncError:
                raise
            except Exception as exc:
                if not self._lost(exc, conn):
                    raise self._sftp_error(exc, f"read {full}") from None
                self.recover(tries, conn, generation, f"read of {full}", exc)

    def open_read(self, path: str):
        return SftpReader(self, path)

    def digest(self, path: str, algo: str = "blake3") -> str:
        full = self.remote_path(path)
        info = self.agent_info()
        if info is not None and algo in info["hashes"]:
            return self._agent_call(f"digest {full}", {"op": "digest", "path": full, "algo": algo})["hex"]
        return super().digest(path, algo)

    def block_signature(self, path: str, like: str | None = None, digest: bool = True):
        """The file's block signature, computed by the agent. With ``like``
        (a local file that probably shares most blocks: the old copy in a
        pull, the new file in a push) only the sums of blocks that differ
        cross the wire; the rest are computed here from ``like`` and the
        result is checked against the agent's checksum of the real signature."""
        full = self.remote_path(path)
        info = self.agent_info()
        if info is None or not info.get("signature"):
            return super().block_signature(path)
        from fitsync.signature import Signature
        from fitsync.sums import BY_NAME, FAST

        sums = BY_NAME.get(info["signature"], FAST)  # "stdlib" on a host without fitsync

        def once(conn):
            with self.using_agent() as agent:
                if like is not None and os.path.isfile(like):
                    sig = signature_by_difference(agent, full, like, digest, sums)
                    if sig is not None:
                        return sig
                return Signature.from_bytes(agent.call_body(signature_request("signature", full, digest)))
        return self._call(f"signature of {full}", once)

    # -- writing ------------------------------------------------------------------------
    def _temp_path(self, path: str) -> str:
        name = posixpath.basename(path)[:100]
        return posixpath.join(self.root, STATE_DIR, "tmp", f"{name}.{uuid.uuid4().hex[:12]}.part")

    def _makedirs(self, sftp: paramiko.SFTPClient, directory: str, create: bool = True) -> None:
        """Check, and with ``create`` make, every directory from the root down to
        ``directory``, each with lstat: one that is a symlink is refused. SFTP
        has no openat, so this runs before each use (a swap between the check
        and the write is the one window left; the agent's renames, patches and
        deletes go through descriptors and have none). The root itself may be
        a symlink: that is the user's choice, as in rsync."""
        rel = posixpath.relpath(directory, self.root)
        if rel == ".":
            return
        if rel == ".." or rel.startswith("../"):
            raise UnsafePath(f"{directory} is not inside {self.root} on {self.target.hostname}")
        current = self.root
        for depth, part in enumerate(rel.split("/")):
            current = posixpath.join(current, part)
            try:
                mode = sftp.lstat(current).st_mode
            except FileNotFoundError:
                if not create:
                    raise
                if depth == 0:
                    self._make_root(sftp)  # a first write to a new destination
                self._mkdir(sftp, current)
                continue
            if stat_mod.S_ISLNK(mode):
                raise UnsafePath(f"{rel}: {part} is a symlink in the destination on {self.target.hostname}; "
                                 "refusing to write through it")
            if not stat_mod.S_ISDIR(mode):
                raise BadInput(f"{current} on {self.target.hostname} exists and is not a directory")

    def _make_root(self, sftp: paramiko.SFTPClient) -> None:
        """Make the root and its missing parents (above the root, symlinks are
        the user's own layout and are followed)."""
        missing, directory = [], self.root
        while directory not in ("/", "", "."):
            try:
                if stat_mod.S_ISDIR(sftp.stat(directory).st_mode):
                    break
                raise BadInput(f"{directory} on {self.target.hostname} exists and is not a directory")
            except FileNotFoundError:
                missing.append(directory)
                directory = posixpath.dirname(directory)
        for d in reversed(missing):
            self._mkdir(sftp, d)

    @staticmethod
    def _mkdir(sftp: paramiko.SFTPClient, directory: str) -> None:
        try:
            sftp.mkdir(directory)
        except OSError as exc:
            try:  # another writer may have made it meanwhile
                made = stat_mod.S_ISDIR(sftp.lstat(directory).st_mode)
            except OSError:
                made = False
            if not made:
                raise exc

    def write_atomic(self, path, chunks: Iterable[bytes], *, mtime=None, expected_digest=None) -> None:
        """Upload to a temporary name, verify, set mtime, rename. ``chunks``
        can be consumed once, so a lost connection fails the file (the sync
        engine retries it) instead of resuming here."""
        final = self.remote_path(path)
        tmp = self._temp_path(path)
        counted = _CountedChunks(chunks)
        for attempt in (1, 2):
            conn = self.connection()
            generation = conn.generation
            try:
                if not self._upload(conn, tmp, final, counted, expected_digest, mtime):
                    self._call(f"rename into {final}", lambda c: self._rename(c.sftp(), tmp, final))
                self._sweep_stale_temps()
                return
            except BaseException as exc:
                self._remove_quietly(tmp)
                if not isinstance(exc, Exception):
                    raise
                # Lost: the transport's own error, or the session it could not open.
                lost = (isinstance(exc, ConnectionFailed) and exc.transient) or (
                    not isinstance(exc, FitsyncError) and self._lost(exc, conn))
                if lost and attempt == 1 and counted.taken == 0:
                    # The connection had died before this file began (its
                    # transport had not noticed yet): not this file's failure.
                    conn.reconnect(generation)
                    continue
                if isinstance(exc, FitsyncError):
                    raise
                if not lost:
                    raise self._sftp_error(exc, f"write {final}") from None
                # ConnectionFailed: the sync engine retries the file
                raise ConnectionFailed(f"connection to {self.target.describe()} lost while writing {final}: "
                                       f"{conn.why_lost(generation, exc)}") from None

    def _upload(self, conn: SshConnection, tmp: str, final: str, chunks, expected_digest, mtime) -> bool:
        """Upload to ``tmp`` and verify; True when the agent has also renamed it to ``final``."""
        sftp = conn.sftp()
        self._makedirs(sftp, posixpath.dirname(tmp))
        algo = self.digest_algo()
        source_hash = new_hasher("blake3")
        hashers = [source_hash] + ([new_hasher(algo)] if algo != "blake3" else [])
        with sftp.open(tmp, "wb") as f:
            size, written_to = write_pipelined(sftp, f.handle, chunks, hashers)
            if written_to < size:  # it ends in a hole
                f.truncate(size)
        if expected_digest is not None and source_hash.hexdigest() != expected_digest:
            raise VerificationFailed(f"{tmp}: the bytes read from the source do not match its digest")
        with self.using_agent() as agent:
            if agent is not None:
                # The agent re-reads the file on the remote host: what landed is verified, not what was sent.
                # It renames through directory descriptors: nothing can redirect it outside the tree.
                agent.call({"op": "rename", "tmp": tmp, "path": final, "root": self.root, "algo": algo,
                            "expected": hashers[-1].hexdigest(),
                            "mtime_ns": None if mtime is None else int(round(mtime * 1e9))})
                return True
        if sftp.stat(tmp).st_size != size:
            raise VerificationFailed(f"{tmp}: the remote size differs from the bytes sent")
        if mtime is not None:
            sftp.utime(tmp, (int(mtime), int(mtime)))
        return False

    def _rename(self, sftp: paramiko.SFTPClient, tmp: str, final: str) -> None:
        self._makedirs(sftp, posixpath.dirname(final))
        try:
            if stat_mod.S_ISDIR(sftp.stat(final).st_mode):
                raise BadInput(f"{final} is a directory on {self.target.hostname} but a file in the source")
        except FileNotFoundError:
            pass
        sftp.posix_rename(tmp, final)

    def _remove_quietly(self, remote: str) -> None:
        """Remove a temporary file; if the connection is down, remember it and
        remove it after the next successful write (or at close)."""
        conn = self._conn
        if conn is None or not conn.alive():  # reconnecting just for this could wait out --timeout
            self._stale_temps.add(remote)
            return
        try:
            conn.sftp().remove(remote)
            self._stale_temps.discard(remote)
        except FileNotFoundError:
            self._stale_temps.discard(remote)
        except Exception:  # the connection is gone: try again later
            self._stale_temps.add(remote)

    def _sweep_stale_temps(self) -> None:
        for remote in list(self._stale_temps):
            self._remove_quietly(remote)

    def verifies_patches_alone(self, digest_algo: str | None = None) -> bool:
        """Whether the agent can check a patch against a digest in ``digest_algo``
        without the new file at hand: any agent the STDLIB suite's, BLAKE3 where installed."""
        if self.agent_info() is None:
            return False
        return digest_algo in (None, "sha256-blocks") or self.digest_algo() == digest_algo

    def apply_recipe(self, path: str, recipe, literals: Iterable[bytes], *, mtime: float,
                     expected_digest: str) -> None:
        """Patch ``path`` remotely: basis runs are copied by the agent, literal
        bytes go up the channel; the agent verifies and renames. It verifies
        with the recipe's STDLIB digest (any agent), or with BLAKE3 where the
        host has it (a push to a stock host brings a STDLIB one: engine.push._push_delta)."""
        info = self.agent_info()
        if info is None:
            raise TransferFailed(f"{self.url} cannot apply patches: no agent")
        final = self.remote_path(path)
        layout = None
        if recipe.digest_algo == "sha256-blocks":
            algo, expected = recipe.digest_algo, recipe.digest
            layout = {"block_size": recipe.layout[0], "boundaries": list(recipe.layout[1])}
        elif self.digest_algo() == "blake3":
            algo, expected = "blake3", expected_digest
        else:
            raise TransferFailed(f"{final}: {self.target.hostname} has no blake3 module to verify a patch "
                                 "checked by BLAKE3")
        header = {"op": "patch", "path": final, "basis": final, "tmp": self._temp_path(path), "root": self.root,
                  "algo": algo, "expected": expected, "mtime_ns": int(round(mtime * 1e9))}
        if layout is not None:
            header["layout"] = layout
        try:
            with self.using_agent() as agent:
                agent.send(header, recipe.to_bytes())
                for chunk in literals:
                    for start in range(0, len(chunk), 1 << 20):
                        agent.send({"op": "data"}, bytes(chunk[start:start + (1 << 20)]))
                agent.send({"op": "end"})
                agent.finish()
        except FitsyncError:
            raise
        except Exception as exc:
            raise TransferFailed(f"patching {final} on {self.target.hostname} failed: {exc}") from None

    # -- the destination lock ------------------------------------------------------------
    def lock(self) -> None:
        """Hold ROOT/.fitsync/lock (created exclusively) so two fitsync runs never
        write this destination at once. A lock left by a dead process of this
        host is reclaimed; any other is reported with how to clear it."""
        path = posixpath.join(self.root, STATE_DIR, "lock")
        ident = f"{os.getpid()} {socket.gethostname()} {int(time.time())}"

        def once(conn):
            sftp = conn.sftp()
            self._makedirs(sftp, posixpath.dirname(path))
            for _ in range(3):
                try:
                    with sftp.open(path, "wx") as f:  # O_CREAT|O_EXCL: one winner
                        f.write(ident.encode())
                    self._lock_path = path
                    return
                except PermissionError:
                    raise
                except OSError:
                    if not self._reclaim_stale_lock(sftp, path):
                        raise Locked(self._lock_message(sftp, path)) from None
            raise Locked(self._lock_message(sftp, path))
        self._call(f"lock {self.url}", once)
        self._clear_killed_runs_temporaries()

    def _clear_killed_runs_temporaries(self) -> None:
        """With the lock held, whatever is in ROOT/.fitsync/tmp/ was left by a
        run that was killed (uploads and patches in progress): none of it can
        be resumed, so it goes, as in a local destination. Only plain files
        and symlinks directly in tmp/ are unlinked (a symlink itself, never
        what it points to), and nothing at all when .fitsync or tmp is not a
        real directory. A failure here costs a warning, not the run: the lock
        is held and must be released by the caller's normal path."""
        state = posixpath.join(self.root, STATE_DIR)
        tmp = posixpath.join(state, "tmp")

        def once(conn):
            sftp = conn.sftp()
            for directory in (state, tmp):
                try:
                    if not stat_mod.S_ISDIR(sftp.lstat(directory).st_mode):
                        log.warning("%s on %s is not a directory (a symlink?); not clearing temporaries there",
                                    directory, self.target.hostname)
                        return 0
                except FileNotFoundError:
                    return 0
            removed = 0
            for attr in sftp.listdir_attr(tmp):  # sftp-server reports lstat() attributes
                if stat_mod.S_ISREG(attr.st_mode) or stat_mod.S_ISLNK(attr.st_mode):
                    with contextlib.suppress(FileNotFoundError):
                        sftp.remove(posixpath.join(tmp, attr.filename))
                        removed += 1
            return removed

        try:
            removed = self._call(f"clear {tmp}", once)
        except FitsyncError as exc:
            log.warning("could not remove the temporaries of killed runs in %s on %s: %s",
                        tmp, self.target.hostname, exc)
            return
        if removed:
            log.info("removed %d temporaries of killed runs from %s on %s", removed, tmp, self.target.hostname)

    def _read_lock(self, sftp, path: str) -> list:
        try:
            with sftp.open(path, "rb") as f:
                return f.read(200).decode("utf-8", "replace").split()
        except FileNotFoundError:
            return []

    def _reclaim_stale_lock(self, sftp, path: str) -> bool:
        fields = self._read_lock(sftp, path)
        if not fields:
            return True  # it vanished meanwhile: try again
        if len(fields) >= 2 and fields[1] == socket.gethostname() and fields[0].isdigit():
            try:
                os.kill(int(fields[0]), 0)
            except ProcessLookupError:
                log.warning("removing a stale lock of pid %s (gone) on %s", fields[0], self.url)
                sftp.remove(path)
                return True
            except PermissionError:
                pass
        return False

    def _lock_message(self, sftp, path: str) -> str:
        fields = self._read_lock(sftp, path) + ["?", "?", "0"]
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(fields[2]) if fields[2].isdigit() else 0))
        return (f"{self.url} is locked by fitsync pid {fields[0]} on {fields[1]} since {since}; if no such run "
                f"is going on, remove {self.target.hostname}:{path}")

    def unlock(self) -> None:
        path = getattr(self, "_lock_path", None)
        if path is None:
            return
        self._lock_path = None
        try:
            self._call(f"unlock {self.url}", lambda conn: conn.sftp().remove(path))
        except NotFound:
            pass

    def delete(self, path: str) -> None:
        full = self.remote_path(path)

        def once(conn):
            with self.using_agent() as agent:
                if agent is not None:
                    agent.call({"op": "delete", "path": full, "root": self.root})
                    return
            try:
                self._makedirs(conn.sftp(), posixpath.dirname(full), create=False)  # no symlink on the way
                conn.sftp().remove(full)
            except FileNotFoundError:
                return
            self._prune_sftp(conn.sftp(), posixpath.dirname(full))
        self._call(f"delete {full}", once)

    def _prune_sftp(self, sftp, directory: str) -> None:
        while directory != self.root and directory.startswith(self.root + "/"):
            try:
                sftp.rmdir(directory)
            except OSError:
                return
            directory = posixpath.dirname(directory)

    def close(self) -> None:
        with self._agents_lock:
            idle, self._idle = self._idle, []
        for agent in idle:
            agent.close()
        if self._stale_temps and self._conn is not None:
            self._sweep_stale_temps()
        sshconn.release(self)  # connections no other remote holds are closed


class SftpReader:
    """Sequential reader with pipelined requests that survives a dropped
    connection: it reconnects and resumes at the first byte not yet received,
    provided the file's size and mtime are unchanged."""

    def __init__(self, remote: SftpRemote, path: str):
        self.remote = remote
        self.path = path
        self.full = remote.remote_path(path)
        self.entry = self._stat()
        self.pos = 0  # bytes handed to the caller
        self._received = 0  # bytes that arrived (pos + buffered)
        self._buffer = b""
        self._offset = 0  # read position inside _buffer
        self._chunks: Iterator[bytes] | None = None
        self._file = None
        self._closed = False

    def _open_stream(self, conn: SshConnection) -> None:
        self.close_handle()
        if self.remote.lanes > 1 and self.entry.size - self._received >= STRIPED_MIN_BYTES:
            self._chunks = read_striped(self.remote, self.full, self._received, self.entry.size)
            return
        sftp = conn.sftp()
        self._file = sftp.open(self.full, "rb")
        pieces = ((offset, min(REQUEST_SIZE, self.entry.size - offset))
                  for offset in range(self._received, self.entry.size, REQUEST_SIZE))
        self._chunks = read_pipelined(sftp, self._file.handle, pieces)

    def _next_chunk(self) -> bytes:
        tries = self.remote.retry.tracker()
        while self._received < self.entry.size:
            conn = self.remote.connection()
            generation = conn.generation
            try:
                if self._chunks is None:
                    self._open_stream(conn)
                chunk = next(self._chunks, b"")
                if not chunk:
                    raise SourceChanged(f"{self.full} shrank while it was read")
                self._received += len(chunk)
                return chunk
            except Exception as exc:
                # a striped lane that could not reconnect reports a plain ConnectionFailed: retry that too
                retryable = type(exc) is ConnectionFailed or (not isinstance(exc, FitsyncError)
                                                             and self.remote._lost(exc, conn))
                if not retryable:
                    if isinstance(exc, FitsyncError):
                        raise
                    raise self.remote._sftp_error(exc, f"read {self.full}") from None
                self._drop_stream()
                self._file = None  # its connection is gone
                self.remote.recover(tries, conn, generation, f"read of {self.full} at byte {self._received}", exc)
                self._check_unchanged()
        return b""

    def _drop_stream(self) -> None:
        if self._chunks is not None and hasattr(self._chunks, "close"):
            self._chunks.close()  # stops a striped read's lane threads
        self._chunks = None

    def _stat(self) -> Entry:
        """Size and mtime by SFTP: a plain read never waits for the agent to start."""
        def once(conn):
            attr = conn.sftp().stat(self.full)
            if not stat_mod.S_ISREG(attr.st_mode):
                raise NotFound(f"{self.full} on {self.remote.target.hostname} is not a regular file")
            return Entry(safe_relpath(self.path), attr.st_size, float(attr.st_mtime))
        return self.remote._call(f"stat {self.full}", once)

    def _check_unchanged(self) -> None:
        try:
            now = self._stat()
        except ConnectionFailed:
            return  # reconnecting failed again; the next attempt reports it
        if (now.size, now.mtime) != (self.entry.size, self.entry.mtime):
            raise SourceChanged(f"{self.full} changed on {self.remote.target.hostname} while it was read")

    def read(self, size: int = -1) -> bytes:
        if self._closed:
            raise ValueError("read from a closed SftpReader")
        if size is None or size < 0:
            parts = [self._buffer[self._offset:]] + list(iter(self._next_chunk, b""))
            self._buffer, self._offset = b"", 0
            data = b"".join(parts)
        else:
            parts, wanted = [], size
            while wanted > 0:  # full reads, like a buffered file: short only at the end
                if self._offset >= len(self._buffer):
                    self._buffer, self._offset = self._next_chunk(), 0
                    if not self._buffer:
                        break
                part = self._buffer[self._offset:self._offset + wanted]
                self._offset += len(part)
                wanted -= len(part)
                parts.append(part)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.entry.size}[whence]
        self.pos = self._received = max(0, base + offset)
        self._buffer, self._offset = b"", 0
        self._drop_stream()  # the next read starts a new pipeline there
        self.close_handle()
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self._closed = True
        self._drop_stream()
        self.close_handle()

    def close_handle(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # the connection may be gone; the handle dies with it
                pass
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _CountedChunks:
    """An iterator over ``chunks`` that counts what it handed out: a write
    whose connection fails before the first chunk may start again."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self.taken = 0

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        chunk = next(self._chunks)
        self.taken += 1
        return chunk
