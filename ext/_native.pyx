# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""fitsync's compiled hot loops.

Every loop here runs without the GIL over a contiguous byte buffer (bytes,
mmap, memoryview, numpy). The Python layers (fitsync.checksum,
fitsync.signature, fitsync.delta) own the API; this module only computes.
Pure-Python oracles of every function live in fitsync.reference.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy


# ---------------------------------------------------------------------------
# FITS ones'-complement sum (FITS 4.0 appendix J; DATASUM / CHECKSUM)
# ---------------------------------------------------------------------------

cdef extern from "kernels.h" nogil:
    uint64_t _fold32 "fitsync_fold32"(uint64_t s)
    uint64_t _fits_sum_words "fitsync_fits_sum_words"(const uint8_t* p, size_t nwords)
    void _byte_moments "fitsync_byte_moments"(const uint8_t* p, size_t n, uint16_t* total, uint16_t* weighted)


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


cdef inline void _rollsum_init(const uint8_t* p, size_t n, uint32_t* s1, uint32_t* s2) noexcept nogil:
    # s2 = n*sum(x) - sum(i*x) + 31*n*(n+1)/2, all modulo 2**16
    cdef uint16_t a, b
    _byte_moments(p, n, &a, &b)
    cdef uint64_t nn = n
    s1[0] = <uint32_t>((a + CHAR_OFFSET * nn) & 0xFFFFu)
    s2[0] = <uint32_t>((nn * a - b + CHAR_OFFSET * ((nn * (nn + 1) // 2) & 0xFFFFu)) & 0xFFFFu)


cdef inline uint32_t _weak_of(uint32_t s1, uint32_t s2) noexcept nogil:
    return ((s2 & 0xFFFFu) << 16) | (s1 & 0xFFFFu)


cdef inline uint32_t _weak_block(const uint8_t* p, size_t n) noexcept nogil:
    cdef uint32_t s1, s2
    _rollsum_init(p, n, &s1, &s2)
    return _weak_of(s1, s2)


def weak_sum(const uint8_t[::1] data not None):
    """Weak sum of a whole buffer."""
    cdef size_t n = data.shape[0]
    cdef uint32_t w = 0
    if n == 0:
        return _weak_of(0, 0)
    with nogil:
        w = _weak_block(&data[0], n)
    return w


def rolling_weak_sums(const uint8_t[::1] data not None, size_t window, uint32_t[::1] out not None):
    """Weak sum of every window of ``window`` bytes: out[k] covers data[k:k+window]."""
    cdef size_t n = data.shape[0]
    if window == 0 or n < window:
        return 0
    cdef size_t count = n - window + 1
    if <size_t>out.shape[0] < count:
        raise ValueError("output array too short")
    cdef const uint8_t* p = &data[0]
    cdef uint32_t s1, s2, x_out
    cdef size_t k
    with nogil:
        _rollsum_init(p, window, &s1, &s2)
        out[0] = _weak_of(s1, s2)
        for k in range(1, count):
            x_out = p[k - 1]
            s1 += p[k - 1 + window] - x_out
            s2 += s1 - <uint32_t>window * (x_out + CHAR_OFFSET)
            out[k] = _weak_of(s1, s2)
    return count


def block_weak_sums(const uint8_t[::1] data not None, const int64_t[::1] offsets not None,
                    const int64_t[::1] lengths not None, uint32_t[::1] out not None):
    """out[k] = weak sum of data[offsets[k] : offsets[k] + lengths[k]]."""
    cdef Py_ssize_t nb = offsets.shape[0], k
    cdef Py_ssize_t size = data.shape[0]
    if lengths.shape[0] != nb or out.shape[0] < nb:
        raise ValueError("offsets, lengths and out differ in length")
    for k in range(nb):
        if offsets[k] < 0 or lengths[k] <= 0 or offsets[k] + lengths[k] > size:
            raise ValueError(f"block {k} lies outside the buffer")
    if nb == 0:
        return
    cdef const uint8_t* p = &data[0]
    with nogil:
        for k in range(nb):
            out[k] = _weak_block(p + offsets[k], <size_t>lengths[k])


def hash_blocks(object buffer, const int64_t[::1] offsets not None, const int64_t[::1] lengths not None,
                uint32_t[::1] weak_out not None, uint8_t[::1] strong_out not None, object strong_fn,
                Py_ssize_t strong_len):
    """Weak and strong sums of blocks of ``buffer`` (offsets relative to it).

    The weak sums run without the GIL; ``strong_fn`` (xxhash.xxh3_128_digest,
    which releases the GIL while hashing) is called once per block."""
    cdef const uint8_t[::1] data = buffer
    cdef Py_ssize_t nb = offsets.shape[0], k
    if strong_out.shape[0] < nb * strong_len:
        raise ValueError("strong output too short")
    block_weak_sums(data, offsets, lengths, weak_out)
    view = memoryview(buffer).cast("B") if not isinstance(buffer, memoryview) else buffer
    cdef bytes digest
    cdef int64_t o
    for k in range(nb):
        o = offsets[k]
        digest = strong_fn(view[o:o + lengths[k]])
        if len(digest) != strong_len:
            raise ValueError("strong digest has the wrong length")
        memcpy(&strong_out[k * strong_len], <const char*>digest, strong_len)
