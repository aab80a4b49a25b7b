# cython: language_level=3
"""Directory walking for listings: the hot loop of a no-op mirror.

A Python walk of 20,000 files spends most of its time building DirEntry and
stat objects. This walks with openat/fdopendir/fstatat, never follows
symlinks, collects (path, size, mtime_ns) into C buffers with the GIL
released (so two trees can be listed at once), and builds Python objects
only at the end.
"""

from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, strcmp, strlen
from libc.stdint cimport int64_t

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR:
        pass
    cdef struct dirent:
        unsigned char d_type
        char d_name[256]
    DIR *fdopendir(int fd)
    dirent *readdir(DIR *dirp)
    int closedir(DIR *dirp)
    int DT_DIR
    int DT_REG
    int DT_UNKNOWN

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char *pathname, int flags)
    int O_RDONLY
    int O_DIRECTORY
    int O_NOFOLLOW
    int O_CLOEXEC
    int AT_SYMLINK_NOFOLLOW
    int AT_FDCWD

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<errno.h>" nogil:
    int errno

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


cdef struct Found:
    char *names        # relative paths, each NUL-terminated, back to back
    size_t names_len
    size_t names_cap
    int64_t *sizes
    int64_t *mtimes
    size_t count
    size_t cap
    int error          # first errno that stopped a directory read, 0 if none
    char *error_path


cdef int _grow(Found *f, size_t extra) noexcept nogil:
    cdef char *names
    cdef int64_t *sizes
    cdef int64_t *mtimes
    if f.names_len + extra > f.names_cap:
        while f.names_len + extra > f.names_cap:
            f.names_cap = f.names_cap * 2 + 4096
        names = <char *>realloc(f.names, f.names_cap)
        if names == NULL:
            return -1
        f.names = names
    if f.count + 1 > f.cap:
        f.cap = f.cap * 2 + 256
        sizes = <int64_t *>realloc(f.sizes, f.cap * sizeof(int64_t))
        if sizes == NULL:
            return -1
        f.sizes = sizes
        mtimes = <int64_t *>realloc(f.mtimes, f.cap * sizeof(int64_t))
        if mtimes == NULL:
            return -1
        f.mtimes = mtimes
    return 0


cdef void _note_error(Found *f, const char *prefix, size_t plen, int err) noexcept nogil:
    if f.error == 0:
        f.error = err
        f.error_path = <char *>malloc(plen + 1)
        if f.error_path != NULL:
            memcpy(f.error_path, prefix, plen)
            f.error_path[plen] = 0


cdef int _walk(int dirfd, char *prefix, size_t plen, size_t cap, Found *f, const char *skip_top) noexcept nogil:
    """Walk the open directory ``dirfd`` whose relative path is prefix[:plen]."""
    cdef DIR *d = fdopendir(dirfd)
    cdef dirent *e
    cdef stat st
    cdef size_t nlen
    cdef int child
    cdef bint is_dir
    if d == NULL:
        close(dirfd)
        _note_error(f, prefix, plen, errno)
        return 0
    while True:
        e = readdir(d)
        if e == NULL:
            break
        if strcmp(e.d_name, ".") == 0 or strcmp(e.d_name, "..") == 0:
            continue
        if plen == 0 and skip_top != NULL and strcmp(e.d_name, skip_top) == 0:
            continue
        nlen = strlen(e.d_name)
        if plen + nlen + 2 > cap:
            continue  # longer than PATH_MAX: cannot be opened anyway
        memcpy(prefix + plen, e.d_name, nlen)
        prefix[plen + nlen] = 0
        if e.d_type == DT_DIR:
            is_dir = True
        elif e.d_type == DT_REG or e.d_type == DT_UNKNOWN:
            if fstatat(dirfd_of(d), e.d_name, &st, AT_SYMLINK_NOFOLLOW) != 0:
                continue  # vanished between readdir and stat
            is_dir = S_ISDIR(st.st_mode)
            if not is_dir and S_ISREG(st.st_mode):
                if _grow(f, plen + nlen + 1) != 0:
                    closedir(d)
                    return -1
                memcpy(f.names + f.names_len, prefix, plen + nlen + 1)
                f.names_len += plen + nlen + 1
                f.sizes[f.count] = st.st_size
                f.mtimes[f.count] = st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec
                f.count += 1
        else:
            continue  # symlinks, fifos, sockets, devices are not listed
        if is_dir:
            child = openat(dirfd_of(d), e.d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if child < 0:
                _note_error(f, prefix, plen + nlen, errno)
                continue
            prefix[plen + nlen] = b'/'
            if _walk(child, prefix, plen + nlen + 1, cap, f, NULL) != 0:
                closedir(d)
                return -1
    closedir(d)
    return 0


cdef extern from "<dirent.h>" nogil:
    int dirfd_of "dirfd"(DIR *dirp)


def scan_tree(root, skip_top=None):
    """Every regular file under ``root``: a list of (relative path, size, mtime_ns),
    and the (errno, relative dir) of the first directory that could not be read,
    or None. Symlinks are never followed; ``skip_top`` names a top-level entry to skip."""
    cdef bytes root_b = root.encode("utf-8", "surrogateescape") if isinstance(root, str) else root
    cdef bytes skip_b = skip_top.encode() if skip_top is not None else b""
    cdef const char *skip_c = NULL
    cdef const char *root_c = root_b
    cdef Found f
    cdef size_t cap = 8192
    cdef char *prefix = <char *>malloc(cap)
    cdef int fd
    cdef int rc = 0
    f.names = NULL
    f.names_len = f.names_cap = 0
    f.sizes = f.mtimes = NULL
    f.count = f.cap = 0
    f.error = 0
    f.error_path = NULL
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
            else:
                rc = _walk(fd, prefix, 0, cap, &f, skip_c)
        if rc == -2:
            raise OSError(errno, "cannot open directory", root)
        if rc != 0:
            raise MemoryError()
        out = []
        pos = 0
        for i in range(f.count):
            end = pos
            while f.names[end] != 0:
                end += 1
            name = f.names[pos:end].decode("utf-8", "surrogateescape")
            out.append((name, f.sizes[i], f.mtimes[i]))
            pos = end + 1
        error = None
        if f.error:
            error = (f.error, f.error_path.decode("utf-8", "surrogateescape") if f.error_path != NULL else "")
        return out, error
    finally:
        free(prefix)
        free(f.names)
        free(f.sizes)
        free(f.mtimes)
        free(f.error_path)
