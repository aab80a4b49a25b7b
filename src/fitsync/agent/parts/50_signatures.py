# -- block signatures ---------------------------------------------------------------
# The bytes equal fitsync.signature.Signature.to_bytes() (docs/signature-format.md).
# With fitsync importable on this host its compiled code makes the FAST suite
# (rollsum, xxh3-128, BLAKE3). Otherwise the STDLIB suite is made here with
# zlib and hashlib alone, at C speed and on several threads: Adler-32 and
# SHA-256 (first 16 bytes) per block, and as the file digest the SHA-256 of
# the blocks' full SHA-256 digests, so it costs no second pass over the file.

# The layouts, ids and block-size rule are fitsync/wire.py's, joined into this
# file ahead of this part (fitsync.agent.source()); the client sends its block
# record bounds with each request.
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
