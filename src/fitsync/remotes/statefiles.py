"""Files of a local destination's state directory (``DST/.fitsync``): partial
downloads, their journals, delta temporaries.

Their names are known to anyone who can list the directory, and a run opens,
truncates, dates, chmods, renames and removes them many times. Each of these
reaches the file's directory from the destination root one directory at a
time without following a symlink (beneath.open_beneath), and touches the file
itself through a descriptor opened with ``O_NOFOLLOW`` or relative to that
directory. A state directory or a temporary swapped for a symlink during the
run then stops the file (UnsafePath) instead of leading a write, a truncation,
an attribute change, a rename or a delete outside the tree.
"""

from __future__ import annotations

import os
import stat as stat_mod
from contextlib import contextmanager

from fitsync.errors import BadInput, UnsafePath
from fitsync.remotes.beneath import open_beneath, open_root

STATE_DIR = ".fitsync"
_MARK = os.sep + STATE_DIR + os.sep


def is_state_path(path: str) -> bool:
    return _MARK in path


@contextmanager
def state_parent(path: str):
    """``(directory descriptor, name)`` of the state file ``path``: the
    directory reached from the destination root without following a link."""
    at = path.rfind(_MARK)
    if at < 0:
        raise ValueError(f"{path} is not in a state directory")
    root = path[:at] or os.sep
    rel_dir, _, name = path[at + 1:].rpartition(os.sep)
    root_fd = open_root(root)
    try:
        pfd = open_beneath(root_fd, rel_dir)
    except NotADirectoryError:
        raise UnsafePath(f"{os.path.join(root, rel_dir)} is not a directory; refusing to use it") from None
    finally:
        os.close(root_fd)
    try:
        yield pfd, name
    finally:
        os.close(pfd)


def open_state_fd(path: str, flags: int, mode: int = 0o600) -> int:
    """A descriptor of the state file ``path`` (never through a symlink, at
    any level below the root); a regular file, or BadInput."""
    with state_parent(path) as (pfd, name):
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=pfd)
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: the name itself is a symlink
                raise UnsafePath(f"{path} is a symlink; refusing to use it") from None
            raise
    if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInput(f"{path} is not a regular file; remove it and run again")
    return fd


def open_state_file(path: str, mode: str):
    """Open a file of the state directory; a new file ("wb") is made private
    (0600), and any entry already there under that name is replaced, never
    written through."""
    if mode == "wb":
        unlink_state_file(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    else:
        flags = {"rb": os.O_RDONLY, "r+b": os.O_RDWR}[mode]
    return os.fdopen(open_state_fd(path, flags), mode)


def unlink_state_file(path: str) -> None:
    """Remove a state file if it is there (a symlink is removed, not followed);
    nothing when its directory is gone or is no longer a real directory."""
    try:
        with state_parent(path) as (pfd, name):
            os.unlink(name, dir_fd=pfd)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, UnsafePath):
        pass


def truncate_state_file(path: str, size: int) -> None:
    fd = open_state_fd(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def rename_state_file(path: str, to_dir_fd: int, name: str) -> os.stat_result:
    """Rename the state file ``path`` to ``name`` in ``to_dir_fd``; the stat of
    what was renamed (taken through its descriptor before the rename)."""
    with state_parent(path) as (pfd, old):
        st = os.stat(old, dir_fd=pfd, follow_symlinks=False)
        if not stat_mod.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path} is not the regular file fitsync wrote; refusing to install it")
        os.replace(old, name, src_dir_fd=pfd, dst_dir_fd=to_dir_fd)
    return st
