"""Symlinks of a local source after a mirror's transfers: counted as
skipped, or made in a local destination (``--links``); ``--copy-links``
listed the files they lead to as ordinary entries already."""

from __future__ import annotations

from fitsync.engine.plan import Action, Item
from fitsync.errors import FitsyncError
from fitsync.paths import shown
from fitsync.remotes.base import Capability


def mirror_links(mirror) -> None:
    """Symlinks of a local source: reported as skipped, or made in a local
    destination (``--links``); ``--copy-links`` listed their targets already."""
    links = mirror.src.symlinks() if Capability.LINKS in mirror.src.capabilities else []
    if not links or mirror.options.links == "follow":
        return
    from fitsync.remotes.links import is_safe

    for link in links:
        shown_link = f"{shown(link.path)} -> {shown(link.target)}"
        why = _link_refused(mirror, link, is_safe(link))
        if why:
            mirror.result.links_skipped += 1
            mirror.reporter.note(link.path, f"skipping {why} \"{shown(link.path)}\"")
            continue
        if mirror.options.dry_run or _place_link(mirror, link):
            mirror.result.links_copied += 1
            mirror.reporter.note(link.path, f"cL+++++++++ {shown_link}")
        elif mirror.reporter.itemize_unchanged:
            mirror.reporter.note(link.path, f".L          {shown_link}")

def _link_refused(mirror, link, safe: bool) -> str | None:
    """Why ``link`` is not made in the destination (rsync's wording), or None."""
    if mirror.options.links == "skip":
        return "non-regular file"
    if not safe and mirror.options.links != "unsafe-links":
        return "unsafe symlink (it leads outside the source; --unsafe-links copies it)"
    if Capability.LINKS not in mirror.dst.capabilities:
        return "symlink (links are made only in a local destination)"
    return None

def _place_link(mirror, link) -> bool:
    from fitsync.paths import join_under
    from fitsync.remotes.links import place_link

    try:
        return place_link(mirror.dst.local_root(), link, join_under)
    except (FitsyncError, OSError) as exc:
        mirror.fail(Item(link.path, Action.NEW, "symlink"), exc)
        return False
