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
