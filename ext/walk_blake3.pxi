# Part of _walk.pyx (included there): BLAKE3 of small files, read and hashed in C threads (b3.h).

# -- BLAKE3 of small files, read and hashed in C threads ---------------------------------

cdef extern from "b3.h" nogil:
    ctypedef struct b3_chunk_job:
        pass
    ctypedef struct b3_scratch:
        uint32_t (*cvs)[8]
        b3_chunk_job *jobs
        size_t cap
    int b3_hash(const uint8_t *data, size_t length, b3_scratch *scratch, uint8_t *out)
    uint64_t b3_chunk_count(size_t length)
    b3_chunk_job b3_job(const uint8_t *data, size_t length, uint64_t c, uint64_t n_chunks, uint32_t *cv)
    void b3_run_chunk_jobs(const b3_chunk_job *jobs, size_t n)
    void b3_finish(uint32_t (*cvs)[8], uint64_t n_chunks, uint8_t *out)

cdef extern from *:
    """
    static size_t fitsync_take(size_t *next, size_t n) { return __atomic_fetch_add(next, n, __ATOMIC_RELAXED); }
    """
    size_t atomic_take "fitsync_take"(size_t *next, size_t n) nogil

cdef enum:
    HASH_GREW = -1000000  # more bytes than listed: the caller hashes the file another way
    HASH_TAKE = 16        # at most this many files a thread claims, reads, then hashes together
                          # (their chunks share lanes) ...
    HASH_TAKE_BYTES = 1 << 18  # ... and no more bytes than this, unless one file is larger

cdef struct Hashing:
    int rootfd
    const char **names
    size_t *limits        # listed size + 1: reading that many means the file grew
    uint8_t *digests      # 32 bytes per file
    Py_ssize_t *status    # bytes hashed, -errno, or HASH_GREW
    size_t count
    size_t *groups        # claims: group k is files groups[k] to groups[k + 1]
    size_t ngroups
    size_t next           # the next group no thread has claimed
    const char *prefix
    size_t plen
    uint8_t *starts       # 1 where the file's bytes begin with prefix

cdef struct HashSpace:    # one thread's buffers, grown as needed
    char *arena           # the claimed files, each at a 64-byte boundary, zero after its end
    size_t arena_cap
    OpenDir opened
    uint32_t (*cvs)[8]    # a chaining value per chunk of the claimed files
    b3_chunk_job *jobs
    size_t chunk_cap


cdef inline size_t _slot(size_t limit) noexcept nogil:
    """Arena bytes for a file read up to ``limit`` bytes: whole blocks, and
    one more, so its last block can be read in place (zero-padded)."""
    return (limit + 63) // 64 * 64 + 64


cdef int _grow_space(HashSpace *w, size_t arena, size_t chunks) noexcept nogil:
    cdef void *p
    if arena > w.arena_cap:
        p = realloc(w.arena, arena)
        if p == NULL:
            return -1
        w.arena, w.arena_cap = <char *>p, arena
    if chunks > w.chunk_cap:
        p = realloc(w.cvs, chunks * 32)
        if p == NULL:
            return -1
        w.cvs = <uint32_t (*)[8]>p
        p = realloc(w.jobs, chunks * sizeof(b3_chunk_job))
        if p == NULL:
            return -1
        w.jobs, w.chunk_cap = <b3_chunk_job *>p, chunks
    return 0


cdef Py_ssize_t _read_into(Hashing *h, HashSpace *w, size_t i, char *slot) noexcept nogil:
    """Read file i into its slot: bytes read, -errno, or HASH_GREW."""
    cdef bint eof
    cdef Py_ssize_t got
    cdef int fd = _open_listed(h.rootfd, &w.opened, h.names[i])
    if fd < 0:
        return -errno
    got = _read_full(fd, slot, h.limits[i], h.limits[i] - 1, &eof)
    if got < 0:
        got = -errno
    close(fd)
    if got >= 0 and <size_t>got == h.limits[i]:
        return HASH_GREW
    return got


cdef void _hash_claimed(Hashing *h, size_t first, size_t last, HashSpace *w) noexcept nogil:
    """Read files [first, last), then hash them together: every chunk of
    every file goes through the eight-lane compressor (b3_run_chunk_jobs)."""
    cdef size_t i, arena = 0, chunks = 0, njobs = 0, c
    cdef size_t offsets[HASH_TAKE]
    cdef size_t bases[HASH_TAKE]
    cdef uint64_t n
    cdef Py_ssize_t got
    cdef char *data
    for i in range(first, last):
        offsets[i - first] = arena
        arena += _slot(h.limits[i])
        chunks += h.limits[i] // 1024 + 1
    if _grow_space(w, arena, chunks) != 0:
        for i in range(first, last):
            h.status[i] = -ENOMEM
        return
    for i in range(first, last):
        data = w.arena + offsets[i - first]
        got = _read_into(h, w, i, data)
        h.status[i] = got
        if got < 0:
            continue
        memset(data + got, 0, _slot(got) - <size_t>got)
        n = b3_chunk_count(got)
        bases[i - first] = njobs
        for c in range(n):
            w.jobs[njobs] = b3_job(<uint8_t *>data, got, c, n, w.cvs[njobs])  # the slot is zero-padded
            njobs += 1
        if h.plen and <size_t>got >= h.plen and memcmp(data, h.prefix, h.plen) == 0:
            h.starts[i] = 1
    b3_run_chunk_jobs(w.jobs, njobs)
    for i in range(first, last):
        if h.status[i] >= 0:
            b3_finish(w.cvs + bases[i - first], b3_chunk_count(h.status[i]), h.digests + 32 * i)


cdef void *_hash_thread(void *arg) noexcept nogil:
    cdef Hashing *h = <Hashing *>arg
    cdef HashSpace w
    cdef size_t first
    memset(&w, 0, sizeof(HashSpace))
    w.opened.dirfd = -1
    while True:
        first = atomic_take(&h.next, 1)
        if first >= h.ngroups:
            break
        _hash_claimed(h, h.groups[first], h.groups[first + 1], &w)
    if w.opened.dirfd >= 0:
        close(w.opened.dirfd)
    free(w.arena)
    free(w.cvs)
    free(w.jobs)
    return NULL


def blake3_files(root, list paths not None, list sizes not None, bytes prefix=b"", int threads=2):
    """BLAKE3 of the files ``paths`` (relative, listed ``sizes``) under ``root``,
    read and hashed by ``threads`` C threads without the GIL (ext/b3.h): for
    a tree of small files, interpreter time and one core are what the blake3
    package would cost. Files are opened beneath ``root`` only.

    Returns (results, starting): per file its hex digest, an errno (int) when
    it could not be read, or None when it holds more than its listed size
    (hash it another way); ``starting`` lists the indexes of the files whose
    bytes begin with ``prefix``, when one is given."""
    cdef Hashing h
    cdef size_t i, n = len(paths)
    cdef int t, started = 0
    cdef pthread_t tids[16]
    cdef list encoded
    cdef char hexed[64]
    cdef const char *digits = b"0123456789abcdef"
    cdef int b
    if <size_t>len(sizes) != n:
        raise ValueError("one size per path")
    threads = max(1, min(threads, 16))
    memset(&h, 0, sizeof(Hashing))
    h.count = n
    encoded = [PyUnicode_EncodeFSDefault(p) for p in paths]
    root_b = os.fsencode(root)
    h.names = <const char **>malloc((n + 1) * sizeof(char *))
    h.limits = <size_t *>malloc((n + 1) * sizeof(size_t))
    h.digests = <uint8_t *>malloc((n + 1) * 32)
    h.status = <Py_ssize_t *>malloc((n + 1) * sizeof(Py_ssize_t))
    h.starts = <uint8_t *>malloc(n + 1)
    h.groups = <size_t *>malloc((n + 2) * sizeof(size_t))
    h.rootfd = -1
    cdef size_t group_bytes = 0
    try:
        if (h.names == NULL or h.limits == NULL or h.digests == NULL or h.status == NULL or h.starts == NULL
                or h.groups == NULL):
            raise MemoryError()
        memset(h.starts, 0, n + 1)
        for i in range(n):
            h.names[i] = encoded[i]
            h.limits[i] = <size_t>sizes[i] + 1
            # Consecutive files (one directory's, mostly) form one claim.
            if i == 0 or i - h.groups[h.ngroups - 1] == HASH_TAKE or group_bytes + h.limits[i] > HASH_TAKE_BYTES:
                h.groups[h.ngroups] = i
                h.ngroups += 1
                group_bytes = 0
            group_bytes += h.limits[i]
        h.groups[h.ngroups] = n
        h.prefix = prefix
        h.plen = len(prefix)
        h.rootfd = openat(AT_FDCWD, <const char *>root_b, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if h.rootfd < 0:
            raise OSError(errno, "cannot open directory", root)
        with nogil:
            for t in range(threads - 1):
                if pthread_create(&tids[started], NULL, _hash_thread, &h) == 0:
                    started += 1
            _hash_thread(&h)  # this thread takes its share too
            for t in range(started):
                pthread_join(tids[t], NULL)
        results = []
        starting = []
        for i in range(n):
            if h.status[i] == HASH_GREW:
                results.append(None)
            elif h.status[i] < 0:
                results.append(<int>-h.status[i])
            else:
                for b in range(32):
                    hexed[2 * b] = digits[h.digests[32 * i + b] >> 4]
                    hexed[2 * b + 1] = digits[h.digests[32 * i + b] & 15]
                results.append(hexed[:64].decode("ascii"))
                if h.starts[i]:
                    starting.append(i)
        return results, starting
    finally:
        if h.rootfd >= 0:
            close(h.rootfd)
        free(h.names)
        free(h.limits)
        free(h.digests)
        free(h.status)
        free(h.starts)
        free(h.groups)


def blake3_digest(data):
    """The 32-byte BLAKE3 of ``data`` (any contiguous buffer) by ext/b3.h, the
    code blake3_files runs in its threads."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef b3_scratch scratch
    cdef uint8_t out[32]
    cdef size_t n = view.shape[0]
    scratch.cap = n // 1024 + 2
    scratch.cvs = <uint32_t (*)[8]>malloc(scratch.cap * 32)
    scratch.jobs = <b3_chunk_job *>malloc(scratch.cap * sizeof(b3_chunk_job))
    try:
        if scratch.cvs == NULL or scratch.jobs == NULL:
            raise MemoryError()
        with nogil:
            b3_hash(&view[0] if n else <const uint8_t *>"", n, &scratch, out)
        return bytes(out[:32])
    finally:
        free(scratch.cvs)
        free(scratch.jobs)
