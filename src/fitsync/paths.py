"""Validation of relative paths that come from outside: listings, manifests, indexes.

Every path a remote, manifest or index hands us goes through ``safe_relpath``
before it is joined to a root, so nothing is ever read or written outside it.
"""

import os
import posixpath

from fitsync.errors import UnsafePath

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


def safe_relpath(path: str, what: str = "path") -> str:
    """Return ``path`` as a normalised relative POSIX path, or raise UnsafePath.

    Refused: empty paths, absolute paths, ``..`` components, NUL, newlines,
    backslashes (a Windows separator that would be a name on POSIX but an
    escape elsewhere), and over-long names.
    """
    if _plainly_safe(path):
        return path
    if not isinstance(path, str) or path in ("", "."):
        raise UnsafePath(f"{what} {path!r} is empty; fix the listing or manifest")
    if "\x00" in path or "\n" in path or "\r" in path:
        raise UnsafePath(f"{what} {path!r} contains a NUL or newline; refusing it")
    if "\\" in path:
        raise UnsafePath(f"{what} {path!r} contains a backslash; refusing it")
    if path.startswith("/"):
        raise UnsafePath(f"{what} {path!r} is absolute; only paths relative to the root are allowed")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        raise UnsafePath(f"{what} {path!r} names the root itself")
    if ".." in parts:
        raise UnsafePath(f"{what} {path!r} contains '..' and would escape the root; refusing it")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise UnsafePath(f"{what} {path[:60]!r}... is longer than {MAX_PATH_BYTES} bytes")
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise UnsafePath(f"{what} {path!r} has a name longer than {MAX_NAME_BYTES} bytes")
    return posixpath.join(*parts)


def _plainly_safe(path) -> bool:
    """The common case, decided quickly (listings pass tens of thousands of names):
    printable, no backslash, relative, and every component a short ordinary name."""
    if not isinstance(path, str) or not path or len(path) > 1024 or path[0] == "/":
        return False
    if not path.isprintable() or "\\" in path:
        return False
    parts = path.split("/")
    # 63 characters are at most 252 UTF-8 bytes: always under the 255-byte name limit.
    return "" not in parts and "." not in parts and ".." not in parts and max(map(len, parts)) < 64


def join_under(root: str, relpath: str) -> str:
    """Join a validated relative path to a local root, re-checking containment."""
    rel = safe_relpath(relpath)
    full = os.path.join(root, *rel.split("/"))
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(os.path.dirname(full))
    if real_parent != real_root and not real_parent.startswith(real_root + os.sep):
        raise UnsafePath(f"path {relpath!r} resolves outside {root} through a symlink; refusing it")
    return full


def shown(path: str) -> str:
    """A path as printed or logged: a name with a newline or other control
    character is escaped, so it can never forge a line of output."""
    return path if path.isprintable() else repr(path)[1:-1]
