# Part of _walk.pyx (included there): BatchReader: a C thread reads batches of small files while the caller hashes the one before.

cdef void *_read_batches_thread(void *arg) noexcept nogil:
    cdef Reading *r = <Reading *>arg
    cdef size_t k, i
    cdef int fd, b
    cdef Py_ssize_t got
    cdef bint eof
    for k in range(r.batches):
        b = k % 2
        pthread_mutex_lock(&r.lock)
        while not r.free[b] and not r.stop:
            pthread_cond_wait(&r.changed, &r.lock)
        r.free[b] = False
        pthread_mutex_unlock(&r.lock)
        if r.stop:
            break
        for i in range(r.bounds[k], r.bounds[k + 1]):
            fd = open_beneath(r.rootfd, r.names[i])
            if fd < 0:
                r.lengths[i] = -errno
                continue
            got = _read_full(fd, r.buffers[b] + r.offsets[i], r.limits[i], r.limits[i] - 1, &eof)
            r.lengths[i] = got if got >= 0 else -errno
            close(fd)
        pthread_mutex_lock(&r.lock)
        r.holds[b] = k
        pthread_cond_broadcast(&r.changed)
        pthread_mutex_unlock(&r.lock)
    return NULL


cdef class BatchReader:
    """Reads small files under ``root`` batch by batch, one batch ahead of
    the caller, in a C thread that never needs the GIL (a Python thread would
    wait for it while the caller hashes: the reads would not overlap).

    ``paths`` (relative) and listed ``sizes``; batch k is files bounds[k] to
    bounds[k + 1], each file taking its size + 1 bytes of one of two buffers
    of ``buffer_size`` bytes. ``get(k)`` waits for batch k and returns
    (spans, buffer): per file (offset, length) in the buffer, an errno (int)
    when it could not be read, or None when it holds more than its listed
    size (read it another way); ``done(k)`` hands the buffer back. Batches
    are taken and handed back in order. Files are opened beneath ``root``
    only (no symlink, no '..')."""

    cdef Reading r
    cdef list encoded, buffers, exports
    cdef pthread_t thread
    cdef bint started, synced
    cdef size_t count
    cdef size_t next_get, next_done  # batches are taken and handed back in order

    def __cinit__(self, root, list paths not None, list sizes not None, list bounds not None, size_t buffer_size):
        cdef size_t i, k, used
        memset(&self.r, 0, sizeof(Reading))
        self.r.rootfd = -1
        self.next_get = self.next_done = 0
        self.started = self.synced = False
        self.count = len(paths)
        if <size_t>len(sizes) != self.count or not bounds or bounds[0] != 0 or bounds[len(bounds) - 1] != self.count:
            raise ValueError("sizes and batch bounds must cover the paths")
        self.encoded = [PyUnicode_EncodeFSDefault(p) for p in paths]  # os.fsencode, minus a Python call each
        self.buffers = [bytearray(buffer_size), bytearray(buffer_size)]
        self.exports = [memoryview(b) for b in self.buffers]  # a bytearray with an export cannot be resized
        self.r.batches = len(bounds) - 1
        self.r.names = <const char **>malloc((self.count + 1) * sizeof(char *))
        self.r.limits = <size_t *>malloc((self.count + 1) * sizeof(size_t))
        self.r.offsets = <size_t *>malloc((self.count + 1) * sizeof(size_t))
        self.r.lengths = <Py_ssize_t *>malloc((self.count + 1) * sizeof(Py_ssize_t))
        self.r.bounds = <size_t *>malloc((self.r.batches + 1) * sizeof(size_t))
        if (self.r.names == NULL or self.r.limits == NULL or self.r.offsets == NULL or self.r.lengths == NULL
                or self.r.bounds == NULL):
            raise MemoryError()
        for k in range(self.r.batches + 1):
            self.r.bounds[k] = bounds[k]
            if k and self.r.bounds[k] < self.r.bounds[k - 1]:
                raise ValueError("batch bounds must not decrease")
        for k in range(self.r.batches):
            used = 0
            for i in range(self.r.bounds[k], self.r.bounds[k + 1]):
                self.r.names[i] = self.encoded[i]
                self.r.limits[i] = <size_t>sizes[i] + 1
                self.r.offsets[i] = used
                used += self.r.limits[i]
            if used > buffer_size:
                raise ValueError(f"batch {k} needs {used} bytes; the buffers hold {buffer_size}")
        self.r.buffers[0] = <bytearray>self.buffers[0]
        self.r.buffers[1] = <bytearray>self.buffers[1]
        self.r.holds[0] = self.r.holds[1] = -1
        self.r.free[0] = self.r.free[1] = True
        root_b = os.fsencode(root)
        self.r.rootfd = openat(AT_FDCWD, <const char *>root_b, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if self.r.rootfd < 0:
            raise OSError(errno, "cannot open directory", root)
        if pthread_mutex_init(&self.r.lock, NULL) != 0 or pthread_cond_init(&self.r.changed, NULL) != 0:
            raise MemoryError()
        self.synced = True
        if pthread_create(&self.thread, NULL, _read_batches_thread, &self.r) != 0:
            raise OSError(errno, "cannot start a reading thread")
        self.started = True

    def get(self, size_t k):
        """Wait (GIL released) for batch k; return (spans, buffer)."""
        cdef int b = k % 2
        cdef size_t i
        if k >= self.r.batches:
            raise IndexError(k)
        if k != self.next_get or k >= self.next_done + 2 or not self.started:
            raise RuntimeError(f"batch {k} out of turn: take batches in order, handing each back with done()")
        self.next_get += 1
        with nogil:
            pthread_mutex_lock(&self.r.lock)
            while self.r.holds[b] != <long>k:
                pthread_cond_wait(&self.r.changed, &self.r.lock)
            pthread_mutex_unlock(&self.r.lock)
        spans = []
        for i in range(self.r.bounds[k], self.r.bounds[k + 1]):
            if self.r.lengths[i] < 0:
                spans.append(<int>-self.r.lengths[i])
            elif <size_t>self.r.lengths[i] == self.r.limits[i]:
                spans.append(None)
            else:
                spans.append((self.r.offsets[i], self.r.lengths[i]))
        return spans, self.buffers[b]

    def done(self, size_t k):
        """The caller is done with batch k: its buffer may take batch k + 2."""
        cdef int b = k % 2
        if k != self.next_done or k >= self.next_get:
            raise RuntimeError(f"batch {k} handed back out of turn")
        self.next_done += 1
        pthread_mutex_lock(&self.r.lock)
        self.r.holds[b] = -1
        self.r.free[b] = True
        pthread_cond_broadcast(&self.r.changed)
        pthread_mutex_unlock(&self.r.lock)

    def close(self):
        """Stop the thread (after the batch it is reading) and wait for it."""
        self._stop()

    cdef void _stop(self) noexcept:
        if self.started:
            pthread_mutex_lock(&self.r.lock)
            self.r.stop = True
            pthread_cond_broadcast(&self.r.changed)
            pthread_mutex_unlock(&self.r.lock)
            with nogil:
                pthread_join(self.thread, NULL)
            self.started = False

    def __dealloc__(self):
        self._stop()
        if self.synced:
            pthread_mutex_destroy(&self.r.lock)
            pthread_cond_destroy(&self.r.changed)
        if self.r.rootfd >= 0:
            close(self.r.rootfd)
        free(self.r.names)
        free(self.r.limits)
        free(self.r.offsets)
        free(self.r.lengths)
        free(self.r.bounds)


def hex_digests(hasher, bytearray buffer not None, list spans not None, bytes prefix=b""):
    """Hash each file a BatchReader put into ``buffer``: ([hex digest, or None
    where spans[k] is not an (offset, length)], [k of the files whose bytes
    start with ``prefix``], if a prefix is given). ``hasher(data)`` returns an
    object with hexdigest(), as blake3.blake3 does. The per-file loop is C:
    interpreter time per file is what small files cost."""
    cdef char *base = buffer
    cdef Py_ssize_t size = len(buffer)
    cdef Py_ssize_t start, length, k = 0
    cdef const char *p = prefix
    cdef Py_ssize_t plen = len(prefix)
    digests = []
    starting = []
    for span in spans:
        if type(span) is not tuple:
            digests.append(None)
        else:
            start, length = span
            if start < 0 or length < 0 or start + length > size:
                raise ValueError(f"span {span} lies outside the buffer")
            digests.append(hasher(PyMemoryView_FromMemory(base + start, length, PyBUF_READ)).hexdigest())
            if plen and length >= plen and memcmp(base + start, p, plen) == 0:
                starting.append(k)
        k += 1
    return digests, starting
