# -- the destination, through descriptors -----------------------------------------------
# Below the destination root every directory is opened relative to its parent
# without following symlinks, so a directory swapped for a symlink (before or
# during a run) makes the write fail instead of redirecting it outside the tree.

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def open_parent(root, path, create):
    """(descriptor of ``path``'s directory, base name), every directory below
    ``root`` opened without following symlinks and, with ``create``, made when
    missing. The root itself may be a symlink: that is the user's choice."""
    rel = os.path.relpath(os.path.normpath(path), os.path.normpath(root))
    parts = rel.split(os.sep)
    if rel in (".", "") or parts[0] == ".." or os.path.isabs(rel):
        raise AgentError("bad", "%s is not inside %s" % (path, root))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts[:-1]:
            child = _open_child_dir(fd, part, path, create)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def _open_child_dir(fd, part, path, create):
    try:
        return os.open(part, DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        # With O_DIRECTORY, Linux answers ENOTDIR (not ELOOP) for a symlink: look before judging.
        if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
            raise AgentError("symlink", "%s: %s is a symlink in the destination; refusing to write through it"
                             % (path, part))
        raise exc
    try:
        os.mkdir(part, dir_fd=fd)
    except FileExistsError:
        pass  # made by another writer meanwhile
    return os.open(part, DIR_FLAGS, dir_fd=fd)


def _finish(tmp, final, mtime_ns, root=None):
    """Set mtime and rename ``tmp`` to ``final``: beneath ``root`` through
    descriptors when the request names it (every rename into the tree does)."""
    if mtime_ns is not None:
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
    if root is None:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(tmp, final)
        return
    fd, name = open_parent(root, final, create=True)
    try:
        os.replace(tmp, name, dst_dir_fd=fd)
    except IsADirectoryError:
        raise AgentError("bad", "%s is a directory in the destination but a file in the source" % final)
    finally:
        os.close(fd)


def _open_beneath(root, path, flags, mode=0o600):
    """A file below ``root`` opened without following any symlink on the way."""
    fd, name = open_parent(root, path, create=bool(flags & os.O_CREAT))
    try:
        return os.open(name, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode, dir_fd=fd)
    finally:
        os.close(fd)


def _prune(directory, root):
    root = os.path.abspath(root)
    directory = os.path.abspath(directory)
    while directory != root and directory.startswith(root + "/"):
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)


def build_file(req, produce):
    """Build req["tmp"] with ``produce(basis, out)`` (open binary files: the
    basis or None, and the unbuffered temporary), which returns the digest of
    what it wrote; compare it with req["expected"], set mtime, rename. The
    temporary never outlives a failure."""
    tmp, final, basis_path, root = req["tmp"], req["path"], req.get("basis"), req.get("root")
    try:
        if root is None:
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            basis = open(basis_path, "rb") if basis_path else None
        else:
            basis = os.fdopen(_open_beneath(root, basis_path, os.O_RDONLY), "rb") if basis_path else None
    except OSError as exc:
        raise _os_error(exc, basis_path)
    try:
        if root is None:
            out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        else:  # the umask decides its mode, as for any file the account writes
            out_fd = _open_beneath(root, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(out_fd, "wb", buffering=0) as out:  # unbuffered: kernel copies and writes share the offset
            digest = produce(basis, out)
        if digest != req["expected"]:
            raise AgentError("verify", "%s: the patched file does not match the source digest" % final)
        _finish(tmp, final, req.get("mtime_ns"), root)
    except OSError as exc:
        _unlink(tmp)
        raise _os_error(exc, final)
    except BaseException:
        _unlink(tmp)
        raise
    finally:
        if basis is not None:
            basis.close()
    return digest


def stdlib_patcher(req, body, literals, hashes):
    """A ``produce`` for build_file in the stdlib alone: basis runs copied in the
    kernel where possible, literals written as they come, then the file re-read
    for its digest."""
    ops = parse_recipe(body, hashes)
    final = req["path"]

    def produce(basis, out):
        pending = b""
        for kind, offset, length in ops:
            if kind == 0:
                if basis is None:
                    raise AgentError("bad", "recipe copies from a basis file but none was given")
                got = _copy_range(basis, offset, length, out)
            else:
                pieces, pending = _take(literals, pending, length)
                got = 0
                for piece in pieces:
                    _write_leaving_holes(out, piece)
                    got += len(piece)
            if got != length:
                raise AgentError("verify", "%s: the basis or literal data ended early" % final)
        end = out.seek(0, os.SEEK_CUR)
        if os.fstat(out.fileno()).st_size < end:  # it ends in a hole
            os.ftruncate(out.fileno(), end)
        return request_digest(req["tmp"], req, hashes)

    return produce


def _fitsync_delta():
    """fitsync.delta when importable and reading our recipe format, else None."""
    try:
        from fitsync import delta
    except Exception:
        return None
    return delta if delta.FORMAT_VERSION == 1 else None


def fitsync_patcher(delta, req, body, literals):
    """A ``produce`` for build_file through fitsync's own patcher, on a host
    where fitsync is installed: large files are written around the page cache
    and hashed as they are written, instead of copied and then read again."""
    from fitsync.errors import BadInput, FitsyncError

    final = req["path"]
    try:
        recipe = delta.Recipe.from_bytes(body)
    except BadInput as exc:
        raise AgentError("bad", str(exc))
    if recipe.digest != req["expected"]:  # refused before anything is written
        raise AgentError("verify", "%s: the patched file would not match the source digest" % final)

    def produce(basis, out):
        try:
            delta.apply_recipe(recipe, basis.fileno() if basis else None, lambda ranges: literals, out.fileno())
        except FitsyncError as exc:  # a short basis, wrong literals, a digest mismatch
            raise AgentError("verify", "%s: %s" % (final, exc))
        return recipe.digest

    return produce


# Holes, as fitsync.holes leaves them on the other side: an aligned run of
# HOLE zero bytes is skipped, and the basis's own holes are not copied as
# zeros (copy_file_range writes them out on ext4).
HOLE = 64 << 10
_ZERO_RUN = bytes(HOLE)


def _write_leaving_holes(out, data):
    """Write ``data`` at out's offset (an unbuffered file), skipping aligned zero runs."""
    view = memoryview(data)
    at = out.seek(0, os.SEEK_CUR)
    pos = start = 0
    while pos < len(view):
        end = min(len(view), pos + HOLE - (at + pos) % HOLE)
        if end - pos == HOLE and view[pos:end] == _ZERO_RUN:
            _write_at(out, at + start, view[start:pos])
            start = end
        pos = end
    _write_at(out, at + start, view[start:])
    out.seek(at + len(view))


def _write_at(out, offset, view):
    out.seek(offset)
    while view:
        view = view[out.write(view):]


def _copy_range(src, offset, length, out):
    """Copy ``length`` bytes of ``src`` at ``offset`` to out's offset, its
    holes left as holes; return how many were copied (fewer only at the end
    of ``src``)."""
    end = min(offset + length, os.fstat(src.fileno()).st_size)
    at = out.seek(0, os.SEEK_CUR)
    for start, stop in _data_extents(src.fileno(), offset, end):
        out.seek(at + start - offset)
        got = _copy_all(src, start, stop - start, out)
        if got < stop - start:
            return start - offset + got
    out.seek(at + end - offset)
    return end - offset


def _data_extents(fd, begin, end):
    at = begin
    while at < end:
        try:
            start = os.lseek(fd, at, getattr(os, "SEEK_DATA", 3))
            stop = os.lseek(fd, start, getattr(os, "SEEK_HOLE", 4))
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here on
                return
            yield at, end  # the file system cannot say: all of it is data
            return
        if start >= end:
            return
        yield start, min(stop, end)
        at = stop


def _copy_all(src, offset, length, out):
    done = 0
    copy = getattr(os, "copy_file_range", None)
    while copy is not None and done < length:
        try:
            n = copy(src.fileno(), out.fileno(), length - done, offset + done)
        except OSError:
            break  # another file system, or no kernel support: copy through memory
        if n == 0:
            return done
        done += n
    for chunk in _read_chunks(src, offset + done, length - done):
        out.write(chunk)
        done += len(chunk)
    return done


def request_digest(path, req, hashes):
    """The digest a patch or rename request verifies with: req["algo"], where
    "sha256-blocks" (the STDLIB suite's file digest) needs req["layout"]."""
    if req["algo"] != "sha256-blocks":
        return file_digest(path, req["algo"], hashes)
    layout = req.get("layout") or {}
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        bounds = [b for b in layout.get("boundaries", [0]) if b < size] or [0]
        block_size = layout.get("block_size")
        if type(block_size) is not int or block_size <= 0:
            raise AgentError("bad", "a sha256-blocks digest needs a positive block size")
        digest = block_list_digest(fd, size, block_size, bounds)
    finally:
        os.close(fd)
    if bounds != layout.get("boundaries", [0]):
        return ""  # the layout does not fit the file written: it cannot be the expected one
    return digest.hex()


def file_digest(path, algo, hashes):
    """Hex digest of a whole file; BLAKE3 on all cores when the module allows."""
    hasher = hashes.new(algo)
    if algo == "blake3":
        try:
            hasher = hashes.blake3.blake3(max_threads=hashes.blake3.blake3.AUTO)
            hasher.update_mmap(path)
            return hasher.hexdigest()
        except (AttributeError, TypeError):  # an older blake3 module
            hasher = hashes.new(algo)
    with open(path, "rb") as f:
        for chunk in _read_chunks(f):
            hasher.update(chunk)
    return hasher.hexdigest()


# RECIPE_MAGIC, RECIPE_HEADER and RECIPE_OP: fitsync/wire.py, joined into this file.


def parse_recipe(data, hashes):
    """The ops of a serialized Recipe; its xxh3-64 trailer is checked when
    xxhash is here (the digest of the built file is checked in any case)."""
    if len(data) < RECIPE_HEADER.size + 8 or data[:8] != RECIPE_MAGIC:
        raise AgentError("bad", "not a fitsync recipe")
    fields = RECIPE_HEADER.unpack_from(data)
    n_ops = fields[4]
    if fields[1] != RECIPE_FORMAT_VERSION or len(data) != RECIPE_HEADER.size + n_ops * RECIPE_OP.size + 8:
        raise AgentError("bad", "recipe version or length is wrong")
    if hashes.xxhash is not None:
        (check,) = struct.unpack_from("<Q", data, len(data) - 8)
        if check != hashes.xxhash.xxh3_64_intdigest(data[:-8]):
            raise AgentError("bad", "recipe is damaged (integrity check failed)")
    body = data[RECIPE_HEADER.size:len(data) - 8]
    return [list(op) for op in RECIPE_OP.iter_unpack(body)]


def _take(literals, pending, length):
    """``length`` bytes from the literal stream -> ([pieces], leftover)."""
    pieces = []
    while length > 0:
        if not pending:
            pending = next(literals, None)
            if pending is None:
                break
        piece, pending = pending[:length], pending[length:]
        pieces.append(piece)
        length -= len(piece)
    return pieces, pending
