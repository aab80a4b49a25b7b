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

One compiled module in parts by job, included below: the tree walk
(walk_tree.pxi), listings and their diff (walk_listing.pxi), batched reads
(walk_batches.pxi), small-file BLAKE3 (walk_blake3.pxi) and manifest lines
(walk_jsonl.pxi).
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


include "walk_tree.pxi"
include "walk_listing.pxi"
include "walk_batches.pxi"
include "walk_blake3.pxi"
include "walk_jsonl.pxi"
