"""Where a mirror reads and writes: checks of the two locations, the
destination lock, the filtered listing, and how an OS error is told."""

from __future__ import annotations

import os

from fitsync.errors import BadInput, NotFound
from fitsync.remotes.base import Remote


def check_locations(src: Remote, dst: Remote) -> None:
    """Refuse a missing source and a destination inside a local source."""
    if not src.exists():
        raise NotFound(f"source {src.url} does not exist; check the path")
    src_root, dst_root = src.local_root(), dst.local_root()
    if src_root is not None and dst_root is not None:
        # By device and inode, along every existing parent: symlinks and a
        # bind mount of the same directory count too.
        if _identity(src_root) in _lineage(dst_root):
            raise BadInput(f"destination {dst_root} is inside the source {src_root}; choose a destination outside it")
        if _identity(dst_root) is not None and _identity(dst_root) in _lineage(src_root):
            raise BadInput(f"source {src_root} is inside the destination {dst_root}: a mirror (and its --delete) "
                           "would write where it reads; choose a destination outside it")


def _identity(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _lineage(path: str) -> set:
    """(device, inode) of ``path`` (or, if it does not exist yet, of the
    directory that will hold it) and of every directory above it."""
    found = set()
    path = os.path.abspath(path)
    while True:
        identity = _identity(path)
        if identity is not None:
            found.add(identity)
        parent = os.path.dirname(path)
        if parent == path:
            return found
        path = parent


def prepare_local_destination(dst: Remote) -> None:
    """A staged destination's root and state directory, made if missing."""
    root = dst.local_root()
    try:
        os.makedirs(root, exist_ok=True)
        dst.state_dir()
    except PermissionError:
        raise BadInput(f"destination {root} is not writable; check its permissions") from None
    except FileExistsError:
        raise BadInput(f"destination {root} exists and is not a directory") from None
    if not os.access(root, os.W_OK):
        raise BadInput(f"destination {root} is not writable; check its permissions")


class RemoteLock:
    """The lock a remote backend offers (lock()/unlock()), as DirectoryLock is used."""

    def __init__(self, remote: Remote):
        self.remote = remote

    def acquire(self) -> None:
        self.remote.lock()

    def release(self) -> None:
        self.remote.unlock()


def describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        name = exc.filename2 or exc.filename  # for a rename, the destination
        where = f" ({name})" if name else ""
        return f"{exc.strerror or exc.__class__.__name__}{where}"
    return str(exc)


def new_directories(dst: Remote, paths) -> list[str]:
    """The directories a local destination lacks for ``paths`` (new files),
    parents first: rsync itemizes each as ``cd+++++++++ dir/``."""
    if dst.local_root() is None:
        return []
    wanted = {"/".join(path.split("/")[:depth]) for path in paths for depth in range(1, path.count("/") + 1)}
    return sorted(d for d in wanted if not os.path.isdir(os.path.join(dst.local_root(), *d.split("/"))))


def refuse_empty_source(src: Remote, doomed: list, result, options) -> list:
    """A source that lists nothing (an unmounted disk, a wrong path) would have
    --delete empty the destination: refused unless ``allow_empty_source``."""
    if doomed and result.files_total == 0 and not options.allow_empty_source:
        raise BadInput(f"the source {src.url} lists no files, so --delete would remove all {len(doomed)} "
                       "files of the destination; check the source (an empty mount point?), or pass "
                       "--allow-empty-source")
    return doomed
