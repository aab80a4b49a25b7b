"""Local paths and mounted file systems (NFS, sshfs)."""

from __future__ import annotations

import os
import stat as stat_mod
import threading
from typing import TYPE_CHECKING, BinaryIO, Iterable, Iterator

from fitsync.errors import BadInput, FitsyncError, NotFound, TransferFailed, UnsafePath, VerificationFailed
from fitsync.paths import join_under, safe_relpath
from fitsync.remotes.base import Capability, Entry, Remote
# open_state_file stays importable from here, where the engine has always taken it.
from fitsync.remotes.statefiles import STATE_DIR, is_state_path, open_state_file, unlink_state_file  # noqa: F401
from fitsync.remotes.statefiles import release as release_state_dirs

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.options import RemoteOptions


class LocalRemote(Remote):
    scheme = "file"
    capabilities = frozenset(
        {Capability.READ_RANGE, Capability.WRITE, Capability.DELETE, Capability.LOCAL, Capability.STAGED,
         Capability.LINKS, Capability.RESUMES}  # it resumes in the engine's staged pulls (engine/transfer.py)
    )

    def __init__(self, url: str):
        super().__init__(url)
        path = url[len("file://"):] if url.startswith("file://") else url
        self.root = os.path.abspath(os.path.expanduser(path))
        # Parent directories already checked not to lead outside the root through
        # a symlink: realpath() costs a syscall per component, too much per file.
        self._safe_dirs: set[str] = set()
        # Names listed on disk that fitsync must not use (newline, backslash...):
        # reported as failed files, never silently skipped.
        self.rejected_names: list[tuple[str, str]] = []
        self.symlink_count = 0  # symlinks the last listing passed over
        self.follow_links = False  # --copy-links: list the files symlinks lead to
        self.replaces_other_types = False  # --delete: a file may replace a directory, and the reverse
        self.fsync = False  # --fsync: each file reaches the disk before its rename, its directory entry after
        self._followed: dict[str, str] = {}  # listed path -> real path, for files reached through a symlink
        self._root_fd: int | None = None  # held while writing: files are placed relative to it
        self._root_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, options: "RemoteOptions") -> "LocalRemote":
        return cls(url)

    @classmethod
    def from_config(cls, name: str, conf: dict, path: str, options: "RemoteOptions") -> "LocalRemote":
        """A ``type = "file"`` remote: a directory on this machine named once (``path``)."""
        base = conf.get("path")
        if not base:
            raise BadInput(f"remote {name!r} in the remotes config has no path; add path = \"/data/...\"")
        inner = path.strip("/")
        return cls(os.path.join(os.path.expanduser(base), *safe_relpath(inner).split("/")) if inner else base)

    # -- listing ------------------------------------------------------
    def exists(self) -> bool:
        return os.path.isdir(self.root)

    def list(self) -> Iterator[Entry]:
        listing = self._scan(two_threads=True)  # a tree listed alone (manifest, audit): both cores
        # Symlinks are never listed (the walker does not follow them), so no
        # read can be led outside the root.
        if self.follow_links and self.symlink_count:
            entries = listing.entries(Entry) + self._followed_entries()
            entries.sort(key=lambda e: e.path)
            return iter(entries)
        if not listing.in_str_order:  # a name that is not UTF-8: byte order is not str order
            return iter(sorted(listing.entries(Entry), key=lambda e: e.path))
        return _entries_in_chunks(listing)

    def local_root(self) -> str:
        return self.root

    def configure(self, *, follow_links: bool = False, replaces_other_types: bool = False,
                  fsync: bool = False) -> None:
        self.follow_links = follow_links
        self.replaces_other_types = replaces_other_types
        self.fsync = fsync

    def symlinks(self) -> list:
        """The symlinks of the tree (fitsync.remotes.links.Link), after a listing."""
        if not self.symlink_count:
            return []
        from fitsync.remotes.links import find_links

        return find_links(self.root, STATE_DIR)

    def _followed_entries(self) -> list[Entry]:
        from fitsync.remotes.links import followed_files

        self._followed = followed_files(self.root, self.symlinks())
        entries = []
        for rel, real in self._followed.items():
            try:
                st = os.stat(real)
                entries.append(Entry(safe_relpath(rel), st.st_size, st.st_mtime_ns / 1e9))
            except (OSError, UnsafePath):
                continue
        return entries

    @property
    def has_bulk_listing(self) -> bool:
        # Not for a subclass that lists differently: its list() is the truth.
        return type(self).list is LocalRemote.list

    @property
    def hashes_in_bulk(self) -> bool:
        # Not for a subclass that reads or hashes differently (a fault injector).
        return type(self).digest is LocalRemote.digest and type(self).open_read is LocalRemote.open_read

    def bulk_listing(self):
        if not self.exists():
            from fitsync._walk import Listing

            return Listing()  # a destination not made yet
        return self._scan()  # the mirror lists its two trees at once, one thread each

    def _scan(self, two_threads: bool = False):
        from fitsync._walk import scan

        if not os.path.isdir(self.root):
            raise NotFound(f"{self.root} does not exist or is not a directory")
        try:
            listing, error = scan(self.root, STATE_DIR, two_threads)
        except OSError as exc:
            raise FitsyncError(f"cannot read directory {self.root}: {exc.strerror}") from None
        self.symlink_count = listing.links
        rejected = []
        if error is not None:
            # The walker went on past it; name every directory it could not
            # read, so that each is a failure of the run (exit 3) and nothing
            # under it is deleted from a destination, while the rest is mirrored.
            for where, errno_value in unreadable_directories(self.root, error):
                rejected.append((where + "/", f"cannot read directory: {os.strerror(errno_value)}; "
                                              "fix its permissions or exclude it"))
        # The walker flags every name that is not plain printable ASCII of
        # ordinary length; only those go through the full checks.
        for index, path in listing.suspicious():
            if _needs_check(path):
                try:
                    safe_relpath(path)
                except UnsafePath as exc:
                    rejected.append((path, str(exc)))
                    listing.exclude(index)
        rejected.sort()
        self.rejected_names = rejected
        return listing

    def stat(self, path: str) -> Entry:
        full = self.path_of(path)
        try:
            st = os.stat(full, follow_symlinks=False)
        except FileNotFoundError:
            raise NotFound(f"{full} does not exist") from None
        if not stat_mod.S_ISREG(st.st_mode):
            raise NotFound(f"{full} is not a regular file")
        return Entry(safe_relpath(path), st.st_size, st.st_mtime_ns / 1e9)

    def path_of(self, path: str) -> str:
        """The OS path of a relative path, refusing anything that would leave the
        root (but a file --copy-links reached through a symlink)."""
        if self._followed and path in self._followed:
            return self._followed[path]
        rel = safe_relpath(path)
        parent = rel.rpartition("/")[0]
        if parent in self._safe_dirs:
            return os.path.join(self.root, rel)
        full = join_under(self.root, rel)
        self._safe_dirs.add(parent)
        return full

    def local_path(self, path: str) -> str:
        return self.path_of(path)

    # -- reading ------------------------------------------------------
    def read_range(self, path: str, offset: int, length: int) -> bytes:
        with open(self.path_of(path), "rb") as f:
            return os.pread(f.fileno(), length, offset)

    def read_ranges(self, path: str, ranges) -> Iterator[bytes]:
        with open(self.path_of(path), "rb") as f:
            for offset, length in ranges:
                yield os.pread(f.fileno(), length, offset)

    def open_read(self, path: str) -> BinaryIO:
        return open(self.path_of(path), "rb")

    def digest(self, path: str, algo: str = "blake3") -> str:
        from fitsync.hashes import file_digest

        return file_digest(self.path_of(path), algo)

    # -- writing ------------------------------------------------------
    def state_dir(self, *parts: str) -> str:
        """DST/.fitsync (or a subdirectory), made private if missing. Each level
        must be a real directory of this user's: a symlink planted there would
        lead temporary files, partial downloads and their cleanup elsewhere."""
        d = os.path.join(self.root, STATE_DIR)
        for part in ("", *parts):
            d = os.path.join(d, part) if part else d
            private_directory(d)
        return d

    def clear_state(self, sub: str) -> None:
        """Remove every file in one state subdirectory (caller holds the lock),
        through a descriptor of that directory opened without following a link."""
        directory = os.path.join(self.root, STATE_DIR, sub)
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BadInput(f"{directory} is not a directory fitsync made ({exc.strerror}); remove it") from None
        try:
            for name in os.listdir(fd):
                try:
                    os.unlink(name, dir_fd=fd)
                except (FileNotFoundError, IsADirectoryError, PermissionError):
                    pass
        finally:
            os.close(fd)

    def tidy_state_dir(self) -> None:
        """Remove fitsync's state directory when nothing in it is worth keeping
        (no partial downloads to resume, no lock)."""
        state = os.path.join(self.root, STATE_DIR)
        release_state_dirs(self.root)
        for sub in ("tmp", "partial", "inplace", ""):
            try:
                os.rmdir(os.path.join(state, sub) if sub else state)
            except OSError:
                pass

    def install(self, tmp: str, path: str, mtime: float | None, source: str | None = None,
                mode: int | None = None) -> None:
        """Give the verified temporary file ``tmp`` its mtime and permissions
        and rename it to ``path`` through directory descriptors (see
        fitsync.remotes.beneath): a directory swapped for a symlink during the
        run cannot lead it outside the tree."""
        from fitsync.remotes.beneath import install
        from fitsync.remotes.statefiles import open_state_fd_and_stat, state_parent

        # The temporary's attributes are set through one descriptor of it, and
        # it is renamed from its own directory's descriptor: a temporary or a
        # state directory swapped for a link meanwhile takes none of them
        # outside the tree. A temporary with a second link is not ours.
        final = os.path.join(self.root, *safe_relpath(path).split("/"))
        fd, st = open_state_fd_and_stat(tmp, os.O_RDONLY)
        try:
            if st.st_nlink != 1:
                raise UnsafePath(f"{tmp} has {st.st_nlink} links, not the one fitsync made; refusing to install it")
            if mtime is not None:
                ns = int(round(mtime * 1e9))
                os.utime(fd, ns=(ns, ns))
            if mode is None:
                _copy_attributes(fd, source, final)
            else:
                os.fchmod(fd, mode)
            if self.fsync:
                os.fsync(fd)
            install(self.root_fd(), state_parent(tmp), safe_relpath(path), like=source,
                    replace_other_types=self.replaces_other_types, fsync=self.fsync, inode=st.st_ino)
        except PermissionError:
            raise TransferFailed(f"cannot replace {final}: permission denied (is its directory read-only?)") from None
        finally:
            os.close(fd)

    def root_fd(self) -> int:
        with self._root_lock:
            if self._root_fd is None:
                from fitsync.remotes.beneath import open_root

                os.makedirs(self.root, exist_ok=True)
                self._root_fd = open_root(self.root)
            return self._root_fd

    def close(self) -> None:
        release_state_dirs(self.root)
        with self._root_lock:
            if self._root_fd is not None:
                os.close(self._root_fd)
                self._root_fd = None

    def write_atomic(self, path, chunks: Iterable[bytes], *, mtime=None, expected_digest=None,
                     resume=None) -> None:  # kept_bytes() is always 0 here: ``resume`` changes nothing
        import tempfile

        import blake3

        final = self.path_of(path)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="write-", dir=self.state_dir("tmp"))
        try:
            hasher = blake3.blake3()
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    out.write(chunk)
            if expected_digest is not None and hasher.hexdigest() != expected_digest:
                raise VerificationFailed(f"{path}: written bytes do not match the source digest")
            self.install(tmp, path, mtime)
        except BaseException:
            unlink_quietly(tmp)
            raise

    def delete(self, path: str) -> None:
        from fitsync.remotes.beneath import unlink_beneath

        full = self.path_of(path)
        unlink_beneath(self.root_fd(), safe_relpath(path))  # relative to its directory's descriptor
        _prune_empty_dirs(os.path.dirname(full), self.root)


def _entries_in_chunks(listing, chunk: int = 4096) -> Iterator[Entry]:
    """The listing's files as Entries made a chunk at a time: a walk over a
    tree of 10^7 files holds the compact C records (~80 bytes a file), not
    ten million Python objects as well (~170 bytes each)."""
    for start in range(0, listing.records, chunk):
        yield from listing.entries(Entry, start, start + chunk)


def entry_of(row: tuple[str, int, int]) -> Entry:
    """The Entry of a listing row (path, size, mtime_ns)."""
    path, size, mtime_ns = row
    return Entry(path, size, mtime_ns / 1e9)


def _needs_check(path: str) -> bool:
    """Cheap pre-test: only names with unusual characters or great length go
    through the full safe_relpath check (a large tree lists tens of thousands)."""
    return len(path) > 200 or not path.isprintable() or "\\" in path


def _copy_attributes(fd: int, source: str | None, final: str) -> None:
    """Permission bits (never setuid or setgid) and, as root, ownership of the
    temporary open as ``fd``."""
    try:
        st = os.stat(source) if source else os.stat(final)
        mode = stat_mod.S_IMODE(st.st_mode) & ~(stat_mod.S_ISUID | stat_mod.S_ISGID)
    except (FileNotFoundError, TypeError):
        st, mode = None, 0o666 & ~_umask()
    os.fchmod(fd, mode)
    if st is not None and source and os.geteuid() == 0:
        os.fchown(fd, st.st_uid, st.st_gid)


def _umask() -> int:
    """This process's umask, read without changing it (threads may be creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def private_directory(path: str) -> None:
    """Make ``path`` (mode 0700) or check that it is a real directory owned by
    this user; refuse a symlink, another kind of file, or another user's."""
    try:
        st = os.lstat(path)  # the common case: it exists (one system call per level and file)
    except FileNotFoundError:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except PermissionError:
            raise BadInput(f"cannot create {path}: permission denied; check the destination's permissions") from None
        st = os.lstat(path)
    if stat_mod.S_ISLNK(st.st_mode) or not stat_mod.S_ISDIR(st.st_mode):
        kind = "a symlink" if stat_mod.S_ISLNK(st.st_mode) else "not a directory"
        raise BadInput(f"{path} is {kind}, not the state directory fitsync makes; remove it and run again")
    if st.st_uid != os.geteuid():
        raise BadInput(f"{path} belongs to user {st.st_uid}, not to this user; refusing to use it")


def unlink_quietly(path: str) -> None:
    """Remove a temporary file that may already be gone (one in the state
    directory through its directory's descriptor: see remotes.statefiles)."""
    if is_state_path(path):
        unlink_state_file(path)
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _prune_empty_dirs(directory: str, root: str) -> None:
    root = os.path.abspath(root)
    directory = os.path.abspath(directory)
    while directory != root and directory.startswith(root + os.sep):
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)


def unreadable_directories(root: str, first: tuple) -> list:
    """(relative path, errno) of each directory under ``root`` that cannot be
    listed; ``first`` is the (errno, path) the walker met first. Only called
    when the walker met one, so the slower Python walk is no cost otherwise."""
    found = {}

    def note(exc: OSError) -> None:
        if exc.filename:
            found[os.path.relpath(exc.filename, root).replace(os.sep, "/")] = exc.errno or first[0]

    for top, dirs, _files in os.walk(root, onerror=note):
        if top == root and STATE_DIR in dirs:
            dirs.remove(STATE_DIR)
    found.setdefault(first[1].rstrip("/"), first[0])
    return sorted(found.items())
