"""A real OpenSSH sshd on 127.0.0.1 for tests and benchmarks.

``SshServer`` writes a temporary host key, a client key and authorized_keys,
an sshd_config listening on a free loopback port, and starts ``sshd -D`` as
the current user (root in CI: PermitRootLogin and StrictModes no are set).
Besides ``port`` it listens on ``sftp_only_port``, where ``Match LocalPort``
forces ``ForceCommand internal-sftp`` so that exec requests (and so the
fitsync agent) are refused the way a locked-down account refuses them, and
on ``readonly_port``, where internal-sftp runs with ``-R``: every write is
answered "permission denied" by the server, even for root.

``client_env`` gives a HOME with ~/.ssh/config, known_hosts and the client key,
so that tests exercise the same ~/.ssh handling a user gets.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
SFTP_SERVER_CANDIDATES = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                          "/usr/libexec/sftp-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, kind: str = "ed25519", passphrase: str = "") -> Path:
    """Write a key pair at ``path`` (kept if it already exists)."""
    if path.exists():
        return path
    subprocess.run([SSH_KEYGEN, "-q", "-t", kind, "-N", passphrase, "-f", str(path), "-C", "fitsync-test"],
                   check=True, stdin=subprocess.DEVNULL)
    return path


# Environment that would change how the client connects; tests start without it.
CLIENT_ENV = ("SSH_AUTH_SOCK", "FITSYNC_SSH_PASSWORD", "FITSYNC_SSH_PASSPHRASE", "FITSYNC_AGENT_AVOID",
              "FITSYNC_SSH_AGENT", "FITSYNC_SSH_PYTHON", "FITSYNC_SSH_CONNECTIONS")


def use_client_home(server: "SshServer", home: Path, monkeypatch) -> Path:
    """Point HOME at a fresh client home for ``server`` (see client_home), clear
    the SSH environment, and reset fitsync's process-wide SSH state: the
    once-per-host warnings and a logger an in-process CLI run left detached."""
    import logging

    from fitsync.remotes import sftp_agent

    path = server.client_home(home)
    monkeypatch.setenv("HOME", str(path))
    for var in CLIENT_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FITSYNC_SSH_PYTHON", host_python(server.dir))
    sftp_agent._WARNED_NO_AGENT.clear()
    fitsync_log = logging.getLogger("fitsync")
    monkeypatch.setattr(fitsync_log, "propagate", True)
    monkeypatch.setattr(fitsync_log, "handlers", [])
    return path


@pytest.fixture
def blake3_host(sshd, home, monkeypatch):
    """The favourable host: someone installed blake3 and xxhash there (not
    fitsync), so its agent hashes BLAKE3 where the data is."""
    from fitsync import sshconn

    sshconn.close_all()
    monkeypatch.setenv("FITSYNC_SSH_PYTHON", host_python(sshd.dir, ("blake3", "xxhash")))
    return sshd


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """One sshd for a test module (import this fixture into the module)."""
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def home(sshd, tmp_path, monkeypatch):
    """A HOME with ~/.ssh/config (alias 'testhost'), the client key and known_hosts;
    the pooled SSH connections are closed afterwards."""
    from fitsync import sshconn

    yield use_client_home(sshd, tmp_path / "home", monkeypatch)
    sshconn.close_all()


def host_python(workdir: Path, modules: tuple = ()) -> str:
    """The test host's python3: this interpreter's base installation, outside
    the venv, with nothing on its path that a stock server lacks: no fitsync,
    no blake3, no xxhash (the agent then makes the STDLIB signature).
    ``modules`` (e.g. ("blake3", "xxhash")) adds those, for the tests of a
    host where someone installed them.

    Written as a wrapper under ``workdir`` and named explicitly, so that the
    tests do not depend on whatever python3 the account's login shell finds.
    A test that wants fitsync on the host adds it with PYTHONPATH."""
    import importlib
    import shlex
    import sys

    tag = "-".join(modules) or "stock"
    lib = workdir / f"host-lib-{tag}"
    lib.mkdir(parents=True, exist_ok=True)
    for name in modules:
        package = Path(importlib.import_module(name).__file__).parent
        link = lib / package.name
        if not link.exists():
            link.symlink_to(package)
    base = os.path.realpath(sys.executable)  # outside the venv: no site-packages of the test run
    wrapper = workdir / f"host-python3-{tag}"
    # -S: without the site module the base installation's own site-packages
    # (numpy, say, on a developer's interpreter) stay out of reach, as on a stock server
    flags = "" if modules else " -S"
    wrapper.write_text("#!/bin/sh\n"
                       f'PYTHONPATH={shlex.quote(str(lib))}${{PYTHONPATH:+:$PYTHONPATH}} '
                       f'exec {shlex.quote(base)}{flags} "$@"\n')
    wrapper.chmod(0o755)
    return shlex.quote(str(wrapper))


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, so a
    killed test run leaves no sshd listening (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _sftp_server() -> str:
    for candidate in SFTP_SERVER_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    return "internal-sftp"


class StallingRelay:
    """A TCP relay 127.0.0.1:port -> 127.0.0.1:upstream that can stop forwarding
    while it keeps both sockets of every connection open: a NAT, firewall or
    jump host that silently stops passing traffic. Nothing is closed or reset,
    so the client sees neither an error nor an end of file, only silence.

    ``stall_after(n, direction)`` stalls every connection once ``n`` bytes went
    ``"up"`` (client to server) or ``"down"`` in all. Connections opened after
    a stall are forwarded again, unless ``forever`` was given: then they are
    accepted and held silent too."""

    def __init__(self, upstream_port: int):
        import threading

        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stalled = threading.Event()  # set when the stall begins
        self.forever = False
        self.moved = {"up": 0, "down": 0}
        self.connections = 0
        self._limit: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._live: set = set()  # connections being forwarded
        self._stalled_ids: set = set()  # those the stall caught
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="relay-accept").start()

    def stall_after(self, n: int, direction: str = "up", forever: bool = False) -> None:
        self._limit, self.forever = (direction, n), forever

    def _accept(self) -> None:
        import threading

        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._sockets.append(client)
                if self.stalled.is_set() and self.forever:
                    continue  # held open, never answered
            server = socket.create_connection(("127.0.0.1", self.upstream))
            ident = object()
            with self._lock:
                self._sockets.append(server)
                self._live.add(ident)
            for src, dst, direction in ((client, server, "up"), (server, client, "down")):
                threading.Thread(target=self._pump, args=(src, dst, direction, ident), daemon=True,
                                 name=f"relay-{direction}").start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, ident) -> None:
        while not self._closing.is_set():
            try:
                data = src.recv(1 << 16)
            except OSError:
                break
            if not data:
                break
            with self._lock:
                self.moved[direction] += len(data)
                limit = self._limit
                if limit and limit[0] == direction and self.moved[direction] >= limit[1] \
                        and not self.stalled.is_set():
                    self.stalled.set()
                    self._stalled_ids = set(self._live)
                if self.stalled.is_set() and (self.forever or ident in self._stalled_ids):
                    held = True
                else:
                    held = False
            if held:
                self._closing.wait()  # stop reading and writing; keep both ends open
                return
            try:
                dst.sendall(data)
            except OSError:
                break
        for sock in (src, dst):  # one side ended: pass the end on, as a relay does
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()


class SshServer:
    """One sshd process; start() / stop(); host_key_line() for known_hosts."""

    def __init__(self, workdir: Path, *, host_key: Path | None = None,
                 authorized: list[Path] | None = None, extra: str = ""):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.sftp_only_port = free_port()
        self.readonly_port = free_port()
        self.host_key = host_key or keygen(self.dir / "host_ed25519")
        self.client_key = keygen(self.dir / "client_ed25519")
        keys = [self.client_key] + list(authorized or [])
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text("".join(Path(str(k) + ".pub").read_text() for k in keys))
        self.extra = extra
        self.process: subprocess.Popen | None = None
        self.log = self.dir / "sshd.log"

    def config_text(self) -> str:
        lines = [
            f"Port {self.port}",
            f"Port {self.sftp_only_port}",
            f"Port {self.readonly_port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            f"PidFile {self.dir / 'sshd.pid'}",
            "PermitRootLogin yes",
            "StrictModes no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "MaxStartups 50",
            "MaxSessions 50",
            "LogLevel ERROR",
            f"Subsystem sftp {_sftp_server()}",
        ]
        lines += [self.extra,
                  f"Match LocalPort {self.sftp_only_port}", "  ForceCommand internal-sftp",
                  f"Match LocalPort {self.readonly_port}", "  ForceCommand internal-sftp -R"]
        return "\n".join(lines) + "\n"

    def start(self) -> "SshServer":
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir sshd insists on
        config = self.dir / "sshd_config"
        config.write_text(self.config_text())
        subprocess.run([SSHD, "-t", "-f", str(config)], check=True)
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], preexec_fn=_die_with_parent,
                                        stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not start on port {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def session_pids(self) -> list[int]:
        """PIDs of the per-connection sshd processes under the listener. Only
        sshd itself: a command it runs (a login shell in the middle of, say,
        pyenv's rehash under a lock) must see its connection drop and exit on
        its own, not be killed half-way and leave a stale lock behind."""
        if self.process is None:
            return []
        out = subprocess.run(["ps", "-eo", "pid=,ppid=,comm="], capture_output=True, text=True).stdout
        children: dict[int, list[tuple[int, str]]] = {}
        for line in out.splitlines():
            pid, ppid, comm = line.split(None, 2)
            children.setdefault(int(ppid), []).append((int(pid), comm.strip()))
        found, todo = [], [self.process.pid]
        while todo:
            for child, comm in children.get(todo.pop(), []):
                if comm == "sshd":
                    found.append(child)
                    todo.append(child)
        return found

    def kill_sessions(self) -> int:
        """Kill every live SSH session's sshd (not the listener): a dropped connection."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def host_key_line(self, port: int | None = None) -> str:
        kind, blob = Path(str(self.host_key) + ".pub").read_text().split()[:2]
        return "".join(f"[127.0.0.1]:{p} {kind} {blob}\n"
                       for p in ([port] if port else [self.port, self.sftp_only_port, self.readonly_port]))

    def client_home(self, home: Path, *, known: bool = True, alias: str = "testhost") -> Path:
        """A HOME whose ~/.ssh has the client key, a Host alias and (optionally) known_hosts."""
        ssh = home / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True, mode=0o700)
        (ssh / "config").write_text(
            f"Host {alias}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {getpass.getuser()}\n"
            f"  IdentityFile {self.client_key}\n"
            f"Host 127.0.0.1\n  IdentityFile {self.client_key}\n"
        )
        key = ssh / "id_ed25519"  # the default key name, for scp-form URLs without ~/.ssh/config
        if not key.exists():
            shutil.copy(self.client_key, key)
            os.chmod(key, 0o600)
        known_hosts = ssh / "known_hosts"
        known_hosts.write_text(self.host_key_line() if known else "")
        return home

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
