"""Resumable uploads to SFTP destinations (Capability.RESUMES).

A file the engine asks to resume is written to
``ROOT/.fitsync/partial/<key>.part``, where the key names the source version,
and ``<key>.upto`` beside it records how many of its leading bytes the server
has acknowledged. The record is rewritten every CHECKPOINT bytes by a request
sent in the same pipeline as the data: it costs no round trip of its own,
and it lags the data, never leads it (replies are awaited in order). It is
overwritten in place at a fixed width, so a kill between two records leaves
the older one, never an empty file.

An upload killed, cut off or interrupted keeps both files. The next attempt
at the same version truncates the part to the record and sends the rest;
what lands is verified over the whole file as before (the agent re-reads it
on the host; without one, its size), the local side hashing the kept prefix
from the source. A version that changed has another key, so its bytes are
never reused; what is left of it goes when a later run completes
(SftpWriting.clear_state).
"""

from __future__ import annotations

import posixpath
import stat as stat_mod

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_WRITE, int64

from fitsync.errors import VerificationFailed
from fitsync.remotes.statefiles import STATE_DIR

CHECKPOINT = 8 << 20
_RECORD_DIGITS = 20


def partial_paths(root: str, key: str) -> tuple[str, str]:
    """(the part, its record) of the source version ``key`` under ``root``."""
    if not (key.isascii() and key.isalnum()):
        raise ValueError(f"a resume key is alphanumeric, not {key!r}")
    directory = posixpath.join(root, STATE_DIR, "partial")
    return posixpath.join(directory, key + ".part"), posixpath.join(directory, key + ".upto")


FSYNC = "fsync@openssh.com"  # OpenSSH's extension: fsync(2) of an open handle


def _syncs(sftp: paramiko.SFTPClient, handle: bytes) -> bool:
    """Whether the server syncs an open file on request (once per upload)."""
    from fitsync.remotes.sftp_io import _Replies

    replies = _Replies(sftp)
    try:
        replies.wait(replies.request(CMD_EXTENDED, FSYNC, handle))
    except OSError:  # SSH_FX_OP_UNSUPPORTED, or a failed sync: not durable here
        return False
    return True


def _record(acknowledged: int) -> bytes:
    return b"%0*d\n" % (_RECORD_DIGITS, acknowledged)


def _parse_record(text: bytes) -> int:
    """The acknowledged byte count of a record; 0 for anything malformed."""
    if len(text) != _RECORD_DIGITS + 1 or not text.endswith(b"\n") or not text[:-1].isdigit():
        return 0
    return int(text[:-1])


def kept_bytes(sftp: paramiko.SFTPClient, part: str, record: str, size: int) -> int:
    """The bytes an interrupted upload of ``part`` kept: its record, when the
    part is a regular file at least that long and the source has that many."""
    try:
        st = sftp.lstat(part)
        if not (stat_mod.S_ISREG(st.st_mode) and stat_mod.S_ISREG(sftp.lstat(record).st_mode)):
            return 0  # planted: never read or written through
        with sftp.open(record, "rb") as f:
            acknowledged = _parse_record(f.read(_RECORD_DIGITS + 2))
    except FileNotFoundError:
        return 0
    if not 0 < acknowledged <= min(st.st_size or 0, size):
        return 0
    return acknowledged


def open_part(sftp: paramiko.SFTPClient, part: str, start: int) -> paramiko.SFTPFile:
    """The part, open for writing from ``start``. SFTP has no O_NOFOLLOW,
    and the part's name is predictable, so: a new part is created
    exclusively after unlinking whatever has its name (O_EXCL never follows
    a symlink); a kept one is opened, then checked to be still the regular
    file kept_bytes saw (a swap before the open shows in the name's lstat or
    in the handle's attributes; after it, the handle holds the real file)."""
    if not start:
        _unlink_if_there(sftp, part)
        return sftp.open(part, "wx")
    f = sftp.open(part, "r+")
    try:
        named, held = sftp.lstat(part), f.stat()
        if (not stat_mod.S_ISREG(named.st_mode) or (held.st_size or 0) < start
                or (named.st_size, named.st_mtime) != (held.st_size, held.st_mtime)):
            raise ChangedPart(f"{part} changed while it was being resumed; it is sent again")
    except BaseException:
        f.close()
        raise
    return f


class ChangedPart(VerificationFailed):
    """A kept part that is no longer what kept_bytes saw: dropped, and the file sent again."""


def _unlink_if_there(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        sftp.remove(path)  # unlinks a symlink itself, never what it points to
    except FileNotFoundError:
        pass


class Checkpoints:
    """Keeps ``record`` up to date while an upload's replies come in:
    ``acked`` is write_pipelined's ``on_acked``."""

    def __init__(self, sftp: paramiko.SFTPClient, record: str, start: int, sync_handle: bytes | None = None):
        """``sync_handle``: the part's, when each checkpoint must be durable
        (the part synced before its record is written); where the server
        cannot sync, no checkpoint is recorded and nothing will be resumed."""
        # Made anew and exclusively (its name is predictable: see open_part),
        # holding at once what is kept; a kill in between costs the resume
        # point, never a byte.
        _unlink_if_there(sftp, record)
        self.file = sftp.open(record, "wx")
        try:
            self.file.write(_record(start))
            self.sync_handle = sync_handle
            self.recording = sync_handle is None or _syncs(sftp, sync_handle)
        except BaseException:
            self.file.close()
            raise
        self.next = start + CHECKPOINT
        self._replies = None
        self._pending: list = []

    def acked(self, replies, end: int) -> None:
        if end < self.next or not self.recording:
            return
        self._wait_pending()
        self._replies = replies
        if self.sync_handle is not None:  # handled in order by the server: synced before recorded
            self._pending.append(replies.request(CMD_EXTENDED, FSYNC, self.sync_handle))
        self._pending.append(replies.request(CMD_WRITE, self.file.handle, int64(0), _record(end)))
        self.next = end + CHECKPOINT

    def _wait_pending(self) -> None:
        pending, self._pending = self._pending, []
        for num in pending:
            self._replies.wait(num)

    def close(self) -> None:
        try:
            self._wait_pending()
        finally:
            self.file.close()
