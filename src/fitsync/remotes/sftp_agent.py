"""The SSH agent, client side: starting fitsync's agent (fitsync.agent, shipped
as one stdlib-only file) on the host, its framing, the pool of agents a remote
checks out, and signatures computed by difference with a local file."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import socket
import struct
import threading
from typing import TYPE_CHECKING, Iterator

import paramiko

from fitsync import __version__
from fitsync import agent as agent_module
from fitsync import wire
from fitsync.errors import BadInput, ConnectionFailed, NotFound, TransferFailed, UnsafePath, VerificationFailed
from fitsync.sshconn import SshConnection
from fitsync.threads import await_preloads

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.segments import LocalSegments

log = logging.getLogger("fitsync.remotes.sftp")

AGENT_MAGIC = b"FSA1"  # also an absurd SFTP length: internal-sftp quits at once
AGENT_START_TIMEOUT = 30.0
AGENT_IO_TIMEOUT = 600.0
_WARNED_NO_AGENT: set = set()


# -- the agent, client side ---------------------------------------------------------

def agent_payload() -> bytes:
    """The text of fitsync.agent: the one file the remote host runs."""
    return agent_module.source()


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
        self.channel.sendall(wire.FRAME.pack(len(raw)) + raw + (body or b""))

    received = 0  # bytes read from the agent (for tests and benchmarks)

    def recv(self) -> tuple[dict, bytes | None]:
        raw = self.rfile.read(wire.FRAME.size)
        if len(raw) != wire.FRAME.size:
            raise EOFError("the agent closed its channel")
        (length,) = wire.FRAME.unpack(raw)
        if length > wire.MAX_FRAME_HEADER:
            raise TransferFailed("the fitsync agent sent a malformed reply (header too large)")
        try:
            header = wire.parse_frame_header(self.rfile.read(length))
        except ValueError as exc:
            raise TransferFailed(f"the fitsync agent sent a malformed reply ({exc})") from None
        body = self.rfile.read(header["n"]) if "n" in header else None
        if body is not None and len(body) != header["n"]:
            raise EOFError("the agent closed its channel mid-reply")
        self.received += wire.FRAME.size + length + (len(body) if body is not None else 0)
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


class AgentPool:
    """SftpRemote's agents, mixed into it: an operation checks one out, and a
    new one is started only when all are busy (so --jobs N hashes N files at
    once remotely)."""

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
