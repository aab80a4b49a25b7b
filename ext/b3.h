/* fitsync's own BLAKE3 (hash mode, 32-byte output) for many small inputs.
 *
 * Written here from the BLAKE3 specification (Aumasson, Neves, O'Connor,
 * Wilcox-O'Hearn, 2020); checked against the official implementation (the
 * blake3 Python package) by tests/test_b3.py on every length up to several
 * chunks and on random inputs.
 *
 * Why our own: the blake3 package hashes from Python only, holding the GIL,
 * so a tree of 20,000 small files is hashed on one core with ~5 us of
 * interpreter time per file. This code runs in C threads without the GIL,
 * next to the reads (fitsync._walk.hash_files). Large files still go to the
 * blake3 package, whose multi-threaded SIMD code is faster on them.
 *
 * Speed comes from compressing eight chunks at once ("lanes"), chunks of
 * one input or of several (a caller hashing many small files gathers the
 * chunks of all of them): the state words of eight compressions are laid
 * out [word][lane], so the compiler turns each step of G into one vector
 * instruction (AVX2 or AVX-512, chosen at run time with target_clones; plain
 * C elsewhere). The parent nodes of each tree, a small share of a small
 * file, are compressed one at a time, four words per vector.
 */
#ifndef FITSYNC_B3_H
#define FITSYNC_B3_H

#include <stdint.h>
#include <string.h>

#define B3_OUT_LEN 32
#define B3_BLOCK_LEN 64
#define B3_CHUNK_LEN 1024
#define B3_LANES 8

/* Compiled for AVX-512 (with VL: 256-bit rotates), AVX2 and the baseline,
 * chosen when the library loads; elsewhere, plain C for the build target. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && !defined(B3_NO_CLONES)
#define B3_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define B3_CLONES
#endif

enum {
    B3_CHUNK_START = 1 << 0,
    B3_CHUNK_END = 1 << 1,
    B3_PARENT = 1 << 2,
    B3_ROOT = 1 << 3,
};

static const uint32_t B3_IV[8] = {
    0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
    0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u,
};

/* One round: the column steps, then the diagonal steps, with message words
 * taken in the order given. G(a, b, c, d, x, y) is the quarter-round on
 * state words a, b, c, d with message words x and y. */
#define B3_ROUND(G, s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15) \
    G(0, 4, 8, 12, s0, s1); G(1, 5, 9, 13, s2, s3); G(2, 6, 10, 14, s4, s5); G(3, 7, 11, 15, s6, s7); \
    G(0, 5, 10, 15, s8, s9); G(1, 6, 11, 12, s10, s11); G(2, 7, 8, 13, s12, s13); G(3, 4, 9, 14, s14, s15);

/* The seven rounds: R(message word order) for each, every order the
 * specification's permutation of the one before (written out, so that every
 * index is a constant the compiler can keep in a register). */
#define B3_ROUNDS(R) \
    R(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); \
    R(2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8); \
    R(3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1); \
    R(10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6); \
    R(12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4); \
    R(9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7); \
    R(11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13);

static inline uint32_t b3_load32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* One compression on four rows of four words, GCC/Clang vector types: the
 * four column steps of a round are one vector step, then the rows are
 * rotated so that the diagonals line up as columns, and back. */
typedef uint32_t b3_v4 __attribute__((vector_size(16)));

#ifdef __clang__
#define B3_ROTATE_LANES(x, a, b, c, d) __builtin_shufflevector(x, x, a, b, c, d)
#else
#define B3_ROTATE_LANES(x, a, b, c, d) __builtin_shuffle(x, (b3_v4){a, b, c, d})
#endif

static inline b3_v4 b3_rotv(b3_v4 x, int n) { return (x >> n) | (x << (32 - n)); }

#define B3_GV(x, y) do {                                                       \
        r0 = r0 + r1 + (x); r3 = b3_rotv(r3 ^ r0, 16); r2 = r2 + r3; r1 = b3_rotv(r1 ^ r2, 12); \
        r0 = r0 + r1 + (y); r3 = b3_rotv(r3 ^ r0, 8);  r2 = r2 + r3; r1 = b3_rotv(r1 ^ r2, 7);  \
    } while (0)

#define B3_ROUND_V(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15) do { \
        B3_GV(((b3_v4){m[s0], m[s2], m[s4], m[s6]}), ((b3_v4){m[s1], m[s3], m[s5], m[s7]}));         \
        r1 = B3_ROTATE_LANES(r1, 1, 2, 3, 0); r2 = B3_ROTATE_LANES(r2, 2, 3, 0, 1);                 \
        r3 = B3_ROTATE_LANES(r3, 3, 0, 1, 2);                                                       \
        B3_GV(((b3_v4){m[s8], m[s10], m[s12], m[s14]}), ((b3_v4){m[s9], m[s11], m[s13], m[s15]}));   \
        r1 = B3_ROTATE_LANES(r1, 3, 0, 1, 2); r2 = B3_ROTATE_LANES(r2, 2, 3, 0, 1);                 \
        r3 = B3_ROTATE_LANES(r3, 1, 2, 3, 0);                                                       \
    } while (0)

/* One compression; cv (8 words) becomes the first half of the output. */
static inline __attribute__((always_inline)) void b3_compress(uint32_t cv[8], const uint8_t block[B3_BLOCK_LEN], uint32_t block_len,
                               uint64_t counter, uint32_t flags) {
    uint32_t m[16];
    b3_v4 r0, r1, r2, r3;
    int i;
    for (i = 0; i < 16; i++)
        m[i] = b3_load32(block + 4 * i);
    r0 = (b3_v4){cv[0], cv[1], cv[2], cv[3]};
    r1 = (b3_v4){cv[4], cv[5], cv[6], cv[7]};
    r2 = (b3_v4){B3_IV[0], B3_IV[1], B3_IV[2], B3_IV[3]};
    r3 = (b3_v4){(uint32_t)counter, (uint32_t)(counter >> 32), block_len, flags};
    B3_ROUNDS(B3_ROUND_V)
    r0 ^= r2;
    r1 ^= r3;
    for (i = 0; i < 4; i++) {
        cv[i] = r0[i];
        cv[4 + i] = r1[i];
    }
}

static inline __attribute__((always_inline)) void b3_parent(const uint32_t left[8], const uint32_t right[8],
                                                           uint32_t root, uint32_t out[8]) {
    uint8_t block[B3_BLOCK_LEN];
    int i;
    for (i = 0; i < 8; i++) {
        uint32_t l = left[i], r = right[i];
        block[4 * i] = (uint8_t)l; block[4 * i + 1] = (uint8_t)(l >> 8);
        block[4 * i + 2] = (uint8_t)(l >> 16); block[4 * i + 3] = (uint8_t)(l >> 24);
        block[32 + 4 * i] = (uint8_t)r; block[32 + 4 * i + 1] = (uint8_t)(r >> 8);
        block[32 + 4 * i + 2] = (uint8_t)(r >> 16); block[32 + 4 * i + 3] = (uint8_t)(r >> 24);
    }
    memcpy(out, B3_IV, sizeof(B3_IV));
    b3_compress(out, block, B3_BLOCK_LEN, 0, B3_PARENT | root);
}

/* One chunk to compress: its blocks are data + 64 * b, except the last,
 * which is read from ``last`` (64 bytes, zero after the chunk's end). */
typedef struct {
    const uint8_t *data;
    const uint8_t *last;
    uint64_t counter;   /* the chunk's index in its input */
    uint32_t nblocks;   /* 1 to 16; 0 marks an idle lane */
    uint32_t last_len;  /* bytes in the last block, 0 to 64 */
    uint32_t root;      /* B3_ROOT when the chunk is the whole input */
    uint32_t *cv;       /* where its 8-word chaining value (or root output) goes */
} b3_chunk_job;

static const uint8_t B3_ZERO_BLOCK[B3_BLOCK_LEN];

/* Eight chunks at once, of any lengths: word w of the eight compressions'
 * states is one vector of eight lanes (GCC/Clang vector types, so each step
 * of G is one instruction with AVX2 or AVX-512, two with SSE2); a lane whose
 * chunk has no more blocks keeps its value. */
typedef uint32_t b3_v8 __attribute__((vector_size(32)));

static inline b3_v8 b3_rot8(b3_v8 x, int n) { return (x >> n) | (x << (32 - n)); }

B3_CLONES
static void b3_chunks8(const b3_chunk_job jobs[B3_LANES]) {
    b3_v8 v[16], h[8], m[16], active = {0}, blen = {0}, flags = {0}, counter_lo = {0}, counter_hi = {0};
    const uint8_t *p[B3_LANES];
    uint32_t most = 0, b;
    int i, l;
    for (i = 0; i < 8; i++)
        h[i] = (b3_v8){0} + B3_IV[i];
    for (l = 0; l < B3_LANES; l++) {
        most = jobs[l].nblocks > most ? jobs[l].nblocks : most;
        counter_lo[l] = (uint32_t)jobs[l].counter;
        counter_hi[l] = (uint32_t)(jobs[l].counter >> 32);
    }
    for (b = 0; b < most; b++) {
        for (l = 0; l < B3_LANES; l++) {
            const b3_chunk_job *j = &jobs[l];
            p[l] = b + 1 < j->nblocks ? j->data + b * B3_BLOCK_LEN : b + 1 == j->nblocks ? j->last : B3_ZERO_BLOCK;
            active[l] = b < j->nblocks ? 0xFFFFFFFFu : 0;
            blen[l] = b + 1 == j->nblocks ? j->last_len : B3_BLOCK_LEN;
            flags[l] = (b == 0 ? B3_CHUNK_START : 0) | (b + 1 == j->nblocks ? B3_CHUNK_END | j->root : 0);
        }
        for (i = 0; i < 16; i++)
            m[i] = (b3_v8){b3_load32(p[0] + 4 * i), b3_load32(p[1] + 4 * i), b3_load32(p[2] + 4 * i),
                           b3_load32(p[3] + 4 * i), b3_load32(p[4] + 4 * i), b3_load32(p[5] + 4 * i),
                           b3_load32(p[6] + 4 * i), b3_load32(p[7] + 4 * i)};
        for (i = 0; i < 8; i++)
            v[i] = h[i];
        for (i = 0; i < 4; i++)
            v[8 + i] = (b3_v8){0} + B3_IV[i];
        v[12] = counter_lo; v[13] = counter_hi; v[14] = blen; v[15] = flags;
#define B3_G8(a, bb, c, d, x, y) do {                                              \
            v[a] += v[bb] + m[x]; v[d] = b3_rot8(v[d] ^ v[a], 16);                    \
            v[c] += v[d];         v[bb] = b3_rot8(v[bb] ^ v[c], 12);                  \
            v[a] += v[bb] + m[y]; v[d] = b3_rot8(v[d] ^ v[a], 8);                     \
            v[c] += v[d];         v[bb] = b3_rot8(v[bb] ^ v[c], 7);                   \
        } while (0)
#define B3_ROUND_8(...) B3_ROUND(B3_G8, __VA_ARGS__)
        B3_ROUNDS(B3_ROUND_8)
#undef B3_ROUND_8
#undef B3_G8
        for (i = 0; i < 8; i++)
            h[i] = (active & (v[i] ^ v[i + 8])) | (~active & h[i]);
    }
    for (l = 0; l < B3_LANES; l++)
        if (jobs[l].nblocks)
            for (i = 0; i < 8; i++)
                jobs[l].cv[i] = h[i][l];
}

/* Every job, eight at a time (the last group padded with idle lanes). */
static void b3_run_chunk_jobs(const b3_chunk_job *jobs, size_t n) {
    b3_chunk_job group[B3_LANES];
    size_t k, l;
    for (k = 0; k < n; k += B3_LANES) {
        if (n - k >= B3_LANES) {
            b3_chunks8(jobs + k);
            continue;
        }
        memset(group, 0, sizeof(group));
        for (l = 0; l < n - k; l++)
            group[l] = jobs[k + l];
        b3_chunks8(group);
    }
}

/* Chunks of an input of ``len`` bytes (an empty input has one). */
static inline uint64_t b3_chunk_count(size_t len) {
    return len ? (len + B3_CHUNK_LEN - 1) / B3_CHUNK_LEN : 1;
}

/* The job for chunk ``c`` of ``data``. Its last block is read in place:
 * ``data`` must be readable, zero after its end, to a whole number of
 * blocks (a caller that cannot promise that repoints ``last`` at a padded
 * copy of ``last_len`` bytes). */
static inline b3_chunk_job b3_job(const uint8_t *data, size_t len, uint64_t c, uint64_t n_chunks,
                                  uint32_t *cv) {
    b3_chunk_job j;
    size_t chunk_len = len - c * B3_CHUNK_LEN < B3_CHUNK_LEN ? len - c * B3_CHUNK_LEN : B3_CHUNK_LEN;
    j.data = data + c * B3_CHUNK_LEN;
    j.counter = c;
    j.nblocks = chunk_len ? (uint32_t)((chunk_len + B3_BLOCK_LEN - 1) / B3_BLOCK_LEN) : 1;
    j.last_len = (uint32_t)(chunk_len - (j.nblocks - 1) * B3_BLOCK_LEN);
    j.last = j.data + (j.nblocks - 1) * B3_BLOCK_LEN;
    j.root = n_chunks == 1 ? B3_ROOT : 0;
    j.cv = cv;
    return j;
}

/* The largest power of two (in chunks) strictly less than n_chunks: the
 * size of the left subtree of a tree over n_chunks > 1 chunks. */
static inline uint64_t b3_left_chunks(uint64_t n_chunks) {
    uint64_t p = 1;
    while (p * 2 < n_chunks)
        p *= 2;
    return p;
}

/* The chaining value of the subtree over chunks [first, first + count),
 * from their chunk CVs; root is set only at the top of the whole tree. */
B3_CLONES
static void b3_subtree(uint32_t (*cvs)[8], uint64_t first, uint64_t count, uint32_t root, uint32_t out[8]) {
    uint32_t left[8], right[8];
    uint64_t n_left;
    if (count == 1) {
        memcpy(out, cvs[first], sizeof(left));
        return;
    }
    n_left = b3_left_chunks(count);
    b3_subtree(cvs, first, n_left, 0, left);
    b3_subtree(cvs, first + n_left, count - n_left, 0, right);
    b3_parent(left, right, root, out);
}

/* The 32-byte digest of an input whose chunk CVs are done (cvs[0] holds the
 * root output of a one-chunk input). */
static void b3_finish(uint32_t (*cvs)[8], uint64_t n_chunks, uint8_t out[B3_OUT_LEN]) {
    uint32_t cv[8];
    int i;
    if (n_chunks == 1)
        memcpy(cv, cvs[0], sizeof(cv));
    else
        b3_subtree(cvs, 0, n_chunks, B3_ROOT, cv);
    for (i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)cv[i]; out[4 * i + 1] = (uint8_t)(cv[i] >> 8);
        out[4 * i + 2] = (uint8_t)(cv[i] >> 16); out[4 * i + 3] = (uint8_t)(cv[i] >> 24);
    }
}

/* Scratch space for b3_hash: a CV and a job per chunk. */
typedef struct {
    uint32_t (*cvs)[8];
    b3_chunk_job *jobs;
    size_t cap;  /* chunks */
} b3_scratch;

/* BLAKE3 of one input of any length, out[32]; needs scratch->cap at least
 * its chunk count, else returns -1 (the caller grows it). */
static int b3_hash(const uint8_t *data, size_t len, b3_scratch *scratch, uint8_t out[B3_OUT_LEN]) {
    uint8_t last[B3_BLOCK_LEN];
    uint64_t n = b3_chunk_count(len), c;
    if (scratch->cap < n)
        return -1;
    for (c = 0; c < n; c++)
        scratch->jobs[c] = b3_job(data, len, c, n, scratch->cvs[c]);
    /* only the input's own last block may end before a whole block: pad a copy */
    memset(last, 0, sizeof(last));
    memcpy(last, scratch->jobs[n - 1].last, scratch->jobs[n - 1].last_len);
    scratch->jobs[n - 1].last = last;
    b3_run_chunk_jobs(scratch->jobs, n);
    b3_finish(scratch->cvs, n, out);
    return 0;
}

#endif
