"""URL-scheme registry: turns a command-line location into a ``Remote``.

Backends are imported lazily so that a local mirror never pays for importing
paramiko or the Dropbox SDK.
"""

from __future__ import annotations

import importlib
import re

from fitsync.errors import UsageError
from fitsync.options import RemoteOptions
from fitsync.remotes.base import Capability, Entry, Remote

__all__ = ["Capability", "Entry", "Remote", "open_remote", "open_source", "register_scheme", "parse_location"]

_SCHEMES: dict[str, str] = {
    "file": "fitsync.remotes.local:LocalRemote",
    "sftp": "fitsync.remotes.sftp:SftpRemote",
    "ssh": "fitsync.remotes.sftp:SftpRemote",
    "http": "fitsync.remotes.http:HttpRemote",
    "https": "fitsync.remotes.http:HttpRemote",
    "dropbox": "fitsync.remotes.dropbox:DropboxRemote",
}

_URL = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://")
# scp form user@host:path or host:path; a colon after the first slash is a local path.
_SCP = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^@/:]+|\[[0-9a-fA-F:]+\]):(?P<path>.*)$")


def register_scheme(scheme: str, target: str) -> None:
    """Register ``module:Class`` as the backend for ``scheme``."""
    _SCHEMES[scheme] = target


def parse_location(spec: str) -> tuple[str, str]:
    """Return (scheme, url) for a command-line location.

    ``/data``, ``./data`` -> file; ``sftp://h/p`` -> sftp; ``dropbox:/p`` ->
    dropbox; ``host:path`` -> sftp (scp form) unless ``host`` names a remote
    in the config, which the caller resolves first.
    """
    m = _URL.match(spec)
    if m:
        return m.group("scheme").lower(), spec
    if spec.startswith("dropbox:"):
        return "dropbox", spec
    if _SCP.match(spec) and not spec.startswith(("/", ".")):
        return "sftp", spec
    return "file", spec


def _load(target: str):
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageError(f"the backend for {target.split(':')[0]} is not available ({exc})") from None
    return getattr(module, class_name)


def open_remote(spec: str, options: RemoteOptions | None = None) -> Remote:
    """Open the location ``spec`` (a path, URL or NAME:path) with ``options``."""
    options = options or RemoteOptions()
    named = _resolve_named(spec, options)
    if named is not None:
        return named
    scheme, url = parse_location(spec)
    target = _SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(sorted(_SCHEMES))
        raise UsageError(f"unknown location scheme {scheme!r} in {spec!r}; known: {known}")
    return _load(target).from_url(url, options)


def open_source(spec: str, options: RemoteOptions | None = None) -> Remote:
    """A location that is read from: a remote that publishes a release manifest
    (and cannot compute signatures itself) is listed and delta-served from it;
    with ``options.verify_key`` its signature must verify."""
    options = options or RemoteOptions()
    remote = open_remote(spec, options)
    if Capability.LOCAL in remote.capabilities and not options.verify_key:
        return remote  # a local tree is listed as it is (release_source agrees); spare its import
    from fitsync.release import release_source

    return release_source(remote, options.verify_key)


def _resolve_named(spec: str, options: RemoteOptions) -> Remote | None:
    """``name:path`` where ``name`` is a remote in the config file."""
    name, sep, path = spec.partition(":")
    if not sep or "/" in name or _URL.match(spec):
        return None
    try:
        config = importlib.import_module("fitsync.config")
    except ModuleNotFoundError:
        return None
    remote_conf = config.find_remote(name)
    if remote_conf is None:
        return None
    scheme = remote_conf.get("type", "")
    target = _SCHEMES.get(scheme)
    if target is None:
        raise UsageError(f"remote {name!r} in the config has unknown type {scheme!r}")
    return _load(target).from_config(name, remote_conf, path, options)
