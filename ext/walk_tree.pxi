# Part of _walk.pyx (included there): The tree walk: openat/fdopendir/fstatat, each directory in path order, two halves on two threads.

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
