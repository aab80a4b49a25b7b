"""Release manifests as a source of listings and block signatures.

A release published with ``fitsync manifest ROOT --blocks`` carries, next to
its data, ``fitsync-manifest.jsonl``: every file's size, mtime, BLAKE3 and
block signature (docs/release-manifests.md). Any remote that can read byte
ranges but cannot run code (an HTTP server, Dropbox, an sftp-only account)
then serves zsync-style deltas: the mirror rolls over its old copy with the
manifest's signature and fetches only the missing ranges.

``ReleaseManifest`` is the parsed, optionally signature-verified manifest;
``ReleaseRemote`` puts one in front of any ``Remote``; ``release_source``
decides when to do so.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import BinaryIO, Callable, Iterator

import blake3

from fitsync.errors import BadInput, NotFound
from fitsync.formats.manifest import DEFAULT_NAME, Manifest, parse_manifest_bytes
from fitsync.remotes.base import Capability, Entry, Remote
from fitsync.signing import (
    SIGNATURE_SUFFIX,
    SignatureRejected,
    check_file_digest,
    key_id,
    load_public_key,
    verify_manifest_bytes,
)

log = logging.getLogger("fitsync.release")

MANIFEST_NAME = DEFAULT_NAME
SIGNATURE_NAME = DEFAULT_NAME + SIGNATURE_SUFFIX
# A manifest with block signatures costs ~0.1-1 % of the data; 1 GiB covers a
# petabyte-scale release and still bounds what a hostile server can make us hold.
MAX_MANIFEST_BYTES = 1 << 30

Fetch = Callable[[str], "bytes | None"]


class ReleaseManifest:
    """A release manifest read from a remote's root, its signature checked
    when a public key is given."""

    def __init__(self, raw: bytes, manifest: Manifest, *, signature_raw: bytes | None, verified_by: str | None,
                 mtime: float):
        self.raw = raw
        self.manifest = manifest
        self.signature_raw = signature_raw
        self.verified_by = verified_by  # key id, when the signature was checked
        self.mtime = mtime
        self._signatures: dict = {}
        self._lock = threading.Lock()

    @property
    def has_blocks(self) -> bool:
        return any("blocks" in e.extra for e in self.manifest.entries.values())

    def own_files(self) -> dict[str, bytes]:
        """The manifest and its signature, as they are mirrored along with the data."""
        files = {MANIFEST_NAME: self.raw}
        if self.signature_raw is not None:
            files[SIGNATURE_NAME] = self.signature_raw
        return files

    def entries(self) -> list[Entry]:
        listed = [Entry(e.path, e.size, e.mtime, {"blake3": e.blake3}) for e in self.manifest.entries.values()]
        for name, data in self.own_files().items():
            if name not in self.manifest.entries:
                listed.append(Entry(name, len(data), self.mtime, {"blake3": blake3.blake3(data).hexdigest()}))
        listed.sort(key=lambda e: e.path)
        return listed

    def entry(self, path: str) -> Entry:
        m = self.manifest.entries.get(path)
        if m is not None:
            return Entry(m.path, m.size, m.mtime, {"blake3": m.blake3})
        data = self.own_files().get(path)
        if data is not None:
            return Entry(path, len(data), self.mtime, {"blake3": blake3.blake3(data).hexdigest()})
        raise NotFound(f"{path} is not in the release manifest")

    def signature(self, path: str):
        """The block signature the manifest carries for ``path``, or None."""
        with self._lock:
            if path in self._signatures:
                return self._signatures[path]
        m = self.manifest.entries.get(path)
        sig = m.signature() if m is not None else None
        if sig is not None:
            # The signature is trusted only as far as it agrees with the (verified) digest.
            if sig.file_size != m.size or sig.digest.hex() != m.blake3:
                raise BadInput(
                    f"release manifest entry {path}: its block signature describes another file "
                    "(size or BLAKE3 differ from the entry); regenerate the manifest"
                )
        with self._lock:
            self._signatures[path] = sig
        return sig

    def verifying_reader(self, path: str, stream: BinaryIO) -> BinaryIO:
        """``stream`` checked at its end against the verified manifest (signed releases only)."""
        m = self.manifest.entries.get(path)
        if self.verified_by is None or m is None:
            return stream
        return VerifyingReader(stream, path, m.blake3)


def load_release_manifest(fetch: Fetch, *, where: str, verify_key: str | None = None,
                          mtime: float = 0.0) -> ReleaseManifest | None:
    """Read ``fitsync-manifest.jsonl`` (and its ``.sig``) through ``fetch(name)``,
    which returns the bytes or None when the file does not exist.

    Returns None when there is no manifest. With ``verify_key`` the signature
    must verify with that public key, else SignatureRejected.
    """
    public_key = load_public_key(verify_key) if verify_key else None
    raw = fetch(MANIFEST_NAME)
    if raw is None:
        if public_key is not None:
            raise SignatureRejected(
                f"{where} has no {MANIFEST_NAME}, so there is nothing to verify with --verify-key; "
                "refusing an unsigned source"
            )
        return None
    signature_raw = fetch(SIGNATURE_NAME)
    verified_by = None
    name = f"{where}{MANIFEST_NAME}"
    if public_key is not None:
        if signature_raw is None:
            raise SignatureRejected(f"manifest {name} is not signed ({SIGNATURE_NAME} is missing); refusing it")
        verify_manifest_bytes(raw, signature_raw, public_key, name=name, key_name=verify_key)
        verified_by = key_id(public_key)
    manifest = parse_manifest_bytes(raw, name)
    mtime = mtime or _created(manifest)
    return ReleaseManifest(raw, manifest, signature_raw=signature_raw, verified_by=verified_by, mtime=mtime)


def _created(manifest: Manifest) -> float:
    """The manifest's creation time from its header: the mtime its mirrored copy gets
    when the server tells no Last-Modified."""
    import datetime as dt

    try:
        when = dt.datetime.strptime(str(manifest.header.get("created")), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return 0.0
    return when.replace(tzinfo=dt.timezone.utc).timestamp()


def describe(release: ReleaseManifest) -> str:
    """One line for the log: what the listing came from."""
    parts = [f"{len(release.manifest.entries)} files"]
    if release.has_blocks:
        parts.append("with block signatures")
    if release.verified_by:
        parts.append(f"signature verified, key id {release.verified_by}")
    elif release.signature_raw is not None:
        parts.append("signed, but not checked (no --verify-key)")
    return f"the release manifest {MANIFEST_NAME} ({', '.join(parts)})"


class VerifyingReader(io.RawIOBase):
    """Hashes a stream read from its start to its end and refuses, at the end,
    bytes that do not match the verified manifest. A seek stops the check
    (the caller then verifies the file it wrote, as the mirror engine does)."""

    def __init__(self, inner: BinaryIO, path: str, expected_blake3: str):
        self._inner = inner
        self._path = path
        self._expected = expected_blake3
        self._hasher = blake3.blake3()
        self._pos = 0
        self._checking = True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._inner.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        pos = self._inner.seek(offset, whence)
        if pos != self._pos:
            self._checking = False
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        n = self._inner.readinto(buffer)
        if n:
            if self._checking:
                self._hasher.update(memoryview(buffer)[:n])
            self._pos += n
        elif self._checking and len(buffer):
            self._checking = False
            check_file_digest(self._path, self._hasher.hexdigest(), self._expected)
        return n

    def close(self) -> None:
        self._inner.close()
        super().close()


class ReleaseRemote(Remote):
    """Any remote that can read ranges, listed from the release manifest at
    its root and offering that manifest's block signatures, so pulls from it
    take the delta path. Reads go to the wrapped remote."""

    release_aware = True

    def __init__(self, inner: Remote, release: ReleaseManifest):
        super().__init__(inner.url)
        self.inner = inner
        self.release = release
        caps = set(inner.capabilities) & {Capability.READ_RANGE, Capability.LOCAL, Capability.DIGEST}
        if release.has_blocks and Capability.READ_RANGE in inner.capabilities:
            caps.add(Capability.SIGNATURE)
        self.capabilities = frozenset(caps)
        self.listed_hashes = frozenset({"blake3"}) | frozenset(inner.listed_hashes)
        self.mtime_resolution = inner.mtime_resolution
        self.remote_digests = inner.remote_digests

    def exists(self) -> bool:
        return True

    def local_root(self) -> str | None:
        return self.inner.local_root()

    def list(self) -> Iterator[Entry]:
        return iter(self.release.entries())

    def stat(self, path: str) -> Entry:
        return self.release.entry(path)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        own = self.release.own_files().get(path)
        if own is not None:
            return own[offset:offset + length]
        return self.inner.read_range(path, offset, length)

    def read_ranges(self, path: str, ranges):
        own = self.release.own_files().get(path)
        if own is not None:
            return (own[o:o + n] for o, n in ranges)
        return self.inner.read_ranges(path, ranges)

    def open_read(self, path: str) -> BinaryIO:
        own = self.release.own_files().get(path)
        if own is not None:  # the bytes that were verified, not a second download
            return io.BytesIO(own)
        return io.BufferedReader(self.release.verifying_reader(path, self.inner.open_read(path)))

    def local_path(self, path: str) -> str | None:
        return self.inner.local_path(path)

    def digest(self, path: str, algo: str = "blake3") -> str:
        return self.inner.digest(path, algo)

    def block_signature(self, path: str, like: str | None = None, digest: bool = True):
        """The manifest's signature of ``path``; None for a file it has none for
        (the mirror engine then downloads the file whole). ``like`` is ignored."""
        return self.release.signature(path)

    def close(self) -> None:
        self.inner.close()


def release_source(remote: Remote, verify_key: str | None = None) -> Remote:
    """``remote`` as a mirror source: listed from its release manifest when
    it has one, can read ranges and cannot compute signatures itself (Dropbox,
    an sftp-only account), or whenever --verify-key demands a signed manifest."""
    if remote.release_aware:
        return remote
    if not verify_key:
        if Capability.LOCAL in remote.capabilities:
            return remote  # a local tree is listed as it is; its manifest is just a file
        if Capability.SIGNATURE in remote.capabilities:
            return remote  # it computes signatures of the live files itself (the SSH agent)
        if Capability.READ_RANGE not in remote.capabilities:
            return remote  # without ranges there is no delta to gain

    def fetch(name: str) -> bytes | None:
        try:
            entry = remote.stat(name)
        except NotFound:
            return None
        if entry.size > MAX_MANIFEST_BYTES:
            raise BadInput(f"{remote.url}: {name} is {entry.size} bytes, too large to be a manifest")
        with remote.open_read(name) as f:
            return f.read()

    release = load_release_manifest(fetch, where=_with_slash(remote.url), verify_key=verify_key)
    if release is None:
        return remote
    log.info("listing %s from %s", remote.url, describe(release))
    return ReleaseRemote(remote, release)


def manifest_overhead(manifest_bytes: int, data_bytes: int) -> float:
    """Size of a manifest as a percentage of the data it describes."""
    return 100.0 * manifest_bytes / data_bytes if data_bytes else 0.0


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"
