# Part of _native.pyx (included there): matching, the BlockIndex.

# ---------------------------------------------------------------------------
# Matching: find blocks of a signature at any byte offset of a buffer
# (rsync's match.c idea: rolling weak sum, hash table, strong confirm)
# ---------------------------------------------------------------------------

cdef enum:
    MAX_CHAIN = 256  # bucket entries examined per weak hit (bounds adversarial cost)
    MAX_STRONG_LEN = 64
    NO_BLOCK = -1



cdef struct MatchList:
    int64_t* pos
    int64_t* blk
    Py_ssize_t n
    Py_ssize_t cap


cdef int _push(MatchList* m, int64_t pos, int64_t blk) except -1 nogil:
    cdef Py_ssize_t cap
    cdef int64_t* p
    cdef int64_t* b
    if m.n == m.cap:
        cap = m.cap * 2 if m.cap else 1024
        p = <int64_t*>realloc(m.pos, cap * sizeof(int64_t))
        if p == NULL:
            with gil:
                raise MemoryError()
        m.pos = p
        b = <int64_t*>realloc(m.blk, cap * sizeof(int64_t))
        if b == NULL:
            with gil:
                raise MemoryError()
        m.blk = b
        m.cap = cap
    m.pos[m.n] = pos
    m.blk[m.n] = blk
    m.n += 1
    return 0


cdef void _copy_out(int64_t[::1] dest, const int64_t* src, Py_ssize_t n) noexcept:
    if n:
        memcpy(&dest[0], src, n * sizeof(int64_t))


cdef class BlockIndex:
    """The blocks of one signature, hashed by weak sum for lookups.

    Only blocks of the full block size go into the table (they are the ones a
    fixed rolling window can find at any offset); shorter blocks (segment and
    file tails, small FITS headers) are found through their neighbours: the
    block after a match is tried first, and a match after literal bytes is
    extended backwards."""

    cdef object _keep  # arrays whose memory the pointers below use
    cdef const uint32_t* weak
    cdef const uint8_t* strong
    cdef const int64_t* lengths
    cdef Py_ssize_t nblocks
    cdef Py_ssize_t strong_len
    cdef Py_ssize_t block_size
    cdef int table_bits
    cdef int filter_bits
    cdef int weak_kind
    cdef uint32_t[::1] heads
    cdef uint32_t[::1] order
    cdef uint64_t[::1] filter

    def __init__(self, const uint32_t[::1] weak not None, const uint8_t[::1] strong not None,
                 const int64_t[::1] lengths not None, Py_ssize_t block_size, Py_ssize_t strong_len,
                 int weak_kind=ROLLSUM):
        _check_kind(weak_kind)
        self.weak_kind = weak_kind
        cdef Py_ssize_t n = weak.shape[0], k, nfull = 0
        if lengths.shape[0] != n or strong.shape[0] != n * strong_len:
            raise ValueError("weak, strong and lengths describe different block counts")
        if strong_len <= 0 or strong_len > MAX_STRONG_LEN or block_size <= 0:
            raise ValueError("bad strong length or block size")
        self._keep = (weak, strong, lengths)
        self.nblocks = n
        self.strong_len = strong_len
        self.block_size = block_size
        self.weak = &weak[0] if n else NULL
        self.strong = &strong[0] if n else NULL
        self.lengths = &lengths[0] if n else NULL
        for k in range(n):
            if lengths[k] <= 0:
                raise ValueError("block lengths must be positive")
            if lengths[k] == block_size:
                nfull += 1
        # table with at least 2 slots per block; filter bitmap with at least 64 bits
        # per block: a false hit costs a branch miss and a table probe per byte
        self.table_bits = 4
        while (<Py_ssize_t>1 << self.table_bits) < 2 * nfull and self.table_bits < 30:
            self.table_bits += 1
        self.filter_bits = min(self.table_bits + 5, 31)
        cdef Py_ssize_t tsize = <Py_ssize_t>1 << self.table_bits
        import numpy as np  # here, not at module level: numpy costs ~0.1 s of every command's start-up
        self.heads = np.zeros(tsize + 1, dtype=np.uint32)
        self.order = np.zeros(max(nfull, 1), dtype=np.uint32)
        self.filter = np.zeros(max((<Py_ssize_t>1 << self.filter_bits) // 64, 1), dtype=np.uint64)
        cdef uint32_t h, f
        # counting sort of the full blocks by bucket; stable, so lower block
        # numbers come first within a bucket
        for k in range(n):
            if lengths[k] == block_size:
                h = self._bucket(weak[k])
                self.heads[h + 1] += 1
                f = self._filter_slot(weak[k])
                self.filter[f >> 6] |= (<uint64_t>1) << (f & 63)
        for k in range(tsize):
            self.heads[k + 1] += self.heads[k]
        cdef uint32_t[::1] fill = np.array(self.heads[:tsize], dtype=np.uint32)
        for k in range(n):
            if lengths[k] == block_size:
                h = self._bucket(weak[k])
                self.order[fill[h]] = <uint32_t>k
                fill[h] += 1

    cdef inline uint32_t _bucket(self, uint32_t w) noexcept nogil:
        return (w * GOLDEN) >> (32 - self.table_bits)

    cdef inline uint32_t _filter_slot(self, uint32_t w) noexcept nogil:
        return (w * GOLDEN) >> (32 - self.filter_bits)

    cdef inline int _roll(self, const uint8_t* p, int64_t* pos, int64_t stop, uint32_t* s1,
                          uint32_t* s2) noexcept nogil:
        """Roll the window from *pos until the filter knows its weak sum (1) or the buffer ends (0)."""
        if self.weak_kind == K_ADLER32:
            return _adler_roll_to_hit(p, pos, stop, <uint32_t>self.block_size, s1, s2, &self.filter[0],
                                      self.filter_bits)
        return _roll_to_hit(p, pos, stop, <uint32_t>self.block_size, s1, s2, &self.filter[0], self.filter_bits)

    cdef int _strong_of(self, object view, object strong_fn, const uint8_t* fast, int64_t pos, int64_t length,
                        uint8_t* out) except -1 nogil:
        """The strong digest of view[pos:pos + length]: from C when ``fast``
        (the buffer's start) is given, else through ``strong_fn``."""
        if fast != NULL:
            _xxh3_128_canonical(fast + pos, <size_t>length, out)
            return 0
        return self._strong_of_py(view, strong_fn, pos, length, out)

    cdef int _strong_of_py(self, object view, object strong_fn, int64_t pos, int64_t length,
                           uint8_t* out) except -1 with gil:
        return _strong_through(strong_fn, view, pos, length, out, self.strong_len)

    cdef int _confirm(self, object view, object strong_fn, const uint8_t* fast, int64_t pos, Py_ssize_t j,
                      uint8_t* scratch) except -1 nogil:
        """1 when block j is at pos, else 0. Only the strong digest is
        compared: this is the likely case (the block after a match), and
        xxh3 reads a block faster than the weak sum does."""
        self._strong_of(view, strong_fn, fast, pos, self.lengths[j], scratch)
        return memcmp(scratch, self.strong + j * self.strong_len, self.strong_len) == 0

    cdef Py_ssize_t _lookup(self, object view, object strong_fn, const uint8_t* fast, uint32_t w, int64_t pos,
                            uint8_t* scratch) except -2 nogil:
        """A full-size block whose sums match the window at pos, or NO_BLOCK."""
        cdef uint32_t h = self._bucket(w)
        cdef uint32_t k = self.heads[h], end = self.heads[h + 1]
        cdef bint have_strong = False
        cdef Py_ssize_t j
        if end - k > MAX_CHAIN:
            end = k + MAX_CHAIN
        while k < end:
            j = self.order[k]
            k += 1
            if self.weak[j] != w:
                continue
            if not have_strong:
                self._strong_of(view, strong_fn, fast, pos, self.block_size, scratch)
                have_strong = True
            if memcmp(scratch, self.strong + j * self.strong_len, self.strong_len) == 0:
                return j
        return NO_BLOCK

    def scan(self, object buffer, object strong_fn, Py_ssize_t start=0, Py_ssize_t stop=-1,
             Py_ssize_t expect_first=0):
        """Find blocks in buffer[start:stop], left to right, without overlaps.

        Returns (positions, blocks) as int64 arrays sorted by position. At
        every position the block following the previous match is tried
        first (``expect_first`` is the block expected at ``start``, -1 for
        none); otherwise the rolling weak sum of a full-size window is looked
        up. A match found after literal bytes is extended backwards over the
        blocks that precede it in the signature."""
        cdef const uint8_t[::1] data = buffer
        view = _byte_view(buffer)
        cdef Py_ssize_t size = data.shape[0]
        if stop < 0 or stop > size:
            stop = size
        if start < 0 or start > stop:
            raise ValueError("bad scan range")
        cdef MatchList found
        cdef MatchList back
        memset(&found, 0, sizeof(found))
        memset(&back, 0, sizeof(back))
        try:
            if self.nblocks and stop > start:
                self._scan(&data[0], view, strong_fn, start, stop, expect_first, &found, &back)
            import numpy as np
            positions = np.empty(found.n, dtype=np.int64)
            blocks = np.empty(found.n, dtype=np.int64)
            _copy_out(positions, found.pos, found.n)
            _copy_out(blocks, found.blk, found.n)
            return positions, blocks
        finally:
            free(found.pos)
            free(found.blk)
            free(back.pos)
            free(back.blk)

    cdef int _scan(self, const uint8_t* p, object view, object strong_fn, Py_ssize_t start,
                   Py_ssize_t stop, Py_ssize_t expect_first, MatchList* found, MatchList* back) except -1:
        cdef uint8_t scratch[MAX_STRONG_LEN]
        cdef Py_ssize_t bs = self.block_size
        cdef Py_ssize_t n = self.nblocks
        cdef int64_t pos = start, lit_start = start, q
        cdef Py_ssize_t nxt = expect_first, j, k
        cdef int64_t length
        cdef bint rolling = False
        cdef uint32_t s1 = 0, s2 = 0
        cdef int kind = self.weak_kind
        cdef const uint8_t* fast = p if _strong_in_c(strong_fn, self.strong_len) else NULL
        with nogil:
            while pos < stop:
                # 1. the block after the previous match, whatever its length
                if 0 <= nxt < n:
                    length = self.lengths[nxt]
                    if pos + length <= stop and self._confirm(view, strong_fn, fast, pos, nxt, scratch):
                        _push(found, pos, nxt)
                        pos += length
                        lit_start = pos
                        nxt += 1
                        rolling = False
                        continue
                nxt = NO_BLOCK
                # 2. roll a full-size window until the table knows it
                if pos + bs > stop:
                    break
                if not rolling:
                    _window_init(kind, p + pos, <size_t>bs, &s1, &s2)
                    rolling = True
                j = NO_BLOCK
                while self._roll(p, &pos, stop, &s1, &s2):
                    j = self._lookup(view, strong_fn, fast, _weak_of(s1, s2), pos, scratch)
                    if j != NO_BLOCK or pos + bs >= stop:
                        break
                    _roll_one(kind, &s1, &s2, p[pos], p[pos + bs], <uint32_t>bs)  # a false hit: on by one byte
                    pos += 1
                if j == NO_BLOCK:
                    break
                # 3. blocks just before the match may sit in the literal bytes
                back.n = 0
                k = j - 1
                q = pos
                while k >= 0 and q - self.lengths[k] >= lit_start:
                    if not self._confirm(view, strong_fn, fast, q - self.lengths[k], k, scratch):
                        break
                    q -= self.lengths[k]
                    _push(back, q, k)
                    k -= 1
                while back.n:
                    back.n -= 1
                    _push(found, back.pos[back.n], back.blk[back.n])
                _push(found, pos, j)
                pos += bs
                lit_start = pos
                nxt = j + 1
                rolling = False
        return 0
