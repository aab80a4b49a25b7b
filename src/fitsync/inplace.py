"""Updating a file in place, crash-safe, with an undo journal.

``--inplace`` writes only the changed ranges into the existing file: a
header edit of a 2 GB FITS file writes a few kilobytes and no second copy
is made. Before any byte is overwritten, its old value is appended to a
journal in ``DST/.fitsync/inplace/`` and the journal is synced. So after a
crash or a kill at any point the file can be rolled back to its old
version (or, once every write is on disk and the journal says so, kept as
the new one): ``recover`` does it, and every mirror run calls it first.

The journal (one per file being updated; docs/reliability.md):

- a header: ``MAGIC``, its length, JSON (the file's path under the root,
  its device and inode, old size, mode and mtime, the new file's size, mode,
  mtime and digest), and an XXH3-128 of the JSON;
- records: offset, length, XXH3-128 of the three, then the old bytes. A
  record whose check fails is a torn last record: it was never synced, so
  the write it announces never started;
- a last record of offset ``DONE``: every new byte is on disk (synced).

Records never overlap: each range of the file is written at most once.
Data of the old file moved elsewhere in the new one is read through
``OldView``, which sees the journal where the file was already overwritten.
"""

from __future__ import annotations

import bisect
import json
import mmap
import os
import struct

import xxhash

from fitsync.delta import BASIS, Recipe, SourceBytes
from fitsync.errors import BadInput, TransferFailed, VerificationFailed

MAGIC = b"FITSYNC-INPLACE-1\n"
_LEN = struct.Struct("<I")
_RECORD = struct.Struct("<QQ16s")
DONE = (1 << 64) - 1
PIECE = 8 << 20  # the most new bytes of one record
BATCH = 32 << 20  # old bytes journalled (and synced once) before their ranges are written


class JournalCorrupt(Exception):
    pass


def _record_check(offset: int, length: int, data) -> bytes:
    h = xxhash.xxh3_128()
    h.update(struct.pack("<QQ", offset, length))
    h.update(data)
    return h.digest()


# -- writing a journal ---------------------------------------------------------

class Journal:
    """The undo journal of one in-place update (append-only, synced)."""

    def __init__(self, path: str, header: dict):
        self.path = path
        self.header = header
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        body = json.dumps(header, sort_keys=True).encode()
        os.write(self._fd, MAGIC + _LEN.pack(len(body)) + body + xxhash.xxh3_128_digest(body))
        os.fsync(self._fd)
        _sync_directory(os.path.dirname(path))  # the journal exists before any byte is overwritten

    def add(self, offset: int, data) -> None:
        os.write(self._fd, _RECORD.pack(offset, len(data), _record_check(offset, len(data), data)))
        _write_all(self._fd, data)

    def end(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_END)

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def mark_done(self) -> None:
        os.write(self._fd, _RECORD.pack(DONE, 0, _record_check(DONE, 0, b"")))
        os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _sync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OldView:
    """The old file's bytes while it is being overwritten: the journal's copy
    of every range already written, the file itself elsewhere."""

    def __init__(self, fd: int, old_size: int, journal_path: str):
        self._fd = fd
        self.old_size = old_size
        self._journal_path = journal_path
        self._starts: list = []  # overwritten ranges, ascending: start offsets
        self._ranges: list = []  # (start, length, position of the old bytes in the journal)
        self._jfd = -1

    def saved(self, start: int, length: int, journal_pos: int) -> None:
        self._starts.append(start)
        self._ranges.append((start, length, journal_pos))

    def read(self, offset: int, length: int) -> bytes:
        parts = []
        end = offset + length
        while offset < end:
            i = bisect.bisect_right(self._starts, offset) - 1
            if i >= 0 and offset < self._ranges[i][0] + self._ranges[i][1]:
                start, n, pos = self._ranges[i]
                step = min(end, start + n) - offset
                parts.append(os.pread(self._journal_fd(), step, pos + offset - start))
            else:
                following = self._starts[i + 1] if i + 1 < len(self._starts) else end
                step = min(end, following) - offset
                parts.append(os.pread(self._fd, step, offset))
            if len(parts[-1]) != step:
                raise TransferFailed("the file being updated in place is shorter than it was; another program changed it")
            offset += step
        return b"".join(parts)

    def _journal_fd(self) -> int:
        if self._jfd < 0:
            self._jfd = os.open(self._journal_path, os.O_RDONLY | os.O_CLOEXEC)
        return self._jfd

    def close(self) -> None:
        if self._jfd >= 0:
            os.close(self._jfd)


def changed_ranges(recipe: Recipe) -> list:
    """(target offset, kind, offset, length) of every op that changes the
    file: all but the old bytes that stay where they are. Split into
    pieces of at most PIECE bytes."""
    out, at = [], 0
    for kind, offset, length in recipe.ops:
        if not (kind == BASIS and offset == at):
            done = 0
            while done < length:
                step = min(PIECE, length - done)
                out.append((at + done, kind, offset + done, step))
                done += step
        at += length
    return out


def write_in_place(fd: int, recipe: Recipe, read_source, journal: Journal, old_size: int) -> int:
    """Apply ``recipe`` to the file at ``fd`` (the old version, ``old_size``
    bytes), journalling each range's old bytes before it is overwritten.
    Returns the bytes written into the file. The journal is marked done
    once the file is synced; the caller verifies, then drops the journal."""
    source = SourceBytes(read_source(recipe.source_ranges()) if recipe.source_bytes else ())
    view = OldView(fd, old_size, journal.path)
    journal_pos = journal.end()
    written = 0
    try:
        pending: list = []
        pending_bytes = 0
        for at, kind, offset, length in changed_ranges(recipe):
            data = view.read(offset, length) if kind == BASIS else b"".join(bytes(p) for p in source.take(length))
            pending.append((at, data))
            pending_bytes += length
            if pending_bytes >= BATCH:
                journal_pos = _journal_and_write(fd, pending, journal, view, journal_pos, old_size)
                written += pending_bytes
                pending, pending_bytes = [], 0
        source.finish()
        if recipe.target_size < old_size:
            pending.append((recipe.target_size, None))  # the cut-off tail: journalled, then truncated
        journal_pos = _journal_and_write(fd, pending, journal, view, journal_pos, old_size)
        written += pending_bytes
        os.ftruncate(fd, recipe.target_size)
        os.fsync(fd)
        journal.mark_done()
    finally:
        view.close()
    return written


def _journal_and_write(fd: int, pending: list, journal: Journal, view: OldView, journal_pos: int,
                       old_size: int) -> int:
    """Journal the old bytes under every pending range, sync, then write the new ones."""
    if not pending:
        return journal_pos
    for at, data in pending:
        end = old_size if data is None else min(old_size, at + len(data))
        old = os.pread(fd, max(0, end - at), at) if at < old_size else b""
        if old:
            journal.add(at, old)
            journal_pos += _RECORD.size
            view.saved(at, len(old), journal_pos)
            journal_pos += len(old)
    journal.sync()
    for at, data in pending:
        if data is not None:
            _pwrite_all(fd, data, at)
    return journal_pos


def file_digest_of(fd: int, size: int, hasher) -> str:
    """Hex digest of the first ``size`` bytes of ``fd`` read back."""
    if size:
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
            hasher.update(view)
    return hasher.hexdigest()


# -- reading a journal back ----------------------------------------------------

def read_journal(path: str) -> tuple[dict, list, bool]:
    """(header, [(offset, old bytes)], done) of a journal; the records end at
    the first torn one. JournalCorrupt when even the header is torn (then
    nothing was overwritten yet)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LEN.size:
        raise JournalCorrupt(path)
    pos = len(MAGIC)
    (n,) = _LEN.unpack_from(data, pos)
    pos += _LEN.size
    body, check = data[pos:pos + n], data[pos + n:pos + n + 16]
    if len(body) != n or xxhash.xxh3_128_digest(body) != check:
        raise JournalCorrupt(path)
    header = json.loads(body)
    pos += n + 16
    records, done = [], False
    while pos + _RECORD.size <= len(data):
        offset, length, check = _RECORD.unpack_from(data, pos)
        old = data[pos + _RECORD.size:pos + _RECORD.size + length]
        if len(old) != length or _record_check(offset, length, old) != check:
            break
        if offset == DONE:
            done = True
            break
        records.append((offset, old))
        pos += _RECORD.size + length
    return header, records, done


def roll_back(fd: int, header: dict, records: list) -> None:
    """Put back every journalled range and the old size, sync, and check that
    the file now reads as the journal says; BadInput if it does not."""
    for offset, old in reversed(records):
        _pwrite_all(fd, old, offset)
    os.ftruncate(fd, header["old_size"])
    os.fsync(fd)
    for offset, old in records:
        if os.pread(fd, len(old), offset) != old:
            raise BadInput(f"rolling back {header['path']}: the restored bytes at {offset} do not read back")
    if os.fstat(fd).st_size != header["old_size"]:
        raise BadInput(f"rolling back {header['path']}: its size is not the old one")
    os.utime(fd, ns=(header["old_mtime_ns"], header["old_mtime_ns"]))
    os.chmod(fd, header["old_mode"])


def check_new(fd: int, header: dict, recipe_hasher) -> bool:
    """Whether the file is the complete new version the header names."""
    if os.fstat(fd).st_size != header["new_size"]:
        return False
    return file_digest_of(fd, header["new_size"], recipe_hasher) == header["new_digest"]


def raise_mismatch(path: str, got: str, expected: str) -> None:
    raise VerificationFailed(
        f"{path}: after the update in place its digest {got[:16]}... differs from the expected "
        f"{expected[:16]}...; the old version was restored"
    )
