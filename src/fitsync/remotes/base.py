"""The one interface every storage backend implements.

A ``Remote`` is a tree of files under a root. It lists them, reads byte
ranges, and (if writable) writes whole files atomically: bytes go to a
temporary name, are verified, and only then renamed into place. Optional
capabilities let a backend do more on its own side (an SSH agent computing
block signatures or applying a patch); the sync engine asks for them by name
and falls back to plain reads and writes when a backend lacks them.

Modelled on fsspec's small backend surface and rclone's split between
listing and per-object operations.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from types import MappingProxyType
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator, Mapping

from fitsync.errors import FitsyncError

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.options import RemoteOptions
    from fitsync.signature import Signature

READ_CHUNK = 4 << 20


class Capability:
    """Names of optional abilities a backend declares in ``capabilities``."""

    READ_RANGE = "read_range"  # cheap random-access reads (Range, SFTP readv, pread)
    WRITE = "write"  # write_atomic works
    DELETE = "delete"  # delete works
    LOCAL = "local"  # files are on this machine: local_path() returns an OS path
    SIGNATURE = "signature"  # block_signature() is computed remotely, without moving data
    DIGEST = "digest"  # digest() is computed remotely, without moving data
    PATCH = "patch"  # apply_recipe() builds a new file remotely from a basis and literals
    LOCK = "lock"  # lock()/unlock() hold the destination against a second writer
    # A destination on this machine that stages its writes in a state directory
    # of its own (state_dir()): copies resume from partial files, updates in
    # place keep undo journals, its lock is a file there, and install() puts a
    # verified file into place. The engine pulls into such a destination and
    # pushes to every other.
    STAGED = "staged"
    LINKS = "links"  # symlinks are listed apart (symlinks()) and can be made in it
    # A copy interrupted by a kill, a lost connection or Ctrl-C keeps the bytes
    # it had written, and the next attempt at the same source version goes on
    # after them instead of starting again. A STAGED destination does it in
    # its own pulls; any other takes write_atomic(..., resume=Resume(...)).
    RESUMES = "resumes"


_NO_HASHES: Mapping[str, str] = MappingProxyType({})


class Entry:
    """One file in a listing. ``path`` is a validated relative POSIX path.

    A plain slotted class rather than a dataclass: a no-op mirror of a large
    tree builds tens of thousands of these, and this __init__ is the cheapest.
    """

    __slots__ = ("path", "size", "mtime", "hashes")

    def __init__(self, path: str, size: int, mtime: float, hashes: Mapping[str, str] = _NO_HASHES):
        self.path = path
        self.size = size
        self.mtime = mtime
        # Digests the backend knows without reading the data, e.g. {"dropbox": hex}.
        self.hashes = hashes

    def __eq__(self, other) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return (self.path, self.size, self.mtime) == (other.path, other.size, other.mtime)

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"Entry({self.path!r}, size={self.size}, mtime={self.mtime})"


class Resume:
    """How write_atomic may resume an upload (Capability.RESUMES).

    ``key`` names the source version (engine.transfer.identity_key): the kept
    bytes of one version are never reused for another. ``offset`` is what the
    destination said it kept (Remote.kept_bytes), and the chunks given to
    write_atomic start there. ``prefix()`` yields the source's bytes before
    ``offset`` (each call anew), so that the file's digest is still taken
    over all of it."""

    __slots__ = ("key", "offset", "prefix")

    def __init__(self, key: str, offset: int = 0, prefix: Callable[[], Iterable[bytes]] = tuple):
        self.key = key
        self.offset = offset
        self.prefix = prefix


class ReadOnlyRemote(FitsyncError):
    pass


class Remote(ABC):
    """A tree of files under a root. Paths are relative POSIX paths."""

    scheme: str = ""
    capabilities: frozenset = frozenset()
    # Digest algorithms whose values listings carry in Entry.hashes for free.
    listed_hashes: frozenset = frozenset()
    # Two mtimes closer than this are equal (SFTP and many servers keep whole seconds).
    mtime_resolution: float = 1e-6
    # Whether bulk_listing() works; the engine then compares two listings in bulk.
    has_bulk_listing: bool = False
    # Whether fitsync.scan may read files straight from ``root`` (a local tree
    # whose digest() is the plain one) to hash many small files in batches.
    hashes_in_bulk: bool = False
    # Digest algorithms digest() computes where the data is (with Capability.DIGEST).
    remote_digests: frozenset = frozenset()
    # (path, reason) of names the last listing left out because they are unsafe
    # or unreadable; reported by every command, never silently dropped.
    rejected_names: tuple = ()
    # A callable that stats a list of paths elsewhere (engine.cluster.StatOnCluster:
    # a cluster's workers) and returns their Entries in order. A backend whose
    # listing must stat each file (HTTP index pages: a HEAD each) hands those
    # stats to it when it is set; the others ignore it.
    stat_listed = None
    # Whether the listing is a release manifest's already (release.ReleaseRemote):
    # a source is wrapped in one at most once.
    release_aware: bool = False

    def __init__(self, url: str):
        self.url = url

    # -- construction -------------------------------------------------
    @classmethod
    def from_url(cls, url: str, options: "RemoteOptions") -> "Remote":
        """Build from a URL and the caller's options (credentials, trust, retries)."""
        return cls(url)  # type: ignore[call-arg]

    # -- listing ------------------------------------------------------
    @abstractmethod
    def list(self) -> Iterator[Entry]:
        """Yield every regular file under the root, recursively."""

    @abstractmethod
    def stat(self, path: str) -> Entry:
        """Return the entry for ``path``; raise NotFound if there is none."""

    def exists(self) -> bool:
        """True when the root itself exists."""
        return True

    def stat_many(self, paths: list, at_once: int | None = None) -> list:
        """``[self.stat(p) for p in paths]``; a backend may ask for up to ``at_once`` at a time."""
        return [self.stat(p) for p in paths]

    def remember(self, entries: Iterable[Entry]) -> None:
        """Entries the caller listed already, elsewhere (a cluster's client):
        a backend may take their sizes instead of asking the server again."""

    def bulk_listing(self):
        """The whole listing as a ``fitsync._walk.Listing``: records kept in C,
        sorted by name, compared with another listing by ``Listing.diff``
        without a Python object per unchanged file (the no-op mirror's path)."""
        raise NotImplementedError(f"{self.url} has no bulk listing")

    # -- reading ------------------------------------------------------
    @abstractmethod
    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes at ``offset`` (fewer only at end of file)."""

    def read_ranges(self, path: str, ranges: list[tuple[int, int]]) -> Iterator[bytes]:
        """Read many (offset, length) ranges, in order. Backends batch this
        (HTTP multi-range, SFTP readv); the default asks one at a time."""
        for offset, length in ranges:
            yield self.read_range(path, offset, length)

    def open_read(self, path: str) -> BinaryIO:
        """A sequential reader of the whole file."""
        return _RangeReader(self, path)

    def local_path(self, path: str) -> str | None:
        """The OS path of ``path`` when the file is on this machine, else None."""
        return None

    def local_root(self) -> str | None:
        """The OS path of the root when the tree is on this machine, else None."""
        return None

    def symlinks(self) -> list:
        """The symlinks the last listing passed over (Capability.LINKS), as
        fitsync.remotes.links.Link; a backend without LINKS has none to give."""
        return []

    def configure(self, *, follow_links: bool = False, replaces_other_types: bool = False,
                  fsync: bool = False) -> None:
        """What a run's options ask of the backend itself: list the files
        symlinks lead to (--copy-links), let a file replace a directory and
        the reverse (--delete), sync each file before its rename (--fsync).
        A backend takes those it can act on and ignores the rest."""

    def digest(self, path: str, algo: str = "blake3") -> str:
        """Hex digest of the file with ``algo`` (see fitsync.hashes). Backends
        with DIGEST compute it remotely; the default reads the whole file."""
        from fitsync.hashes import hash_stream

        with self.open_read(path) as f:
            return hash_stream(f, algo, READ_CHUNK)

    def block_signature(self, path: str, like: str | None = None, digest: bool = True) -> "Signature | None":
        """Block signature of the file (backends with SIGNATURE compute it remotely),
        or None when there is none to be had cheaply (e.g. a release manifest
        without blocks for this file); the engine then copies the whole file.
        ``like`` names a local file probably similar to this one (the old copy
        for a pull, the new file for a push): a backend may use it to send only
        the block sums that differ (signatures by difference). ``digest=False``
        allows leaving out the whole-file digest, which matching does not need
        (the basis side of a push); a backend may still include it."""
        from fitsync.signature import signature_of_remote

        return signature_of_remote(self, path)

    # -- writing ------------------------------------------------------
    def write_atomic(
        self,
        path: str,
        chunks: Iterable[bytes],
        *,
        mtime: float | None = None,
        expected_digest: str | None = None,
        resume: Resume | None = None,
    ) -> None:
        """Write ``chunks`` to a temporary name, verify the BLAKE3 digest if
        given, set mtime, and rename into place. Never leaves a partial file
        under ``path``. With ``resume`` (Capability.RESUMES), the temporary
        is named by ``resume.key``, ``chunks`` start at ``resume.offset``, and
        an interruption keeps what was written for the next attempt."""
        raise ReadOnlyRemote(f"{self.url} is read-only; it cannot be a destination")

    def kept_bytes(self, key: str, size: int) -> int:
        """How many leading bytes of the source version ``key`` (of ``size``
        bytes) an interrupted write_atomic kept (Capability.RESUMES); 0 when none."""
        return 0

    def delete(self, path: str) -> None:
        raise ReadOnlyRemote(f"{self.url} is read-only; cannot delete {path}")

    def verifies_patches_alone(self, digest_algo: str | None = None) -> bool:
        """Whether apply_recipe can check its result against a digest in
        ``digest_algo`` (None: any it knows) without the new file at hand, as
        a patch relayed from another remote requires."""
        return True

    def apply_recipe(self, path: str, recipe, literals: Iterable[bytes], *, mtime: float,
                     expected_digest: str) -> None:
        """Build ``path`` remotely from its current content and literal bytes
        (PATCH capability only), checked against the recipe's digest: the
        caller gives a recipe whose ``digest_algo`` the backend verifies
        alone (``verifies_patches_alone``)."""
        raise NotImplementedError(f"{self.url} cannot apply patches remotely")

    # -- staging (Capability.STAGED) ---------------------------------------
    def state_dir(self, *parts: str) -> str:
        """The destination's private state directory (or a subdirectory of it)."""
        raise NotImplementedError(f"{self.url} stages nothing on this machine")

    def clear_state(self, sub: str) -> None:
        """Empty one state subdirectory ("tmp", "partial"); the caller holds the lock."""
        raise NotImplementedError(f"{self.url} stages nothing on this machine")

    def tidy_state_dir(self) -> None:
        """Remove the state directory when nothing in it is worth keeping."""

    # -- lifetime -----------------------------------------------------
    def lock(self) -> None:
        """Hold the destination (Capability.LOCK); Locked when another run holds it."""
        raise NotImplementedError(f"{self.url} has no destination lock")

    def unlock(self) -> None:
        raise NotImplementedError(f"{self.url} has no destination lock")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class ResumableStream(io.RawIOBase):
    """A sequential reader of one remote file that can be moved with seek and
    resumes where it stands after a dropped connection (HTTP, Dropbox).
    Subclasses keep their position in ``_pos``, give the file's size by
    ``_end()`` and drop whatever is in flight in ``_moved(target)``."""

    _pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._end()}[whence]
        target = max(0, base + offset)
        if target != self._pos:
            self._moved(target)
            self._pos = target
        return self._pos

    def _end(self) -> int:
        raise NotImplementedError

    def _moved(self, target: int) -> None:
        """The position is about to become ``target``: drop the stream in flight."""


class _RangeReader(io.RawIOBase):
    """Sequential file object over ``Remote.read_range``."""

    def __init__(self, remote: Remote, path: str):
        self._remote = remote
        self._path = path
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._remote.read_range(self._path, self._pos, len(buffer))
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n
