# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""fitsync's compiled hot loops.

Every loop here runs without the GIL over a contiguous byte buffer (bytes,
mmap, memoryview, numpy). The Python layers (fitsync.checksum,
fitsync.signature, fitsync.delta) own the API; this module only computes.
Pure-Python oracles of every function live in fitsync.reference.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport realloc, free
from libc.string cimport memcmp, memcpy, memset



# ---------------------------------------------------------------------------
# xxh3-128 called from C (the strong block digest, fitsync.signature.strong_digest)
#
# python-xxhash's extension exports libxxhash's XXH3_128bits. Calling it from
# C lets block hashing and scanning run with the GIL released throughout (a
# Python call per 17 KiB block holds the GIL for about a third of the time,
# so two threads hashing blocks would take turns instead of overlapping).
# bind_xxh3_128 finds the symbol in the already-loaded extension and checks
# it against the Python function before use; where it is missing (another
# build of xxhash) every call goes through Python as before.
# ---------------------------------------------------------------------------

cdef extern from "<dlfcn.h>" nogil:
    void *dlopen(const char *filename, int flags)
    void *dlsym(void *handle, const char *symbol)
    int RTLD_NOW
    int RTLD_NOLOAD

cdef struct xxh128_hash:
    uint64_t low64
    uint64_t high64

ctypedef xxh128_hash (*xxh3_128_fn)(const void *data, size_t length) noexcept nogil

cdef xxh3_128_fn _xxh3_128 = NULL
cdef object _xxh3_128_py = None  # the Python function _xxh3_128 stands in for


cdef inline void _put_be64(uint8_t* out, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        out[i] = <uint8_t>(v >> (56 - 8 * i))


cdef inline void _canonical_with(xxh3_128_fn fn, const uint8_t* p, size_t n, uint8_t* out) noexcept nogil:
    """The 16 bytes xxhash.xxh3_128_digest returns: high then low half, big-endian."""
    cdef xxh128_hash h = fn(p, n)
    _put_be64(out, h.high64)
    _put_be64(out + 8, h.low64)


cdef inline void _xxh3_128_canonical(const uint8_t* p, size_t n, uint8_t* out) noexcept nogil:
    _canonical_with(_xxh3_128, p, n, out)


cdef inline bint _strong_in_c(object strong_fn, Py_ssize_t strong_len):
    return _xxh3_128 != NULL and strong_len == 16 and strong_fn is _xxh3_128_py


def bind_xxh3_128(library_path, py_fn):
    """Use XXH3_128bits from the loaded library at ``library_path`` wherever
    ``py_fn`` (xxhash.xxh3_128_digest) is passed as the strong digest.
    Returns whether it is in use: only if the symbol exists and agrees with
    ``py_fn`` on inputs of every length class XXH3 treats apart."""
    global _xxh3_128, _xxh3_128_py
    cdef bytes path = library_path.encode() if isinstance(library_path, str) else library_path
    cdef void* handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD)  # only if already loaded: never loads code
    if handle == NULL:
        return False
    cdef void* symbol = dlsym(handle, b"XXH3_128bits")
    if symbol == NULL:
        return False
    cdef xxh3_128_fn candidate = <xxh3_128_fn>symbol
    cdef uint8_t out[16]
    sample = bytes((i * 131 + 7) & 0xFF for i in range(20000))
    cdef const uint8_t* data = sample
    for n in (0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1024, 2880, 17280, 20000):
        _canonical_with(candidate, data, n, out)
        if out[:16] != py_fn(sample[:n]):
            return False
    _xxh3_128, _xxh3_128_py = candidate, py_fn
    return True


def strong_in_c(strong_fn, Py_ssize_t strong_len=16):
    """Whether ``strong_fn`` runs from C here (see bind_xxh3_128)."""
    return _strong_in_c(strong_fn, strong_len)


# ---------------------------------------------------------------------------
# FITS ones'-complement sum (FITS 4.0 appendix J; DATASUM / CHECKSUM)
# ---------------------------------------------------------------------------

cdef extern from "kernels.h" nogil:
    uint64_t _fold32 "fitsync_fold32"(uint64_t s)
    uint64_t _fits_sum_words "fitsync_fits_sum_words"(const uint8_t* p, size_t nwords)
    void _byte_moments "fitsync_byte_moments"(const uint8_t* p, size_t n, uint16_t* total, uint16_t* weighted)
    uint32_t GOLDEN "FITSYNC_GOLDEN"  # Fibonacci hashing spreads the weak sums
    int _roll_to_hit "fitsync_roll_to_hit"(const uint8_t* p, int64_t* pos, int64_t stop, uint32_t bs,
                                           uint32_t* s1, uint32_t* s2, const uint64_t* filter, int filter_bits)
    void _adler_init "fitsync_adler_init"(const uint8_t* p, size_t n, uint32_t* a, uint32_t* b)
    void _adler_roll "fitsync_adler_roll"(uint32_t* a, uint32_t* b, uint32_t out, uint32_t inp, uint32_t n_mod)
    int _adler_roll_to_hit "fitsync_adler_roll_to_hit"(const uint8_t* p, int64_t* pos, int64_t stop, uint32_t bs,
                                                       uint32_t* a, uint32_t* b, const uint64_t* filter,
                                                       int filter_bits)
    uint32_t ADLER_MOD "FITSYNC_ADLER_MOD"


def fits_sum32(const uint8_t[::1] data not None, uint64_t seed=0):
    """FITS 32-bit ones'-complement sum of ``data`` added to ``seed``.

    ``data`` is read as big-endian 32-bit words; a partial last word is
    padded with zero bytes (as astropy does). Incremental sums are exact when
    every earlier piece had a length that is a multiple of 4."""
    cdef size_t n = data.shape[0]
    cdef size_t nwords = n // 4
    cdef size_t extra = n - 4 * nwords
    cdef uint64_t s = seed & 0xFFFFFFFFu
    cdef uint64_t last = 0
    cdef size_t k
    cdef const uint8_t* p = &data[0] if n else NULL
    with nogil:
        if nwords:
            s = _fold32(s + _fits_sum_words(p, nwords))
        for k in range(extra):
            last |= (<uint64_t>p[4 * nwords + k]) << (24 - 8 * k)
        s = _fold32(s + last)
    return <uint32_t>s


# ---------------------------------------------------------------------------
# Weak rolling sum (librsync's rollsum: rsync's checksum with a char offset)
#   s1 = sum(x_i + 31)                      mod 2**16
#   s2 = sum((n - i) * (x_i + 31))          mod 2**16,  i = 0 .. n-1
#   weak = s2 << 16 | s1
# Everything is modulo 2**16, so it is computed with wrapping 16-bit lanes,
# which vectorise; rolling by one byte is two additions.
# ---------------------------------------------------------------------------

cdef enum:
    CHAR_OFFSET = 31

# The two weak sums (``weak_kind`` arguments): librsync's rollsum, and
# Adler-32 as zlib computes it, which a host with only Python's stdlib can
# produce at C speed (the stdlib signature, docs/signature-format.md).
cdef enum:
    K_ROLLSUM = 0
    K_ADLER32 = 1
ROLLSUM = K_ROLLSUM
ADLER32 = K_ADLER32


cdef int _check_kind(int weak_kind) except -1:
    if weak_kind != K_ROLLSUM and weak_kind != K_ADLER32:
        raise ValueError(f"unknown weak sum kind {weak_kind}")
    return 0


cdef inline void _window_init(int kind, const uint8_t* p, size_t n, uint32_t* s1, uint32_t* s2) noexcept nogil:
    """The weak sum state of the n bytes at p (Adler-32: s1 = a, s2 = b)."""
    if kind == K_ADLER32:
        _adler_init(p, n, s1, s2)
    else:
        _rollsum_init(p, n, s1, s2)


cdef inline void _roll_one(int kind, uint32_t* s1, uint32_t* s2, uint32_t x_out, uint32_t x_in,
                           uint32_t bs) noexcept nogil:
    if kind == K_ADLER32:
        _adler_roll(s1, s2, x_out, x_in, bs % ADLER_MOD)
    else:
        s1[0] += x_in - x_out
        s2[0] += s1[0] - bs * (x_out + CHAR_OFFSET)


cdef inline void _rollsum_init(const uint8_t* p, size_t n, uint32_t* s1, uint32_t* s2) noexcept nogil:
    # s2 = n*sum(x) - sum(i*x) + 31*n*(n+1)/2, all modulo 2**16
    cdef uint16_t a, b
    _byte_moments(p, n, &a, &b)
    cdef uint64_t nn = n
    s1[0] = <uint32_t>((a + CHAR_OFFSET * nn) & 0xFFFFu)
    s2[0] = <uint32_t>((nn * a - b + CHAR_OFFSET * ((nn * (nn + 1) // 2) & 0xFFFFu)) & 0xFFFFu)


cdef inline uint32_t _weak_of(uint32_t s1, uint32_t s2) noexcept nogil:
    return ((s2 & 0xFFFFu) << 16) | (s1 & 0xFFFFu)


cdef inline uint32_t _weak_block(const uint8_t* p, size_t n, int kind=K_ROLLSUM) noexcept nogil:
    cdef uint32_t s1, s2
    _window_init(kind, p, n, &s1, &s2)
    return _weak_of(s1, s2)


def weak_sum(const uint8_t[::1] data not None, int weak_kind=ROLLSUM):
    """Weak sum of a whole buffer."""
    _check_kind(weak_kind)
    cdef size_t n = data.shape[0]
    cdef uint32_t w = 0
    if n == 0:
        return 1 if weak_kind == K_ADLER32 else _weak_of(0, 0)
    with nogil:
        w = _weak_block(&data[0], n, weak_kind)
    return w


def rolling_weak_sums(const uint8_t[::1] data not None, size_t window, uint32_t[::1] out not None,
                      int weak_kind=ROLLSUM):
    """Weak sum of every window of ``window`` bytes: out[k] covers data[k:k+window]."""
    _check_kind(weak_kind)
    cdef size_t n = data.shape[0]
    if window == 0 or n < window:
        return 0
    cdef size_t count = n - window + 1
    if <size_t>out.shape[0] < count:
        raise ValueError("output array too short")
    cdef const uint8_t* p = &data[0]
    cdef uint32_t s1, s2
    cdef size_t k
    with nogil:
        _window_init(weak_kind, p, window, &s1, &s2)
        out[0] = _weak_of(s1, s2)
        for k in range(1, count):
            _roll_one(weak_kind, &s1, &s2, p[k - 1], p[k - 1 + window], <uint32_t>window)
            out[k] = _weak_of(s1, s2)
    return count


cdef object _byte_view(object buffer):
    """``buffer`` as a one-dimensional memoryview of bytes (slices of it go to strong_fn)."""
    view = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


cdef int _strong_through(object strong_fn, object view, int64_t pos, int64_t length, uint8_t* out,
                         Py_ssize_t strong_len) except -1:
    """out = strong_fn(view[pos:pos + length]), checked to be ``strong_len`` bytes: the
    path taken when the strong digest does not run from C."""
    digest = strong_fn(view[pos:pos + length])
    if len(digest) != strong_len:
        raise ValueError("strong digest has the wrong length")
    memcpy(out, <const char*>(<bytes>digest), strong_len)
    return 0


cdef int _check_blocks_inside(const int64_t[::1] offsets, const int64_t[::1] lengths, Py_ssize_t size) except -1:
    """ValueError unless every block is non-empty and lies inside a buffer of ``size`` bytes."""
    cdef Py_ssize_t k
    for k in range(offsets.shape[0]):
        if offsets[k] < 0 or lengths[k] <= 0 or lengths[k] > size - offsets[k]:  # no sum to overflow
            raise ValueError(f"block {k} lies outside the buffer")
    return 0


def block_weak_sums(const uint8_t[::1] data not None, const int64_t[::1] offsets not None,
                    const int64_t[::1] lengths not None, uint32_t[::1] out not None, int weak_kind=ROLLSUM):
    """out[k] = weak sum of data[offsets[k] : offsets[k] + lengths[k]]."""
    _check_kind(weak_kind)
    cdef Py_ssize_t nb = offsets.shape[0], k
    cdef Py_ssize_t size = data.shape[0]
    if lengths.shape[0] != nb or out.shape[0] < nb:
        raise ValueError("offsets, lengths and out differ in length")
    _check_blocks_inside(offsets, lengths, size)
    if nb == 0:
        return
    cdef const uint8_t* p = &data[0]
    with nogil:
        for k in range(nb):
            out[k] = _weak_block(p + offsets[k], <size_t>lengths[k], weak_kind)


def hash_blocks(object buffer, const int64_t[::1] offsets not None, const int64_t[::1] lengths not None,
                uint32_t[::1] weak_out not None, uint8_t[::1] strong_out not None, object strong_fn,
                Py_ssize_t strong_len, int weak_kind=ROLLSUM):
    """Weak and strong sums of blocks of ``buffer`` (offsets relative to it).

    One block at a time, weak then strong, so the strong digest reads the
    block from cache instead of memory. When ``strong_fn`` runs from C
    (bind_xxh3_128) the whole loop runs without the GIL; otherwise the weak
    sum does, and ``strong_fn`` is called once per block."""
    _check_kind(weak_kind)
    cdef const uint8_t[::1] data = buffer
    cdef Py_ssize_t nb = offsets.shape[0], k
    cdef Py_ssize_t size = data.shape[0]
    if lengths.shape[0] != nb or weak_out.shape[0] < nb or strong_out.shape[0] < nb * strong_len:
        raise ValueError("offsets, lengths and outputs differ in length")
    _check_blocks_inside(offsets, lengths, size)
    view = _byte_view(buffer)
    cdef const uint8_t* p = &data[0] if size else NULL
    cdef int64_t o, n
    if _strong_in_c(strong_fn, strong_len):
        with nogil:
            for k in range(nb):
                weak_out[k] = _weak_block(p + offsets[k], <size_t>lengths[k], weak_kind)
                _xxh3_128_canonical(p + offsets[k], <size_t>lengths[k], &strong_out[k * strong_len])
        return
    for k in range(nb):
        o = offsets[k]
        n = lengths[k]
        with nogil:
            weak_out[k] = _weak_block(p + o, <size_t>n, weak_kind)
        _strong_through(strong_fn, view, o, n, &strong_out[k * strong_len], strong_len)


def strong_blocks(object buffer, const int64_t[::1] offsets not None, const int64_t[::1] lengths not None,
                  uint8_t[::1] strong_out not None, object strong_fn, Py_ssize_t strong_len):
    """Strong digests only (no weak sums) of blocks of ``buffer``: what
    comparing two files block by block at known places needs. The weak sum
    costs three times the strong one (10 vs 30 GB/s a core)."""
    cdef const uint8_t[::1] data = buffer
    cdef Py_ssize_t nb = offsets.shape[0], k
    cdef Py_ssize_t size = data.shape[0]
    if lengths.shape[0] != nb or strong_out.shape[0] < nb * strong_len:
        raise ValueError("offsets, lengths and output differ in length")
    _check_blocks_inside(offsets, lengths, size)
    cdef const uint8_t* p = &data[0] if size else NULL
    if _strong_in_c(strong_fn, strong_len):
        with nogil:
            for k in range(nb):
                _xxh3_128_canonical(p + offsets[k], <size_t>lengths[k], &strong_out[k * strong_len])
        return
    view = _byte_view(buffer)
    for k in range(nb):
        _strong_through(strong_fn, view, offsets[k], lengths[k], &strong_out[k * strong_len], strong_len)


include "native_match.pxi"
