"""Hashing many files at once: used by manifest, mirror --checksum, audit and compare.

Small files are hashed by a pool of threads (one file each); BLAKE3 releases
the GIL, so the pool keeps every core busy. A large local file is hashed
from an mmap by BLAKE3's own threads.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from typing import Callable, Iterable

from fitsync.errors import FitsyncError
from fitsync.remotes.base import Capability, Entry, Remote


def default_jobs() -> int:
    return max(2, os.cpu_count() or 2)


def digest_entries(
    remote: Remote,
    entries: Iterable[Entry],
    *,
    algo: str = "blake3",
    jobs: int | None = None,
    on_done: Callable[[Entry], None] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Return ({path: hexdigest}, {path: error}) for ``entries`` of ``remote``.

    A digest the listing already carries (``Entry.hashes``) is used as is.
    """
    digests: dict[str, str] = {}
    errors: dict[str, str] = {}
    todo = []
    for entry in entries:
        known = entry.hashes.get(algo)
        if known:
            digests[entry.path] = known
            if on_done:
                on_done(entry)
        else:
            todo.append(entry)

    def work(entry: Entry) -> str:
        return remote.digest(entry.path, algo)

    with cf.ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
        futures = {pool.submit(work, e): e for e in todo}
        for future in cf.as_completed(futures):
            entry = futures[future]
            try:
                digests[entry.path] = future.result()
            except FitsyncError as exc:
                errors[entry.path] = str(exc)
            except OSError as exc:
                errors[entry.path] = f"cannot read: {exc.strerror or exc}"
            if on_done:
                on_done(entry)
    return digests, errors


def common_algorithm(a: Remote, b: Remote) -> str:
    """A digest both sides produce cheaply: one a side lists for free (Dropbox's
    content hash) when the other side is local and can compute it, else BLAKE3."""
    for one, other in ((a, b), (b, a)):
        for algo in sorted(one.listed_hashes):
            if algo in other.listed_hashes or Capability.LOCAL in other.capabilities:
                return algo
    return "blake3"
