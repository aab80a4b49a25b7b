"""The wire formats fitsync and its SSH agent share, written once.

The agent's framing, the layouts of a serialized block signature and of a
delta recipe (docs/signature-format.md), the ids of the STDLIB sum suite, and
the rule that sizes a signature's blocks. fitsync imports this module; the agent,
which runs on hosts where fitsync is not installed, is sent this very text
as part of its one file (fitsync.agent.source()). So it must stay stdlib
only, import nothing of fitsync, and run on Python 3.6.
"""

import json
import math
import struct

# Agent frames: a 4-byte big-endian length, a UTF-8 JSON header of that length,
# then header["n"] raw bytes when the header has "n".
FRAME = struct.Struct(">I")
MAX_FRAME_HEADER = 64 << 20
MAX_FRAME_BODY = 1 << 30


def parse_frame_header(raw):
    """A frame header: a JSON object whose optional "n" (body length) is an
    int in 0..MAX_FRAME_BODY. Anything else is a malformed frame (ValueError)."""
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("frame header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("frame header is not an object")
    n = header.get("n")
    if "n" in header and (type(n) is not int or not 0 <= n <= MAX_FRAME_BODY):
        raise ValueError("frame body length is invalid")
    return header


FITS_RECORD = 2880  # bytes in a FITS block: blocks of a signature are whole records

# A block signature: header, segment boundaries, weak sums, strong sums, trailer.
SIG_MAGIC = b"FSYNCSIG"
SIG_FORMAT_VERSION = 1
# magic version weak-id strong-id block-size file-size n-boundaries flags n-blocks digest
SIG_HEADER = struct.Struct("<8sHBBIQIIQ32s")
SIG_TRAILER = struct.Struct("<Q")  # a check of everything before it (per suite)
SIG_FLAG_NO_DIGEST = 1  # made without the whole-file digest
# The STDLIB suite (zlib and hashlib on a stock host): Adler-32 weak sums, the
# first 16 bytes of SHA-256 as strong sums.
WEAK_ADLER32, STRONG_SHA256_128 = 2, 2

# A recipe: header, ops (kind, offset, length; packed), then an xxh3-64 check.
RECIPE_MAGIC = b"FSYNCRCP"
RECIPE_FORMAT_VERSION = 1
RECIPE_HEADER = struct.Struct("<8sHHIQQQ32s")  # magic version 0 0 n_ops target_size basis_size digest
RECIPE_OP = struct.Struct("<BQQ")  # kind offset length: 17 bytes

# Blocks of a signature are between these many FITS records long.
MIN_BLOCK_RECORDS, MAX_BLOCK_RECORDS = 2, 64


def default_block_size(file_size, bounds=(MIN_BLOCK_RECORDS, MAX_BLOCK_RECORDS)):
    """About half the square root of the file size, in whole FITS records,
    within ``bounds`` (records).

    Half of rsync's sqrt rule because a block here costs 20 signature bytes
    and a changed byte costs up to two blocks of literal: for a 1 GiB file this
    gives 17,280-byte blocks (1.2 MiB of signature) and keeps a 1 MiB edit's
    literal below rsync's."""
    records = round(math.sqrt(max(file_size, 0)) / 2 / FITS_RECORD)
    return min(max(records, bounds[0]), bounds[1]) * FITS_RECORD
