"""Where a data store's index rows point: FILE_DIR and FILE_NAME resolved
against the store root, and locations inside or outside it."""

from __future__ import annotations

import logging
import os
import posixpath
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from fitsync.errors import BadInput, UnsafePath, UsageError
from fitsync.paths import safe_relpath
from fitsync.remotes import open_remote, parse_location
from fitsync.remotes.base import Remote
from fitsync.datastore_files import OUTSIDE_DIR

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.options import RemoteOptions
    from fitsync.datastore import Production

log = logging.getLogger("fitsync")


# -- where index rows point -----------------------------------------------------------


@dataclass(frozen=True)
class Location:
    root: str | None  # None: the store itself; else the allowed root it lies in
    path: str  # safe relative path under that root

    @property
    def display(self) -> str:
        return self.path if self.root is None else f"{self.root.rstrip('/')}/{self.path}"

    def destination(self) -> str:
        """Where the file goes inside the destination store."""
        if self.root is None:
            return self.path
        name = posixpath.basename(self.root.rstrip("/")) or "root"
        return safe_relpath(f"{OUTSIDE_DIR}/{name}/{self.path}")


class Locator:
    """Resolves FILE_DIR/FILE_NAME of HDU index rows to locations that are
    provably inside the store root or an allowed root."""

    def __init__(self, store_spec: str, allowed_roots: Iterable[str] = (), options: RemoteOptions | None = None):
        self.prefix, self.store_path = split_location(store_spec)
        self.options = options
        self.allowed: list[tuple[str, str]] = []  # (root spec, absolute path)
        for root in allowed_roots:
            prefix, path = split_location(root, relative_to=self.prefix)
            if prefix != self.prefix:
                raise UsageError(f"--allow-root={root} is not on the same host as the store {store_spec}")
            self.allowed.append((join_location(prefix, path), path))
        self._remotes: dict[str, Remote] = {}

    def locate(self, row, production: Production) -> Location:
        index_dir = posixpath.dirname(production.hdu_index)
        file_dir = _cell(row, "FILE_DIR")
        file_name = _cell(row, "FILE_NAME")
        if not file_name or "/" in file_name or file_name in (".", ".."):
            raise UnsafePath(f"HDU index row of OBS_ID {_obs_id(row)} has FILE_NAME {file_name!r}; refusing it")
        base = self.base_dir(row, index_dir)
        target = posixpath.normpath(posixpath.join(base, file_dir, file_name))
        where = _inside(target, self.store_path)
        if where is not None:
            return Location(None, safe_relpath(where, what="index file path"))
        for spec, root_path in self.allowed:
            where = _inside(target, root_path)
            if where is not None:
                return Location(spec, safe_relpath(where, what="index file path"))
        raise UnsafePath(
            f"HDU index row of OBS_ID {_obs_id(row)} points to {target}, outside the store root "
            f"{self.store_path} (FILE_DIR {file_dir!r}); allow that directory with --allow-root=DIR if you trust it"
        )

    def base_dir(self, row, index_dir: str) -> str:
        """Absolute directory FILE_DIR is relative to: BASE_DIR if the table
        sets it (absolute, or relative to the index file), else the index file's."""
        base = str(row.meta.get("BASE_DIR", "") or "").strip()
        here = posixpath.join(self.store_path, index_dir)
        if "\x00" in base or "\\" in base:
            raise UnsafePath(f"BASE_DIR {base!r} of the HDU index is not a usable path; refusing it")
        return posixpath.join(here, base) if base else here  # join keeps an absolute BASE_DIR as is

    def root_remote(self, spec: str) -> Remote:
        if spec not in self._remotes:
            self._remotes[spec] = open_remote(spec, self.options)
        return self._remotes[spec]

    def close(self) -> None:
        for remote in self._remotes.values():
            remote.close()


def _cell(row, name: str) -> str:
    try:
        value = row[name]
    except KeyError:
        raise BadInput(f"the HDU index has no {name} column") from None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip()


def _obs_id(row) -> str:
    try:
        return str(int(row["OBS_ID"]))
    except (KeyError, ValueError, TypeError):
        return "?"


def _inside(target: str, root: str) -> str | None:
    root = posixpath.normpath(root)
    if target == root:
        return None
    prefix = root if root.endswith("/") else root + "/"
    return target[len(prefix):] if target.startswith(prefix) else None


def split_location(spec: str, relative_to: str | None = None) -> tuple[str, str]:
    """(prefix, absolute POSIX path) of a location: ``/data/x`` -> ("", "/data/x");
    ``sftp://h/data`` -> ("sftp://h", "/data"); ``dropbox:/x`` -> ("dropbox:", "/x");
    ``host:dir`` -> ("host:", "/~/dir") so relative scp paths still normalize."""
    scheme, url = parse_location(spec)
    if scheme == "file" and not url.startswith("file://"):
        if relative_to:  # a bare path given for a remote store names a path on that host
            return relative_to, posixpath.normpath(url if url.startswith("/") else "/~/" + url)
        return "", posixpath.normpath(os.path.abspath(os.path.expanduser(url)))
    if url.startswith("file://"):
        return "", posixpath.normpath(os.path.abspath(url[len("file://"):]))
    if "://" in url:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}", posixpath.normpath(urllib.parse.unquote(parts.path) or "/")
    head, _, path = url.partition(":")
    path = path if path.startswith("/") else "/~/" + path
    return head + ":", posixpath.normpath(path)


def join_location(prefix: str, path: str) -> str:
    """Inverse of split_location."""
    if prefix.endswith(":") and "://" not in prefix and path.startswith("/~/"):
        return prefix + path[3:]
    return prefix + path
