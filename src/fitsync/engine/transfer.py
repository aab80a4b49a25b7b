"""Per-file transfers: the only code that writes files into a destination.

Every strategy writes to a temporary file inside the destination's state
directory, verifies it, sets the mtime and renames it into place, so no
reader ever sees a partial file under its final name.

Pull into a local destination:
  * new file: streamed in chunks to ``.fitsync/partial/<key>.part`` with a
    journal of chunk hashes. An interrupted copy resumes after the last chunk
    whose hash still matches; the key is the source file's identity (path,
    size, mtime), so bytes of an older version are never reused.
  * changed file: the zsync direction. The source's block signature (computed
    locally, or by the remote itself) is matched against the old local copy;
    only unmatched ranges are read from the source.
Pushes to a remote destination are in engine/push.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass

import xxhash

from fitsync.errors import SourceChanged, TransferFailed, VerificationFailed
from fitsync.hashes import new_hasher
from fitsync.holes import HoleWriter
from fitsync.engine.plan import Item
from fitsync.remotes.base import Capability, Remote
from fitsync.remotes.local import LocalRemote, open_state_file, unlink_quietly
from fitsync.remotes.statefiles import truncate_state_file
from fitsync.threads import run_beside

log = logging.getLogger("fitsync.engine.transfer")

CHUNK = 8 << 20
JOURNAL_DIGEST = 16  # xxh3-128 per chunk


@dataclass
class Moved:
    """Bytes a transfer read from the source vs took from existing destination data."""

    transferred: int = 0
    reused: int = 0
    built: str | None = None  # how the file was written: engine.update names the ways


def identity_key(item: Item) -> str:
    """The name of the source version being copied: kept bytes are reused only for it."""
    import blake3

    src = item.src
    ident = f"{src.path}\0{src.size}\0{src.mtime!r}\0{sorted(src.hashes.items())}"
    return blake3.blake3(ident.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def source_identity(src: Remote, item: Item):
    """What identifies a local source file's content version, taken before it is
    read: inode and ctime catch a rewrite even when the writer restores the
    mtime (touch -r, tar x), which size and mtime alone would miss."""
    if Capability.LOCAL not in src.capabilities:
        return None
    try:
        st = os.stat(src.local_path(item.path))
    except FileNotFoundError:
        raise SourceChanged(f"{item.path} disappeared from the source; it will be retried") from None
    return (st.st_ino, st.st_ctime_ns, st.st_size, st.st_mtime_ns)


def _check_source_unchanged(src: Remote, item: Item, before=None) -> None:
    """A local source that changed while we read it must not be recorded as verified."""
    if Capability.LOCAL not in src.capabilities:
        return
    now = src.stat(item.path)
    changed = now.size != item.src.size or abs(now.mtime - item.src.mtime) > 1e-6
    if before is not None and source_identity(src, item) != before:
        changed = True
    if changed:
        raise SourceChanged(f"{item.path} changed while it was being copied; it will be retried")


def local_fits_state(local_path: str, name: str) -> tuple[str, str] | None:
    """(state, reason) of a local file that is FITS by ``name`` or by its first
    bytes (fitsaudit.quick_state), None for any other file; OSError when it
    cannot be opened. The checker is loaded only when a FITS file is met."""
    from fitsync.fitsnames import looks_like_fits

    with open(local_path, "rb") as f:
        head = f.read(16)
    if not looks_like_fits(name, head):
        return None
    from fitsync import fitsaudit

    return fitsaudit.quick_state(local_path)


def refuse_incomplete_fits(path_on_disk: str, item: Item) -> None:
    """A rebuilt FITS file whose structure is incomplete came from a source still
    being written: it must never replace the destination's copy."""
    _raise_if_incomplete(item, local_fits_state(path_on_disk, item.path))


def _raise_if_incomplete(item: Item, state: tuple[str, str] | None) -> None:
    """IncompleteFits when ``state`` (from fitsaudit, None for no FITS file) says so."""
    if state is None:
        return
    from fitsync.fits_stream import IncompleteFits
    from fitsync.fitsaudit import STATUS_INCOMPLETE

    if state[0] == STATUS_INCOMPLETE:
        raise IncompleteFits(f"{item.path} is incomplete (still being written?): {state[1]}")


def _trusted_digest(item: Item) -> str | None:
    return item.expected_digest or item.src.hashes.get("blake3")


# -- pull: new file with resumable partial -----------------------------------

def pull_new(src: Remote, dst: LocalRemote, item: Item, on_bytes=None, fits_check: bool = False) -> Moved:
    local = _local_source(src, item)
    if local is not None:
        from fitsync.engine.sparse import allocated_if_sparse

        allocated = allocated_if_sparse(local, item.src.size)
        if allocated is not None:
            return _pull_sparse(src, dst, item, local, allocated, on_bytes, fits_check)
    partial_dir = dst.state_dir("partial")
    key = identity_key(item)
    part = os.path.join(partial_dir, key + ".part")
    journal = os.path.join(partial_dir, key + ".journal")
    for name in (part, journal):
        _drop_unless_regular(name)
    resume_at = _validated_prefix(part, journal)
    moved = Moved(reused=resume_at)
    trusted = _trusted_digest(item)
    _check_room(dst, item, resume_at)
    direct = resume_at == 0 and _checkable_by_source(src, item, trusted)
    # The source's own digest of its data at rest, taken while the bytes travel.
    needed = trusted is None and (direct or resume_at and _hashes_own_data(src))
    at_source = run_beside(lambda: src.digest(item.path)) if needed else None
    received = None if resume_at else new_hasher("blake3")
    before = source_identity(src, item)
    # A file shorter than one chunk has nothing to resume from: no journal
    # (creating and removing one doubled the cost of copying small files).
    journalled = journal if item.src.size >= CHUNK else None
    try:
        written = _receive(src, item, part, journalled, resume_at, received, moved, on_bytes, direct)
    except BaseException:
        _trim_partial(part, journal)
        raise
    _check_source_unchanged(src, item, before)
    try:
        if at_source is not None:
            trusted = at_source()
        if written is not None:
            _verify_written(part, item, written, trusted)
        else:  # through the page cache: read back, against the bytes received if nothing better
            _verify_file(part, journalled, item, trusted or (received.hexdigest() if received else None))
    except VerificationFailed:
        # The journal vouched for bytes that were wrong when received: resuming
        # from them would fail forever. Start over next time.
        unlink_quietly(part)
        unlink_quietly(journal)
        raise
    if fits_check:
        refuse_incomplete_fits(part, item)
    dst.install(part, item.path, item.src.mtime, _local_source(src, item))
    unlink_quietly(journal)
    return moved


def _local_source(src: Remote, item: Item) -> str | None:
    """The OS path of a local source file (its permissions are copied), else None."""
    return src.local_path(item.path) if Capability.LOCAL in src.capabilities else None


def _checkable_by_source(src: Remote, item: Item, trusted: str | None) -> bool:
    """Whether a new file may be written around the page cache, where the
    bytes written are hashed instead of read back: it is large, and a BLAKE3
    of the source's data exists or the source computes one where the data is
    (a local file, an SSH host whose agent has blake3). Other listed hashes
    (Dropbox's, an HTTP server's) need the read-back check."""
    from fitsync.directio import MIN_SIZE

    if item.src.size < MIN_SIZE or any(algo != "blake3" for algo in item.src.hashes):
        return False
    if trusted is not None or Capability.LOCAL in src.capabilities:
        return True
    return "blake3" in src.remote_digests


def _hashes_own_data(src: Remote) -> bool:
    """Whether ``src`` computes BLAKE3 digests where its data is; a resumed
    copy is checked against that (the bytes received cover only its rest).
    A stock SSH host (hashlib alone) does not: asking it would stream the
    whole file back here to hash it."""
    if Capability.LOCAL in src.capabilities:
        return True
    return Capability.DIGEST in src.capabilities and "blake3" in src.remote_digests


def _receive(src: Remote, item: Item, part: str, journal: str | None, resume_at: int, received, moved: Moved,
             on_bytes, direct: bool = False) -> str | None:
    """Append the source's bytes from ``resume_at`` to the partial file,
    journalling each full chunk (in ``journal``, unless None).
    With ``direct`` a large file goes around the page cache (directio); the
    hex BLAKE3 of the bytes written is returned then, else None."""
    from fitsync.directio import open_direct

    mode = "r+b" if resume_at else "wb"
    with open_state_file(part, mode) as out, \
            (open_state_file(journal, mode) if journal else contextlib.nullcontext()) as jour:
        out.truncate(resume_at)
        out.seek(resume_at)
        if jour is not None:
            jour.truncate(resume_at // CHUNK * JOURNAL_DIGEST)
            jour.seek(0, os.SEEK_END)
        writer = open_direct(out.fileno(), item.src.size) if direct else None
        # A source that cannot say where its holes are: its zero runs become
        # holes (a local one keeps its own: engine/sparse.py).
        holes = Capability.LOCAL not in src.capabilities
        if writer is None:
            sparse = HoleWriter(out, resume_at) if holes else None
            _receive_into(sparse.write if sparse else out.write, out.flush, src, item, resume_at, received, jour,
                          moved, on_bytes)
            if sparse:
                sparse.finish()
            return None
        writer.holes = holes
        try:
            _receive_into(writer.write, None, src, item, resume_at, None, jour, moved, on_bytes)
        except BaseException:
            _keep_what_was_received(writer)
            raise
        return writer.finish()


def _receive_into(write, flush, src: Remote, item: Item, resume_at: int, received, jour, moved: Moved,
                  on_bytes) -> None:
    # A resumed run re-reads every journalled chunk (_validated_prefix) before
    # trusting it, so a journal ahead of the disk (bytes still in a buffer
    # when the process died) costs a re-read, never a stale byte.
    for chunk in _read_from(src, item.path, resume_at, item.src.size):
        write(chunk)
        if received is not None:
            received.update(chunk)
        if len(chunk) == CHUNK and jour is not None:
            if flush is not None:
                flush()
            jour.write(xxhash.xxh3_128_digest(chunk))
            # Out of Python's buffer at once: a killed process loses what is
            # in it, and a journal left empty would make the next run start over.
            jour.flush()
        moved.transferred += len(chunk)
        if on_bytes:
            on_bytes(len(chunk))


def _pull_sparse(src: Remote, dst: LocalRemote, item: Item, local: str, allocated: int, on_bytes,
                 fits_check: bool) -> Moved:
    """A new copy of a local sparse file, with its holes (fitsync.engine.sparse);
    verified like any other before it is renamed into place."""
    from fitsync.engine.sparse import copy_sparse, verify_sparse

    _check_room(dst, item, 0, needed=allocated)
    tmp = os.path.join(dst.state_dir("tmp"), identity_key(item) + ".sparse")
    before = source_identity(src, item)
    try:
        with open_state_file(tmp, "wb") as out:
            digest = copy_sparse(local, out, item.src.size, on_bytes)
        _check_source_unchanged(src, item, before)
        trusted = _trusted_digest(item)
        if trusted is not None and digest != trusted:
            raise VerificationFailed(f"{item.path}: the source does not match its expected digest")
        verify_sparse(tmp, item.src.size, digest, item.path)
        if fits_check:
            refuse_incomplete_fits(tmp, item)
        dst.install(tmp, item.path, item.src.mtime, local)
    except BaseException:
        unlink_quietly(tmp)
        raise
    return Moved(transferred=allocated)


def _check_room(dst: LocalRemote, item: Item, resume_at: int, needed: int | None = None) -> None:
    """Refuse a large file that cannot fit before writing any of it: a full disk
    would fail it anyway, after filling the disk for everyone else. ``needed``:
    what it will really take, when less than its size (a sparse file)."""
    if item.src.size < (64 << 20):
        return
    vfs = os.statvfs(dst.root)
    free = vfs.f_bavail * vfs.f_frsize
    needed = item.src.size - resume_at if needed is None else needed
    if needed > free:
        raise TransferFailed(f"{item.path}: needs {needed:,} bytes and the destination has {free:,} free; "
                             "free space and run again")


def _keep_what_was_received(writer) -> None:
    """After a lost connection, write out the buffered chunks so a resumed run
    keeps them; when the disk itself failed, just stop."""
    try:
        writer.finish()
    except BaseException:
        writer.abort()


def _verify_written(part: str, item: Item, written: str, expected: str) -> None:
    """A direct write's check: its size, and the BLAKE3 of the bytes handed to
    the kernel against the source's."""
    size = os.path.getsize(part)
    if size != item.src.size:
        raise VerificationFailed(f"{item.path}: wrote {size} bytes, expected {item.src.size}")
    if written != expected:
        raise VerificationFailed(f"{item.path}: BLAKE3 of the copy does not match the source")


def _trim_partial(part: str, journal: str) -> None:
    """After a failed receive keep only what the journal vouches for, so a
    resumed run never starts from unvouched bytes and an empty pair does not
    hold space a re-run needs."""
    try:
        vouched = os.path.getsize(journal) // JOURNAL_DIGEST * CHUNK
        vouched = min(vouched, os.path.getsize(part))
    except OSError:
        vouched = 0
    if vouched:
        truncate_state_file(part, vouched)
    else:
        unlink_quietly(part)
        unlink_quietly(journal)


def _read_from(src: Remote, path: str, offset: int, size: int):
    """Chunks of exactly CHUNK bytes (the last may be shorter) from ``offset``."""
    if offset >= size:
        return
    with src.open_read(path) as f:
        if offset:
            if hasattr(f, "seek") and f.seekable():
                f.seek(offset)
            else:
                yield from _range_chunks(src, path, offset, size)
                return
        pos = offset
        while pos < size:
            chunk = _read_exact(f, min(CHUNK, size - pos))
            if not chunk:
                raise SourceChanged(f"{path} is shorter than listed ({pos} of {size} bytes); it will be retried")
            pos += len(chunk)
            yield chunk


def _range_chunks(src: Remote, path: str, offset: int, size: int):
    ranges = [(o, min(CHUNK, size - o)) for o in range(offset, size, CHUNK)]
    yield from src.read_ranges(path, ranges)


def _read_exact(f, n: int) -> bytes:
    parts = []
    while n:
        data = f.read(n)
        if not data:
            break
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def _drop_unless_regular(path: str) -> None:
    """A partial download or journal that is not a plain file (a symlink
    planted in the state directory) is removed, never read or written through."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        log.warning("%s is not a regular file; removing it (a partial download is started over)", path)
        unlink_quietly(path)


def _validated_prefix(part: str, journal: str) -> int:
    """Length of the partial file's prefix whose chunk hashes match the journal."""
    try:
        with open_state_file(part, "rb") as p, open_state_file(journal, "rb") as j:
            hashes = j.read()
            good = 0
            for i in range(len(hashes) // JOURNAL_DIGEST):
                chunk = p.read(CHUNK)
                if len(chunk) < CHUNK or xxhash.xxh3_128_digest(chunk) != hashes[i * JOURNAL_DIGEST:(i + 1) * JOURNAL_DIGEST]:
                    break
                good += CHUNK
            return good
    except FileNotFoundError:
        return 0


def _verify_file(part: str, journal: str | None, item: Item, trusted: str | None) -> None:
    """Re-read what is on disk: size, journal chunk hashes, and every digest we trust."""
    size = os.path.getsize(part)
    if size != item.src.size:
        raise VerificationFailed(f"{item.path}: wrote {size} bytes, expected {item.src.size}")
    other = {algo: h for algo, h in item.src.hashes.items() if algo != "blake3"}
    hashers = {algo: new_hasher(algo) for algo in other}
    hashers["blake3"] = new_hasher("blake3")
    expected_chunks = b""
    if journal is not None:
        with open_state_file(journal, "rb") as j:
            expected_chunks = j.read()
    with open_state_file(part, "rb") as f:
        index = 0
        for chunk in iter(lambda: f.read(CHUNK), b""):
            for hasher in hashers.values():
                hasher.update(chunk)
            if len(chunk) == CHUNK and (index + 1) * JOURNAL_DIGEST <= len(expected_chunks):
                if xxhash.xxh3_128_digest(chunk) != expected_chunks[index * JOURNAL_DIGEST:(index + 1) * JOURNAL_DIGEST]:
                    raise VerificationFailed(f"{item.path}: data on disk differs from the data received")
            index += 1
    if trusted is not None and hashers["blake3"].hexdigest() != trusted:
        raise VerificationFailed(f"{item.path}: BLAKE3 of the copy does not match the source")
    for algo, value in other.items():
        if hashers[algo].hexdigest() != value:
            raise VerificationFailed(f"{item.path}: {algo} hash of the copy does not match the source's")


# -- pull: changed file by delta ---------------------------------------------

def split_ranges(ranges, limit: int) -> list[tuple[int, int]]:
    """(offset, length) ranges cut into pieces of at most ``limit`` bytes, in order."""
    pieces = []
    for offset, length in ranges:
        end = offset + length
        while offset < end:
            step = min(limit, end - offset)
            pieces.append((offset, step))
            offset += step
    return pieces

