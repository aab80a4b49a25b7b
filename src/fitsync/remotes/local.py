"""Local paths and mounted file systems (NFS, sshfs)."""

from __future__ import annotations

import os
import stat as stat_mod
import tempfile
from typing import BinaryIO, Iterable, Iterator

import blake3

from fitsync.hashes import file_digest
from fitsync.errors import BadInput, FitsyncError, NotFound, VerificationFailed
from fitsync.paths import join_under, safe_relpath
from fitsync.remotes.base import Capability, Entry, Remote

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

    @classmethod
    def from_url(cls, url: str, options: dict) -> "LocalRemote":
        return cls(url)

    # -- listing ------------------------------------------------------
    def exists(self) -> bool:
        return os.path.isdir(self.root)

    def list(self) -> Iterator[Entry]:
        if not os.path.isdir(self.root):
            raise NotFound(f"{self.root} does not exist or is not a directory")
        yield from self._walk(self.root, "")

    def _walk(self, directory: str, prefix: str) -> Iterator[Entry]:
        try:
            entries = list(os.scandir(directory))
        except PermissionError:
            raise FitsyncError(f"cannot read directory {directory}: permission denied") from None
        entries.sort(key=lambda e: e.name)
        for entry in entries:
            if not prefix and entry.name == STATE_DIR:
                continue
            rel = prefix + entry.name
            # Symlinks are not followed: a link must never lead a read outside the root.
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(entry.path, rel + "/")
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                yield Entry(rel, st.st_size, st.st_mtime_ns / 1e9)

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
        return join_under(self.root, path)

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
        return file_digest(self.path_of(path), algo)

    # -- writing ------------------------------------------------------
    def state_dir(self, *parts: str) -> str:
        d = os.path.join(self.root, STATE_DIR, *parts)
        os.makedirs(d, exist_ok=True)
        return d

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
            _unlink_quietly(tmp)
            raise

    def delete(self, path: str) -> None:
        full = self.path_of(path)
        try:
            os.unlink(full)
        except FileNotFoundError:
            return
        _prune_empty_dirs(os.path.dirname(full), self.root)


def finish_file(tmp: str, final: str, mtime: float | None) -> None:
    """Set the mtime of a verified temporary file and rename it into place."""
    if mtime is not None:
        ns = int(round(mtime * 1e9))
        os.utime(tmp, ns=(ns, ns))
    if os.path.isdir(final) and not os.path.islink(final):
        raise BadInput(f"{final} is a directory in the destination but a file in the source")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.replace(tmp, final)


def _unlink_quietly(path: str) -> None:
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
