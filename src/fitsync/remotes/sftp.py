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

import dataclasses
import logging
import os
import posixpath
import re
import socket
import stat as stat_mod
import threading
from operator import attrgetter
from typing import Iterator

import paramiko

from fitsync.errors import BadInput, ConnectionFailed, FitsyncError, NotFound, TransferFailed, UsageError
from fitsync.options import RemoteOptions
from fitsync.paths import safe_relpath
from fitsync.remotes.base import Capability, Entry, Remote
from fitsync.remotes import sftp_io
from fitsync.remotes.retry import RetryPolicy
from fitsync.remotes.sftp_agent import AgentClient, AgentPool, signature_by_difference, signature_request
from fitsync.remotes.sftp_io import DEFAULT_LANES, SftpReader
from fitsync.remotes.sftp_write import SftpWriting
from fitsync.remotes.statefiles import STATE_DIR
from fitsync import sshconn
from fitsync.sshconn import DEFAULT_TIMEOUT, SshConnection, SshTarget, connect, resolve_target
from fitsync.threads import preload

log = logging.getLogger(__name__)


_SFTP_URL = re.compile(r"^(?:sftp|ssh)://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?"
                       r"(?P<path>/.*)?$")
_SCP = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>\[[^\]]+\]|[^@/:]+):(?P<path>.*)$")


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


# -- the remote ------------------------------------------------------------------------

_CONNECTION_ERRORS = (paramiko.SSHException, EOFError, ConnectionError, socket.timeout, TimeoutError)


class SftpRemote(AgentPool, SftpWriting, Remote):
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

    @property
    def capabilities(self) -> frozenset:  # type: ignore[override]
        caps = {Capability.READ_RANGE, Capability.WRITE, Capability.DELETE, Capability.LOCK, Capability.RESUMES}
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
                    for data in sftp_io.read_pipelined(sftp, f.handle, ranges[done:]):
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

    def close(self) -> None:
        with self._agents_lock:
            idle, self._idle = self._idle, []
        for agent in idle:
            agent.close()
        if self._stale_temps and self._conn is not None:
            self._sweep_stale_temps()
        sshconn.release(self)  # connections no other remote holds are closed
