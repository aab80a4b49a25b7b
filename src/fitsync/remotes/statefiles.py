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

The directory reached is held open (``_HELD``) for the files that follow: a
walk per operation cost a first copy of many small files ~35 system calls
each. A held descriptor is the directory that was checked, wherever it is
moved to and whatever is put in its place, so holding it is no weaker than
walking again. It is dropped when the directory turns out to be gone (a
state directory tidied away and made again) and walked afresh, and released
with its destination (``release``).
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
import threading

from fitsync.errors import BadInput, UnsafePath
from fitsync.remotes.beneath import open_beneath, open_root

STATE_DIR = ".fitsync"
_MARK = os.sep + STATE_DIR + os.sep
_HELD: dict[str, int] = {}  # state directory path -> a descriptor reached without following a link
_HELD_LOCK = threading.Lock()


def is_state_path(path: str) -> bool:
    return _MARK in path


def state_parent(path: str) -> tuple[int, str]:
    """``(directory descriptor, name)`` of the state file ``path``: the
    directory reached from the destination root without following a link
    (held for the next files; the caller does not close it)."""
    directory, name = os.path.split(path)
    return _held(directory), name


def _held(directory: str) -> int:
    with _HELD_LOCK:
        fd = _HELD.get(directory)
        if fd is None:
            fd = _HELD[directory] = _walk_to(directory)
        return fd


def _walk_to(directory: str) -> int:
    at = (directory + os.sep).rfind(_MARK)
    if at < 0:
        raise ValueError(f"{directory} is not a state directory")
    root = directory[:at] or os.sep
    root_fd = open_root(root)
    try:
        return open_beneath(root_fd, directory[at + 1:])
    except NotADirectoryError:
        raise UnsafePath(f"{directory} is not a directory; refusing to use it") from None
    finally:
        os.close(root_fd)


def _again_if_gone(path: str, operation):
    """``operation()`` on the held directory of ``path``; once more, walked
    afresh, if that directory was removed since it was reached."""
    try:
        return operation()
    except FileNotFoundError:
        if not _forget(os.path.dirname(path)):
            raise
        return operation()


def _forget(directory: str) -> bool:
    """Drop a held descriptor whose directory is gone; True if one was dropped."""
    with _HELD_LOCK:
        fd = _HELD.get(directory)
        if fd is None or os.fstat(fd).st_nlink > 0:
            return False
        del _HELD[directory]
    os.close(fd)
    return True


def release(root: str) -> None:
    """Close the held state directories of the destination ``root``."""
    prefix = os.path.join(root, STATE_DIR)
    with _HELD_LOCK:
        gone = [d for d in _HELD if d == prefix or d.startswith(prefix + os.sep)]
        fds = [_HELD.pop(d) for d in gone]
    for fd in fds:
        os.close(fd)


def open_state_fd(path: str, flags: int, mode: int = 0o600) -> int:
    """A descriptor of the state file ``path`` (never through a symlink, at
    any level below the root); a regular file, or BadInput."""
    return open_state_fd_and_stat(path, flags, mode)[0]


def open_state_fd_and_stat(path: str, flags: int, mode: int = 0o600) -> tuple:
    """open_state_fd, and the stat of what it opened."""
    def attempt() -> int:
        pfd, name = state_parent(path)
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=pfd)

    try:
        fd = _again_if_gone(path, attempt)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the name itself is a symlink
            raise UnsafePath(f"{path} is a symlink; refusing to use it") from None
        raise
    st = os.fstat(fd)
    if not stat_mod.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadInput(f"{path} is not a regular file; remove it and run again")
    return fd, st


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
    # No second walk when it is not there: a directory that is gone holds no file either.
    try:
        pfd, name = state_parent(path)
        os.unlink(name, dir_fd=pfd)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, UnsafePath):
        pass


def truncate_state_file(path: str, size: int) -> None:
    fd = open_state_fd(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)

