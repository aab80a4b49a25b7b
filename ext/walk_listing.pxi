# Part of _walk.pyx (included there): Listing (records kept in C), Diff (two listings compared) and scan().

cdef class Listing:
    """Every regular file of a tree, sorted by name: built by ``scan``.

    Indices (as returned by ``suspicious`` and ``diff``) address records in
    name order; ``row(i)`` turns one into Python values.
    """

    cdef char *names
    cdef Rec *recs
    cdef size_t count
    cdef size_t live
    cdef int64_t total
    cdef bint str_order
    cdef readonly size_t links  # symlinks the walk passed over (never followed, never listed)

    def __cinit__(self):
        self.names = NULL
        self.recs = NULL
        self.count = self.live = 0
        self.total = 0
        self.str_order = True

    def __dealloc__(self):
        free(self.names)
        free(self.recs)

    def __len__(self):
        return self.live

    @property
    def total_size(self) -> int:
        """Bytes in all files of the listing."""
        return self.total

    @property
    def in_str_order(self) -> bool:
        """False when a name is not valid UTF-8, so that byte order (this
        listing's) and Python's str order may differ."""
        return self.str_order

    def suspicious(self):
        """[(index, path)] of names Python must check before they are used."""
        out = []
        for i in range(self.count):
            if self.recs[i].flags & SUSPECT and not self.recs[i].flags & EXCLUDED:
                out.append((i, _decode(self.recs[i].name)))
        return out

    def exclude(self, size_t i):
        """Drop record ``i`` from the listing (a name refused by the caller)."""
        if i >= self.count:
            raise IndexError(i)
        if not self.recs[i].flags & EXCLUDED:
            self.recs[i].flags |= EXCLUDED
            self.live -= 1
            self.total -= self.recs[i].size

    def row(self, size_t i):
        """(path, size, mtime_ns) of record ``i``."""
        if i >= self.count:
            raise IndexError(i)
        return (_decode(self.recs[i].name), self.recs[i].size, self.recs[i].mtime_ns)

    @property
    def records(self) -> int:
        """Records held, excluded ones too: the bound of ``entries``' range."""
        return self.count

    def entries(self, make, size_t start=0, size_t stop=<size_t>-1):
        """[make(path, size, mtime in seconds: mtime_ns / 1e9)] of the files
        among records ``start`` to ``stop``, in name order (``make`` is
        fitsync's Entry: no tuple per file). A range at a time lets a caller
        hold a chunk of objects, not one per file of the tree."""
        cdef size_t i
        out = []
        for i in range(start, min(stop, self.count)):
            if not self.recs[i].flags & EXCLUDED:
                out.append(make(_decode(self.recs[i].name), self.recs[i].size, self.recs[i].mtime_ns / 1e9))
        return out

    def rows(self):
        """[(path, size, mtime_ns)] of every file, in name order."""
        out = []
        for i in range(self.count):
            if not self.recs[i].flags & EXCLUDED:
                out.append((_decode(self.recs[i].name), self.recs[i].size, self.recs[i].mtime_ns))
        return out

    def diff(self, Listing other not None, double tolerance, bint keep_unchanged=False):
        """Compare with ``other`` (the destination) by size and mtime: a Diff.

        Files with the same size and mtimes within ``tolerance`` seconds are
        unchanged (counted; with ``keep_unchanged`` also kept as pairs, for
        Diff.compare_contents)."""
        cdef size_t i = 0, j = 0
        cdef int c
        cdef Rec *a = self.recs
        cdef Rec *b = other.recs
        cdef Diff d = Diff(self, other)
        cdef size_t *pairs = NULL
        if keep_unchanged:
            pairs = <size_t *>malloc((min(self.count, other.count) + 1) * 2 * sizeof(size_t))
            if pairs == NULL:
                raise MemoryError()
            d.pairs = pairs
        while i < self.count or j < other.count:
            if i < self.count and a[i].flags & EXCLUDED:
                i += 1
                continue
            if j < other.count and b[j].flags & EXCLUDED:
                j += 1
                continue
            if i == self.count:
                c = 1
            elif j == other.count:
                c = -1
            else:
                c = strcmp(a[i].name, b[j].name)
            if c < 0:
                d.differing.append((i, -1))
                i += 1
            elif c > 0:
                d.only_other.append(j)
                j += 1
            else:
                # The same arithmetic as plan.same_mtime on Entry.mtime (mtime_ns / 1e9).
                if (a[i].size == b[j].size
                        and fabs(<double>a[i].mtime_ns / 1e9 - <double>b[j].mtime_ns / 1e9) < tolerance):
                    if pairs != NULL:
                        pairs[2 * d.unchanged] = i
                        pairs[2 * d.unchanged + 1] = j
                    d.unchanged += 1
                    d.unchanged_bytes += a[i].size
                else:
                    d.differing.append((i, j))
                i += 1
                j += 1
        return d


# Bytes compared at a time per file by Diff.compare_contents.
cdef enum:
    COMPARE_CHUNK = 1 << 20


cdef class Diff:
    """Two listings compared by Listing.diff: ``unchanged`` (count) and
    ``unchanged_bytes``; ``differing``: [(i, j)] of files of the first listing
    that differ in size or mtime, j = -1 when the second lacks them;
    ``only_other``: [j] of files only the second has. Lists in name order."""

    cdef readonly Listing first, second
    cdef readonly size_t unchanged
    cdef readonly int64_t unchanged_bytes
    cdef readonly list differing, only_other
    cdef size_t *pairs  # (i, j) of each unchanged file, when kept

    def __cinit__(self, Listing first not None, Listing second not None):
        self.first, self.second = first, second
        self.unchanged = 0
        self.unchanged_bytes = 0
        self.differing, self.only_other = [], []
        self.pairs = NULL

    def __dealloc__(self):
        free(self.pairs)

    def unchanged_pair(self, size_t k):
        """(i, j) of the k-th unchanged file (kept pairs only)."""
        if self.pairs == NULL or k >= self.unchanged:
            raise IndexError(k)
        return self.pairs[2 * k], self.pairs[2 * k + 1]

    def compare_contents(self, first_root, second_root, size_t start, size_t stop):
        """Compare the bytes of unchanged files k in [start, stop) under the two
        roots, with the GIL released (call from several threads on disjoint
        ranges to use several cores). Returns [(k, errno, side)] of those whose
        bytes differ (errno 0) or that could not be read (side 1 when the
        second copy failed, else 0)."""
        cdef bytes ra = os.fsencode(first_root)
        cdef bytes rb = os.fsencode(second_root)
        cdef const char *ca = ra
        cdef const char *cb = rb
        cdef size_t n = 0, k
        cdef size_t *found = NULL
        cdef int *errs = NULL
        cdef int rc = 0
        if self.pairs == NULL:
            raise ValueError("compare_contents needs a diff made with keep_unchanged=True")
        stop = min(stop, self.unchanged)
        if start >= stop:
            return []
        found = <size_t *>malloc((stop - start) * sizeof(size_t))
        errs = <int *>malloc((stop - start) * sizeof(int))
        try:
            if found == NULL or errs == NULL:
                raise MemoryError()
            with nogil:
                rc = _compare_range(self.first.recs, self.second.recs, self.pairs, start, stop, ca, cb,
                                    found, errs, &n)
            if rc == -2:
                raise OSError(errno, "cannot open directory")
            if rc != 0:
                raise MemoryError()
            return [(found[k], abs(errs[k]), 1 if errs[k] < 0 else 0) for k in range(n)]
        finally:
            free(found)
            free(errs)


cdef struct OpenDir:
    const char *dir       # the directory last opened (a prefix of a name), and its descriptor:
    size_t dir_len        # files listed in path order share it, and each open resolves one
    int dirfd             # name instead of the whole path; -1 when none is open


cdef int _open_listed(int rootfd, OpenDir *d, const char *name) noexcept nogil:
    """Open a listed file beneath the root, through its directory's
    descriptor (kept while the next files are in the same directory)."""
    cdef const char *slash = strrchr(name, 47)  # '/'
    cdef size_t n
    if slash == NULL:
        return open_beneath(rootfd, name)
    n = slash - name
    if d.dirfd < 0 or n != d.dir_len or memcmp(name, d.dir, n) != 0:
        if d.dirfd >= 0:
            close(d.dirfd)
        d.dirfd = open_dir_beneath(rootfd, name, n)
        if d.dirfd < 0:
            return -1
        d.dir, d.dir_len = name, n
    return open_beneath(d.dirfd, slash + 1)


cdef Py_ssize_t _read_full(int fd, char *buf, size_t want, int64_t left, bint *eof) noexcept nogil:
    """Read until ``want`` bytes or end of file; -1 on error (errno set).
    ``left``: the bytes the listing says remain. A regular file reads short
    only at its end, so a short read that brings exactly those is taken as the
    end, sparing the read that would return 0 (one system call in every five
    of a --checksum pass over small files). Any other short read is followed
    up, so a file that shrank or grew since the listing still reads to its end
    or to ``want``."""
    cdef size_t got = 0
    cdef Py_ssize_t r
    eof[0] = False
    while got < want:
        r = read(fd, buf + got, want - got)
        if r < 0:
            if errno == EINTR:
                continue
            return -1
        if r == 0:
            eof[0] = True
            break
        got += r
        if got < want and <int64_t>got == left:
            eof[0] = True
            break
    return got


cdef int _same_bytes(int fa, int fb, char *ba, char *bb, int64_t size, int *err) noexcept nogil:
    """1 when both files hold the same bytes to their ends, 0 when not, -1 on
    a read error (err: errno, negative when the second file failed). ``size``:
    the listed size of both."""
    cdef Py_ssize_t na, nb
    cdef bint ea, eb
    cdef int64_t done = 0
    while True:
        na = _read_full(fa, ba, COMPARE_CHUNK, size - done, &ea)
        if na < 0:
            err[0] = errno
        nb = _read_full(fb, bb, COMPARE_CHUNK, size - done, &eb)
        if nb < 0:
            err[0] = -errno  # the destination's error is the one reported, as a digest would
        if na < 0 or nb < 0:
            return -1
        if na != nb or memcmp(ba, bb, na) != 0:
            return 0
        if ea or eb:
            return 1 if ea and eb else 0
        done += na


cdef int _compare_range(Rec *a, Rec *b, size_t *pairs, size_t start, size_t stop, const char *root_a,
                        const char *root_b, size_t *found, int *errs, size_t *n) noexcept nogil:
    cdef int da = openat(AT_FDCWD, root_a, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    cdef int db = openat(AT_FDCWD, root_b, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    cdef char *ba = <char *>malloc(COMPARE_CHUNK)
    cdef char *bb = <char *>malloc(COMPARE_CHUNK)
    cdef int fa, fb, err, rc = 0
    cdef int same = 1
    cdef size_t k
    cdef OpenDir in_a, in_b
    in_a.dirfd = in_b.dirfd = -1
    if da < 0 or db < 0:
        rc = -2
    elif ba == NULL or bb == NULL:
        rc = -1
    else:
        for k in range(start, stop):
            err = 0
            fa = _open_listed(da, &in_a, a[pairs[2 * k]].name)
            if fa < 0:
                err = errno
            fb = _open_listed(db, &in_b, b[pairs[2 * k + 1]].name)
            if fb < 0:
                err = -errno
            if err == 0:
                same = _same_bytes(fa, fb, ba, bb, a[pairs[2 * k]].size, &err)
            if fa >= 0:
                close(fa)
            if fb >= 0:
                close(fb)
            if err != 0 or same != 1:
                found[n[0]] = k
                errs[n[0]] = err
                n[0] += 1
    if in_a.dirfd >= 0:
        close(in_a.dirfd)
    if in_b.dirfd >= 0:
        close(in_b.dirfd)
    if da >= 0:
        close(da)
    if db >= 0:
        close(db)
    free(ba)
    free(bb)
    return rc


cdef str _decode(const char *name):
    return name.decode("utf-8", "surrogateescape")


def scan(root, skip_top=None, bint two_threads=False):
    """List every regular file under ``root``: (Listing, error), where error is
    the (errno, relative dir) of the first directory that could not be read,
    or None. Symlinks are never followed; ``skip_top`` names a top-level entry
    to skip. With ``two_threads`` the top-level entries are shared between
    two threads (for a tree listed alone). Raises OSError when ``root``
    itself cannot be opened."""
    cdef bytes root_b = root.encode("utf-8", "surrogateescape") if isinstance(root, str) else root
    cdef bytes skip_b = skip_top.encode() if skip_top is not None else b""
    cdef const char *skip_c = NULL
    cdef const char *root_c = root_b
    cdef Found f
    cdef size_t cap = 8192
    cdef char *prefix = <char *>malloc(cap)
    cdef int fd
    cdef int rc = 0
    cdef size_t i
    cdef Rec *recs = NULL
    cdef bint unsorted = False
    cdef Listing listing = Listing()
    _found_init(&f)
    if prefix == NULL:
        raise MemoryError()
    prefix[0] = 0
    if skip_top is not None:
        skip_c = skip_b
    try:
        with nogil:
            fd = openat(AT_FDCWD, root_c, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if fd < 0:
                rc = -2
            elif two_threads:
                rc = _walk_in_two(fd, prefix, cap, &f, skip_c)
            else:
                rc = _walk(fd, prefix, 0, cap, &f, skip_c)
            if rc == 0:
                recs = <Rec *>malloc((f.count + 1) * sizeof(Rec))
                if recs == NULL:
                    rc = -1
            if rc == 0:
                for i in range(f.count):
                    recs[i].name = f.names + f.offsets[i]
                    recs[i].size = f.sizes[i]
                    recs[i].mtime_ns = f.mtimes[i]
                    recs[i].flags = _name_flags(recs[i].name)
                    listing.total += f.sizes[i]
                    if recs[i].flags & NOT_UTF8:
                        listing.str_order = False
                    if i > 0 and strcmp(recs[i - 1].name, recs[i].name) >= 0:
                        unsorted = True
                if unsorted:  # never expected (the walk yields path order); diff needs it
                    qsort(recs, f.count, sizeof(Rec), _by_name)
        if rc == -2:
            raise OSError(errno, "cannot open directory", root)
        if rc != 0:
            raise MemoryError()
        listing.names, f.names = f.names, NULL
        listing.recs, recs = recs, NULL
        listing.count = listing.live = f.count
        listing.links = f.links
        error = None
        if f.error:
            error = (f.error, _decode(f.error_path) if f.error_path != NULL else "")
        return listing, error
    finally:
        free(prefix)
        free(recs)
        _found_free(&f)


cdef struct Reading:
    int rootfd
    const char **names
    size_t *limits     # bytes to read of each file: its listed size + 1 (the extra byte tells a file that grew)
    size_t *offsets    # where each file goes in its batch's buffer
    Py_ssize_t *lengths  # bytes read, or -errno
    size_t *bounds     # batch k is files bounds[k] to bounds[k + 1]
    size_t batches
    char *buffers[2]   # batch k goes into buffers[k % 2]
    long holds[2]      # the batch a buffer holds, read; -1 while being (re)filled
    bint free[2]       # the consumer is done with the buffer
    bint stop
    pthread_mutex_t lock
    pthread_cond_t changed
