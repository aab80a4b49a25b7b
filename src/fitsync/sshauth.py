"""Who the SSH server is and who we are: host keys checked against
known_hosts (an unknown key is refused unless the user opts in), and
authentication by agent, key files (passphrases from the environment or a
terminal) or a password from FITSYNC_SSH_PASSWORD, never from argv."""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

import paramiko

from fitsync.errors import AuthenticationFailed, ConnectionFailed, HostKeyRejected

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.sshconn import SshTarget

log = logging.getLogger("fitsync.sshconn")

PASSWORD_ENV = "FITSYNC_SSH_PASSWORD"
PASSPHRASE_ENV = "FITSYNC_SSH_PASSPHRASE"
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


def timed_out(exc: BaseException) -> bool:
    """paramiko re-raises a socket.timeout as SSHException (the banner) or says "timeout" (authentication)."""
    return (isinstance(exc, socket.timeout) or isinstance(exc.__context__, socket.timeout)
            or "timeout" in str(exc).lower())


# -- host keys -------------------------------------------------------------

def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_keys(target: SshTarget) -> dict:
    """keytype -> key recorded for the target in any known_hosts file."""
    found: dict = {}
    for path in list(target.known_hosts) + ["/etc/ssh/ssh_known_hosts"]:
        if not os.path.exists(path):
            continue
        keys = paramiko.HostKeys()
        try:
            keys.load(path)
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyRejected(f"cannot read known hosts file {path}: {exc}") from None
        for name in {target.known_hosts_name, target.hostname if target.port == 22 else None} - {None}:
            entry = keys.lookup(name)
            if entry:
                for kind in entry.keys():
                    found.setdefault(kind, entry[kind])
    return found


def check_host_key(target: SshTarget, key: paramiko.PKey) -> None:
    """Raise HostKeyRejected unless ``key`` is the recorded one (or TOFU applies)."""
    known = known_keys(target)
    name = target.known_hosts_name
    kind = key.get_name()
    if kind in known:
        if known[kind].asbytes() != key.asbytes():
            raise HostKeyRejected(
                f"the host key of {name} has CHANGED ({kind} {fingerprint(key)}); refusing to connect. "
                f"If the change is expected, remove the old key with: ssh-keygen -R '{name}'")
        return
    if known:
        raise HostKeyRejected(
            f"{name} presented a {kind} key but known_hosts records only {', '.join(sorted(known))}; "
            f"refusing to connect (check the host, then update known_hosts)")
    if not target.accept_new_host_key:
        raise HostKeyRejected(
            f"the host key of {name} is unknown ({kind} {fingerprint(key)}); check it and pass "
            f"--accept-new-host-key to record it in {target.known_hosts[0]}")
    _record_host_key(target.known_hosts[0], name, key)
    log.warning("recorded new host key for %s (%s %s) in %s", name, kind, fingerprint(key),
                target.known_hosts[0])


def _record_host_key(path: str, name: str, key: paramiko.PKey) -> None:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    with open(path, "a", encoding="ascii") as f:
        f.write(f"{name} {key.get_name()} {key.get_base64()}\n")


# -- authentication ----------------------------------------------------------

def _secret(env_name: str, prompt: str) -> str | None:
    """A secret from the environment, else from a prompt when a person is there."""
    value = os.environ.get(env_name)
    if value is not None:
        return value
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(prompt)
    return None


def _load_key(path: str) -> paramiko.PKey | None:
    try:
        return paramiko.PKey.from_path(path)
    except (paramiko.PasswordRequiredException, TypeError):  # cryptography says TypeError for new-format keys
        passphrase = _secret(PASSPHRASE_ENV, f"Passphrase for {path}: ")
        if passphrase is None:
            log.info("skipping encrypted key %s: no passphrase (set %s)", path, PASSPHRASE_ENV)
            return None
        try:
            return paramiko.PKey.from_path(path, passphrase.encode())
        except (paramiko.SSHException, ValueError, TypeError):
            raise AuthenticationFailed(f"wrong passphrase for key {path}") from None
    except (OSError, paramiko.SSHException, ValueError) as exc:
        log.info("skipping key %s: %s", path, exc)
        return None


def _candidate_keys(target: SshTarget):
    """Agent keys first, then key files (those configured, else the defaults)."""
    if os.environ.get("SSH_AUTH_SOCK"):
        try:
            yield from paramiko.Agent().get_keys()
        except paramiko.SSHException as exc:
            log.info("ssh agent not usable: %s", exc)
    paths = target.identity_files or tuple(os.path.expanduser(f"~/.ssh/{n}") for n in DEFAULT_KEYS)
    for path in paths:
        if os.path.exists(path):
            key = _load_key(path)
            if key is not None:
                yield key


def _unless_silent(transport: paramiko.Transport, target: SshTarget, exc: Exception) -> None:
    """A server that stops answering mid-authentication has not refused the
    key: that is a (retryable) connection failure, not a wrong credential."""
    if timed_out(exc):
        raise ConnectionFailed(f"SSH handshake with {target.describe()} failed: the server stopped answering "
                               f"during authentication (no answer within {transport.auth_timeout:g} s)") from None


def authenticate(transport: paramiko.Transport, target: SshTarget) -> None:
    user = target.user
    for key in _candidate_keys(target):
        try:
            if not transport.auth_publickey(user, key):
                return  # no further methods required
        except paramiko.AuthenticationException as exc:
            _unless_silent(transport, target, exc)
            continue
        if transport.is_authenticated():
            return
    password = target.password or _secret(target.password_env, f"Password for {target.describe()}: ")
    if password is not None:
        try:
            transport.auth_password(user, password)
        except paramiko.AuthenticationException as exc:
            _unless_silent(transport, target, exc)
        if transport.is_authenticated():
            return
        where = ("the remotes config" if target.password
                 else target.password_env if target.password_env in os.environ else "the prompt")
        raise AuthenticationFailed(f"authentication to {target.describe()} failed: the server refused the key(s) "
                                   f"and the password from {where}; check the password")
    raise AuthenticationFailed(
        f"authentication to {target.describe()} failed: no key in the SSH agent or "
        f"{', '.join(target.identity_files) or '~/.ssh/id_*'} was accepted; add a key "
        f"(IdentityFile in ~/.ssh/config) or set {target.password_env}")
