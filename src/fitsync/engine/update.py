"""Updating a file the local destination already holds, at the cost of what changed.

How the new version is built (``Moved.built``, shown by --itemize and --json):

* a new file is ``copied``, or ``cloned`` whole from a local source on the
  same file system with reflinks (``pull_new_file``);

* ``cloned``: the destination's file system shares blocks between files
  (XFS with reflink, btrfs, bcachefs, ZFS 2.2+). The new file is built under
  a temporary name from the delta recipe; unchanged runs share the old
  copy's blocks (fitsync.reflink) and only changed ranges are written. It
  is verified and renamed, as every other build.
* ``in place`` (``inplace``): the changed ranges are written into the file
  itself, each range's old bytes first saved in an undo journal
  (fitsync.inplace); see ``recover``.
* ``rewritten``: a local source on any other file system is copied whole,
  as rsync does for local copies: a delta would read the source and the old
  copy and still write every byte of a new file, which costs more.
* for a remote source, the delta's new file: ``kernel copy`` where the old
  runs were copied by the kernel (copy_file_range, files under 64 MiB),
  ``rewritten`` where they went through fitsync's buffers (direct I/O,
  which on the benchmark VM writes a large file faster than the page cache).
"""

from __future__ import annotations

import logging
import os

from fitsync.engine.plan import Action, Item
from fitsync.engine.transfer import (CHUNK, Moved, _check_source_unchanged, identity_key, _local_source,
                                     _trusted_digest, pull_new, refuse_incomplete_fits, source_identity,
                                     split_ranges)
from fitsync.errors import VerificationFailed
from fitsync.hashes import file_digest
from fitsync.mapped import mapped_file
from fitsync.remotes.base import Capability, Remote
from fitsync.remotes.local import LocalRemote, open_state_file, unlink_quietly

log = logging.getLogger("fitsync.engine.update")

# How a file was built, beside the writers' own "cloned", "kernel copy", "rewritten" (Writer.built).
CLONED, IN_PLACE, REWRITTEN, COPIED = "cloned", "in place", "rewritten", "copied"
RESUMED = "resumed"  # a new file that went on after the bytes an interrupted copy kept


def source_signature(src: Remote, path: str, like: str | None = None):
    """The source file's block signature, computed where it is cheap, else None.
    ``like`` is the local old copy, which lets a remote send only differing sums."""
    if Capability.LOCAL in src.capabilities:
        from fitsync.signature import signature_of_file

        return signature_of_file(src.local_path(path))
    if Capability.SIGNATURE in src.capabilities:
        return src.block_signature(path, like=like)
    return None


CLONE_MIN = 1 << 20  # below this a copy costs no more than the probe and the clone


def pull_new_file(src: Remote, dst: LocalRemote, item: Item, on_bytes=None, fits_check: bool = False) -> Moved:
    """A file the destination lacks: cloned whole from a local source on the
    same file system with reflinks, else copied (transfer.pull_new)."""
    local = _local_source(src, item)
    if local is not None and item.src.size >= CLONE_MIN:
        moved = _clone_whole(src, dst, item, local, on_bytes, fits_check)
        if moved is not None:
            return moved
    return _copied(pull_new(src, dst, item, on_bytes, fits_check))


def _clone_whole(src: Remote, dst: LocalRemote, item: Item, local: str, on_bytes, fits_check: bool) -> Moved | None:
    """The new file as a clone of the local source (cp --reflink): no byte is
    written. What is verified is what the clone shares: the source's bytes,
    hashed after the clone, with the source checked unchanged around it."""
    from fitsync.reflink import can_clone, clone_file

    tmp = os.path.join(dst.state_dir("tmp"), identity_key(item) + ".clone")
    before = source_identity(src, item)
    with open(local, "rb") as source:
        if not can_clone(source.fileno(), os.path.dirname(tmp)):
            return None
        try:
            with open_state_file(tmp, "wb") as out:
                if not clone_file(source.fileno(), out.fileno()):
                    raise _NotCloned()
            digest = file_digest(local)
            _check_source_unchanged(src, item, before)
            trusted = _trusted_digest(item)
            if trusted is not None and digest != trusted:
                raise VerificationFailed(f"{item.path}: the source does not match its expected digest")
            if os.path.getsize(tmp) != item.src.size:
                raise VerificationFailed(f"{item.path}: the clone is not the size of the source")
            if fits_check:
                refuse_incomplete_fits(tmp, item)
            dst.install(tmp, item.path, item.src.mtime, local)
        except _NotCloned:
            unlink_quietly(tmp)
            return None
        except BaseException:
            unlink_quietly(tmp)
            raise
    if on_bytes:
        on_bytes(item.src.size, matched=True)
    return Moved(transferred=0, reused=item.src.size, built=CLONED)


class _NotCloned(Exception):
    """This pair of files cannot share blocks after all: copy instead."""


def pull_delta(src: Remote, dst: LocalRemote, item: Item, on_bytes=None, fits_check: bool = False,
               recorded=None, inplace: bool = False, whole_file: bool | None = None) -> Moved:
    """Update the local copy of ``item`` using what it already holds.
    ``recorded`` (fitsync.recorded.RecordedSignatures) may say what the
    local copy's blocks are, sparing a pass over it. ``whole_file`` False
    makes a local source travel as a delta even where a whole copy is cheaper."""
    basis_path = dst.path_of(item.path)
    if item.dst is None or item.dst.size == 0:
        return pull_new_file(src, dst, item, on_bytes, fits_check)
    clones = not inplace and _clones(dst, basis_path)
    if Capability.LOCAL in src.capabilities and not (clones or inplace) and whole_file is not False:
        moved = pull_new(src, dst, item, on_bytes, fits_check)
        moved.built = REWRITTEN
        return moved
    before = source_identity(src, item)
    sig = source_signature(src, item.path, like=basis_path)
    if sig is None:
        return _copied(pull_new(src, dst, item, on_bytes, fits_check))
    trusted = _trusted_digest(item)
    blake3_sig = sig.sums.digest_algo == "blake3"  # else (a stock host's STDLIB sums) trusted is checked after
    if trusted is not None and blake3_sig and sig.digest.hex() != trusted:
        raise VerificationFailed(f"{item.path}: the source does not match its expected digest")
    build = _Build(src, dst, item, sig, _recorded_signature(recorded, item, sig), on_bytes, before, trusted)
    try:
        return _build(build, inplace, clones, fits_check)
    except VerificationFailed:
        if build.recorded_sig is None:
            raise
        _check_source_unchanged(src, item, before)  # a changed source is the engine's to retry
        # The old copy is not what the record says (changed behind it, same
        # size and mtime): find its blocks by hashing it after all.
        log.info("%s: the local copy differs from the destination's manifest; hashing it", item.path)
        recorded.forget(item.path)
        build.recorded_sig = None
        return _build(build, inplace, clones, fits_check)


def _build(build: "_Build", inplace: bool, clones: bool, fits_check: bool) -> Moved:
    """The new version in place, or under a temporary name renamed over the old."""
    if inplace:
        from fitsync.engine.inplace_update import update_in_place

        return update_in_place(build, fits_check)
    build.to_temporary(clones)
    tmp = _delta_tmp(build.dst, build.item)
    try:
        build.check_result(tmp, fits_check)
        build.dst.install(tmp, build.item.path, build.item.src.mtime, _local_source(build.src, build.item))
    except BaseException:
        unlink_quietly(tmp)
        raise
    build.progress.finish()
    return Moved(transferred=build.fetched, reused=build.reused, built=build.built)


def _copied(moved: Moved) -> Moved:
    moved.built = RESUMED if moved.reused else COPIED
    return moved


def _clones(dst: LocalRemote, basis_path: str) -> bool:
    """Whether the destination's file system can share the old copy's blocks."""
    from fitsync.reflink import can_clone

    try:
        with open(basis_path, "rb") as basis:
            return can_clone(basis.fileno(), dst.state_dir("tmp"))
    except OSError:
        return False


def _recorded_signature(recorded, item: Item, sig):
    """The destination manifest's signature of the old copy, when it may
    stand in for hashing that copy."""
    if recorded is None or sig.like_offsets is not None or item.action != Action.DELTA:
        return None
    if sig.sums.digest_algo != "blake3":
        return None
    # Never for a repair (that copy is known to be bad), nor in another
    # block size (nothing would pair, and the whole copy would be rolled).
    found = recorded.signature(item.path, item.dst)
    return found if found is not None and found.block_size == sig.block_size else None


class _CountedProgress:
    """``on_bytes`` for one file of ``size`` bytes that never reports more
    than the file holds (a second attempt fetches again), and reports the
    rest at the end (the bytes taken from the old copy)."""

    def __init__(self, on_bytes, size: int):
        self._on_bytes = on_bytes
        self._size = size
        self._reported = 0

    def __call__(self, n: int, matched: bool = False) -> None:
        n = min(n, self._size - self._reported)
        if self._on_bytes and n > 0:
            self._reported += n
            self._on_bytes(n, matched=True) if matched else self._on_bytes(n)

    def finish(self) -> None:
        self(self._size - self._reported, matched=True)


def _delta_tmp(dst: LocalRemote, item: Item) -> str:
    return os.path.join(dst.state_dir("tmp"), identity_key(item) + ".delta")


class _Build:
    """One delta update: the recipe from the source's signature and the old
    copy, and the source's missing ranges, read as they are written."""

    def __init__(self, src: Remote, dst: LocalRemote, item: Item, sig, recorded_sig, on_bytes, before, trusted):
        self.src, self.dst, self.item, self.sig = src, dst, item, sig
        self.recorded_sig = recorded_sig
        self.before = before  # the local source's identity before it was read
        self.trusted = trusted
        self.progress = _CountedProgress(on_bytes, item.src.size)
        self.fetched = 0
        self.reused = 0
        self.built = REWRITTEN

    def recipe_for(self, basis_map):
        from fitsync.delta import aligned_offsets, fetch_recipe, layout_hint

        # A signature rebuilt from the basis says where its blocks are; a
        # record of the basis pairs them from signatures alone; any other
        # (a release manifest's, a local source's) is placed by hashing
        # the basis in its layout. Either way only the rest is scanned.
        if self.sig.like_offsets is not None:
            known = self.sig.like_offsets
        elif self.recorded_sig is not None:
            known = aligned_offsets(self.sig, self.recorded_sig)
        else:
            known = layout_hint(self.sig, basis_map)
        recipe = fetch_recipe(self.sig, basis_map, known=known)
        # Progress counts bytes processed: the matched ones are done once
        # the recipe is known, so a delta's bar (and ETA) moves as it goes.
        self.progress(recipe.basis_bytes, matched=True)
        self.reused = recipe.basis_bytes
        return recipe

    def read_source(self, ranges):
        # Bounded pieces: a replaced file is one huge SOURCE range, and
        # backends return one bytes object per range.
        for data in self.src.read_ranges(self.item.path, split_ranges(ranges, CHUNK)):
            self.fetched += len(data)
            self.progress(len(data))
            yield data

    def to_temporary(self, clones: bool) -> None:
        """Write the new file to its temporary name from the old copy and the
        source's missing ranges, verified."""
        from fitsync.patch import apply_recipe

        tmp = _delta_tmp(self.dst, self.item)
        with open(self.dst.path_of(self.item.path), "rb") as basis:
            with mapped_file(basis.fileno(), what=basis.name) as basis_map:
                recipe = self.recipe_for(basis_map)
            try:
                with open_state_file(tmp, "wb") as out:
                    writer = None
                    if clones:
                        from fitsync.reflink import CloneWriter

                        writer = CloneWriter(out.fileno(), recipe.new_hasher())
                    self.built = apply_recipe(recipe, basis.fileno(), self.read_source, out.fileno(), writer)
            except BaseException:
                unlink_quietly(tmp)
                raise

    def check_result(self, path: str, fits_check: bool) -> None:
        """What every build checks before the new version counts: the source
        did not change while read, it matches a trusted digest the recipe's
        own (STDLIB) could not, and a FITS file is complete."""
        _check_source_unchanged(self.src, self.item, self.before)
        blake3_sig = self.sig.sums.digest_algo == "blake3"
        if self.trusted is not None and not blake3_sig and file_digest(path) != self.trusted:
            raise VerificationFailed(f"{self.item.path}: the source does not match its expected digest")
        if fits_check:
            refuse_incomplete_fits(path, self.item)
