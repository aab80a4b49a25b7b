"""fitsync's remote agent: a self-contained, stdlib-only module run over SSH.

The client (fitsync.remotes.sftp) sends this file's text over an exec channel
to ``python3`` on the remote host, where it is cached under
~/.cache/fitsync/agent-<version>-<sha256 prefix>.py and verified by its
SHA-256 before every use (see BOOTSTRAP). It then answers framed requests on
stdin/stdout so that listing, digests, block signatures and patching happen
next to the data, without moving it.

Framing: each message is a 4-byte big-endian length, a UTF-8 JSON header of
that length, then ``header["n"]`` raw bytes when the header has "n".
Requests are answered strictly in order, so a client may pipeline them.
A reply is {"ok": ...} or {"error": kind, "msg": text}; streamed replies send
{"more": ...} frames before the final one.

Hashes: blake3 and xxhash are used when importable; otherwise the client
and agent agree on hashlib algorithms during "hello" (see fitsync.remotes.sftp).
Nothing here may import fitsync: the remote host need not have it, so the
few lines of FITS header walking that block layouts need are repeated here
(tests/test_sftp_agent.py holds them equal to fitsync.fits.segment_boundaries).
"""

import errno
import hashlib
import json
import os
import stat
import struct
import sys

AGENT_PROTOCOL = 1
READ_CHUNK = 4 << 20
STATE_DIR = ".fitsync"
HEADER = struct.Struct(">I")
MAX_HEADER = 64 << 20
MAX_BODY = 1 << 30
READ_PIECE = 4 << 20


def parse_frame_header(raw):
    """A frame header: a JSON object whose optional "n" (body length) is an
    int in 0..MAX_BODY. Anything else is a malformed frame (ValueError)."""
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("frame header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("frame header is not an object")
    n = header.get("n")
    if "n" in header and (type(n) is not int or not 0 <= n <= MAX_BODY):
        raise ValueError("frame body length is invalid")
    return header



# -- framing ----------------------------------------------------------------

class Channel:
    def __init__(self, rfile, wfile):
        self.rfile = rfile
        self.wfile = wfile

    def read_exact(self, n):
        # In pieces: a hostile length must not make us allocate it up front.
        parts = []
        while n > 0:
            piece = self.rfile.read(min(n, READ_PIECE))
            if not piece:
                raise EOFError("client went away")
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)

    def recv(self):
        """(header dict, body bytes or None); None at a clean end of input."""
        raw = self.rfile.read(HEADER.size)
        if not raw:
            return None, None
        if len(raw) != HEADER.size:
            raise EOFError("truncated frame")
        (length,) = HEADER.unpack(raw)
        if length > MAX_HEADER:
            raise ValueError("frame header too large")
        header = parse_frame_header(self.read_exact(length))
        body = self.read_exact(header["n"]) if "n" in header else None
        return header, body

    def send(self, header, body=None, flush=True):
        if body is not None:
            header["n"] = len(body)
        raw = json.dumps(header, separators=(",", ":")).encode()
        self.wfile.write(HEADER.pack(len(raw)) + raw)
        if body is not None:
            self.wfile.write(body)
        if flush:
            self.wfile.flush()


class AgentError(Exception):
    def __init__(self, kind, msg):
        super().__init__(msg)
        self.kind = kind


def _os_error(exc, path):
    if isinstance(exc, FileNotFoundError):
        return AgentError("notfound", "%s does not exist" % path)
    if isinstance(exc, PermissionError):
        return AgentError("permission", "permission denied: %s" % path)
    if isinstance(exc, IsADirectoryError):
        return AgentError("notfound", "%s is a directory, not a file" % path)
    return AgentError("io", "%s: %s" % (path, exc.strerror or exc))


# -- hashing -------------------------------------------------------------------

def _optional(name):
    try:
        return __import__(name)
    except ImportError:
        return None


class Hashes:
    """Which hashers this host offers; ``avoid`` hides modules for testing the
    stdlib-only negotiation on a host that has them."""

    def __init__(self, avoid=()):
        self.blake3 = None if "blake3" in avoid else _optional("blake3")
        self.xxhash = None if "xxhash" in avoid else _optional("xxhash")

    def available(self):
        names = sorted(hashlib.algorithms_available)
        if self.blake3:
            names.append("blake3")
        if self.xxhash:
            names.append("xxh3_128")
        return names

    def new(self, algo):
        if algo == "blake3":
            if not self.blake3:
                raise AgentError("bad", "blake3 is not available on this host")
            return self.blake3.blake3()
        if algo == "xxh3_128":
            if not self.xxhash:
                raise AgentError("bad", "xxhash is not available on this host")
            return self.xxhash.xxh3_128()
        if algo == "blake2b128":
            return hashlib.blake2b(digest_size=16)
        try:
            return hashlib.new(algo)
        except ValueError:
            raise AgentError("bad", "unknown digest algorithm %r" % algo)

    def block_hasher(self, algo):
        """A function bytes -> digest for per-block strong hashes."""
        if algo == "xxh3_128":
            if not self.xxhash:
                raise AgentError("bad", "xxhash is not available on this host")
            return lambda b: self.xxhash.xxh3_128_digest(b)
        if algo == "blake2b128":
            return lambda b: hashlib.blake2b(b, digest_size=16).digest()
        raise AgentError("bad", "unknown block hash %r" % algo)


def _read_chunks(f, start=0, length=None, size=READ_CHUNK):
    f.seek(start)
    left = length
    while left is None or left > 0:
        chunk = f.read(size if left is None else min(size, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


# -- operations ------------------------------------------------------------------

class Agent:
    def __init__(self, chan):
        self.chan = chan
        self.hashes = Hashes()
        self.signature = None

    def serve(self):
        while True:
            header, body = self.chan.recv()
            if header is None:
                return
            op = header.get("op", "")
            handler = getattr(self, "op_" + op, None)
            try:
                if handler is None:
                    raise AgentError("bad", "unknown request %r" % op)
                reply = handler(header, body)
                if reply is not None:
                    self.chan.send(reply)
            except AgentError as exc:
                self.chan.send({"error": exc.kind, "msg": str(exc)})
            except OSError as exc:
                self.chan.send({"error": "io", "msg": str(exc)})

    def op_hello(self, req, body):
        avoid = req.get("avoid", ())
        self.hashes = Hashes(avoid)
        self.signature = signature_kind(self.hashes, avoid)
        if self.signature == "fitsync":  # its numpy import takes a while: start it now, off the request path
            import threading
            threading.Thread(target=_fitsync_signature, daemon=True).start()
        return {"ok": True, "protocol": AGENT_PROTOCOL, "hashes": self.hashes.available(),
                "signature": self.signature,
                "python": sys.version.split()[0], "home": os.path.expanduser("~")}

    def op_list(self, req, body):
        root = req["root"]
        try:
            st = os.stat(root)
        except OSError as exc:
            raise _os_error(exc, root)
        if not stat.S_ISDIR(st.st_mode):
            raise AgentError("notfound", "%s is not a directory" % root)
        batch = []
        for entry in _walk(root, ""):
            batch.append(entry)
            if len(batch) >= 2000:
                self.chan.send({"more": True, "entries": batch})
                batch = []
        return {"ok": True, "entries": batch}

    def op_stat(self, req, body):
        path = req["path"]
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError as exc:
            raise _os_error(exc, path)
        if req.get("dir"):  # a tree's root: whether it is a directory (symlinks followed, as SFTP's stat does)
            return {"ok": True, "is_dir": os.path.isdir(path)}
        if not stat.S_ISREG(st.st_mode):
            raise AgentError("notfound", "%s is not a regular file" % path)
        return {"ok": True, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def op_digest(self, req, body):
        path = req["path"]
        algo = req.get("algo", "blake3")
        if "offset" not in req and "length" not in req:
            try:
                return {"ok": True, "hex": file_digest(path, algo, self.hashes)}
            except OSError as exc:
                raise _os_error(exc, path)
        hasher = self.hashes.new(algo)
        try:
            with open(path, "rb") as f:
                for chunk in _read_chunks(f, req.get("offset", 0), req.get("length")):
                    hasher.update(chunk)
        except OSError as exc:
            raise _os_error(exc, path)
        return {"ok": True, "hex": hasher.hexdigest()}

    def op_signature(self, req, body):
        path = req["path"]
        try:
            sig = signature_of(path, req, self)
        except OSError as exc:
            raise _os_error(exc, path)
        except Exception as exc:  # fitsync's own errors (NotFound, SourceChanged) when it is installed here
            raise AgentError("io", "%s: %s" % (path, exc))
        self.chan.send({"ok": True}, sig)

    # A signature by difference: the client holds a file likely to share most
    # blocks (the old copy in a pull, the new file in a push), so it asks for a
    # summary, compares segment and group hashes with its own blocks, and
    # fetches the sums of only the blocks it cannot reproduce. The full
    # signature is computed here once and kept for the follow-up requests.
    def _cached_signature(self, req):
        path = req["path"]
        try:
            st = os.stat(path)
        except OSError as exc:
            raise _os_error(exc, path)
        key = (path, st.st_size, st.st_mtime_ns, req.get("fits", True), req.get("block_size"), req.get("digest", True))
        if getattr(self, "_sig_key", None) != key:
            try:
                data = signature_of(path, req, self)
                stdlib = data[10:12] == bytes([WEAK_ADLER32, STRONG_SHA256_128])  # the header's algorithm bytes
                self._sig = ParsedSignature(data, "stdlib" if stdlib else "fast")
            except OSError as exc:
                raise _os_error(exc, path)
            self._sig_key = key
        return self._sig

    def op_sigsummary(self, req, body):
        sig = self._cached_signature(req)
        segments = [group_hash(sig.strong_bytes(first, count), sig.kind).hex()
                    for first, count in sig.segment_blocks()]
        return {"ok": True, "size": sig.file_size, "block_size": sig.block_size, "boundaries": sig.boundaries,
                "digest": sig.digest.hex() if sig.digest is not None else None, "check": sig.check,
                "nblocks": sig.nblocks, "segments": segments, "sums": sig.kind}

    def op_sighashes(self, req, body):
        """16-byte hashes of groups of ``group`` blocks' strong sums, per range."""
        sig = self._cached_signature(req)
        group = req["group"]
        out = []
        for first, count in req["ranges"]:
            for start in range(first, first + count, group):
                n = min(group, first + count - start)
                out.append(group_hash(sig.strong_bytes(start, n), sig.kind))
        self.chan.send({"ok": True}, b"".join(out))

    def op_sigblocks(self, req, body):
        """Weak then strong sums of the blocks in each range, in order."""
        sig = self._cached_signature(req)
        out = []
        for first, count in req["ranges"]:
            out.append(sig.weak_bytes(first, count))
            out.append(sig.strong_bytes(first, count))
        self.chan.send({"ok": True}, b"".join(out))

    def op_patch(self, req, body):
        """Build ``path`` from ``basis`` and literal frames, verify, rename.

        The body is fitsync.delta.Recipe.to_bytes() (docs/signature-format.md):
        BASIS ops (kind 0) copy the basis at offset, SOURCE ops (kind 1) take the
        next ``length`` literal bytes, which follow as {"op": "data"} frames
        ending with {"op": "end"}. req: path, basis, tmp, algo, expected, mtime_ns."""
        literals = self._incoming()
        try:
            delta = _fitsync_delta() if self.signature == "fitsync" and req.get("algo") == "blake3" else None
            if delta is not None:
                produce = fitsync_patcher(delta, req, body or b"", literals)
            else:
                produce = stdlib_patcher(req, body or b"", literals, self.hashes)
            result = build_file(req, produce)
        finally:
            for _ in literals:  # drain so the framing stays in step after an error
                pass
        return {"ok": True, "hex": result}

    def _incoming(self):
        while True:
            header, body = self.chan.recv()
            if header is None:
                raise EOFError("client went away during a patch")
            if header.get("op") == "end":
                return
            yield body

    def op_rename(self, req, body):
        """Verify ``tmp`` (digest ``algo`` == ``expected``), set mtime, rename."""
        tmp, final = req["tmp"], req["path"]
        try:
            digest = request_digest(tmp, req, self.hashes)
        except OSError as exc:
            raise _os_error(exc, tmp)
        if digest != req["expected"]:
            _unlink(tmp)
            raise AgentError("verify", "%s: bytes written do not match the source digest" % final)
        try:
            _finish(tmp, final, req.get("mtime_ns"), req.get("root"))
        except OSError as exc:
            raise _os_error(exc, final)
        return {"ok": True, "hex": digest}

    def op_delete(self, req, body):
        path, root = req["path"], req["root"]
        try:
            fd, name = open_parent(root, path, create=False)
        except FileNotFoundError:
            return {"ok": True}
        except OSError as exc:
            raise _os_error(exc, path)
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            return {"ok": True}
        except OSError as exc:
            raise _os_error(exc, path)
        finally:
            os.close(fd)
        _prune(os.path.dirname(path), root)
        return {"ok": True}


def _walk(directory, prefix):
    """(relpath, size, mtime_ns) of regular files; symlinks are not followed."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except PermissionError:
        raise AgentError("permission", "cannot read directory %s: permission denied" % directory)
    for entry in entries:
        if not prefix and entry.name == STATE_DIR:
            continue
        rel = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            for item in _walk(entry.path, rel + "/"):
                yield item
        elif entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            yield [rel, st.st_size, st.st_mtime_ns]


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


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


RECIPE_MAGIC = b"FSYNCRCP"
RECIPE_HEADER = struct.Struct("<8sHHIQQQ32s")  # magic version 0 0 n_ops target_size basis_size digest
RECIPE_OP = struct.Struct("<BQQ")  # kind offset length, packed


def parse_recipe(data, hashes):
    """The ops of a serialized Recipe; its xxh3-64 trailer is checked when
    xxhash is here (the digest of the built file is checked in any case)."""
    if len(data) < RECIPE_HEADER.size + 8 or data[:8] != RECIPE_MAGIC:
        raise AgentError("bad", "not a fitsync recipe")
    fields = RECIPE_HEADER.unpack_from(data)
    n_ops = fields[4]
    if fields[1] != 1 or len(data) != RECIPE_HEADER.size + n_ops * RECIPE_OP.size + 8:
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


# -- block signatures ---------------------------------------------------------------
# The bytes equal fitsync.signature.Signature.to_bytes() (docs/signature-format.md).
# With fitsync importable on this host its compiled code makes the FAST suite
# (rollsum, xxh3-128, BLAKE3). Otherwise the STDLIB suite is made here with
# zlib and hashlib alone, at C speed and on several threads: Adler-32 and
# SHA-256 (first 16 bytes) per block, and as the file digest the SHA-256 of
# the blocks' full SHA-256 digests, so it costs no second pass over the file.

SIG_MAGIC = b"FSYNCSIG"
SIG_FORMAT_VERSION = 1
SIG_HEADER = struct.Struct("<8sHBBIQIIQ32s")
WEAK_ADLER32, STRONG_SHA256_128 = 2, 2  # the STDLIB suite's algorithm bytes
FITS_RECORD = 2880
MIN_BLOCK_RECORDS, MAX_BLOCK_RECORDS = 2, 64  # the client's values come with each request
HASH_RUN = 4 << 20  # bytes of consecutive blocks one thread reads and hashes at a time


def signature_kind(hashes, avoid=()):
    """'fitsync' (compiled, FAST suite) or 'stdlib'. fitsync is only looked
    for here; it is imported at the first signature."""
    if "fitsync" not in avoid:
        try:
            import importlib.util
            if importlib.util.find_spec("fitsync.signature") is not None:
                return "fitsync"
        except Exception:  # a broken installation: fall back to our own code
            pass
    return "stdlib"


def _fitsync_signature():
    """fitsync.signature when importable and writing our format, else None."""
    try:
        from fitsync import signature
    except Exception:
        return None
    return signature if signature.FORMAT_VERSION == SIG_FORMAT_VERSION else None


def sig_check(body, kind):
    """The signature's 64-bit trailer: XXH3-64 (FAST) or SHA-256's first 8 bytes (STDLIB)."""
    if kind == "stdlib":
        return struct.unpack("<Q", hashlib.sha256(body).digest()[:8])[0]
    return _optional("xxhash").xxh3_64_intdigest(body)


def group_hash(data, kind):
    """16-byte hash of a run of block digests (a signature by difference)."""
    if kind == "stdlib":
        return hashlib.sha256(data).digest()[:16]
    return _optional("xxhash").xxh3_128_digest(data)


class ParsedSignature:
    """Views into the serialized signature bytes (docs/signature-format.md)."""

    def __init__(self, data, kind):
        fields = SIG_HEADER.unpack_from(data)
        self.data = data
        self.kind = kind
        self.block_size, self.file_size, nbounds, self.nblocks = fields[4], fields[5], fields[6], fields[8]
        self.digest = None if fields[7] & 1 else fields[9]  # flag 1: made without the whole-file digest
        pos = SIG_HEADER.size
        self.boundaries = list(struct.unpack_from("<%dQ" % nbounds, data, pos))
        self.weak_pos = pos + 8 * nbounds
        self.strong_pos = self.weak_pos + 4 * self.nblocks
        (self.check,) = struct.unpack_from("<Q", data, len(data) - 8)

    def weak_bytes(self, first, count):
        return self.data[self.weak_pos + 4 * first:self.weak_pos + 4 * (first + count)]

    def strong_bytes(self, first, count):
        return self.data[self.strong_pos + 16 * first:self.strong_pos + 16 * (first + count)]

    def segment_blocks(self):
        """(first block, block count) of each segment."""
        ends = self.boundaries[1:] + [self.file_size]
        first = 0
        for start, end in zip(self.boundaries, ends):
            count = -(-(end - start) // self.block_size)
            yield first, count
            first += count


def default_block_size(file_size, bounds=(MIN_BLOCK_RECORDS, MAX_BLOCK_RECORDS)):
    """fitsync.signature.default_block_size; the client sends its record bounds."""
    import math
    records = round(math.sqrt(max(file_size, 0)) / 2 / FITS_RECORD)
    return min(max(records, bounds[0]), bounds[1]) * FITS_RECORD


def block_layout(file_size, block_size, boundaries):
    ends = list(boundaries[1:]) + [file_size]
    for start, end in zip(boundaries, ends):
        for offset in range(start, end, block_size):
            yield offset, min(block_size, end - offset)


def signature_of(path, req, agent):
    if agent.signature == "fitsync":
        signature = _fitsync_signature()
        if signature is not None:
            return signature.signature_of_file(path, req.get("block_size"), req.get("fits", True),
                                               req.get("digest", True)).to_bytes()
        agent.signature = "stdlib"  # fitsync here cannot be imported: our own code serves
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        boundaries = [0]
        if req.get("fits", True):
            boundaries = fits_boundaries(lambda off, n: os.pread(fd, n, off), size)
        block_size = req.get("block_size") or default_block_size(
            size, req.get("block_records") or (MIN_BLOCK_RECORDS, MAX_BLOCK_RECORDS))
        return stdlib_signature(fd, size, block_size, boundaries, req.get("digest", True))
    finally:
        os.close(fd)


def _threads():
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _runs(blocks, limit):
    """Consecutive blocks grouped into runs of about ``limit`` bytes: [(offset, [lengths])]."""
    runs, current, start, total = [], [], 0, 0
    for offset, length in blocks:
        if current and total + length > limit:
            runs.append((start, current))
            current, total = [], 0
        if not current:
            start = offset
        current.append(length)
        total += length
    if current:
        runs.append((start, current))
    return runs


def _hash_run(fd, start, lengths, with_weak=True):
    """(weak sums, full SHA-256 digests) of consecutive blocks read in one piece.
    zlib and hashlib release the GIL on large buffers, so runs hash in parallel."""
    import zlib
    total = sum(lengths)
    data = _pread_exact(fd, total, start)
    view = memoryview(data)
    weak, full = [], []
    pos = 0
    for length in lengths:
        block = view[pos:pos + length]
        if with_weak:
            weak.append(zlib.adler32(block))
        full.append(hashlib.sha256(block).digest())
        pos += length
    return weak, full


def hashed_runs(fd, size, block_size, boundaries, with_weak=True):
    """(weak sums, full SHA-256 digests) of each run of consecutive blocks, in
    file order, hashed on several threads with at most two runs per thread
    read ahead (bounded memory)."""
    from concurrent.futures import ThreadPoolExecutor
    threads = _threads()
    with ThreadPoolExecutor(threads) as pool:
        pending = []
        for start, lengths in _runs(block_layout(size, block_size, boundaries), max(HASH_RUN, block_size)):
            pending.append(pool.submit(_hash_run, fd, start, lengths, with_weak))
            while len(pending) > 2 * threads:
                yield pending.pop(0).result()
        for job in pending:
            yield job.result()


def block_list_digest(fd, size, block_size, boundaries):
    """The STDLIB file digest alone (no weak sums)."""
    outer = hashlib.sha256()
    for _, full in hashed_runs(fd, size, block_size, boundaries, with_weak=False):
        for d in full:
            outer.update(d)
    return outer.digest()


def _pread_exact(fd, n, offset):
    parts = []
    while n > 0:
        piece = os.pread(fd, min(n, 1 << 30), offset)
        if not piece:
            raise AgentError("io", "file shrank while its signature was computed")
        parts.append(piece)
        n -= len(piece)
        offset += len(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def stdlib_signature(fd, size, block_size, boundaries, with_digest=True):
    """The STDLIB-suite signature of the open file ``fd`` (hashed_runs)."""
    weak, strong, outer = [], [], hashlib.sha256()
    for run_weak, run_full in hashed_runs(fd, size, block_size, boundaries):
        weak.extend(run_weak)
        for d in run_full:
            strong.append(d[:16])
            outer.update(d)
    digest = outer.digest() if with_digest else bytes(32)
    header = SIG_HEADER.pack(SIG_MAGIC, SIG_FORMAT_VERSION, WEAK_ADLER32, STRONG_SHA256_128, block_size, size,
                             len(boundaries), 0 if with_digest else 1, len(weak), digest)
    body = b"".join([header, struct.pack("<%dQ" % len(boundaries), *boundaries),
                     struct.pack("<%dI" % len(weak), *weak), b"".join(strong)])
    return body + struct.pack("<Q", sig_check(body, "stdlib"))



# -- FITS layout (the rules of fitsync.fits.segment_boundaries) ---------------------------

FITS_BLOCK = 2880
VALID_BITPIX = (8, 16, 32, 64, -32, -64)


class NotFits(ValueError):
    pass


def _card_value(raw):
    text = raw.split("/", 1)[0].strip()
    try:
        return int(text)
    except ValueError:
        raise NotFits("not an integer: %r" % text)


def _hdu_header(read_at, offset, size):
    """(structural keyword values, header size) of the header at ``offset``."""
    values = {}
    pos = offset
    while True:
        if pos + FITS_BLOCK > size:
            raise NotFits("truncated header")
        record = read_at(pos, FITS_BLOCK)
        if len(record) < FITS_BLOCK:
            raise NotFits("truncated header")
        pos += FITS_BLOCK
        for i in range(0, FITS_BLOCK, 80):
            card = record[i:i + 80]
            if card[:8] == b"END     ":
                return values, pos - offset
            text = card.decode("ascii", "replace")
            keyword = text[:8].rstrip()
            if text[8:10] == "= " and keyword not in values:
                values[keyword] = text[10:]


def _data_size(values):
    try:
        bitpix = _card_value(values["BITPIX"])
        naxis = _card_value(values["NAXIS"])
    except KeyError:
        raise NotFits("no BITPIX or NAXIS")
    if bitpix not in VALID_BITPIX or not 0 <= naxis <= 999:
        raise NotFits("bad BITPIX or NAXIS")
    if naxis == 0:
        return 0
    try:
        dims = [_card_value(values["NAXIS%d" % i]) for i in range(1, naxis + 1)]
    except KeyError:
        raise NotFits("missing NAXISn")
    pcount = _card_value(values["PCOUNT"]) if "PCOUNT" in values else 0
    gcount = _card_value(values["GCOUNT"]) if "GCOUNT" in values else 1
    gcount = gcount or 1
    if min(dims) < 0 or pcount < 0 or gcount < 0:
        raise NotFits("negative axis")
    if dims and dims[0] == 0 and naxis > 1:  # random groups
        dims = dims[1:]
    product = 1
    for d in dims:
        product *= d
    return abs(bitpix) // 8 * gcount * (pcount + product)


def fits_boundaries(read_at, size):
    """Every header start and non-empty data unit start; [0] when the file is
    not a complete, well-formed FITS file."""
    if size < FITS_BLOCK or read_at(0, 9) != b"SIMPLE  =":
        return [0]
    bounds = []
    offset = 0
    try:
        while offset < size:
            values, header_size = _hdu_header(read_at, offset, size)
            data = _data_size(values)
            padded = -(-data // FITS_BLOCK) * FITS_BLOCK
            if offset + header_size + padded > size:
                return [0]
            bounds.append(offset)
            if padded:
                bounds.append(offset + header_size)
            offset += header_size + padded
    except NotFits:
        return [0]
    return bounds


def main():
    chan = Channel(sys.stdin.buffer, sys.stdout.buffer)
    try:
        Agent(chan).serve()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
