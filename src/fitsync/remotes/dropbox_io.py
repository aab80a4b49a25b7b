"""Moving files to and from Dropbox: ranged and whole downloads checked
against Dropbox's content hash, resumed where a stream was cut, and uploads
in one request or a session of chunks. The reading and writing half of
DropboxRemote (remotes/dropbox.py), as a mixin."""

from __future__ import annotations

import datetime as dt
import io
import logging
from typing import TYPE_CHECKING, BinaryIO, Iterable

import requests
import urllib3

from fitsync.dbhash import DropboxContentHasher
from fitsync.errors import (AuthenticationFailed, BadInput, ConnectionFailed,
                            NotFound, SourceChanged, TransferFailed, VerificationFailed)
from fitsync.paths import safe_relpath
from fitsync.remotes.base import Entry, ReadOnlyRemote, ResumableStream

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.remotes.dropbox import DropboxRemote

log = logging.getLogger("fitsync.dropbox")

DOWNLOAD_READ = 1 << 20
# What a broken download stream can raise (urllib3 below requests, or the socket).
STREAM_ERRORS = (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError)

def first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class DropboxTransfers:
    """DropboxRemote's reads and writes."""

    # -- reading --------------------------------------------------------
    def digest(self, path: str, algo: str = "blake3") -> str:
        """Dropbox's content hash comes from the metadata; other algorithms read the file."""
        if algo == "dropbox":
            value = self._known(safe_relpath(path)).hashes.get("dropbox")
            if value:
                return value
        return super().digest(path, algo)

    def open_read(self, path: str) -> BinaryIO:
        rel = safe_relpath(path)
        return io.BufferedReader(_Download(self, rel, self._known(rel), self._revs.get(rel)),
                                 buffer_size=DOWNLOAD_READ)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        rel = safe_relpath(path)
        entry = self._known(rel)
        end = min(offset + length, entry.size)
        if end <= offset:
            return b""
        tries = self.retry.tracker()
        while True:
            meta, resp = self._content(rel, offset, end - 1)
            try:
                self._check_same_version(rel, meta, self._revs.get(rel), entry)
                data = resp.content
                if resp.status_code != 206:
                    self._note_no_range(rel)
                    data = data[offset:end]
            except STREAM_ERRORS as exc:
                self._back_off(tries, f"reading {rel}", f"interrupted download ({first_line(exc)})",
                               ConnectionFailed)
                continue
            finally:
                resp.close()
            if len(data) != end - offset:
                raise SourceChanged(f"{rel}: Dropbox sent {len(data)} bytes for a {end - offset}-byte range; "
                                    "the file changed; it will be fetched again")
            return data

    def _note_no_range(self, rel: str) -> None:
        if not self._range_warned:
            self._range_warned = True
            log.warning("Dropbox ignored an HTTP Range request for %s; interrupted downloads from this "
                        "link restart from the beginning", rel)

    def _content(self, rel: str, first: int = 0, last: int | None = None):
        """(metadata, streaming response) of a download, from ``first`` to ``last`` inclusive."""
        from dropbox import exceptions as dbx_errors, sharing

        headers = None
        if first or last is not None:
            headers = {"Range": f"bytes={first}-{'' if last is None else last}"}
        try:
            if self.shared:
                arg = sharing.GetSharedLinkMetadataArg(self.creds.shared_url, self._api_path(rel),
                                                       self.creds.password)
                # The SDK's helper takes no headers; its public request() does (same route).
                return self._call(f"downloading {rel}", self.client.request, sharing.get_shared_link_file,
                                  "sharing", arg, None, extra_headers=headers)
            return self._call(f"downloading {rel}", self.client.files_download, self._api_path(rel),
                              extra_headers=headers)
        except dbx_errors.ApiError as exc:
            if self.shared:
                raise self._link_error(exc, rel) from None
            raise self._path_error(exc, rel) from None

    def _check_same_version(self, rel: str, meta, listed_rev: str | None, entry: Entry) -> None:
        changed = (listed_rev is not None and meta.rev != listed_rev) or meta.size != entry.size
        content_hash = getattr(meta, "content_hash", None)
        if content_hash and entry.hashes.get("dropbox") and content_hash != entry.hashes["dropbox"]:
            changed = True
        if changed:
            self._listed.pop(rel, None)  # the next stat() asks Dropbox again
            raise SourceChanged(f"{rel} changed on Dropbox since it was listed; it will be fetched again")

    # -- writing --------------------------------------------------------
    def _require_writable(self, what: str) -> None:
        if self.shared:
            raise ReadOnlyRemote(f"{self.url} is a shared link, which fitsync only reads; cannot {what}")

    def write_atomic(self, path, chunks: Iterable[bytes], *, mtime=None, expected_digest=None,
                     resume=None) -> None:  # kept_bytes() is always 0 here: ``resume`` changes nothing
        """Upload. Dropbox commits a file only when the last request completes, so
        nothing partial is ever visible under ``path``; the BLAKE3 of the bytes is
        checked before that commit and the content hash after it."""
        self._require_writable(f"write {path}")
        rel = safe_relpath(path)
        self._refuse_case_clash(rel)
        _Upload(self, rel, mtime).run(chunks, expected_digest)
        self._by_lower[rel.lower()] = rel
        self._listed.pop(rel, None)

    def _refuse_case_clash(self, rel: str) -> None:
        other = self._by_lower.get(rel.lower())
        if other is not None and other != rel:
            raise BadInput(f"Dropbox names ignore case: {rel!r} would overwrite {other!r}; "
                           "rename one of them locally (fitsync never renames files itself)")

    def _write_error(self, exc, rel: str):
        text = str(exc.error)
        for reason in ("disallowed_name", "malformed_path"):
            if reason in text:
                return BadInput(f"Dropbox cannot hold the name {rel!r} ({reason}); rename it locally "
                                "(fitsync never renames files itself)")
        if "insufficient_space" in text:
            return TransferFailed(f"the Dropbox account is full; {rel} was not uploaded")
        if "no_write_permission" in text:
            return AuthenticationFailed(f"no permission to write {self._where(rel)} on Dropbox")
        if "content_hash_mismatch" in text:
            return VerificationFailed(f"{rel}: Dropbox received bytes that do not match their content hash")
        return TransferFailed(f"Dropbox refused the upload of {rel} ({text})")

    def delete(self, path: str) -> None:
        self._require_writable(f"delete {path}")
        rel = safe_relpath(path)
        from dropbox import exceptions as dbx_errors

        try:
            self._call(f"deleting {rel}", self.client.files_delete_v2, self._api_path(rel))
        except dbx_errors.ApiError as exc:
            error = self._path_error(exc, rel)
            if not isinstance(error, NotFound):
                raise error from None
        self._listed.pop(rel, None)
        self._by_lower.pop(rel.lower(), None)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class _Download(ResumableStream):
    """A sequential, seekable reader of one Dropbox file.

    A connection cut mid-stream is resumed from the current byte with an HTTP
    Range request; if the endpoint ignores Range, the download restarts and
    the bytes already delivered are skipped (and this is logged). Read from
    the start, the bytes are checked against Dropbox's content hash before
    the last of them is returned, so a wrong download can never look complete.
    """

    def __init__(self, remote: DropboxRemote, rel: str, entry: Entry, rev: str | None):
        self._remote = remote
        self._rel = rel
        self._entry = entry
        self._rev = rev
        self._pos = 0
        self._resp = None
        self._hasher: DropboxContentHasher | None = DropboxContentHasher()
        self._verified = False
        self._tries = remote.retry.tracker()
        self._failed_at = -1

    def _end(self) -> int:
        return self._entry.size

    def _moved(self, target: int) -> None:
        self._drop()
        # Only a read from byte 0 sees every byte, so only then can it check the hash.
        self._hasher = DropboxContentHasher() if target == 0 else None

    def readinto(self, buffer) -> int:
        size = self._entry.size
        while self._pos < size:
            if self._resp is None:
                self._connect()
            want = min(len(buffer), size - self._pos)
            try:
                data = self._resp.raw.read(want, decode_content=True)
            except STREAM_ERRORS as exc:
                self._interrupted(first_line(exc))
                continue
            if not data:
                self._interrupted("the server closed the connection early")
                continue
            n = len(data)
            if self._hasher is not None:
                self._hasher.update(data)
            if self._pos + n == size:
                # Checked before the last bytes are handed over: a reader that stops at
                # the listed size (without reading to EOF) is protected too.
                self._pos += n
                self._finish()
                self._pos -= n
            buffer[:n] = data
            self._pos += n
            return n
        self._finish()
        return 0

    def _connect(self) -> None:
        remote = self._remote
        meta, resp = remote._content(self._rel, self._pos) if self._pos else remote._content(self._rel)
        try:
            remote._check_same_version(self._rel, meta, self._rev, self._entry)
            self._rev = meta.rev
            if self._pos and resp.status_code != 206:
                remote._note_no_range(self._rel)
                log.warning("%s: restarting the download from byte 0 (skipping %d bytes already received)",
                            self._rel, self._pos)
                self._skip(resp, self._pos)
            elif self._pos and not resp.headers.get("Content-Range", "").startswith(f"bytes {self._pos}-"):
                raise TransferFailed(f"{self._rel}: Dropbox answered a Range request with the wrong range")
        except BaseException:
            resp.close()
            raise
        self._resp = resp

    @staticmethod
    def _skip(resp, count: int) -> None:
        while count:
            data = resp.raw.read(min(count, DOWNLOAD_READ), decode_content=True)
            if not data:
                raise ConnectionError("connection closed while skipping to the resume point")
            count -= len(data)

    def _interrupted(self, why: str) -> None:
        self._drop()
        if self._pos > self._failed_at:
            self._tries.progressed()  # progress since the last cut: a fresh set of retries
        self._failed_at = self._pos
        self._tries.failed(
            f"{self._rel}: download cut at byte {self._pos} of {self._entry.size} ({why}); resuming from there",
            lambda count: ConnectionFailed(f"{self._rel}: the download was cut {count} times at byte {self._pos} "
                                           f"of {self._entry.size} ({why}); giving up"))

    def _finish(self) -> None:
        self._drop()
        if self._verified or self._hasher is None:
            return
        expected = self._entry.hashes.get("dropbox")
        got = self._hasher.hexdigest()
        self._verified = True
        if expected and got != expected:
            raise VerificationFailed(
                f"{self._rel}: the downloaded bytes do not match Dropbox's content hash; it will be fetched again")

    def _drop(self) -> None:
        if self._resp is not None:
            try:
                self._resp.close()
            except Exception:  # closing a broken connection may fail; it is discarded anyway
                pass
            self._resp = None

    def close(self) -> None:
        self._drop()
        super().close()


class _Upload:
    """One file up to Dropbox: a single request, or an upload session in chunks."""

    def __init__(self, remote: DropboxRemote, rel: str, mtime: float | None):
        self.remote = remote
        self.rel = rel
        self.path = remote._api_path(rel)
        self.mtime = mtime
        self.session_id: str | None = None
        self.offset = 0

    def run(self, chunks: Iterable[bytes], expected_digest: str | None) -> None:
        import blake3

        received = blake3.blake3()
        content = DropboxContentHasher()
        buffer = bytearray()
        chunk = self.remote.upload_chunk
        for piece in chunks:
            received.update(piece)
            content.update(piece)
            buffer += piece
            while len(buffer) > chunk:  # strictly more: the last chunk always goes with the commit
                self._send(bytes(buffer[:chunk]))
                del buffer[:chunk]
        # Checked before the commit: a mismatch leaves Dropbox untouched.
        if expected_digest is not None and received.hexdigest() != expected_digest:
            raise VerificationFailed(f"{self.rel}: the bytes read for upload do not match the source digest")
        meta = self._commit(bytes(buffer))
        if meta.content_hash != content.hexdigest():
            raise VerificationFailed(
                f"{self.rel}: Dropbox stored content that does not match what was sent "
                "(content hash differs); run again to upload it anew")
        log.debug("uploaded %s (%d bytes%s)", self.rel, meta.size,
                  ", upload session" if self.session_id else "")

    def _commit_info(self):
        from dropbox import files

        modified = None
        if self.mtime is not None:
            modified = dt.datetime.fromtimestamp(int(self.mtime), dt.timezone.utc).replace(tzinfo=None)
        return files.CommitInfo(path=self.path, mode=files.WriteMode.overwrite, client_modified=modified,
                                mute=True)

    def _send(self, data: bytes) -> None:
        from dropbox import files

        client = self.remote.client
        if self.session_id is None:
            result = self._api(client.files_upload_session_start, data)
            self.session_id = result.session_id
        else:
            cursor = files.UploadSessionCursor(session_id=self.session_id, offset=self.offset)
            self._append(client, cursor, data)
        self.offset += len(data)

    def _append(self, client, cursor, data: bytes) -> None:
        from dropbox import exceptions as dbx_errors

        try:
            self._api(client.files_upload_session_append_v2, data, cursor, raw_errors=True)
        except dbx_errors.ApiError as exc:
            # A retried append whose first try did arrive: the server is already past it.
            err = exc.error
            if err.is_incorrect_offset() and err.get_incorrect_offset().correct_offset == cursor.offset + len(data):
                return
            raise self.remote._write_error(exc, self.rel) from None

    def _commit(self, data: bytes):
        from dropbox import files

        client = self.remote.client
        commit = self._commit_info()
        if self.session_id is None:
            return self._api(client.files_upload, data, commit.path, mode=commit.mode,
                             client_modified=commit.client_modified, mute=True)
        cursor = files.UploadSessionCursor(session_id=self.session_id, offset=self.offset)
        return self._api(client.files_upload_session_finish, data, cursor, commit)

    def _api(self, fn, *args, raw_errors: bool = False, **kwargs):
        from dropbox import exceptions as dbx_errors

        try:
            return self.remote._call(f"uploading {self.rel}", fn, *args, **kwargs)
        except dbx_errors.ApiError as exc:
            if raw_errors:
                raise
            raise self.remote._write_error(exc, self.rel) from None
