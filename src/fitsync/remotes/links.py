"""Symlinks in a local source tree: found, judged safe or not, followed.

The walker never follows or lists a symlink; it only counts them, so a tree
without any costs nothing here. With links present, the mirror reports them
(skipped by default), copies them as links (``--links``), or copies what they
point to (``--copy-links``), as rsync's -l and -L do.
"""

from __future__ import annotations

import os
import posixpath
import stat as stat_mod
from typing import NamedTuple


class Link(NamedTuple):
    path: str  # relative to the tree's root, "/"-separated
    target: str  # as stored in the link


def find_links(root: str, skip_top: str) -> list[Link]:
    """Every symlink under ``root`` (not followed), in path order."""
    found = []
    for top, dirs, files in os.walk(root):
        if top == root and skip_top in dirs:
            dirs.remove(skip_top)
        rel_top = os.path.relpath(top, root).replace(os.sep, "/")
        for name in dirs + files:
            full = os.path.join(top, name)
            if os.path.islink(full):
                rel = name if rel_top == "." else f"{rel_top}/{name}"
                found.append(Link(rel, os.readlink(full)))
    return sorted(found)


def is_safe(link: Link) -> bool:
    """rsync's rule: a relative target that never climbs above the tree's root."""
    if posixpath.isabs(link.target) or not link.target:
        return False
    depth = link.path.count("/")  # directories between the root and the link
    for part in link.target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True


def followed_files(root: str, links: list[Link]) -> dict[str, str]:
    """--copy-links: {listed path: real path} of the regular files the links
    lead to; a link to a directory brings the files below it (links inside
    followed too), each real directory walked once, so a loop ends."""
    out: dict[str, str] = {}
    seen_dirs: set[tuple[int, int]] = set()
    pending = [(link.path, os.path.join(root, *link.path.split("/"))) for link in links]
    while pending:
        rel, full = pending.pop()
        try:
            st = os.stat(full)  # follows the link
        except OSError:
            continue  # dangling: nothing to copy
        if stat_mod.S_ISREG(st.st_mode):
            out[rel] = os.path.realpath(full)
        elif stat_mod.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) not in seen_dirs:
            seen_dirs.add((st.st_dev, st.st_ino))
            try:
                names = os.listdir(full)
            except OSError:
                continue
            pending.extend((f"{rel}/{name}", os.path.join(full, name)) for name in names)
    return out


def place_link(dst_root: str, link: Link, join_under) -> bool:
    """Make ``link`` in the destination (a temporary link renamed over the
    old entry, so no reader sees it missing). False when it was already so."""
    full = join_under(dst_root, link.path)
    try:
        if os.path.islink(full) and os.readlink(full) == link.target:
            return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(full), exist_ok=True)
    temporary = os.path.join(os.path.dirname(full), f".fitsync-link-{os.getpid()}-{os.path.basename(full)}")
    os.symlink(link.target, temporary)
    try:
        if os.path.isdir(full) and not os.path.islink(full):
            raise IsADirectoryError(f"{full} is a directory; the source has a symlink there")
        os.replace(temporary, full)
    except BaseException:
        os.unlink(temporary)
        raise
    return True
