"""Building a file that shares its unchanged blocks with the old copy.

On file systems with reflinks (XFS made with reflink=1, btrfs, bcachefs,
ZFS 2.2+) ``FICLONERANGE`` makes a range of one file share the disk blocks
of a range of another: no data is read or written, and the space is used
once. A header edit of a 2 GB FITS file then writes a few kilobytes.

``CloneWriter`` has DirectWriter's interface (``write``, ``copy_from``,
``finish``, ``abort``), so ``delta.apply_recipe`` drives it the same way.
Ranges of the old copy whose offset agrees with the new file's position
modulo the file system's block size are cloned in whole blocks; their
ragged ends, and everything else, are written.

What is verified is, as for DirectWriter, exactly what was handed to the
kernel: the bytes written, and for a cloned range the old copy's bytes of
that range, hashed (from its page cache) just after the clone. A clone
shares blocks atomically with respect to writers of the old copy, so an old
copy changed before the clone fails the digest and the file is built again.
Reading the clone itself back would read the disk, since page caches are
per file, and cost as much as copying.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import threading

# _IOW(0x94, 13, struct file_clone_range) and _IOW(0x94, 9, int): linux/fs.h
FICLONERANGE = 0x4020940D
FICLONE = 0x40049409
_CLONE_RANGE = struct.Struct("=qQQQ")  # src_fd, src_offset, src_length, dest_offset
# Errors that mean "this file system (or pair of files) cannot share blocks".
_NO_CLONE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}
# ... and for one clone only (ZFS: blocks not yet written out): copy this file or range instead.
_CLONE_REFUSED = _NO_CLONE | {errno.EAGAIN}
COPY_PIECE = 8 << 20

_probed: dict = {}  # (device of the old copy, device of the scratch directory) -> whether they clone
_probe_lock = threading.Lock()


def clone_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, length: int) -> None:
    """Make ``length`` bytes of dst_fd at dst_offset share src_fd's blocks at
    src_offset. Offsets and length must be multiples of the block size (a
    length of 0 would mean "to the end of the source": never passed)."""
    if length <= 0:
        raise ValueError("clone_range needs a positive length")
    fcntl.ioctl(dst_fd, FICLONERANGE, _CLONE_RANGE.pack(src_fd, src_offset, length, dst_offset))


def clone_file(src_fd: int, dst_fd: int) -> bool:
    """Make dst_fd (a new, empty file) share every block of src_fd; False
    where the file systems cannot (then nothing was done)."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError as exc:
        if exc.errno not in _CLONE_REFUSED:
            raise
        return False


def block_size(fd: int) -> int:
    return os.fstatvfs(fd).f_bsize


def can_clone(basis_fd: int, scratch_dir: str) -> bool:
    """Whether files in ``scratch_dir`` can share blocks with ``basis_fd``
    (the same file system, with reflinks). Tried once per file system, by
    cloning the basis's first block into a scratch file there."""
    st = os.fstat(basis_fd)
    key = (st.st_dev, os.stat(scratch_dir).st_dev)
    with _probe_lock:
        if key in _probed:
            return _probed[key]
    bs = block_size(basis_fd)
    if key[0] != key[1] or st.st_size < bs:
        return False  # a basis smaller than a block has nothing to share; ask again for another
    try:
        fd = os.open(scratch_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (OSError, AttributeError):  # no unnamed temporary files there: no probe, no clones
        return False
    try:
        clone_range(basis_fd, 0, fd, 0, bs)
        works = True
    except OSError as exc:
        if exc.errno not in _NO_CLONE:
            raise
        works = False
    finally:
        os.close(fd)
    with _probe_lock:
        _probed[key] = works
    return works


class CloneWriter:
    """Sequential writer of a new file at ``out_fd`` that clones what it can
    from the file it copies ranges of; see the module docstring."""

    def __init__(self, out_fd: int, hasher):
        self._out = out_fd
        self._pos = os.lseek(out_fd, 0, os.SEEK_CUR)
        self.hasher = hasher
        self._bs = block_size(out_fd)
        self.cloned = 0  # bytes that share blocks with the old copy
        self._cloning = True
        self._maps: dict = {}  # fd -> (mmap, size) of a file copied from

    @property
    def built(self) -> str:
        return "cloned" if self.cloned else "rewritten"

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        self.hasher.update(view)
        self._pwrite(view)

    def copy_from(self, fd: int, offset: int, length: int) -> int:
        """Append ``length`` bytes of ``fd`` from ``offset``; returns how many
        were there (fewer only at that file's end)."""
        mapped, size = self._map(fd)
        length = max(0, min(length, size - offset))
        bs = self._bs
        head = min(length, -self._pos % bs)
        whole = (length - head) // bs * bs if self._cloning and (offset - self._pos) % bs == 0 else 0
        self._copy_bytes(mapped, offset, head if whole else length)
        if whole:
            if self._clone(fd, offset + head, whole):
                with memoryview(mapped) as view:
                    self.hasher.update(view[offset + head:offset + head + whole])
                self._pos += whole
                self.cloned += whole
            else:
                self._copy_bytes(mapped, offset + head, whole)
            self._copy_bytes(mapped, offset + head + whole, length - head - whole)
        return length

    def _clone(self, fd: int, offset: int, length: int) -> bool:
        """Clone, or say it cannot be done here (a bind mount inside the
        destination, a btrfs NOCOW file, blocks ZFS has not yet written):
        the writer then copies, this range and the rest."""
        try:
            clone_range(fd, offset, self._out, self._pos, length)
            return True
        except OSError as exc:
            if exc.errno not in _CLONE_REFUSED:
                raise
            self._cloning = False
            return False

    def _copy_bytes(self, mapped, offset: int, length: int) -> None:
        done = 0
        while done < length:
            step = min(COPY_PIECE, length - done)
            with memoryview(mapped) as view:
                piece = view[offset + done:offset + done + step]
                self.hasher.update(piece)
                self._pwrite(piece)
            done += step

    def _pwrite(self, view) -> None:
        while view:
            n = os.pwrite(self._out, view, self._pos)
            if n <= 0:
                raise OSError(errno.EIO, "the kernel accepted no bytes")
            self._pos += n
            view = view[n:]

    def _map(self, fd: int):
        if fd not in self._maps:
            size = os.fstat(fd).st_size
            self._maps[fd] = (mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else b"", size)
        return self._maps[fd]

    def finish(self) -> str:
        self._close()
        os.lseek(self._out, self._pos, os.SEEK_SET)
        return self.hasher.hexdigest()

    def abort(self) -> None:
        self._close()

    def _close(self) -> None:
        for mapped, _ in self._maps.values():
            if isinstance(mapped, mmap.mmap):
                try:
                    mapped.close()
                except BufferError:  # a slice still held by a failed write's traceback: freed with it
                    pass
        self._maps.clear()
