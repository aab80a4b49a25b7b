"""What the destination's own copy of a release manifest records about its files.

A mirror of a release keeps the release's ``fitsync-manifest.jsonl`` (with
block signatures) at its root. When the next release arrives, that copy still
describes the old files the destination holds: a file whose size and mtime
are the ones recorded is, block for block, what the record says. Its blocks
can then be paired with the new release's signature from the two manifests
alone (fitsync.delta.aligned_offsets), with no pass over the old copy: on an
archive whose old files are not in the page cache that saves reading them
twice. The record is only a hint: the rebuilt file is verified against the
new release's BLAKE3, and a copy that was changed behind the record's back
(same size and mtime, other bytes) fails that check and is redone by hashing
the old copy (fitsync.engine.update.pull_delta).

The copy is read once, before any transfer of the run can replace it with
the new release's manifest, and parsed only when a file asks for it.
"""

from __future__ import annotations

import logging
import os
import stat
import threading

from fitsync.errors import BadInput
from fitsync.formats.manifest import DEFAULT_NAME, parse_manifest_bytes
from fitsync.engine.plan import same_mtime
from fitsync.remotes.base import Entry

log = logging.getLogger("fitsync.recorded")

# A record larger than this is not worth holding for a hint (a release
# manifest with blocks is ~0.2 % of its data).
MAX_RECORD_BYTES = 256 << 20


class RecordedSignatures:
    """Block signatures of the destination's files, as its manifest copy records them."""

    def __init__(self, raw: bytes | None, name: str = DEFAULT_NAME, mtime_resolution: float = 0.0):
        self._raw = raw  # parsed at the first question, then dropped
        self._name = name
        self._resolution = mtime_resolution  # as the planner compares mtimes
        self._entries: dict | None = None if raw is not None else {}
        self._lock = threading.Lock()

    @classmethod
    def of_destination(cls, root: str, mtime_resolution: float = 0.0) -> "RecordedSignatures":
        """The record at ``root``, empty when there is none (or it is not a
        plain file of a sensible size). Non-blocking open: a FIFO put there
        must not hang the run."""
        path = os.path.join(root, DEFAULT_NAME)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return cls(None)
        try:
            st = os.fstat(fd)
            if not (stat.S_ISREG(st.st_mode) and st.st_size <= MAX_RECORD_BYTES):
                return cls(None)
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(MAX_RECORD_BYTES + 1)  # bounded even if it grows meanwhile
            return cls(raw if len(raw) <= MAX_RECORD_BYTES else None, path, mtime_resolution)
        except OSError:
            return cls(None)
        finally:
            os.close(fd)

    def signature(self, path: str, held: Entry | None):
        """The recorded block signature of ``path``, if the file the
        destination holds (``held``) has the recorded size and mtime; else None."""
        if held is None:
            return None
        entry = self._parsed().get(path)
        if (entry is None or entry.size != held.size
                or not same_mtime(entry.mtime, held.mtime, self._resolution)):  # False for a NaN too
            return None
        try:
            sig = entry.signature()
        except BadInput:
            return None
        if sig is None or sig.file_size != held.size:
            return None
        return sig

    def forget(self, path: str) -> None:
        """The record of ``path`` proved wrong: later attempts hash the copy."""
        with self._lock:
            if self._entries:
                self._entries.pop(path, None)

    def _parsed(self) -> dict:
        with self._lock:
            if self._entries is None:
                try:
                    self._entries = dict(parse_manifest_bytes(self._raw, self._name).entries)
                except BadInput as exc:  # a damaged record only costs the hint
                    log.debug("ignoring the destination's manifest: %s", exc)
                    self._entries = {}
                self._raw = None
            return self._entries
