"""SFTP data paths: pipelined reads and writes on paramiko's request and
response machinery, striped reads over several connections, and the
sequential reader that resumes at its byte after a lost connection."""

from __future__ import annotations

import logging
import stat as stat_mod
import threading
from collections import deque
from typing import TYPE_CHECKING, Iterable, Iterator

import paramiko
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_WRITE, int64

from fitsync.errors import ConnectionFailed, FitsyncError, NotFound, SourceChanged
from fitsync.holes import data_runs
from fitsync.paths import safe_relpath
from fitsync.remotes.base import Entry
from fitsync.sshconn import SshConnection
from fitsync.threads import put_unless_stopped

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.remotes.sftp import SftpRemote

log = logging.getLogger("fitsync.remotes.sftp")

# OpenSSH's sftp-server answers reads of up to 255 KiB; fewer, larger
# requests are what makes paramiko fast.
REQUEST_SIZE = 252 << 10
MAX_OUTSTANDING = 32  # ~8 MiB in flight per stream
# Large sequential reads are striped over this many connections (1 = off).
DEFAULT_LANES = 2
STRIPE_SIZE = 8 << 20
STRIPED_MIN_BYTES = 32 << 20


# -- pipelined SFTP I/O (on paramiko's request/response machinery) ----------------

class _Replies:
    """Collects asynchronous SFTP replies by request number; paramiko calls
    ``_async_response`` for every reply to a request made with this object.

    This rests on three private methods of paramiko.SFTPClient
    (``_async_request``, ``_read_response``, ``_convert_status``), stable
    since paramiko 1.x; pyproject.toml pins the major versions tested and
    tests/test_sftp_io.py fails loudly if they change."""

    def __init__(self, sftp: paramiko.SFTPClient):
        self.sftp = sftp
        self.done: dict = {}

    def _async_response(self, t, msg, num):
        if t == CMD_DATA:
            self.done[num] = msg.get_string()
            return
        try:
            self.sftp._convert_status(msg)
            self.done[num] = None
        except EOFError:
            self.done[num] = b""
        except OSError as exc:
            self.done[num] = exc

    def request(self, t, *args) -> int:
        return self.sftp._async_request(self, t, *args)

    def wait(self, num: int):
        while num not in self.done:
            self.sftp._read_response()
        value = self.done.pop(num)
        if isinstance(value, Exception):
            raise value
        return value


def read_pipelined(sftp: paramiko.SFTPClient, handle: bytes, ranges: Iterable[tuple[int, int]]) -> Iterator[bytes]:
    """Yield the bytes of each (offset, length) range in order, keeping up to
    MAX_OUTSTANDING requests in flight. A range past the end of the file
    yields fewer bytes."""
    replies = _Replies(sftp)
    pieces: deque = deque()  # (request number, offset, length, index of range)
    wanted = iter(ranges)
    parts: list = []
    current = 0
    ranges_seen = 0
    pending_range = None

    def refill():
        nonlocal pending_range, ranges_seen
        while len(pieces) < MAX_OUTSTANDING:
            if pending_range is None:
                item = next(wanted, None)
                if item is None:
                    return
                pending_range = (item[0], item[1], ranges_seen)
                ranges_seen += 1
                if item[1] == 0:
                    pieces.append((None, item[0], 0, pending_range[2]))
                    pending_range = None
                    continue
            offset, length, index = pending_range
            n = min(length, REQUEST_SIZE)
            pieces.append((replies.request(CMD_READ, handle, int64(offset), n), offset, n, index))
            pending_range = (offset + n, length - n, index) if length > n else None

    refill()
    while pieces:
        num, offset, n, index = pieces.popleft()
        data = replies.wait(num) if num is not None else b""
        while 0 < len(data) < n:  # the server capped the read: ask for the rest
            more = replies.wait(replies.request(CMD_READ, handle, int64(offset + len(data)), n - len(data)))
            if not more:
                break
            data += more
        if index != current:
            yield b"".join(parts)
            parts, current = [], index
        parts.append(data)
        refill()
    if ranges_seen:
        yield b"".join(parts)


def write_pipelined(sftp: paramiko.SFTPClient, handle: bytes, chunks: Iterable[bytes], hashers=(), *,
                    start: int = 0, on_acked=None) -> tuple[int, int]:
    """Write ``chunks`` sequentially from offset ``start`` with bounded
    outstanding requests; feed each hasher. Aligned zero runs are not sent:
    the server's writes at offsets leave them as holes (fitsync.holes), and
    they cost no bandwidth. ``on_acked(replies, end)``, when given, hears
    that every byte before ``end`` is acknowledged (replies are awaited in
    order), e.g. to checkpoint a resumable upload.
    Returns (the end of the bytes given, the end of the last bytes written):
    where they differ the file ends in a hole and needs its size set."""
    replies = _Replies(sftp)
    outstanding: deque = deque()
    offset = written_to = start

    def wait_oldest() -> None:
        num, end = outstanding.popleft()
        replies.wait(num)
        if on_acked is not None:
            on_acked(replies, end)

    for chunk in chunks:
        for h in hashers:
            h.update(chunk)
        view = memoryview(chunk).cast("B")
        for run_start, run_end in data_runs(view, offset):
            for start_at in range(run_start, run_end, REQUEST_SIZE):
                end_at = min(start_at + REQUEST_SIZE, run_end)
                piece = bytes(view[start_at:end_at])
                outstanding.append((replies.request(CMD_WRITE, handle, int64(offset + start_at), piece),
                                    offset + end_at))
                if len(outstanding) >= MAX_OUTSTANDING:
                    wait_oldest()
            written_to = offset + run_end
        offset += len(view)
    while outstanding:
        wait_oldest()
    return offset, written_to


def read_striped(remote: "SftpRemote", full: str, start: int, end: int) -> Iterator[bytes]:
    """Yield bytes start..end of ``full`` in order, read by one thread per
    connection lane: lane i reads stripes i, i+k, i+2k... (STRIPE_SIZE each)
    with its own pipeline. Each lane holds at most two stripes ahead, so
    memory stays bounded however slow the consumer is. A lane's error is
    raised here, in order, so the caller can reconnect and resume."""
    import queue

    lanes = remote.lanes
    stripes = [(o, min(STRIPE_SIZE, end - o)) for o in range(start, end, STRIPE_SIZE)]
    queues = [queue.Queue(maxsize=2) for _ in range(lanes)]
    stop = threading.Event()

    def put(q, item) -> bool:
        return put_unless_stopped(q, stop, item)

    def lane_worker(lane: int) -> None:
        try:
            sftp = remote.lane_connection(lane).sftp()
            with sftp.open(full, "rb") as f:
                for offset, length in stripes[lane::lanes]:
                    pieces = [(o, min(REQUEST_SIZE, offset + length - o))
                              for o in range(offset, offset + length, REQUEST_SIZE)]
                    data = b"".join(read_pipelined(sftp, f.handle, pieces))
                    if not put(queues[lane], data):
                        return
        except BaseException as exc:  # handed to the consumer, which decides about retrying
            put(queues[lane], exc)

    threads = [threading.Thread(target=lane_worker, args=(i,), daemon=True, name=f"sftp-lane-{i}")
               for i in range(min(lanes, len(stripes)))]
    for t in threads:
        t.start()
    try:
        for index in range(len(stripes)):
            item = queues[index % lanes].get()
            if isinstance(item, BaseException):
                raise item
            if len(item) < stripes[index][1]:
                raise SourceChanged(f"{full} shrank while it was read")
            yield item
    finally:
        stop.set()
        for t in threads:
            t.join(5)


class SftpReader:
    """Sequential reader with pipelined requests that survives a dropped
    connection: it reconnects and resumes at the first byte not yet received,
    provided the file's size and mtime are unchanged."""

    def __init__(self, remote: SftpRemote, path: str):
        self.remote = remote
        self.path = path
        self.full = remote.remote_path(path)
        self.entry = self._stat()
        self.pos = 0  # bytes handed to the caller
        self._received = 0  # bytes that arrived (pos + buffered)
        self._buffer = b""
        self._offset = 0  # read position inside _buffer
        self._chunks: Iterator[bytes] | None = None
        self._file = None
        self._closed = False

    def _open_stream(self, conn: SshConnection) -> None:
        self.close_handle()
        if self.remote.lanes > 1 and self.entry.size - self._received >= STRIPED_MIN_BYTES:
            self._chunks = read_striped(self.remote, self.full, self._received, self.entry.size)
            return
        sftp = conn.sftp()
        self._file = sftp.open(self.full, "rb")
        pieces = ((offset, min(REQUEST_SIZE, self.entry.size - offset))
                  for offset in range(self._received, self.entry.size, REQUEST_SIZE))
        self._chunks = read_pipelined(sftp, self._file.handle, pieces)

    def _next_chunk(self) -> bytes:
        tries = self.remote.retry.tracker()
        while self._received < self.entry.size:
            conn = self.remote.connection()
            generation = conn.generation
            try:
                if self._chunks is None:
                    self._open_stream(conn)
                chunk = next(self._chunks, b"")
                if not chunk:
                    raise SourceChanged(f"{self.full} shrank while it was read")
                self._received += len(chunk)
                return chunk
            except Exception as exc:
                # a striped lane that could not reconnect reports a plain ConnectionFailed: retry that too
                retryable = type(exc) is ConnectionFailed or (not isinstance(exc, FitsyncError)
                                                             and self.remote._lost(exc, conn))
                if not retryable:
                    if isinstance(exc, FitsyncError):
                        raise
                    raise self.remote._sftp_error(exc, f"read {self.full}") from None
                self._drop_stream()
                self._file = None  # its connection is gone
                self.remote.recover(tries, conn, generation, f"read of {self.full} at byte {self._received}", exc)
                self._check_unchanged()
        return b""

    def _drop_stream(self) -> None:
        if self._chunks is not None and hasattr(self._chunks, "close"):
            self._chunks.close()  # stops a striped read's lane threads
        self._chunks = None

    def _stat(self) -> Entry:
        """Size and mtime by SFTP: a plain read never waits for the agent to start."""
        def once(conn):
            attr = conn.sftp().stat(self.full)
            if not stat_mod.S_ISREG(attr.st_mode):
                raise NotFound(f"{self.full} on {self.remote.target.hostname} is not a regular file")
            return Entry(safe_relpath(self.path), attr.st_size, float(attr.st_mtime))
        return self.remote._call(f"stat {self.full}", once)

    def _check_unchanged(self) -> None:
        try:
            now = self._stat()
        except ConnectionFailed:
            return  # reconnecting failed again; the next attempt reports it
        if (now.size, now.mtime) != (self.entry.size, self.entry.mtime):
            raise SourceChanged(f"{self.full} changed on {self.remote.target.hostname} while it was read")

    def read(self, size: int = -1) -> bytes:
        if self._closed:
            raise ValueError("read from a closed SftpReader")
        if size is None or size < 0:
            parts = [self._buffer[self._offset:]] + list(iter(self._next_chunk, b""))
            self._buffer, self._offset = b"", 0
            data = b"".join(parts)
        else:
            parts, wanted = [], size
            while wanted > 0:  # full reads, like a buffered file: short only at the end
                if self._offset >= len(self._buffer):
                    self._buffer, self._offset = self._next_chunk(), 0
                    if not self._buffer:
                        break
                part = self._buffer[self._offset:self._offset + wanted]
                self._offset += len(part)
                wanted -= len(part)
                parts.append(part)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.entry.size}[whence]
        self.pos = self._received = max(0, base + offset)
        self._buffer, self._offset = b"", 0
        self._drop_stream()  # the next read starts a new pipeline there
        self.close_handle()
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self._closed = True
        self._drop_stream()
        self.close_handle()

    def close_handle(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # the connection may be gone; the handle dies with it
                pass
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CountedChunks:
    """An iterator over ``chunks`` that counts what it handed out: a write
    whose connection fails before the first chunk may start again."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self.taken = 0

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        chunk = next(self._chunks)
        self.taken += 1
        return chunk
