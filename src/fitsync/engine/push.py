"""Pushes: per-file transfers into a remote destination.

A remote that can patch gets the rsync direction: its old file's signature
comes back, the new local file is scanned, and only literals go up (a stock
SSH host checks them with a STDLIB digest). A remote source and a remote
destination of the same host relay a delta; otherwise the file is streamed
to ``write_atomic``. Either way the destination verifies before it renames.
"""

from __future__ import annotations

import logging

from fitsync.engine.plan import Item
from fitsync.engine.transfer import (CHUNK, Moved, _check_source_unchanged, _raise_if_incomplete, _read_from,
                                     _trusted_digest, identity_key, local_fits_state, source_identity,
                                     split_ranges)
from fitsync.errors import VerificationFailed
from fitsync.hashes import file_digest
from fitsync.mapped import mapped_file
from fitsync.remotes.base import Capability, Remote, Resume
from fitsync.threads import run_beside

log = logging.getLogger("fitsync.engine.push")

# Files this large keep their bytes when an upload is interrupted; smaller
# ones start again (a kept part would cost more round trips than it saves).
RESUME_MIN = 2 * CHUNK


def push(src: Remote, dst: Remote, item: Item, on_bytes=None, fits_check: bool = False) -> Moved:
    local = src.local_path(item.path) if Capability.LOCAL in src.capabilities else None
    can_patch = {Capability.SIGNATURE, Capability.PATCH} <= dst.capabilities
    if local is not None and can_patch and item.dst is not None and item.dst.size > 0:
        return _push_delta(local, dst, item, on_bytes)
    if local is None and can_patch and Capability.SIGNATURE in src.capabilities and item.dst and item.dst.size > 0:
        moved = _relay_delta(src, dst, item, on_bytes, fits_check)
        if moved is not None:
            return moved
    digest = _trusted_digest(item)
    if digest is None and local is not None:
        digest = file_digest(local)
    resume = _resume_of(src, dst, item, local)
    start = resume.offset if resume is not None else 0
    moved = Moved(reused=start)
    if start:
        from fitsync.engine.update import RESUMED

        moved.built = RESUMED
        if on_bytes:
            on_bytes(start, matched=True)  # kept on the destination, not read again

    def chunks():
        for chunk in _read_from(src, item.path, start, item.src.size):
            moved.transferred += len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
            yield chunk

    stream = chunks()
    if fits_check:
        from fitsync.fitsnames import looks_like_fits

        if start and local is not None:
            # The stream starts mid-file, past the headers the guard reads:
            # the local file's own structure is checked instead, once it is
            # known to be the listed version (not one that grew since).
            _check_source_unchanged(src, item)
            _raise_if_incomplete(item, local_fits_state(local, item.path))
        elif looks_like_fits(item.path, b""):
            from fitsync.fits_stream import guard_chunks

            stream = guard_chunks(item.path, stream)
    dst.write_atomic(item.path, stream, mtime=item.src.mtime, expected_digest=digest, resume=resume)
    _check_source_unchanged(src, item)
    return moved


def _resume_of(src: Remote, dst: Remote, item: Item, local: str | None) -> Resume | None:
    """How a large local file's upload may resume (Capability.RESUMES): the
    bytes of this source version the destination kept, and a reader of the
    local file's bytes before them. None for small files (nothing worth
    keeping) and remote sources (their prefix would have to travel again)."""
    if local is None or item.src.size < RESUME_MIN or Capability.RESUMES not in dst.capabilities:
        return None
    key = _upload_key(src, item)
    offset = dst.kept_bytes(key, item.src.size)
    if offset:
        log.info("%s: resuming the upload after %d bytes kept on the destination", item.path, offset)
    return Resume(key, offset, lambda: _read_from(src, item.path, 0, offset))


def _upload_key(src: Remote, item: Item) -> str:
    """The name of a kept upload: the source version (path, size, mtime),
    and also the local file's inode and ctime and the source tree's URL. A
    file rewritten with its old size and mtime (cp -p, tar x, touch -r) or a
    namesake from another tree must never continue a part: on a host without
    the agent nothing but its size is checked before it is renamed."""
    import blake3

    ident = f"{identity_key(item)}\0{source_identity(src, item)}\0{src.url}"
    return blake3.blake3(ident.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _push_delta(local: str, dst: Remote, item: Item, on_bytes=None) -> Moved:
    from fitsync.delta import delta_recipe

    # The new file's digest is computed while the far side computes its old
    # file's signature: the agent's verification needs it, and it is ready
    # when the signature arrives instead of being computed after it. A stock
    # host checks a STDLIB digest (no BLAKE3 there); BLAKE3 is then computed
    # only when a manifest's digest is to be checked too.
    stock = not dst.verifies_patches_alone("blake3")
    digest_of_new = run_beside(lambda: _push_digests(local, stock, bool(item.expected_digest)))
    sig = dst.block_signature(item.path, like=local, digest=False)  # the old file's digest is of no use here
    digest, blake3_digest = digest_of_new()
    with open(local, "rb") as f:
        with mapped_file(f.fileno(), what=local) if item.src.size else _EmptyMap() as data:
            recipe = delta_recipe(sig, data, source_digest=digest, known=sig.like_offsets)
            if stock:
                from fitsync.sums import PUSH_LAYOUT

                recipe.digest_algo, recipe.layout = "sha256-blocks", PUSH_LAYOUT
            if item.expected_digest and blake3_digest != item.expected_digest:
                raise VerificationFailed(f"{item.path}: the source does not match its expected digest")
            if on_bytes:
                on_bytes(recipe.basis_bytes, matched=True)  # processed, not read (see _rebuild_from_basis)

            def literals():
                for offset, length in recipe.source_ranges():
                    if on_bytes:
                        on_bytes(length)
                    yield bytes(data[offset:offset + length])

            dst.apply_recipe(item.path, recipe, literals(), mtime=item.src.mtime, expected_digest=recipe.digest)
    return Moved(transferred=recipe.source_bytes, reused=recipe.basis_bytes)


def _push_digests(local: str, stock: bool, want_blake3: bool) -> tuple[str, str | None]:
    """(the digest the destination verifies a patch with, BLAKE3 or None)."""
    if not stock:
        digest = file_digest(local)
        return digest, digest
    from fitsync.sums import file_block_list_digest

    return file_block_list_digest(local), file_digest(local) if want_blake3 else None


def _relay_delta(src: Remote, dst: Remote, item: Item, on_bytes, fits_check: bool) -> Moved | None:
    """Remote to remote: both agents send fixed-block signatures, blocks equal
    on both sides are copied by DST's agent from its old copy, and only the
    other blocks are read from SRC and relayed. None when there is nothing to
    gain (no common block, a compressed FITS file) or DST cannot verify a
    patch without the new file at hand; the caller then streams the file."""
    from fitsync.delta import aligned_recipe
    from fitsync.fitsnames import looks_like_fits

    if not dst.verifies_patches_alone():
        return None
    head = src.read_range(item.path, 0, 16)
    if head.startswith(b"\x1f\x8b"):  # gzip: changes throughout when any byte of its content does
        return None
    before = source_identity(src, item)
    new_sig = src.block_signature(item.path)
    old_sig = dst.block_signature(item.path)
    if new_sig is None or old_sig is None or new_sig.digest is None:
        return None
    recipe = aligned_recipe(new_sig, old_sig)
    if recipe.basis_bytes == 0 or not dst.verifies_patches_alone(recipe.digest_algo):
        return None
    if item.expected_digest and recipe.digest != item.expected_digest:
        raise VerificationFailed(f"{item.path}: the source does not match its expected digest")
    if fits_check and looks_like_fits(item.path, head):
        from fitsync.fitsaudit import plain_structure_state

        # Headers only, read as ranges (a few kilobytes); no data unit is read.
        _raise_if_incomplete(item, plain_structure_state(lambda pos, n: src.read_range(item.path, pos, n),
                                                         item.src.size))

    if on_bytes:
        on_bytes(recipe.basis_bytes, matched=True)  # processed, not read (see _rebuild_from_basis)

    def literals():
        for data in src.read_ranges(item.path, split_ranges(recipe.source_ranges(), CHUNK)):
            if on_bytes:
                on_bytes(len(data))
            yield data

    dst.apply_recipe(item.path, recipe, literals(), mtime=item.src.mtime, expected_digest=recipe.digest)
    _check_source_unchanged(src, item, before)
    return Moved(transferred=recipe.source_bytes, reused=recipe.basis_bytes)


class _EmptyMap(bytes):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
