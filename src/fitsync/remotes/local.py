"""Local paths and mounted file systems (NFS, sshfs)."""

from __future__ import annotations

import os
import stat as stat_mod
from typing import TYPE_CHECKING, BinaryIO, Iterable, Iterator

from fitsync.errors import BadInput, FitsyncError, NotFound, TransferFailed, UnsafePath, VerificationFailed
from fitsync.paths import join_under, safe_relpath
from fitsync.remotes.base import Capability, Entry, Remote

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.options import RemoteOptions

# fitsync's own state inside a destination root: lock, partial files.
STATE_DIR = ".fitsync"


class LocalRemote(Remote):
    scheme = "file"
    capabilities = frozenset(
        {Capability.READ_RANGE, Capability.WRITE, Capability.DELETE, Capability.LOCAL}
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
        self._followed: dict[str, str] = {}  # listed path -> real path, for files reached through a symlink

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
        entries = listing.entries(Entry)
        if self.follow_links and self.symlink_count:
            entries += self._followed_entries()
            entries.sort(key=lambda e: e.path)
        elif not listing.in_str_order:
            entries.sort(key=lambda e: e.path)  # a name that is not UTF-8: byte order is not str order
        return iter(entries)

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
        d = os.path.join(self.root, STATE_DIR, *parts)
        os.makedirs(d, exist_ok=True)
        return d

    def clear_state(self, sub: str) -> None:
        """Remove every file in one state subdirectory (caller holds the lock)."""
        directory = os.path.join(self.root, STATE_DIR, sub)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            unlink_quietly(os.path.join(directory, name))

    def tidy_state_dir(self) -> None:
        """Remove fitsync's state directory when nothing in it is worth keeping
        (no partial downloads to resume, no lock)."""
        state = os.path.join(self.root, STATE_DIR)
        for sub in ("tmp", "partial", ""):
            try:
                os.rmdir(os.path.join(state, sub) if sub else state)
            except OSError:
                pass

    def write_atomic(self, path, chunks: Iterable[bytes], *, mtime=None, expected_digest=None) -> None:
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
            finish_file(tmp, final, mtime)
        except BaseException:
            unlink_quietly(tmp)
            raise

    def delete(self, path: str) -> None:
        full = self.path_of(path)
        try:
            os.unlink(full)
        except FileNotFoundError:
            return
        _prune_empty_dirs(os.path.dirname(full), self.root)


def entry_of(row: tuple[str, int, int]) -> Entry:
    """The Entry of a listing row (path, size, mtime_ns)."""
    path, size, mtime_ns = row
    return Entry(path, size, mtime_ns / 1e9)


def _needs_check(path: str) -> bool:
    """Cheap pre-test: only names with unusual characters or great length go
    through the full safe_relpath check (a large tree lists tens of thousands)."""
    return len(path) > 200 or not path.isprintable() or "\\" in path


def finish_file(tmp: str, final: str, mtime: float | None) -> None:
    """Set the mtime of a verified temporary file and rename it into place."""
    if mtime is not None:
        ns = int(round(mtime * 1e9))
        os.utime(tmp, ns=(ns, ns))
    if os.path.isdir(final) and not os.path.islink(final):
        raise BadInput(f"{final} is a directory in the destination but a file in the source")
    try:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(tmp, final)
    except PermissionError:
        raise TransferFailed(f"cannot replace {final}: permission denied (is its directory read-only?)") from None


def unlink_quietly(path: str) -> None:
    """Remove a temporary file that may already be gone."""
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
