"""Hashing many files at once: used by manifest, mirror --checksum, audit and compare.

Small files are hashed by a pool of threads (one file each); BLAKE3 releases
the GIL, so the pool keeps every core busy. A large local file is hashed
from an mmap by BLAKE3's own threads.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from typing import Callable, Iterable, Iterator

from fitsync.errors import FitsyncError
from fitsync.remotes.base import Capability, Entry, Remote


def default_jobs() -> int:
    return max(2, os.cpu_count() or 2)


SMALL_FILE = 1 << 20
BATCH_BYTES = 64 << 20
BATCH_FILES = 512


def batches(entries: list[Entry]) -> Iterator[list[Entry]]:
    """Group files so that each pool task does enough work to outweigh its overhead."""
    batch, size = [], 0
    for entry in entries:
        batch.append(entry)
        size += entry.size
        if size >= BATCH_BYTES or len(batch) >= BATCH_FILES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def for_each_file(entries: Iterable[Entry], work: Callable[[Entry], object], *,
                  jobs: int | None = None) -> Iterator[tuple[Entry, object, str | None]]:
    """Run ``work`` on every file: yield (entry, result, None) or (entry, None, error).

    Small files cost mostly interpreter time, which threads cannot share (the
    GIL), so they are done one after another by a single task; large files
    release the GIL while they hash and are spread over the pool.
    """
    entries = list(entries)
    small = [e for e in entries if e.size < SMALL_FILE]
    large = [e for e in entries if e.size >= SMALL_FILE]

    def run(batch: list[Entry]) -> list:
        out = []
        for entry in batch:
            try:
                out.append((entry, work(entry), None))
            except FitsyncError as exc:
                out.append((entry, None, str(exc)))
            except OSError as exc:
                out.append((entry, None, f"cannot read: {exc.strerror or exc}"))
        return out

    with cf.ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
        futures = [pool.submit(run, small)] if small else []
        futures += [pool.submit(run, batch) for batch in batches(large)]
        for future in cf.as_completed(futures):
            yield from future.result()


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
    for entry, digest, error in for_each_file(todo, lambda e: remote.digest(e.path, algo), jobs=jobs):
        if error is None:
            digests[entry.path] = digest
        else:
            errors[entry.path] = error
        if on_done:
            on_done(entry)
    return digests, errors


def common_algorithm(a: Remote, b: Remote) -> str:
    """A digest both sides produce without moving data: one a side lists for
    free (Dropbox's content hash) when the other is local, else one both
    compute where the data is (BLAKE3, or SHA-256 on hosts without blake3)."""
    for one, other in ((a, b), (b, a)):
        for algo in sorted(one.listed_hashes):
            if algo in other.listed_hashes or Capability.LOCAL in other.capabilities:
                return algo
    ca, cb = _remote_digests(a), _remote_digests(b)
    for algo in ("blake3", "sha256"):
        if (ca is None or algo in ca) and (cb is None or algo in cb):
            return algo
    return "blake3"


def _remote_digests(remote: Remote):
    """Algorithms ``remote`` computes where its data is; None means any (local,
    or a backend that declares nothing and reads the data to hash it)."""
    if Capability.LOCAL in remote.capabilities:
        return None
    return getattr(remote, "remote_digests", None)
