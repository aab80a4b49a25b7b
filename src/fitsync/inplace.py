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
- a last record of offset ``DONE``: every new byte, and the new mode and
  mtime, are on disk (synced) and the file has passed every check. Only
  then may recovery keep the new version.

Records never overlap: each range of the file is written at most once.
Data of the old file moved elsewhere in the new one is read through
``OldView``, which sees the journal where the file was already overwritten.
"""

from __future__ import annotations

import bisect
import json
import os
import struct

import xxhash

from fitsync.patch import SourceBytes, write_all
from fitsync.recipe import BASIS, Recipe
from fitsync.remotes.statefiles import open_state_fd
from fitsync.errors import BadInput, TransferFailed, VerificationFailed
from fitsync.mapped import mapped_file

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
        # Made under the state directory's descriptor: a swapped .fitsync cannot take it elsewhere.
        self._fd = open_state_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            body = json.dumps(header, sort_keys=True).encode()
            write_all(self._fd, MAGIC + _LEN.pack(len(body)) + body + xxhash.xxh3_128_digest(body))
            os.fsync(self._fd)
            _sync_directory(os.path.dirname(path))  # the journal exists before any byte is overwritten
        except BaseException:
            os.close(self._fd)
            raise

    def add(self, offset: int, data) -> None:
        write_all(self._fd, _RECORD.pack(offset, len(data), _record_check(offset, len(data), data)))
        write_all(self._fd, data)

    def end(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_END)

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def mark_done(self) -> None:
        """Every new byte, the mode and the mtime are on disk and verified."""
        write_all(self._fd, _RECORD.pack(DONE, 0, _record_check(DONE, 0, b"")))
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset`` (a read returns at most ~2 GiB; a file
    that ends first was changed by another program)."""
    parts, done = [], 0
    while done < length:
        got = os.pread(fd, min(length - done, PIECE), offset + done)
        if not got:
            raise TransferFailed("the file being updated in place ended early; another program changed it")
        parts.append(got)
        done += len(got)
    return b"".join(parts)


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
    bytes), journalling each range's old bytes before it is overwritten, and
    sync the file. Returns the bytes written into it. The caller verifies,
    marks the journal done, then drops it."""
    source = SourceBytes(read_source(recipe.source_ranges()) if recipe.source_bytes else ())
    view = OldView(fd, old_size, journal.path)
    batch = _Batch(fd, journal, view, old_size)
    try:
        for at, kind, offset, length in changed_ranges(recipe):
            data = view.read(offset, length) if kind == BASIS else b"".join(bytes(p) for p in source.take(length))
            batch.add(at, data)
        source.finish()
        for at in range(recipe.target_size, old_size, PIECE):  # the cut-off tail: journalled, then truncated
            batch.add(at, None, min(PIECE, old_size - at))
        batch.flush()
        os.ftruncate(fd, recipe.target_size)
        os.fsync(fd)
    finally:
        view.close()
    return batch.written


class _Batch:
    """Changed ranges waiting for their old bytes to be journalled (and the
    journal synced, once per batch) before they are written."""

    def __init__(self, fd: int, journal: Journal, view: OldView, old_size: int):
        self._fd, self._journal, self._view, self._old_size = fd, journal, view, old_size
        self._pending: list = []  # (offset, new bytes or None for a cut-off piece, old bytes to save)
        self._bytes = 0
        self._journal_pos = journal.end()
        self.written = 0

    def add(self, at: int, data, cut: int = 0) -> None:
        saved = cut if data is None else max(0, min(self._old_size, at + len(data)) - at)
        self._pending.append((at, data, saved))
        self._bytes += len(data) if data is not None else cut
        if self._bytes >= BATCH:
            self.flush()

    def flush(self) -> None:
        for at, _, saved in self._pending:
            if saved:
                self._journal.add(at, pread_exact(self._fd, saved, at))
                self._journal_pos += _RECORD.size
                self._view.saved(at, saved, self._journal_pos)
                self._journal_pos += saved
        self._journal.sync()
        for at, data, _ in self._pending:
            if data is not None:
                _pwrite_all(self._fd, data, at)
                self.written += len(data)
        self._pending, self._bytes = [], 0


def file_digest_of(fd: int, size: int, hasher) -> str:
    """Hex digest of the first ``size`` bytes of ``fd`` read back."""
    if size:
        with mapped_file(fd, size, what="the file updated in place") as mapped, memoryview(mapped) as view:
            hasher.update(view)
    return hasher.hexdigest()


# -- reading a journal back ----------------------------------------------------

def read_journal(path: str) -> tuple[dict, list, bool]:
    """(header, [(offset, length, position of the old bytes)], done) of a
    journal, read record by record (a journal may be as large as the file);
    the records end at the first torn one. JournalCorrupt when even the
    header is torn (then nothing was overwritten yet)."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + _LEN.size)
        if len(head) < len(MAGIC) + _LEN.size or not head.startswith(MAGIC):
            raise JournalCorrupt(path)
        (n,) = _LEN.unpack_from(head, len(MAGIC))
        body, check = f.read(n), f.read(16)
        if len(body) != n or xxhash.xxh3_128_digest(body) != check:
            raise JournalCorrupt(path)
        header = json.loads(body)
        records, done = [], False
        while True:
            fields = f.read(_RECORD.size)
            if len(fields) < _RECORD.size:
                break
            offset, length, check = _RECORD.unpack(fields)
            if offset != DONE and length > PIECE:
                break  # no record is larger: this one is damaged
            position = f.tell()
            old = f.read(length)
            if len(old) != length or _record_check(offset, length, old) != check:
                break
            if offset == DONE:
                done = True
                break
            records.append((offset, length, position))
    return header, records, done


def roll_back(fd: int, journal_path: str, header: dict, records: list) -> None:
    """Put back every journalled range and the old size, sync, and check that
    the file now reads as the journal says; BadInput if it does not. The
    ranges never overlap, so a roll-back killed half-way is simply redone."""
    with open(journal_path, "rb") as journal:
        jfd = journal.fileno()
        for offset, length, position in records:
            _pwrite_all(fd, pread_exact(jfd, length, position), offset)
        os.ftruncate(fd, header["old_size"])
        os.fsync(fd)
        for offset, length, position in records:
            if os.pread(fd, length, offset) != pread_exact(jfd, length, position):
                raise BadInput(f"rolling back {header['path']}: the restored bytes at {offset} do not read back")
    if os.fstat(fd).st_size != header["old_size"]:
        raise BadInput(f"rolling back {header['path']}: its size is not the old one")
    if header.get("new_owner") and header.get("old_owner"):  # the update may have given it the source's owner
        os.fchown(fd, *header["old_owner"])
    os.utime(fd, ns=(header["old_mtime_ns"], header["old_mtime_ns"]))
    os.fchmod(fd, header["old_mode"])
    os.fsync(fd)


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
