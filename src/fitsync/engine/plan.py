"""Pure decisions: what a mirror does with each file.

Nothing here reads data or touches a file system. The sync engine gathers
facts (listings, digests, FITS states) and asks ``decide`` what to do; the
same decisions drive --dry-run, --itemize and the real run.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from fitsync.paths import shown
from fitsync.remotes.base import Entry


class Action(str, Enum):
    NEW = "new"  # absent from the destination: copy
    DELTA = "delta"  # size or mtime differ: update by delta against the old copy
    REPAIR = "repair"  # same size and mtime, different content: corrupt copy
    UNCHANGED = "unchanged"
    DELETE = "delete"  # absent from the source, --delete given
    INCOMPLETE = "incomplete"  # source FITS file still being written: skipped


class Item(NamedTuple):
    """One decision. A NamedTuple rather than a frozen dataclass: as light to
    build, and it spares a run the import of dataclasses."""

    path: str
    action: Action
    reason: str
    src: Entry | None = None
    dst: Entry | None = None
    expected_digest: str | None = None  # trusted BLAKE3 of the source (manifest or computed)

    @property
    def transfers(self) -> bool:
        return self.action in (Action.NEW, Action.DELTA, Action.REPAIR)


def same_mtime(a: float, b: float, resolution: float) -> bool:
    return abs(a - b) < max(resolution, 1e-6)


def decide(
    src: Entry,
    dst: Entry | None,
    *,
    mtime_resolution: float,
    content_differs: bool | None = None,
    content_reason: str = "content differs",
    expected_digest: str | None = None,
) -> Item:
    """Decide for one source file.

    ``content_differs`` is None when content was not compared (no --checksum,
    no manifest).
    """
    if dst is None:
        return Item(src.path, Action.NEW, "not in destination", src, dst, expected_digest)
    if src.size != dst.size:
        reason = f"size differs ({dst.size} -> {src.size})"
        return Item(src.path, Action.DELTA, reason, src, dst, expected_digest)
    if not same_mtime(src.mtime, dst.mtime, mtime_resolution):
        return Item(src.path, Action.DELTA, "mtime differs", src, dst, expected_digest)
    if content_differs:
        return Item(src.path, Action.REPAIR, content_reason, src, dst, expected_digest)
    reason = "same content" if content_differs is False else "same size and mtime"
    return Item(src.path, Action.UNCHANGED, reason, src, dst, expected_digest)


def deletions(src_paths: set[str], dst_entries: dict[str, Entry]) -> list[Item]:
    return [
        Item(path, Action.DELETE, "not in source", None, entry)
        for path, entry in sorted(dst_entries.items())
        if path not in src_paths
    ]


def itemize_line(item: Item) -> str:
    return f"{item.action.value:<10} {shown(item.path)}  ({item.reason})"


def rsync_itemize(item: Item) -> str:
    """rsync's --itemize-changes (``%i %n``) line: ``>f+++++++++`` new,
    ``>f.st......`` size/time changed, ``>fc........`` content repaired,
    ``*deleting  `` gone, ``.f          `` unchanged (-ii)."""
    if item.action == Action.NEW:
        code = ">f+++++++++"
    elif item.action == Action.DELETE:
        code = "*deleting  "
    elif item.action == Action.UNCHANGED:
        code = ".f         "
    elif item.action == Action.INCOMPLETE:
        code = "*incomplete"
    else:
        size = "s" if item.src is not None and item.dst is not None and item.src.size != item.dst.size else "."
        time = "t" if item.src is not None and item.dst is not None and item.src.mtime != item.dst.mtime else "."
        checksum = "c" if item.action == Action.REPAIR else "."
        code = f">f{checksum}{size}{time}......"
    return f"{code} {shown(item.path)}"
