"""Reading files of an HTTP(S) remote: ranged and multi-range requests for
the ranges a delta needs, whole downloads that resume where they stopped,
and each file pinned to one version (ETag, Last-Modified, size). The
reading half of HttpRemote (remotes/http.py), as a mixin."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, BinaryIO, Iterator

from fitsync.errors import SourceChanged, TransferFailed
from fitsync.paths import safe_relpath
from fitsync.remotes.base import ResumableStream
from fitsync.remotes.http_wire import (Broken, Exchange, GAP_MULTIRANGE, GAP_SINGLE, MAX_RANGES_PER_REQUEST,
                                       MAX_RANGE_HEADER, Pinned, READ_CHUNK, Transient, ascending_runs,
                                       check_status, content_range, int_header, multipart_boundary,
                                       parse_content_range, part_headers, range_header, skip_to_delimiter)


if TYPE_CHECKING:  # pragma: no cover
    from fitsync.remotes.http import HttpRemote

log = logging.getLogger("fitsync.http")


class HttpReading:
    """HttpRemote's reads."""

    def block_signature(self, path: str, like: str | None = None, digest: bool = True):
        """The manifest's block signature of ``path``; None for a file the
        manifest has none for (the engine then downloads it whole). ``like``
        (a local file sharing blocks) changes nothing: the signature is already here."""
        release = self._release_manifest()
        return release.signature(safe_relpath(path)) if release is not None else None

    def open_read(self, path: str) -> BinaryIO:
        path = safe_relpath(path)
        release = self._release_manifest()
        if release is not None:
            own = release.own_files().get(path)
            if own is not None:  # mirrored as verified, not downloaded twice
                return io.BytesIO(own)
            stream = HttpStream(self, path, self._known_size(path))
            return io.BufferedReader(release.verifying_reader(path, stream), READ_CHUNK)
        return io.BufferedReader(HttpStream(self, path, self._known_size(path)), READ_CHUNK)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        return b"".join(self.read_ranges(path, [(offset, length)]))

    def read_ranges(self, path: str, ranges) -> Iterator[bytes]:
        path = safe_relpath(path)
        wanted = [(int(o), int(n)) for o, n in ranges]
        release = self._release_manifest()
        own = release.own_files().get(path) if release is not None else None
        if own is not None:
            return (own[o:o + n] for o, n in wanted)
        return self._read_ranges(path, wanted)

    def _read_ranges(self, path: str, wanted) -> Iterator[bytes]:
        size = self._known_size(path)
        clipped = [(o, max(0, min(n, size - o))) for o, n in wanted]
        for run in ascending_runs(clipped):
            yield from self._read_run(path, run)

    def _read_run(self, path: str, run) -> Iterator[bytes]:
        wanted = Wanted(run)
        yield from wanted.take_empty()
        tries = self.retry.tracker()
        url = self._url_of(path)
        while not wanted.done:
            mark = wanted.progress()
            if not self.ranges_work:
                mode, fetch = "whole", self._fetch_whole
            elif self.multirange_works and len(wanted.spans(GAP_MULTIRANGE, 2)) > 1:
                mode, fetch = "multi", self._fetch_multi
            else:
                mode, fetch = "single", self._fetch_single
            try:
                yield from fetch(path, wanted)
            except Broken as exc:
                # Each quirk lowers what we ask of the server, so this ends in at most two steps.
                if mode == "multi":
                    self._multirange_unusable(url, str(exc))
                elif mode == "single":
                    self._range_answers_unusable(url, str(exc))
                else:
                    raise TransferFailed(f"{url}: {exc}") from None
            except Transient as exc:
                if wanted.progress() != mark:
                    tries.progressed()  # bytes arrived since the last failure
                tries.failed(str(exc), lambda count, exc=exc: self._give_up(f"reading {path}", exc, count),
                             exc.retry_after)

    def _fetch_whole(self, path: str, wanted: "Wanted") -> Iterator[bytes]:
        url = self._url_of(path)
        with self._send("GET", url, self._conditions(path)) as ex:
            check_status(ex, url)
            if ex.status != 200:
                raise Broken(f"{url}: expected the whole file, got HTTP {ex.status}")
            size = int_header(ex.header("Content-Length"))
            self._pin(path, ex, size)
            yield from wanted.take_run(ex, 0, size if size is not None else 1 << 62)

    def _fetch_single(self, path: str, wanted: "Wanted") -> Iterator[bytes]:
        start, end = wanted.spans(GAP_SINGLE, 1)[0]
        url = self._url_of(path)
        with self._send("GET", url, {"Range": f"bytes={start}-{end - 1}", **self._conditions(path)}) as ex:
            check_status(ex, url)
            if ex.status == 200:
                self._ranges_ignored(url)
                size = int_header(ex.header("Content-Length"))
                self._pin(path, ex, size)
                yield from wanted.take_run(ex, 0, size if size is not None else 1 << 62)
                return
            first, last, total = content_range(ex, url)
            self._pin(path, ex, total)
            if first > start:
                self._range_answers_unusable(url, f"asked for bytes {start}-{end - 1}, got {first}-{last}")
                return
            self._single_range_seen = True
            yield from wanted.take_run(ex, first, last + 1 - first)
            if wanted.next_needed() is not None and wanted.next_needed() < min(end, last + 1):
                raise Transient("the server sent fewer bytes than its Content-Range promised")

    def _fetch_multi(self, path: str, wanted: "Wanted") -> Iterator[bytes]:
        spans = wanted.spans(GAP_MULTIRANGE, MAX_RANGES_PER_REQUEST)
        header = range_header(spans)
        batch_end = spans[-1][1]
        url = self._url_of(path)
        with self._send("GET", url, {"Range": header, **self._conditions(path)}) as ex:
            check_status(ex, url)
            if ex.status == 200:
                size = int_header(ex.header("Content-Length"))
                self._pin(path, ex, size)
                if self._single_range_seen:
                    # Single ranges work here; only multi-range is refused. Drop this answer.
                    self._multirange_unusable(url, "it answered with the whole file")
                    return
                self._ranges_ignored(url)
                yield from wanted.take_run(ex, 0, size if size is not None else 1 << 62)
                return
            kind = ex.header("Content-Type") or ""
            if kind.lower().startswith("multipart/byteranges"):
                yield from self._take_parts(path, ex, wanted, kind)
            else:
                first, last, total = content_range(ex, url)
                self._pin(path, ex, total)
                yield from wanted.take_run(ex, first, last + 1 - first)
            needed = wanted.next_needed()
            if needed is not None and needed < batch_end:
                self._multirange_unusable(url, "its answer lacked some of the ranges asked for")

    def _take_parts(self, path: str, ex: Exchange, wanted: "Wanted", kind: str) -> Iterator[bytes]:
        boundary = multipart_boundary(kind)
        if boundary is None:
            raise Broken("multipart answer without a boundary")
        delimiter = b"--" + boundary.encode("latin-1")
        line = skip_to_delimiter(ex, delimiter)
        while line.rstrip(b"\r\n") == delimiter:
            headers = part_headers(ex)
            value = headers.get("content-range")
            if value is None:
                raise Broken("multipart part without Content-Range")
            first, last, total = parse_content_range(value)
            self._pin(path, ex, total)
            yield from wanted.take_run(ex, first, last + 1 - first, drain_tail=True)
            line = ex.readline()
            if line in (b"\r\n", b"\n"):
                line = ex.readline()
            if not line:
                raise Transient("the connection closed inside a multipart answer")
        if line.rstrip(b"\r\n") != delimiter + b"--":
            raise Broken("malformed multipart framing")
        ex.skip_rest(64 << 10)  # an epilogue, if any: the connection can then be reused

    # -- server quirks, detected once ------------------------------------------------
    def _ranges_ignored(self, url: str) -> None:
        if self.ranges_work:
            self.ranges_work = False
            log.warning("%s answers Range requests with the whole file; using plain full downloads "
                        "(no delta updates from this server)", url)

    def _multirange_unusable(self, url: str, why: str) -> None:
        if self.multirange_works:
            self.multirange_works = False
            log.warning("%s: multi-range answer unusable (%s); fetching one range per request", url, why)

    def _range_answers_unusable(self, url: str, why: str) -> None:
        if self.ranges_work:
            self.ranges_work = False
            log.warning("%s: range answer unusable (%s); using plain full downloads", url, why)

    # -- version pinning ------------------------------------------------------------
    def _known_size(self, path: str) -> int:
        entries = self._entries
        if entries is not None and path in entries:
            return entries[path].size
        release = self._release_manifest()
        if release is not None:
            return release.entry(path).size
        if path in self._sizes:
            return self._sizes[path]
        return self.stat(path).size

    def _pin(self, path: str, ex: Exchange, size: int | None) -> None:
        """Record the version of ``path`` first seen; raise SourceChanged when a
        later answer is of another version."""
        seen = Pinned(ex.header("ETag"), ex.header("Last-Modified"), size)
        expected = None
        release = self._release
        if release is not None and path in release.manifest.entries:
            expected = release.manifest.entries[path].size
        if expected is not None and size is not None and size != expected:
            raise SourceChanged(
                f"{path} on the server has {size} bytes but the release manifest lists {expected}; "
                "the release is being updated or its manifest is stale"
            )
        with self._state_lock:
            pinned = self._pinned.setdefault(path, seen)
        changed = (
            (pinned.etag and seen.etag and pinned.etag != seen.etag)
            or (pinned.last_modified and seen.last_modified and pinned.last_modified != seen.last_modified)
            or (pinned.size is not None and size is not None and pinned.size != size)
        )
        if changed:
            raise SourceChanged(
                f"{path} changed on the server while it was being read "
                f"(ETag {pinned.etag} -> {seen.etag}, Last-Modified {pinned.last_modified} -> {seen.last_modified})"
            )

    def _conditions(self, path: str) -> dict:
        """If-Match with the pinned strong ETag: a server that supports it
        refuses (412) to mix versions instead of us finding out afterwards."""
        with self._state_lock:
            pinned = self._pinned.get(path)
        if pinned and pinned.etag and not pinned.etag.startswith("W/"):
            return {"If-Match": pinned.etag}
        return {}


class HttpStream(ResumableStream):
    """Sequential, seekable reader of one file that resumes with Range after
    a dropped connection and refuses to splice two versions."""

    def __init__(self, remote: HttpRemote, path: str, size: int):
        self._remote = remote
        self._path = path
        self._size = size
        self._pos = 0
        self._ex: Exchange | None = None
        self._tries = remote.retry.tracker()

    def _end(self) -> int:
        return self._size

    def _moved(self, target: int) -> None:
        self._drop()

    def readinto(self, buffer) -> int:
        if self._pos >= self._size or not len(buffer):
            return 0
        view = memoryview(buffer)[: self._size - self._pos]
        while True:
            try:
                if self._ex is None:
                    self._open()
                n = self._ex.readinto(view)
                if not n:
                    raise Transient(f"the server closed the connection at byte {self._pos} of {self._size}")
            except Transient as exc:
                self._drop()
                self._tries.failed(str(exc), lambda count, exc=exc: self._remote._give_up(
                    f"downloading {self._path}", exc, count), exc.retry_after)
                continue
            self._tries.progressed()
            self._pos += n
            if self._pos >= self._size:
                self._drop()
            return n

    def _open(self) -> None:
        remote = self._remote
        url = remote._url_of(self._path)
        headers = remote._conditions(self._path)
        if self._pos and remote.ranges_work:
            headers["Range"] = f"bytes={self._pos}-"
        ex = remote._send("GET", url, headers)
        try:
            check_status(ex, url)
            if ex.status == 206:
                try:
                    first, _, total = content_range(ex, url)
                except Broken as exc:
                    remote._range_answers_unusable(url, str(exc))
                    raise Transient(str(exc)) from None
                remote._pin(self._path, ex, total)
                if first != self._pos:
                    remote._range_answers_unusable(url, f"asked for bytes from {self._pos}, got from {first}")
                    raise Transient("resuming needs a plain download")
            else:
                size = int_header(ex.header("Content-Length"))
                remote._pin(self._path, ex, size)
                if self._pos:  # resume refused: read again from the start, keep the rest
                    remote._ranges_ignored(url)
                    ex.skip(self._pos)
        except BaseException:
            ex.release()
            raise
        self._ex = ex

    def _drop(self) -> None:
        if self._ex is not None:
            self._ex.release()
            self._ex = None

    def close(self) -> None:
        self._drop()
        super().close()


class Wanted:
    """The ranges still to deliver, ascending; fills them from runs of file
    bytes as answers arrive and yields each one complete, in order."""

    def __init__(self, ranges: list[tuple[int, int]]):
        self.ranges = ranges
        self.index = 0
        self.buffer: bytearray | None = None
        self.filled = 0

    @property
    def done(self) -> bool:
        return self.index >= len(self.ranges)

    def progress(self) -> tuple[int, int]:
        return self.index, self.filled

    def next_needed(self) -> int | None:
        if self.done:
            return None
        return self.ranges[self.index][0] + self.filled

    def take_empty(self) -> Iterator[bytes]:
        while not self.done and self.ranges[self.index][1] == 0:
            self.index += 1
            yield b""

    def spans(self, gap: int, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` (start, end) spans covering what is left, ranges
        closer than ``gap`` merged; the header stays below MAX_RANGE_HEADER."""
        spans: list[list[int]] = []
        text = 6
        for i in range(self.index, len(self.ranges)):
            offset, length = self.ranges[i]
            if i == self.index:
                offset, length = offset + self.filled, length - self.filled
            if not length:
                continue
            if spans and offset - spans[-1][1] <= gap:
                spans[-1][1] = max(spans[-1][1], offset + length)
                continue
            text += len(f"{offset}-{offset + length - 1},")
            if len(spans) >= limit or (spans and text > MAX_RANGE_HEADER):
                break
            spans.append([offset, offset + length])
        return [(a, b) for a, b in spans]

    def take_run(self, ex: Exchange, start: int, length: int, drain_tail: bool = False) -> Iterator[bytes]:
        """Consume the run of file bytes [start, start+length) from ``ex``,
        yielding every range it completes. Bytes not wanted are skipped; the
        run's tail past the last wanted range is read only with ``drain_tail``
        (a multipart part), else left for the connection's close."""
        pos, end = start, start + length
        while not self.done:
            offset, size = self.ranges[self.index]
            need = offset + self.filled
            if need >= end:
                break
            if need < pos:
                raise Broken(f"the answer starts at byte {pos}, after byte {need} which is still needed")
            if need > pos:
                ex.skip(need - pos)
                pos = need
            take = min(offset + size, end) - need
            if self.buffer is None:
                self.buffer = bytearray(size)
            ex.read_exact_into(memoryview(self.buffer)[self.filled:self.filled + take])
            pos += take
            self.filled += take
            if self.filled == size:
                data = bytes(self.buffer)
                self.buffer, self.filled = None, 0
                self.index += 1
                yield data
                yield from self.take_empty()
        if drain_tail and end > pos:
            ex.skip(end - pos)
