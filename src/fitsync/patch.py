"""Applying a delta recipe: the target file built by streaming.

BASIS runs are copied from the old file, SOURCE runs written from the
supplied reader, and the result is checked against the recipe's digest
while it is written: a large target is written with direct I/O and hashed
as it is handed to the kernel (``fitsync.directio``), a small one is copied
in the kernel (``os.copy_file_range``) and read back; a caller may hand in
its own writer (``fitsync.reflink.CloneWriter``). A mismatch raises
``VerificationFailed``; the caller discards the temporary file.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat as stat_mod
import threading
from typing import Iterable

import blake3

from fitsync.recipe import BASIS, ReadSource, Recipe
from fitsync.directio import open_direct
from fitsync.errors import BadInput, TransferFailed, VerificationFailed
from fitsync.holes import data_extents, data_runs, extend_to
from fitsync.mapped import mapped_file

COPY_CHUNK = 64 << 20  # a BASIS run is copied in pieces this large, so verification can follow
VERIFY_CHUNK = 32 << 20

class SourceBytes:
    """Exact-length pieces cut from the chunks ``read_source`` yields."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._current = memoryview(b"")

    def take(self, length: int):
        while length:
            if not self._current:
                chunk = next(self._chunks, None)
                if chunk is None:
                    raise TransferFailed("the source sent fewer bytes than the recipe needs")
                self._current = memoryview(chunk).cast("B")
                continue
            piece = self._current[:length]
            self._current = self._current[len(piece):]
            length -= len(piece)
            yield piece

    def finish(self) -> None:
        if self._current or next(self._chunks, None):
            raise TransferFailed("the source sent more bytes than the recipe needs")


def write_all(fd: int, data) -> None:
    """os.write until every byte of ``data`` is written."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Verifier(threading.Thread):
    """Hashes the output file as it is written, following a watermark, so
    reading it back overlaps with writing it."""

    def __init__(self, read_fd: int, base: int, size: int, hasher):
        super().__init__(name="fitsync-verify", daemon=True)
        self._fd = read_fd
        self._base = base
        self._size = size
        self._written = 0
        self._aborted = False
        self._cond = threading.Condition()
        self.hasher = hasher
        self.error: BaseException | None = None

    def advance(self, written: int) -> None:
        with self._cond:
            self._written = written
            self._cond.notify()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify()

    def run(self) -> None:
        done = 0
        try:
            while done < self._size:
                with self._cond:
                    while not self._aborted and self._written - done < min(VERIFY_CHUNK, self._size - done):
                        self._cond.wait()
                    if self._aborted:
                        return
                    upto = self._written
                done = self._hash(done, upto)
        except BaseException as exc:  # reported by apply_recipe
            self.error = exc

    def _hash(self, start: int, end: int) -> int:
        begin = self._base + start
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        with mapped_file(self._fd, self._base + end - aligned, aligned, "the file being written") as mapped:
            with memoryview(mapped) as view:
                self.hasher.update(view[begin - aligned :])
        return end


def _reader_for(out_fd: int) -> int | None:
    """A readable descriptor of the same file as ``out_fd`` (which may be
    write-only), or None when out_fd is not a regular file."""
    if not stat_mod.S_ISREG(os.fstat(out_fd).st_mode):
        return None
    try:
        return os.open(f"/proc/self/fd/{out_fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ETXTBSY}


class _Copier:
    """Copies basis ranges to the output: in the kernel when it can, else
    through a buffer (other file systems, pipes). With ``holes`` the basis's
    holes stay holes: only its data extents are copied (the kernel's copy
    would write them out as zeros on ext4)."""

    def __init__(self, basis_fd: int, out_fd: int, hasher=None, holes: bool = False):
        self._basis = basis_fd
        self._out = out_fd
        self._hasher = hasher  # set when the output cannot be read back
        self._kernel = hasher is None and hasattr(os, "copy_file_range")
        self._holes = holes and self._kernel
        self.kernel_bytes = 0  # copied by copy_file_range

    def copy(self, offset: int, length: int) -> int:
        """Bytes copied: ``length``, fewer only where the basis ends."""
        if not self._holes:
            return self._copy_all(offset, length)
        done = 0
        for start, end in data_extents(self._basis, offset, offset + length):
            if start > offset + done:  # a hole of the basis: a hole of the output
                os.lseek(self._out, start - offset - done, os.SEEK_CUR)
                done = start - offset
            got = self._copy_all(start, end - start)
            done += got
            if got < end - start:
                return done
        end_of_basis = os.fstat(self._basis).st_size
        tail = min(offset + length, end_of_basis) - offset - done  # a hole up to the range's end
        if tail > 0:
            extend_to(self._out, os.lseek(self._out, tail, os.SEEK_CUR))
            done += tail
        return done

    def _copy_all(self, offset: int, length: int) -> int:
        done = 0
        while done < length:
            if self._kernel:
                try:
                    n = os.copy_file_range(self._basis, self._out, length - done, offset + done)
                    self.kernel_bytes += n
                except OSError as exc:
                    if exc.errno not in _NO_KERNEL_COPY:
                        raise
                    self._kernel = False
                    continue
            else:
                data = os.pread(self._basis, min(length - done, 8 << 20), offset + done)
                n = len(data)
                if n:
                    if self._hasher is not None:
                        self._hasher.update(data)
                    write_all(self._out, data)
            if n == 0:
                break
            done += n
        return done


class _BufferedWriter:
    """The target through the page cache, with DirectWriter's interface: basis
    runs copied in the kernel, the output read back by a _Verifier as it is
    written; where it cannot be read back (a pipe), bytes are hashed as written."""

    def __init__(self, out_fd: int, size: int, new_hasher=lambda: blake3.blake3(max_threads=blake3.blake3.AUTO)):
        self._out = out_fd
        self._start = os.lseek(out_fd, 0, os.SEEK_CUR) if stat_mod.S_ISREG(os.fstat(out_fd).st_mode) else 0
        self._read_fd = _reader_for(out_fd)
        # A regular file keeps the basis's holes and gets holes for the
        # source's zero runs (fitsync.holes); a pipe takes every byte.
        self._holes = self._read_fd is not None
        self._verifier = None
        self._hasher = None
        if self._read_fd is not None:
            self._verifier = _Verifier(self._read_fd, os.lseek(out_fd, 0, os.SEEK_CUR), size, new_hasher())
            self._verifier.start()
        else:
            self._hasher = new_hasher()
        self._copier = None
        self._written = 0

    def write(self, data) -> None:
        if self._hasher is not None:
            self._hasher.update(data)
        if not self._holes:
            write_all(self._out, data)
        else:
            with memoryview(data).cast("B") as view:
                at, last = self._start + self._written, 0
                for start, end in data_runs(view, at):
                    os.lseek(self._out, at + start, os.SEEK_SET)
                    write_all(self._out, view[start:end])
                    last = end
                os.lseek(self._out, at + len(view), os.SEEK_SET)
                if last < len(view):
                    extend_to(self._out, at + len(view))
        self._advance(len(data))

    def copy_from(self, fd: int, offset: int, length: int) -> int:
        """Like DirectWriter.copy_from; in pieces, so verification can follow."""
        if self._copier is None:
            self._copier = _Copier(fd, self._out, self._hasher, self._holes)
        done = 0
        while done < length:
            step = min(COPY_CHUNK, length - done)
            got = self._copier.copy(offset + done, step)
            done += got
            self._advance(got)
            if got < step:
                break
        return done

    @property
    def built(self) -> str:
        copier = self._copier
        return "kernel copy" if copier is not None and copier.kernel_bytes else "rewritten"

    def _advance(self, n: int) -> None:
        self._written += n
        if self._verifier:
            self._verifier.advance(self._written)

    def finish(self) -> str:
        """Hex digest of the output as read back (of the bytes written for a pipe)."""
        if self._verifier is None:
            return self._hasher.hexdigest()
        self._close_verifier()
        if self._verifier.error is not None:
            raise TransferFailed(f"cannot read back the written file to verify it: {self._verifier.error}")
        return self._verifier.hasher.hexdigest()

    def abort(self) -> None:
        if self._verifier is not None:
            self._verifier.abort()
            self._close_verifier()

    def _close_verifier(self) -> None:
        self._verifier.join()
        os.close(self._read_fd)


def apply_recipe(recipe: Recipe, basis_fd: int | None, read_source: ReadSource, out_fd: int,
                 writer=None) -> None:
    """Write the target described by ``recipe`` to ``out_fd`` (a new, empty
    file; written from its current position), copying BASIS runs from
    ``basis_fd`` and SOURCE runs from ``read_source(recipe.source_ranges())``,
    an iterable of bytes covering those ranges in order. The BLAKE3 of the
    result is compared with ``recipe.digest``; raise VerificationFailed on a
    mismatch (the caller deletes the file). Large targets are written with
    direct I/O and hashed as handed to the kernel (fitsync.directio); others
    go through the page cache and are read back while they are written.
    ``writer`` replaces that choice (a reflink.CloneWriter). Returns how
    the file was built (``writer.built``: "cloned", "kernel copy", "rewritten")."""
    if recipe.basis_bytes + recipe.source_bytes != recipe.target_size:
        raise BadInput("recipe runs do not add up to the target size")
    source = SourceBytes(read_source(recipe.source_ranges()) if recipe.source_bytes else ())
    if writer is None:
        writer = open_direct(out_fd, recipe.target_size, recipe.new_hasher())
        if writer is not None:
            writer.holes = True  # zero runs of the new version become holes (fitsync.holes)
        else:
            writer = _BufferedWriter(out_fd, recipe.target_size, recipe.new_hasher)
    got = _write_ops(recipe, basis_fd, source, writer)
    built = writer.built
    if got != recipe.digest:
        name = "BLAKE3" if recipe.digest_algo == "blake3" else "digest"
        raise VerificationFailed(
            f"the patched file's {name} {got[:16]}... differs from the expected {recipe.digest[:16]}...; "
            "the basis or the source changed during the transfer, try again"
        )
    return built


def _write_ops(recipe: Recipe, basis_fd: int | None, source: "SourceBytes", writer) -> str:
    """Run the recipe's ops into ``writer`` (a DirectWriter or a _BufferedWriter);
    returns the BLAKE3 the writer vouches for."""
    try:
        for kind, offset, length in recipe.ops:
            if kind == BASIS:
                if basis_fd is None:
                    raise BadInput("the recipe copies from a basis file but none was given")
                if writer.copy_from(basis_fd, offset, length) != length:
                    raise VerificationFailed(
                        f"the basis file ends before offset {offset + length}; it changed since the recipe was made"
                    )
            else:
                for piece in source.take(length):
                    writer.write(piece)
        source.finish()
    except BaseException:
        writer.abort()
        raise
    return writer.finish()
