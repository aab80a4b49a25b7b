# cython: language_level=3
"""Listing and reading many small files: the hot paths of no-op mirrors,
--checksum and manifests, where interpreter time per file is the cost.

- ``scan``: walks a tree with openat/fdopendir/fstatat (symlinks never
  followed), each directory's entries in path order, into a ``Listing`` of
  C records, with the GIL released (two trees are listed at once).
- ``Listing.diff``: compares two listings record by record; Python objects
  are made only for the files that differ. ``Diff.compare_contents`` then
  compares the bytes of two local copies, again without the GIL.
- ``BatchReader`` + ``hex_digests``: a C thread reads batches of small files
  while the caller hashes the batch before it, in a C loop.
- ``blake3_files``: C threads read small files and hash them with fitsync's
  own BLAKE3 (b3.h), never needing the GIL.
"""

import os

from cpython.buffer cimport PyBUF_READ
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.math cimport fabs
from libc.stdlib cimport abs, free, malloc, qsort, realloc
from libc.string cimport memcmp, memcpy, memset, strcmp, strlen, strrchr
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR:
        pass
    cdef struct dirent:
        unsigned char d_type
        char d_name[256]
    DIR *fdopendir(int fd)
    dirent *readdir(DIR *dirp)
    int closedir(DIR *dirp)
    int dirfd_of "dirfd"(DIR *dirp)
    int DT_DIR
    int DT_REG
    int DT_UNKNOWN
    int DT_LNK

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char *pathname, int flags)
    int O_RDONLY
    int O_DIRECTORY
    int O_NOFOLLOW
    int O_CLOEXEC
    int AT_SYMLINK_NOFOLLOW
    int AT_FDCWD

cdef extern from "Python.h":
    bytes PyUnicode_EncodeFSDefault(object unicode)  # what os.fsencode does with a str

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_mutex_init(pthread_mutex_t *mutex, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)
    int pthread_cond_init(pthread_cond_t *cond, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *cond)
    int pthread_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex)
    int pthread_cond_broadcast(pthread_cond_t *cond)

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    Py_ssize_t read(int fd, void *buf, size_t count)

cdef extern from "<errno.h>" nogil:
    int errno
    int EINTR
    int ENOMEM

cdef extern from "<sys/stat.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    cdef struct stat:
        unsigned int st_mode
        long st_size
        timespec st_mtim
    int fstatat(int dirfd, const char *pathname, stat *buf, int flags)
    bint S_ISREG(unsigned int m)
    bint S_ISDIR(unsigned int m)
    bint S_ISLNK(unsigned int m)


cdef extern from *:
    """
    #include <errno.h>
    #include <fcntl.h>
    #include <unistd.h>
    #include <string.h>
    #include <sys/syscall.h>
    #ifdef __linux__
    #include <linux/openat2.h>
    #endif
    /* Open a listed file for reading, refusing to leave the root through a
       symlink or '..' anywhere in the path (openat2's RESOLVE_BENEATH); where
       openat2 is missing or filtered, refuse a symlink as the last component. */
    static int fitsync_open_beneath(int dirfd, const char *name) {
    #if defined(SYS_openat2) && defined(RESOLVE_BENEATH)
        struct open_how how = {0};
        how.flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW;
        how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
        int fd = (int)syscall(SYS_openat2, dirfd, name, &how, sizeof how);
        if (fd >= 0 || (errno != ENOSYS && errno != EPERM))
            return fd;
    #endif
        return openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    }
    /* The same for a directory (the first `len` bytes of `path`). */
    static int fitsync_open_dir_beneath(int dirfd, const char *path, size_t len) {
        char dir[4096];
        if (len >= sizeof dir) {
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(dir, path, len);
        dir[len] = 0;
    #if defined(SYS_openat2) && defined(RESOLVE_BENEATH)
        struct open_how how = {0};
        how.flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_DIRECTORY;
        how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
        int fd = (int)syscall(SYS_openat2, dirfd, dir, &how, sizeof how);
        if (fd >= 0 || (errno != ENOSYS && errno != EPERM))
            return fd;
    #endif
        return openat(dirfd, dir, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_DIRECTORY);
    }
    """
    int open_beneath "fitsync_open_beneath"(int dirfd, const char *name) nogil
    int open_dir_beneath "fitsync_open_dir_beneath"(int dirfd, const char *path, size_t length) nogil


# Record flags.
cdef enum:
    SUSPECT = 1    # a name Python must check (non-ASCII, control character, backslash, long)
    NOT_UTF8 = 2   # not valid UTF-8: byte order differs from Python's str order
    EXCLUDED = 4   # refused by the caller (an unsafe name): not part of the listing

cdef enum:
    PLAIN_NAME_MAX = 200   # longer names (in characters) get the full safe_relpath check


cdef struct Rec:
    const char *name
    int64_t size
    int64_t mtime_ns
    uint8_t flags


cdef struct Found:
    char *names        # relative paths, each NUL-terminated, back to back
    size_t names_len
    size_t names_cap
    size_t *offsets    # where each path starts in names
    int64_t *sizes
    int64_t *mtimes
    size_t count
    size_t cap
    int error          # first errno that stopped a directory read, 0 if none
    size_t links       # symlinks passed over
    char *error_path


cdef int _grow(Found *f, size_t extra) noexcept nogil:
    cdef char *names
    cdef void *p
    if f.names_len + extra > f.names_cap:
        while f.names_len + extra > f.names_cap:
            f.names_cap = f.names_cap * 2 + 4096
        names = <char *>realloc(f.names, f.names_cap)
        if names == NULL:
            return -1
        f.names = names
    if f.count + 1 > f.cap:
        f.cap = f.cap * 2 + 256
        p = realloc(f.sizes, f.cap * sizeof(int64_t))
        if p == NULL:
            return -1
        f.sizes = <int64_t *>p
        p = realloc(f.mtimes, f.cap * sizeof(int64_t))
        if p == NULL:
            return -1
        f.mtimes = <int64_t *>p
        p = realloc(f.offsets, f.cap * sizeof(size_t))
        if p == NULL:
            return -1
        f.offsets = <size_t *>p
    return 0


cdef void _note_error(Found *f, const char *prefix, size_t plen, int err) noexcept nogil:
    if f.error == 0:
        f.error = err
        f.error_path = <char *>malloc(plen + 1)
        if f.error_path != NULL:
            memcpy(f.error_path, prefix, plen)
            f.error_path[plen] = 0


cdef struct Child:
    const char *name   # into the directory's name buffer
    bint is_dir


cdef int _child_order(const void *a, const void *b) noexcept nogil:
    """Order of the full paths under the children: a directory's name is
    followed by '/' in all of them, a file's by nothing."""
    cdef const unsigned char *x = <const unsigned char *>(<const Child *>a).name
    cdef const unsigned char *y = <const unsigned char *>(<const Child *>b).name
    cdef unsigned int cx, cy
    while x[0] and x[0] == y[0]:
        x += 1
        y += 1
    cx = x[0] if x[0] else (b'/' if (<const Child *>a).is_dir else 0)
    cy = y[0] if y[0] else (b'/' if (<const Child *>b).is_dir else 0)
    return <int>cx - <int>cy


cdef int _read_children(DIR *d, const char *skip, char **names_out, Child **children_out,
                        size_t *count_out, size_t *links) noexcept nogil:
    """Every directory and regular-file-like entry of ``d``, sorted in path order;
    ``links`` counts the symlinks passed over (the mirror reports them)."""
    cdef dirent *e
    cdef stat st
    cdef size_t nlen, used = 0, cap = 4096, count = 0, ccap = 64, i
    cdef char *names = <char *>malloc(cap)
    cdef size_t *offsets = <size_t *>malloc(ccap * sizeof(size_t))
    cdef uint8_t *dirs = <uint8_t *>malloc(ccap)
    cdef Child *children
    cdef void *p
    cdef bint is_dir
    if names == NULL or offsets == NULL or dirs == NULL:
        free(names); free(offsets); free(dirs)
        return -1
    while True:
        e = readdir(d)
        if e == NULL:
            break
        if strcmp(e.d_name, ".") == 0 or strcmp(e.d_name, "..") == 0:
            continue
        if skip != NULL and strcmp(e.d_name, skip) == 0:
            continue
        if e.d_type == DT_DIR:
            is_dir = True
        elif e.d_type == DT_REG:
            is_dir = False
        elif e.d_type == DT_UNKNOWN:  # some file systems: ask
            if fstatat(dirfd_of(d), e.d_name, &st, AT_SYMLINK_NOFOLLOW) != 0:
                continue
            if S_ISDIR(st.st_mode):
                is_dir = True
            elif S_ISREG(st.st_mode):
                is_dir = False
            else:
                links[0] += S_ISLNK(st.st_mode)
                continue
        else:
            links[0] += e.d_type == DT_LNK
            continue  # symlinks, fifos, sockets, devices are not listed
        nlen = strlen(e.d_name)
        if used + nlen + 1 > cap:
            while used + nlen + 1 > cap:
                cap *= 2
            p = realloc(names, cap)
            if p == NULL:
                free(names); free(offsets); free(dirs)
                return -1
            names = <char *>p
        if count == ccap:
            ccap *= 2
            p = realloc(offsets, ccap * sizeof(size_t))
            if p == NULL:
                free(names); free(offsets); free(dirs)
                return -1
            offsets = <size_t *>p
            p = realloc(dirs, ccap)
            if p == NULL:
                free(names); free(offsets); free(dirs)
                return -1
            dirs = <uint8_t *>p
        memcpy(names + used, e.d_name, nlen + 1)
        offsets[count] = used
        dirs[count] = is_dir
        used += nlen + 1
        count += 1
    children = <Child *>malloc((count + 1) * sizeof(Child))
    if children == NULL:
        free(names); free(offsets); free(dirs)
        return -1
    for i in range(count):
        children[i].name = names + offsets[i]
        children[i].is_dir = dirs[i]
    free(offsets)
    free(dirs)
    qsort(children, count, sizeof(Child), _child_order)
    names_out[0] = names
    children_out[0] = children
    count_out[0] = count
    return 0


cdef int _walk(int dirfd, char *prefix, size_t plen, size_t cap, Found *f, const char *skip_top) noexcept nogil:
    """Walk the open directory ``dirfd`` whose relative path is prefix[:plen],
    children in sorted order, so that the whole listing comes out sorted by
    path without sorting it as a whole (each directory's names are few and
    short; a sort of all paths costs several times more)."""
    cdef DIR *d = fdopendir(dirfd)
    cdef size_t count
    cdef int rc
    cdef char *names
    cdef Child *children
    if d == NULL:
        close(dirfd)
        _note_error(f, prefix, plen, errno)
        return 0
    if _read_children(d, skip_top, &names, &children, &count, &f.links) != 0:
        closedir(d)
        return -1
    rc = _walk_children(d, children, 0, count, prefix, plen, cap, f)
    free(children)
    free(names)
    closedir(d)
    return rc


cdef int _walk_children(DIR *d, Child *children, size_t lo, size_t hi, char *prefix, size_t plen, size_t cap,
                        Found *f) noexcept nogil:
    """Record (files) or walk (directories) children[lo:hi] of ``d``."""
    cdef stat st
    cdef size_t nlen, i
    cdef int child
    for i in range(lo, hi):
        nlen = strlen(children[i].name)
        if plen + nlen + 2 > cap:
            continue  # longer than PATH_MAX: cannot be opened anyway
        memcpy(prefix + plen, children[i].name, nlen)
        prefix[plen + nlen] = 0
        if children[i].is_dir:
            child = openat(dirfd_of(d), children[i].name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if child < 0:
                _note_error(f, prefix, plen + nlen, errno)
                continue
            prefix[plen + nlen] = b'/'
            if _walk(child, prefix, plen + nlen + 1, cap, f, NULL) != 0:
                return -1
            continue
        if fstatat(dirfd_of(d), children[i].name, &st, AT_SYMLINK_NOFOLLOW) != 0:
            continue  # vanished since readdir
        if not S_ISREG(st.st_mode):
            continue  # replaced by something else since readdir: not listed, order kept
        if _grow(f, plen + nlen + 1) != 0:
            return -1
        f.offsets[f.count] = f.names_len
        memcpy(f.names + f.names_len, prefix, plen + nlen + 1)
        f.names_len += plen + nlen + 1
        f.sizes[f.count] = st.st_size
        f.mtimes[f.count] = st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec
        f.count += 1
    return 0


cdef struct Half:
    DIR *d
    Child *children
    size_t lo, hi, cap
    char *prefix
    Found *f
    int rc


cdef void *_walk_half(void *arg) noexcept nogil:
    cdef Half *h = <Half *>arg
    h.rc = _walk_children(h.d, h.children, h.lo, h.hi, h.prefix, 0, h.cap, h.f)
    return NULL


cdef int _walk_in_two(int dirfd, char *prefix, size_t cap, Found *f, const char *skip_top) noexcept nogil:
    """_walk of a root whose top-level entries are split in two halves, the
    second walked by a thread of its own (one tree listed on two cores), the
    halves' records then joined: the order stays that of the paths."""
    cdef DIR *d = fdopendir(dirfd)
    cdef size_t count
    cdef char *names
    cdef Child *children
    cdef Found second
    cdef Half half
    cdef pthread_t thread
    cdef int rc = 0
    cdef bint threaded
    if d == NULL:
        close(dirfd)
        return -2
    if _read_children(d, skip_top, &names, &children, &count, &f.links) != 0:
        closedir(d)
        return -1
    _found_init(&second)
    half.d, half.children, half.lo, half.hi, half.cap, half.f, half.rc = d, children, count // 2, count, cap, &second, 0
    half.prefix = <char *>malloc(cap)
    threaded = half.prefix != NULL and count >= 2 and pthread_create(&thread, NULL, _walk_half, &half) == 0
    if not threaded:
        half.lo = count  # all of it here
    rc = _walk_children(d, children, 0, half.lo, prefix, 0, cap, f)
    if threaded:
        pthread_join(thread, NULL)
        if rc == 0 and half.rc != 0:
            rc = half.rc
        if rc == 0:
            rc = _append(f, &second)
    _found_free(&second)
    free(half.prefix)
    free(children)
    free(names)
    closedir(d)
    return rc


cdef void _found_init(Found *f) noexcept nogil:
    f.names = NULL
    f.names_len = f.names_cap = 0
    f.offsets = NULL
    f.sizes = f.mtimes = NULL
    f.count = f.cap = 0
    f.error = 0
    f.error_path = NULL
    f.links = 0


cdef void _found_free(Found *f) noexcept nogil:
    free(f.names)
    free(f.offsets)
    free(f.sizes)
    free(f.mtimes)
    free(f.error_path)
    _found_init(f)


cdef int _append(Found *f, Found *more) noexcept nogil:
    """Records of ``more`` after those of ``f``; its error if ``f`` has none."""
    cdef size_t i
    if _grow(f, more.names_len) != 0:
        return -1
    memcpy(f.names + f.names_len, more.names, more.names_len)
    for i in range(more.count):
        if _grow(f, 0) != 0:
            return -1
        f.offsets[f.count] = f.names_len + more.offsets[i]
        f.sizes[f.count] = more.sizes[i]
        f.mtimes[f.count] = more.mtimes[i]
        f.count += 1
    f.names_len += more.names_len
    f.links += more.links
    if f.error == 0 and more.error != 0:
        f.error, f.error_path, more.error_path = more.error, more.error_path, NULL
    return 0


cdef int _utf8_valid(const unsigned char *s) noexcept nogil:
    """Whether ``s`` decodes as strict UTF-8 (what Python's decoder accepts
    without surrogateescape): no overlong forms, no surrogates, <= U+10FFFF."""
    cdef unsigned char c
    cdef int need
    cdef unsigned int cp, low
    while s[0]:
        c = s[0]
        if c < 0x80:
            s += 1
            continue
        if c >= 0xC2 and c <= 0xDF:
            need, cp, low = 1, c & 0x1F, 0x80
        elif c >= 0xE0 and c <= 0xEF:
            need, cp, low = 2, c & 0x0F, 0x800
        elif c >= 0xF0 and c <= 0xF4:
            need, cp, low = 3, c & 0x07, 0x10000
        else:
            return 0
        s += 1
        while need:
            if (s[0] & 0xC0) != 0x80:
                return 0
            cp = (cp << 6) | (s[0] & 0x3F)
            s += 1
            need -= 1
        if cp < low or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF):
            return 0
    return 1


cdef uint8_t _name_flags(const char *name) noexcept nogil:
    """SUSPECT for any name the plain ASCII test cannot clear (the Python
    side then applies its exact rule), plus NOT_UTF8 where it applies."""
    cdef const unsigned char *s = <const unsigned char *>name
    cdef size_t n = 0
    cdef uint8_t flags = 0
    cdef bint wide = False
    while s[n]:
        if s[n] >= 0x80:
            wide = True
        elif s[n] < 0x20 or s[n] == 0x7F or s[n] == b'\\':
            flags = SUSPECT
        n += 1
    if n > PLAIN_NAME_MAX:
        flags = SUSPECT
    if wide:
        flags = SUSPECT
        if not _utf8_valid(s):
            flags |= NOT_UTF8
    return flags


cdef int _by_name(const void *a, const void *b) noexcept nogil:
    return strcmp((<const Rec *>a).name, (<const Rec *>b).name)


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

    def entries(self, make):
        """[make(path, size, mtime in seconds: mtime_ns / 1e9)] of every file,
        in name order (``make`` is fitsync's Entry: no tuple per file)."""
        cdef size_t i
        out = []
        for i in range(self.count):
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


# -- manifest lines ----------------------------------------------------------------------

cdef extern from "Python.h":
    char *PyOS_double_to_string(double val, char format_code, int precision, int flags, int *ptype) except NULL
    int Py_DTSF_ADD_DOT_0
    void PyMem_Free(void *p)
    const char *PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t *size) except NULL
    object PyUnicode_DecodeUTF8(const char *s, Py_ssize_t size, const char *errors)

cdef extern from "<math.h>" nogil:
    bint isfinite(double x)

cdef extern from "<stdio.h>" nogil:
    int snprintf(char *buf, size_t n, const char *fmt, ...)


cdef class _Text:
    """A growing UTF-8 buffer."""
    cdef char *data
    cdef size_t used, cap

    def __cinit__(self):
        self.cap = 1 << 16
        self.used = 0
        self.data = <char *>malloc(self.cap)
        if self.data == NULL:
            raise MemoryError()

    cdef int add(self, const char *s, size_t n) except -1:
        cdef void *p
        cdef size_t cap = self.cap
        while self.used + n > cap:
            cap *= 2
        if cap != self.cap:
            p = realloc(self.data, cap)
            if p == NULL:
                raise MemoryError()
            self.data, self.cap = <char *>p, cap
        memcpy(self.data + self.used, s, n)
        self.used += n
        return 0

    cdef int add_str(self, str s) except -1:
        cdef Py_ssize_t n
        cdef const char *u = PyUnicode_AsUTF8AndSize(s, &n)
        return self.add(u, n)

    def __dealloc__(self):
        free(self.data)


cdef bint _plain_json_string(const char *s, Py_ssize_t n) noexcept:
    """True when the UTF-8 text needs no JSON escape (no quote, backslash or
    control character)."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = <unsigned char>s[i]
        if c < 0x20 or c == 0x22 or c == 0x5C:
            return False
    return True


def jsonl_lines(list entries not None, line_of):
    """The manifest's per-file lines (docs/manifest.md) as one str: for each
    entry with no extra fields, exactly what manifest._jsonl_line writes
    ({"blake3", "mtime" as repr() writes a float, "path" as
    json.encoder.encode_basestring quotes it, "size"}), formatted here;
    any other entry (extra fields, a name JSON must escape or UTF-8 cannot
    hold, a non-finite mtime) gets ``line_of(entry)``. Formatting 20,000
    lines in Python costs ~30 ms, most of it per-line interpreter time."""
    cdef _Text out = _Text()
    cdef const char *path
    cdef Py_ssize_t plen
    cdef double mtime
    cdef char *number
    cdef char size_text[64]
    cdef int k
    for entry in entries:
        path = NULL
        mtime = entry.mtime
        if not entry.extra and isfinite(mtime) and type(entry.path) is str:
            try:
                path = PyUnicode_AsUTF8AndSize(entry.path, &plen)
            except UnicodeEncodeError:  # a lone surrogate: line_of says what to do
                path = NULL
            if path != NULL and not _plain_json_string(path, plen):
                path = NULL
        if path == NULL:
            try:
                out.add_str(line_of(entry))
            except UnicodeEncodeError:  # text UTF-8 cannot hold: the caller's writer will say so
                return "".join([line_of(e) for e in entries])
            continue
        out.add(b'{"blake3": "', 12)
        out.add_str(entry.blake3)
        out.add(b'", "mtime": ', 12)
        number = PyOS_double_to_string(mtime, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
        try:
            out.add(number, strlen(number))
        finally:
            PyMem_Free(number)
        out.add(b', "path": "', 11)
        out.add(path, plen)
        k = snprintf(size_text, sizeof(size_text), b'", "size": %lld}\n', <long long>entry.size)
        out.add(size_text, k)
    return PyUnicode_DecodeUTF8(out.data, out.used, b"strict")
