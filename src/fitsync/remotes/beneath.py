"""Writing beneath a destination root through directory descriptors.

Every directory between the root and a file is opened relative to its parent
with ``O_NOFOLLOW | O_DIRECTORY``, and the file is renamed into place (or
unlinked) relative to the descriptor of its own directory. A directory that
someone swaps for a symlink while a mirror runs therefore stops the files
below it (``UnsafePath``) instead of leading them outside the tree: the check
is made by the kernel at the moment of use, not once at the first file.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod

from fitsync.errors import BadInput, UnsafePath

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NO_SPECIAL_BITS = ~(stat_mod.S_ISUID | stat_mod.S_ISGID)


def open_root(root: str) -> int:
    """The destination root itself (a symlink there is the user's choice, as in rsync)."""
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_beneath(root_fd: int, rel_dir: str, *, create: bool = False, like: str | None = None,
                 replace_files: bool = False) -> int:
    """A new descriptor of ``rel_dir`` ("a/b", "" for the root) under ``root_fd``.

    With ``create`` missing directories are made; each takes the permission
    bits (and, as root, the owner) of the matching directory above ``like``
    (the source directory of the file being placed). With ``replace_files`` a
    file standing where a directory belongs is removed (--delete).
    """
    parts = [p for p in rel_dir.split("/") if p] if rel_dir else []
    sources = _source_chain(like, len(parts))
    fd = os.dup(root_fd)
    try:
        for part, source in zip(parts, sources):
            child = _open_child(fd, part, rel_dir, create, source, replace_files)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_child(fd: int, part: str, rel_dir: str, create: bool, source: str | None, replace_files: bool) -> int:
    try:
        return os.open(part, DIRECTORY_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        # With O_DIRECTORY, Linux answers ENOTDIR (not ELOOP) for a symlink: look before judging.
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if exc.errno == errno.ELOOP or stat_mod.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
            raise UnsafePath(f"{rel_dir}: {part} is a symlink in the destination; refusing to write through it") \
                from None
        if not create:
            raise  # a file where a directory was: nothing below it to reach (unlink_beneath: already gone)
        if not replace_files:
            raise BadInput(f"{part} is a file in the destination but a directory in the source; "
                           "run with --delete to replace it") from None
        os.unlink(part, dir_fd=fd)
    try:
        os.mkdir(part, 0o700, dir_fd=fd)  # private until its bits are set below
    except FileExistsError:
        pass  # made by another worker meanwhile
    child = os.open(part, DIRECTORY_FLAGS, dir_fd=fd)
    _copy_directory_attributes(child, source)
    return child


def _source_chain(like: str | None, count: int) -> list:
    """The ``count`` source directories that end at ``like``, outermost first (Nones without one)."""
    if like is None:
        return [None] * count
    chain = []
    for _ in range(count):
        chain.append(like)
        like = os.path.dirname(like)
    return chain[::-1]


def _copy_directory_attributes(fd: int, source: str | None) -> None:
    if source is None:
        os.fchmod(fd, 0o777 & ~_umask())
        return
    st = os.stat(source)
    os.fchmod(fd, stat_mod.S_IMODE(st.st_mode) & NO_SPECIAL_BITS)
    if os.geteuid() == 0:
        os.fchown(fd, st.st_uid, st.st_gid)


def install(root_fd: int, tmp: tuple[int, str], rel: str, *, like: str | None, replace_other_types: bool,
            fsync: bool, inode: int) -> None:
    """Rename the verified temporary file ``tmp`` (its directory's descriptor
    and its name) to ``rel`` under the root, relative to the descriptor of
    its directory. A directory in its place is replaced only with
    ``replace_other_types``, once the rename can happen. What arrives must be
    the file ``inode``: anything swapped in for the temporary since it was
    verified is removed again and refused."""
    parent, _, name = rel.rpartition("/")
    tmp_dir, tmp_name = tmp
    pfd = open_beneath(root_fd, parent, create=True, like=os.path.dirname(like) if like else None,
                       replace_files=replace_other_types)
    try:
        old = _move_directory_aside(pfd, name, rel, replace_other_types)
        try:
            os.replace(tmp_name, name, src_dir_fd=tmp_dir, dst_dir_fd=pfd)
        except BaseException:
            if old is not None:
                os.rename(old, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            raise
        if old is not None:
            _remove_tree(pfd, old)
        if os.stat(name, dir_fd=pfd, follow_symlinks=False).st_ino != inode:
            os.unlink(name, dir_fd=pfd)
            raise UnsafePath(f"{rel}: its temporary file was replaced before it was renamed; refusing it")
        if fsync:
            os.fsync(pfd)
    finally:
        os.close(pfd)


def _move_directory_aside(pfd: int, name: str, rel: str, allowed: bool) -> str | None:
    """A real directory where the file goes: renamed aside (None if there is none)."""
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat_mod.S_ISDIR(st.st_mode):
        return None
    if not allowed:
        raise BadInput(f"{rel} is a directory in the destination but a file in the source; "
                       "run with --delete to replace it")
    aside = f".fitsync-replaced-{os.getpid()}-{name}"
    os.rename(name, aside, src_dir_fd=pfd, dst_dir_fd=pfd)
    return aside


def _remove_tree(pfd: int, name: str) -> None:
    """Remove the directory ``name`` under ``pfd`` and all below it, never following a link."""
    fd = os.open(name, DIRECTORY_FLAGS, dir_fd=pfd)
    try:
        for entry in os.listdir(fd):
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat_mod.S_ISDIR(st.st_mode):
                _remove_tree(fd, entry)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=pfd)


def open_file_beneath(root_fd: int, rel: str, flags: int) -> int:
    """A descriptor of the existing file ``rel`` (never through a symlink),
    for an update in place."""
    parent, _, name = rel.rpartition("/")
    pfd = open_beneath(root_fd, parent)
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    finally:
        os.close(pfd)


def unlink_beneath(root_fd: int, rel: str) -> None:
    """Unlink ``rel`` relative to its directory's descriptor; gone, or already
    replaced by an entry of the other type, is no error."""
    parent, _, name = rel.rpartition("/")
    try:
        pfd = open_beneath(root_fd, parent)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        os.unlink(name, dir_fd=pfd)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        pass
    finally:
        os.close(pfd)


def _umask() -> int:
    from fitsync.remotes.local import _umask as umask

    return umask()
