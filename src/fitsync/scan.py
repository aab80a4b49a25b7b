"""Hashing many files at once: used by manifest, mirror --checksum, audit and compare.

Small files cost system calls and interpreter time more than hashing: those
of a local tree are read and hashed (BLAKE3) by C threads with the GIL
released, or, for other digests, read in batches by C one batch ahead of the
thread that hashes them; those of a remote go through its digest(). A large
local file is hashed from an mmap by BLAKE3's own threads.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from itertools import accumulate
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
    if not entries:
        return
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

    import concurrent.futures as cf  # here: a run whose files all go through hash_local_files needs no pool

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
    if remote.hashes_in_bulk:
        hashed, failed, _ = hash_local_files(remote, todo, algo=algo, jobs=jobs, on_done=on_done)
        digests.update(hashed)
        errors.update(failed)
        return digests, errors
    for entry, digest, error in for_each_file(todo, lambda e: remote.digest(e.path, algo), jobs=jobs):
        if error is None:
            digests[entry.path] = digest
        else:
            errors[entry.path] = error
        if on_done:
            on_done(entry)
    return digests, errors


# Small files are read in batches into two buffers of this size that take turns:
# large enough that handing batches between the threads costs little, small
# enough to stay in the processor's caches.
READ_BATCH_BYTES = 4 << 20  # more than SMALL_FILE: every small file fits a batch
READ_BATCH_FILES = 1024
# Small files hashed by one call of the C threads: enough that starting the
# threads costs nothing, few enough that progress moves.
HASH_CALL_FILES = 8192


def hash_local_files(remote, entries: Iterable[Entry], *, algo: str = "blake3", starts_with: bytes = b"",
                     jobs: int | None = None, on_done: Callable[[Entry], None] | None = None,
                     ) -> tuple[dict[str, str], dict[str, str], list[Entry]]:
    """Digests of files of a local tree (``remote.hashes_in_bulk``): ({path: hex
    digest}, {path: error}, [entries whose bytes start with ``starts_with``]).

    Small files: for BLAKE3, C threads read and hash them without the GIL
    (ext/b3.h); for other digests a C thread reads a batch while this one
    hashes the batch before (a C loop calling the hasher). Large files,
    and small ones that grew since they were listed, are hashed one by one
    (hashes.digest_and_head: mmap and BLAKE3's threads for large ones),
    spread over ``jobs`` threads. ``on_done(entry)`` follows each file (progress).
    """
    from fitsync.hashes import digest_and_head

    entries = list(entries)
    small = [e for e in entries if e.size < SMALL_FILE]
    one_by_one = [e for e in entries if e.size >= SMALL_FILE]
    digests: dict[str, str] = {}
    errors: dict[str, str] = {}
    starting: list[Entry] = []
    if algo == "blake3":
        for start in range(0, len(small), HASH_CALL_FILES):  # progress between calls
            batch = small[start:start + HASH_CALL_FILES]
            found, first = _blake3_small(remote, batch, starts_with, jobs)
            _sort_small_results(batch, found, digests, errors, one_by_one, on_done)
            starting += [batch[i] for i in first]
    else:
        _hash_small_in_batches(remote, small, algo, starts_with, digests, errors, one_by_one, starting, on_done)
    work = lambda e: digest_and_head(remote.path_of(e.path), algo, len(starts_with))  # noqa: E731
    for entry, result, error in for_each_file(one_by_one, work, jobs=jobs):
        if error is not None:
            errors[entry.path] = error
        else:
            digests[entry.path] = result[0]
            if starts_with and result[1].startswith(starts_with):
                starting.append(entry)
        if on_done:
            on_done(entry)
    return digests, errors, starting


def _blake3_small(remote, small: list[Entry], starts_with: bytes, jobs: int | None):
    """BLAKE3 of small files by C threads, read and hashed without the GIL
    (fitsync._walk.blake3_files): (per file a digest, errno or None; indexes
    of the files starting with ``starts_with``)."""
    from fitsync._walk import blake3_files

    return blake3_files(remote.root, [e.path for e in small], [e.size for e in small], starts_with,
                        jobs or default_jobs())


def _sort_small_results(batch: list[Entry], found: list, digests: dict, errors: dict, one_by_one: list,
                        on_done) -> None:
    """Per-file outcomes of a small-file reader: a digest, an errno (int) or
    None (the file grew since it was listed: hashed one by one later)."""
    if all(type(x) is str for x in found):  # the common case: every file hashed
        digests.update(zip([e.path for e in batch], found))
    else:
        for entry, result in zip(batch, found):
            if result is None:
                one_by_one.append(entry)
            elif type(result) is int:
                errors[entry.path] = f"cannot read: {os.strerror(result)}"
            else:
                digests[entry.path] = result
    if on_done:
        for entry, result in zip(batch, found):
            if result is not None:
                on_done(entry)


def _hash_small_in_batches(remote, small: list[Entry], algo: str, starts_with: bytes, digests: dict,
                           errors: dict, one_by_one: list, starting: list, on_done) -> None:
    """Small files for digests other than BLAKE3 (sha256, sha512 for BagIt):
    a C thread reads a batch while this one hashes the batch before."""
    from fitsync._walk import BatchReader, hex_digests

    hasher = _hasher_factory(algo)
    bounds = _read_batches(small)
    reader = BatchReader(remote.root, [e.path for e in small], [e.size for e in small], bounds, READ_BATCH_BYTES)
    try:
        for k, (start, stop) in enumerate(zip(bounds, bounds[1:])):
            spans, buffer = reader.get(k)
            found, first = hex_digests(hasher, buffer, spans, starts_with)
            reader.done(k)
            batch = small[start:stop]
            starting += [batch[i] for i in first]
            for i, span in enumerate(spans):
                if type(span) is int:
                    found[i] = span  # the errno, as blake3_files reports it
            _sort_small_results(batch, found, digests, errors, one_by_one, on_done)
    finally:
        reader.close()


def _hasher_factory(algo: str):
    """data -> an object with hexdigest(), for ``algo`` (not BLAKE3: blake3_files
    hashes those small files)."""
    from fitsync.hashes import new_hasher

    def hashed(data: memoryview):
        hasher = new_hasher(algo)
        hasher.update(bytes(data))  # not every hasher takes a memoryview
        return hasher

    return hashed


def _read_batches(entries: list[Entry]) -> list[int]:
    """Batch bounds over ``entries``: consecutive files whose sizes (+1 each,
    see BatchReader) fit one buffer; batch k is entries[bounds[k]:bounds[k + 1]]."""
    ends = list(accumulate(e.size + 1 for e in entries))  # where each file's bytes end
    bounds = [0]
    while bounds[-1] < len(entries):
        start = bounds[-1]
        room = (ends[start - 1] if start else 0) + READ_BATCH_BYTES
        bounds.append(min(max(bisect_right(ends, room, start), start + 1), start + READ_BATCH_FILES))
    return bounds


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
    return remote.remote_digests or None
