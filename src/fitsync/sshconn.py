"""SSH connections through paramiko, the way OpenSSH's client would make them.

What is honoured from ``~/.ssh/config``: Host aliases (HostName), User, Port,
IdentityFile, ProxyJump (hops through gateways), ProxyCommand and
UserKnownHostsFile. Authentication tries the SSH agent, then key files, then
a password. A key passphrase or password comes from FITSYNC_SSH_PASSPHRASE /
FITSYNC_SSH_PASSWORD or, only when stdin is a terminal, from a prompt; never
from the command line, and never logged.

Host keys are checked against known_hosts. An unknown key is refused unless
``--accept-new-host-key`` is given (trust on first use: the key is then
recorded); a key that differs from the recorded one is always refused.

One connection per (user, host, port, route) is kept and shared by every
remote that needs it; each thread gets its own SFTP channel on it.

A connection that stops answering (a relay or firewall that holds the TCP
connection open but forwards nothing) would block its readers for ever: a
watchdog declares it lost after ``--timeout`` seconds without a byte from
the server, asking for a reply once it has been quiet a while, as OpenSSH's
ServerAliveInterval does. Closing the transport wakes every blocked reader
and writer, and the callers reconnect as for a dropped connection.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import paramiko

from fitsync.errors import BadInput, ConnectionFailed, HostNotFound
from fitsync.sshauth import PASSWORD_ENV, authenticate, check_host_key, known_keys, timed_out

log = logging.getLogger(__name__)
# paramiko's transport thread logs what ends a connection (with a traceback) at
# ERROR; with no handler of its own that reaches stderr through logging's last
# resort. fitsync reports the same failure as its own one-line error.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

CONNECT_TIMEOUT = 20.0
# Seconds without a byte from the server before a connection counts as lost
# (--timeout); 0 waits for ever. Connecting gives up after the smaller of
# this and CONNECT_TIMEOUT.
DEFAULT_TIMEOUT = 60.0
# Large windows and packets: paramiko's per-packet cost in Python is what
# limits throughput, so fewer, bigger packets go faster.
WINDOW_SIZE = 64 << 20
MAX_PACKET = 1 << 18


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to connect, after ~/.ssh/config is applied."""

    alias: str  # the name the user wrote
    hostname: str
    port: int = 22
    user: str = ""
    identity_files: tuple = ()
    proxy_jump: str = ""  # comma-separated hops, OpenSSH syntax
    proxy_command: str = ""
    known_hosts: tuple = ()  # files checked, the first one is written to
    accept_new_host_key: bool = False
    password_env: str = field(default=PASSWORD_ENV, compare=False)
    password: str = field(default="", compare=False, repr=False)  # from a private remotes file only
    timeout: float = field(default=DEFAULT_TIMEOUT, compare=False)  # see DEFAULT_TIMEOUT

    @property
    def connect_timeout(self) -> float:
        return min(CONNECT_TIMEOUT, self.timeout) if self.timeout > 0 else CONNECT_TIMEOUT

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH records in known_hosts: host, or [host]:port."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def describe(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def _ssh_config() -> paramiko.SSHConfig:
    path = os.path.expanduser("~/.ssh/config")
    if os.path.exists(path):
        try:
            return paramiko.SSHConfig.from_path(path)
        except Exception as exc:  # paramiko raises assorted errors on odd syntax
            raise ConnectionFailed(f"cannot parse {path}: {exc}; fix the file") from None
    return paramiko.SSHConfig()


def resolve_target(host: str, *, user: str | None = None, port: int | None = None,
                   identity_file: str | None = None, accept_new_host_key: bool = False,
                   known_hosts: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> SshTarget:
    """Apply ~/.ssh/config to ``host``; explicit arguments win over the file."""
    conf = _ssh_config().lookup(host)
    hostname = conf.get("hostname", host)
    identity = [identity_file] if identity_file else list(conf.get("identityfile", []))
    known = ([os.path.expanduser(known_hosts)] if known_hosts else
             [os.path.expanduser(p) for p in conf.get("userknownhostsfile", "").split()] or
             [os.path.expanduser("~/.ssh/known_hosts")])
    try:
        port_number = int(port or conf.get("port", 22))
    except (TypeError, ValueError):
        port_number = 0
    if not 0 < port_number < 65536:
        # The value itself is not repeated: a mistyped line may hold anything.
        raise BadInput(f"the port for host {host!r} is not a number from 1 to 65535; fix it in the remotes file "
                       "or ~/.ssh/config")
    return SshTarget(
        alias=host,
        hostname=hostname,
        port=port_number,
        user=user or conf.get("user") or getpass.getuser(),
        identity_files=tuple(os.path.expanduser(p) for p in identity),
        proxy_jump="" if conf.get("proxyjump", "none") == "none" else conf.get("proxyjump", ""),
        proxy_command="" if conf.get("proxycommand", "none") == "none" else conf.get("proxycommand", ""),
        known_hosts=tuple(known),
        accept_new_host_key=accept_new_host_key,
        timeout=timeout,
    )


def parse_jump(hop: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` of a ProxyJump hop -> (user, host, port)."""
    hop = hop.strip()
    if hop.startswith("ssh://"):
        hop = hop[len("ssh://"):]
    user, _, rest = hop.rpartition("@")
    host, port = rest, None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port = int(tail[1:]) if tail.startswith(":") else None
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
        port = int(port_text)
    return user or None, host, port


# -- connecting ---------------------------------------------------------------

def _open_socket(target: SshTarget, via: "SshConnection | None"):
    if via is not None:
        try:
            return via.transport.open_channel("direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0),
                                              timeout=target.connect_timeout)
        except (paramiko.SSHException, OSError) as exc:
            raise ConnectionFailed(f"jump host {via.target.describe()} cannot reach "
                                   f"{target.hostname}:{target.port}: {exc}") from None
    if target.proxy_command:
        command = target.proxy_command.replace("%h", target.hostname).replace("%p", str(target.port)) \
            .replace("%r", target.user)
        return paramiko.ProxyCommand(command)
    try:
        sock = socket.create_connection((target.hostname, target.port), timeout=target.connect_timeout)
    except socket.gaierror:
        from fitsync.config import config_path

        raise HostNotFound(f"no host {target.hostname!r} resolves, and {config_path()} defines no remote named "
                           f"{target.alias!r}; check the name, or define the remote with "
                           "`fitsync config template sftp`") from None
    except OSError as exc:
        raise ConnectionFailed(f"cannot connect to {target.hostname}:{target.port}: "
                               f"{exc.strerror or exc}") from None
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _handshake_error(exc: BaseException, limit: float) -> str:
    if timed_out(exc):
        return f"no answer within {limit:g} s"
    return str(exc) or type(exc).__name__


def _preferred_key_types(transport: paramiko.Transport, target: SshTarget) -> None:
    """Ask first for host key types already recorded, as OpenSSH does, so a
    known host is not reported as presenting an unknown type."""
    known = list(known_keys(target))
    if not known:
        return
    options = transport.get_security_options()
    options.key_types = _put_first(options.key_types, [
        k for k in options.key_types if k in known or (k.startswith("rsa-sha2") and "ssh-rsa" in known)])


# AES-GCM encrypts and authenticates each packet in one OpenSSL call; paramiko's
# default, AES-CTR plus a separate HMAC, costs a second pass and more Python per
# packet: a 1 GiB SFTP read takes 6.3 s instead of 4.7 s (scp: 3.8 s) on the
# benchmark machine. Servers without GCM still get paramiko's default order.
AEAD_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _prefer_aead_ciphers(transport: paramiko.Transport) -> None:
    options = transport.get_security_options()
    options.ciphers = _put_first(options.ciphers, [c for c in AEAD_CIPHERS if c in options.ciphers])


def _put_first(current, first: list) -> tuple:
    """paramiko's preference order ``current`` with ``first`` (names taken
    from it) moved to the front, in that order."""
    return tuple(first + [name for name in current if name not in first])


# -- noticing a connection that stopped answering ----------------------------------

class _ArrivalClock:
    """The connection's socket (or proxy), noting when bytes last arrived.
    Everything but recv is the wrapped object's own."""

    def __init__(self, sock):
        self._sock = sock
        self.last_arrival = time.monotonic()

    def recv(self, n: int) -> bytes:
        data = self._sock.recv(n)
        if data:
            self.last_arrival = time.monotonic()
        return data

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _Watchdog(threading.Thread):
    """Closes ``transport`` once nothing has arrived for ``timeout`` seconds.
    After a third of that in silence it sends a global request that wants a
    reply (servers answer even unknown ones), so a server that is merely idle
    or busy computing keeps talking; only a connection that forwards nothing
    stays silent. The request goes out from a helper thread, since a send
    into a jammed connection blocks until the transport is closed."""

    def __init__(self, transport: paramiko.Transport, clock: _ArrivalClock, timeout: float, on_stall):
        super().__init__(daemon=True, name="ssh-watchdog")
        self.transport = transport
        self.clock = clock
        self.timeout = timeout
        self.on_stall = on_stall
        self._probe: threading.Thread | None = None

    def run(self) -> None:
        tick = min(1.0, self.timeout / 4)
        while self.transport.is_active():
            time.sleep(tick)
            quiet = time.monotonic() - self.clock.last_arrival
            if quiet >= self.timeout:
                self.on_stall(quiet)
                self.transport.close()
                return
            if quiet >= self.timeout / 3 and (self._probe is None or not self._probe.is_alive()):
                self._probe = threading.Thread(target=self._ask_for_reply, daemon=True, name="ssh-probe")
                self._probe.start()

    def _ask_for_reply(self) -> None:
        try:
            self.transport.global_request("keepalive@openssh.com", wait=True)
        except Exception:  # a dying transport: the watchdog's clock decides
            pass


class SshConnection:
    """An authenticated transport, shared; one SFTP channel per thread."""

    def __init__(self, target: SshTarget, via: "SshConnection | None" = None):
        self.target = target
        self.via = via
        self._local = threading.local()
        self._lock = threading.Lock()
        self._stalled: dict = {}  # generation -> why the watchdog closed it
        self._spares: list = []  # (generation, SFTPClient) opened ahead, for threads to adopt
        self._spares_opening = 0
        self._spares_started = 0
        self._spares_cond = threading.Condition()
        self.transport = self._connect()

    def _connect(self) -> paramiko.Transport:
        limit = self.target.connect_timeout
        clock = _ArrivalClock(_open_socket(self.target, self.via))
        transport = paramiko.Transport(clock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET)
        # paramiko's own limits (15-30 s) would let a silent server hold each attempt longer than --timeout.
        transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = limit
        _preferred_key_types(transport, self.target)
        _prefer_aead_ciphers(transport)
        try:
            transport.start_client(timeout=limit)
            if transport.is_active() and not transport.initial_kex_done:
                raise socket.timeout("key exchange timed out")
            check_host_key(self.target, transport.get_remote_server_key())
            authenticate(transport, self.target)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            transport.close()
            raise ConnectionFailed(f"SSH handshake with {self.target.describe()} failed: "
                                   f"{_handshake_error(exc, limit)}") from None
        except BaseException:
            transport.close()
            raise
        transport.set_keepalive(30)
        self.generation = getattr(self, "generation", 0) + 1
        if self.target.timeout > 0:
            generation = self.generation
            _Watchdog(transport, clock, self.target.timeout,
                      lambda quiet: self._note_stall(generation, quiet)).start()
        return transport

    def _note_stall(self, generation: int, quiet: float) -> None:
        why = f"no data from the server for {quiet:.0f} s (--timeout={self.target.timeout:g})"
        self._stalled[generation] = why
        log.warning("connection to %s stalled: %s; closing it", self.target.describe(), why)

    def why_lost(self, generation: int, exc: BaseException) -> str:
        """What to tell the user about a lost connection: the stall, if that
        is what closed it, else the error seen."""
        return self._stalled.get(generation) or str(exc) or type(exc).__name__

    def alive(self) -> bool:
        return self.transport.is_active()

    def reconnect(self, generation: int) -> None:
        """Replace a dead transport (once, however many threads ask)."""
        with self._lock:
            if self.generation != generation:
                return  # another thread already reconnected
            self.transport.close()
            if self.via is not None and not self.via.alive():
                self.via.reconnect(self.via.generation)
            self.transport = self._connect()

    def sftp(self) -> paramiko.SFTPClient:
        """This thread's SFTP client, on a channel with a large window."""
        client = getattr(self._local, "sftp", None)
        if client is not None and getattr(self._local, "generation", None) == self.generation \
                and not client.sock.closed:
            return client
        client = self._adopt_spare()
        if client is None:
            try:
                client = self._open_sftp()
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise ConnectionFailed(f"cannot open an SFTP session on {self.target.describe()}: {exc}") from None
        self._local.sftp = client
        self._local.generation = self.generation
        return client

    def _open_sftp(self) -> paramiko.SFTPClient:
        channel = self.transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET)
        channel.invoke_subsystem("sftp")
        return paramiko.SFTPClient(channel)

    # Each channel costs the server a start of the account's shell (sshd runs
    # the sftp subsystem and every exec through it), 0.1 s and more where a
    # .bashrc sets up pyenv or conda. The SFTP channels that the threads of a
    # run will want are therefore opened side by side as soon as the
    # connection is up, while the agent starts and the local tree is listed.
    def open_spares(self, total: int) -> None:
        """Open SFTP channels in the background for threads to adopt, until
        ``total`` have been opened ahead on this connection."""
        with self._spares_cond:
            count = max(total - self._spares_started, 0)
            self._spares_started += count
            self._spares_opening += count
        for _ in range(count):
            threading.Thread(target=self._open_spare, args=(self.generation,), name="fitsync-sftp-spare",
                             daemon=True).start()

    def _open_spare(self, generation: int) -> None:
        try:
            client = self._open_sftp()
        except Exception:  # the thread that wanted it opens its own and reports the error
            client = None
        with self._spares_cond:
            self._spares_opening -= 1
            if client is not None:
                self._spares.append((generation, client))
            self._spares_cond.notify_all()

    def _adopt_spare(self) -> paramiko.SFTPClient | None:
        """A spare SFTP client of the current transport, waiting for one being
        opened (that is sooner than opening another); None when there is none."""
        with self._spares_cond:
            while not self._spares and self._spares_opening:
                self._spares_cond.wait()
            while self._spares:
                generation, client = self._spares.pop()
                if generation == self.generation and not client.sock.closed:
                    return client
                client.close()
        return None

    def exec(self, command: str) -> paramiko.Channel:
        """A channel running ``command`` remotely (stdin/stdout are the channel)."""
        channel = self.transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET)
        channel.exec_command(command)
        return channel

    def close(self) -> None:
        self.transport.close()


_POOL: dict = {}
_HOLDERS: dict = {}  # pool key -> ids of the objects (remotes) using that connection
_POOL_LOCK = threading.Lock()


def connect(target: SshTarget, lane: int = 0, holder: object = None) -> SshConnection:
    """The shared connection for ``target`` (through its ProxyJump hops).
    ``lane`` > 0 gives further connections to the same host, for striped
    transfers: one paramiko connection is limited by one Python thread's
    packet processing. A ``holder`` (the remote using it) gives it back with
    ``release``; the connection closes when its last holder has."""
    key = (target.user, target.hostname, target.port, target.proxy_jump, target.proxy_command, lane)
    with _POOL_LOCK:
        if holder is not None:
            _HOLDERS.setdefault(key, set()).add(id(holder))
        conn = _POOL.get(key)
        if conn is not None and conn.alive():
            return conn
        via = None
        if target.proxy_jump:
            for hop in target.proxy_jump.split(","):
                user, host, port = parse_jump(hop)
                hop_target = resolve_target(host, user=user, port=port,
                                            accept_new_host_key=target.accept_new_host_key, timeout=target.timeout)
                via = SshConnection(hop_target, via)
        conn = SshConnection(target, via)
        _POOL[key] = conn
        return conn


def release(holder: object) -> None:
    """``holder`` no longer uses its connections: close those nobody else holds,
    so that a library call leaves no connection behind it."""
    closing = []
    with _POOL_LOCK:
        for key, holders in list(_HOLDERS.items()):
            holders.discard(id(holder))
            if not holders:
                del _HOLDERS[key]
                conn = _POOL.pop(key, None)
                if conn is not None:
                    closing.append(conn)
    for conn in closing:
        conn.close()


def close_all() -> None:
    with _POOL_LOCK:
        for conn in _POOL.values():
            conn.close()
        _POOL.clear()
        _HOLDERS.clear()
