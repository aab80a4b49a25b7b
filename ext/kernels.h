/* Vectorisable byte loops of fitsync._native.
 *
 * They are plain C so that GCC can build an AVX2 clone next to the baseline
 * SSE2 one (target_clones) and pick it at load time: both are memory-speed
 * loops whose speed doubles with 32-byte vectors. Their meaning is spelled
 * out in ext/_native.pyx and, as plain Python, in fitsync/reference.py.
 */
#ifndef FITSYNC_KERNELS_H
#define FITSYNC_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FITSYNC_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FITSYNC_CLONES
#endif

/* Fibonacci hashing: the top bits of weak * GOLDEN index the match table
 * and its filter bitmap (BlockIndex in _native.pyx uses the same). */
#define FITSYNC_GOLDEN 0x9E3779B1u

static inline uint64_t fitsync_fold32(uint64_t s)
{
    while (s >> 32)
        s = (s & 0xFFFFFFFFu) + (s >> 32);
    return s;
}

/* Ones'-complement sum of nwords big-endian 32-bit words, folded to 32 bits.
 * The sum modulo 2^32-1 depends only on the four byte-column sums, so words
 * are masked into 16-bit lanes instead of byte-swapped; a lane takes at most
 * 256 bytes before it is flushed, so it never overflows. */
FITSYNC_CLONES
static uint64_t fitsync_fits_sum_words(const uint8_t *p, size_t nwords)
{
    uint64_t col0 = 0, col1 = 0, col2 = 0, col3 = 0, total = 0;
    size_t i = 0;
    while (i < nwords) {
        size_t n = nwords - i < 256 ? nwords - i : 256;
        uint32_t even = 0, odd = 0;
        for (size_t j = 0; j < n; j++) {
            uint32_t w;
            memcpy(&w, p + 4 * (i + j), 4);
            even += w & 0x00FF00FFu;
            odd += (w >> 8) & 0x00FF00FFu;
        }
        /* little-endian load: bits 0-15 of even hold byte 0 of each word */
        col0 += even & 0xFFFFu;
        col2 += even >> 16;
        col1 += odd & 0xFFFFu;
        col3 += odd >> 16;
        i += n;
        if (col0 > ((uint64_t)1 << 38) || i >= nwords) {
            total = fitsync_fold32(total + fitsync_fold32((col0 << 24) + (col1 << 16) + (col2 << 8) + col3));
            col0 = col1 = col2 = col3 = 0;
        }
    }
    return total;
}

/* sum(x) and sum(i * x), i = 0..n-1, both modulo 2^16.
 *
 * Adler-32's vector trick: bytes are added into LANES 16-bit lanes (vs), and
 * before each LANES-byte chunk the running lanes are added into a second set
 * (vps), which ends as the sum over chunks c of (C - 1 - c) * x[c][l]. Then
 *   sum(i * x) = LANES * sum_l((C - 1) * vs[l] - vps[l]) + sum_l(l * vs[l]).
 * Only the values modulo 2^16 matter, so the lanes may wrap freely and the
 * loop is a few vector additions per chunk. */
#define FITSYNC_LANES 32

FITSYNC_CLONES
static void fitsync_byte_moments(const uint8_t *p, size_t n, uint16_t *sum, uint16_t *weighted)
{
    uint16_t vs[FITSYNC_LANES] = {0}, vps[FITSYNC_LANES] = {0};
    size_t chunks = n / FITSYNC_LANES;
    for (size_t c = 0; c < chunks; c++) {
        const uint8_t *q = p + c * FITSYNC_LANES;
        for (int l = 0; l < FITSYNC_LANES; l++) {
            vps[l] += vs[l];
            vs[l] += q[l];
        }
    }
    uint16_t a = 0, b = 0, last_chunk = (uint16_t)(chunks - 1);
    if (chunks) {
        for (int l = 0; l < FITSYNC_LANES; l++) {
            a += vs[l];
            b += (uint16_t)(FITSYNC_LANES * (uint16_t)(last_chunk * vs[l] - vps[l]) + l * vs[l]);
        }
    }
    for (size_t i = chunks * FITSYNC_LANES; i < n; i++) {
        a += p[i];
        b += (uint16_t)((uint16_t)i * p[i]);
    }
    *sum = a;
    *weighted = b;
}

/* Whether the filter bitmap (BlockIndex) may know the weak sum w. */
static inline int fitsync_filter_has(uint32_t w, const uint64_t *filter, uint32_t shift)
{
    uint32_t f = (w * FITSYNC_GOLDEN) >> shift;
    return (filter[f >> 6] >> (f & 63)) & 1;
}

/* Slide a window of bs bytes from *pos while pos + bs < stop, one byte at a
 * time (librsync's rollsum update, char offset 31), until the window's weak
 * sum hits the filter bitmap; return 1 then, 0 when the buffer ends. s1, s2
 * and pos are updated in place. One multiply, one load and one test per byte,
 * all in registers. */
static inline int fitsync_roll_to_hit(const uint8_t *p, int64_t *pos_io, int64_t stop, uint32_t bs,
                                      uint32_t *s1_io, uint32_t *s2_io, const uint64_t *filter,
                                      int filter_bits)
{
    int64_t pos = *pos_io;
    uint32_t s1 = *s1_io, s2 = *s2_io;
    const uint32_t shift = 32 - filter_bits;
    int hit = 0;
    for (;;) {
        if (fitsync_filter_has(((s2 & 0xFFFFu) << 16) | (s1 & 0xFFFFu), filter, shift)) {
            hit = 1;
            break;
        }
        if (pos + (int64_t)bs >= stop)
            break;
        uint32_t out = p[pos];
        s1 += (uint32_t)p[pos + bs] - out;
        s2 += s1 - bs * (out + 31u);
        pos++;
    }
    *pos_io = pos;
    *s1_io = s1;
    *s2_io = s2;
    return hit;
}

/* Adler-32 (zlib.adler32 with its default start of 1): the weak sum of the
 * stdlib signature, which a host computes with zlib alone.
 *   a = 1 + sum(x_i)              mod 65521
 *   b = n + sum((n - i) * x_i)    mod 65521,  i = 0 .. n-1
 *   weak = b << 16 | a
 * 5552 bytes is the longest run whose sums cannot overflow 32 bits. */
#define FITSYNC_ADLER_MOD 65521u
#define FITSYNC_ADLER_NMAX 5552

static void fitsync_adler_init(const uint8_t *p, size_t n, uint32_t *a_out, uint32_t *b_out)
{
    uint32_t a = 1, b = 0;
    while (n) {
        size_t run = n < FITSYNC_ADLER_NMAX ? n : FITSYNC_ADLER_NMAX;
        n -= run;
        while (run--) {
            a += *p++;
            b += a;
        }
        a %= FITSYNC_ADLER_MOD;
        b %= FITSYNC_ADLER_MOD;
    }
    *a_out = a;
    *b_out = b;
}

/* Slide the Adler-32 window by one byte: out leaves, in enters. With
 * a' = a - out + in, b' = b + a' - 1 - n * out (all mod 65521); every term
 * is kept non-negative by adding multiples of the modulus first. */
static inline void fitsync_adler_roll(uint32_t *a, uint32_t *b, uint32_t out, uint32_t in, uint32_t n_mod)
{
    uint32_t na = *a + in + FITSYNC_ADLER_MOD - out;
    if (na >= FITSYNC_ADLER_MOD)
        na -= FITSYNC_ADLER_MOD;
    if (na >= FITSYNC_ADLER_MOD)
        na -= FITSYNC_ADLER_MOD;
    uint32_t nx = (n_mod * out) % FITSYNC_ADLER_MOD;
    *a = na;
    *b = (*b + na + 2 * FITSYNC_ADLER_MOD - 1 - nx) % FITSYNC_ADLER_MOD;
}

/* fitsync_roll_to_hit for Adler-32 windows. */
static inline int fitsync_adler_roll_to_hit(const uint8_t *p, int64_t *pos_io, int64_t stop, uint32_t bs,
                                            uint32_t *a_io, uint32_t *b_io, const uint64_t *filter,
                                            int filter_bits)
{
    int64_t pos = *pos_io;
    uint32_t a = *a_io, b = *b_io;
    const uint32_t shift = 32 - filter_bits, n_mod = bs % FITSYNC_ADLER_MOD;
    int hit = 0;
    for (;;) {
        if (fitsync_filter_has((b << 16) | a, filter, shift)) {
            hit = 1;
            break;
        }
        if (pos + (int64_t)bs >= stop)
            break;
        fitsync_adler_roll(&a, &b, p[pos], p[pos + bs], n_mod);
        pos++;
    }
    *pos_io = pos;
    *a_io = a;
    *b_io = b;
    return hit;
}

#endif
