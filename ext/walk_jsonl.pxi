# Part of _walk.pyx (included there): Manifest lines formatted in C.

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
