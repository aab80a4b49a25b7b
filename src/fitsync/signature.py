"""Block signatures of files (weak rolling sum + strong digest per block)."""

from __future__ import annotations

import blake3

from fitsync.errors import NotFound

DIGEST_LEN = 32  # BLAKE3 of the whole file


def file_digest(path) -> str:
    """Hex BLAKE3 of a local file: mmap plus BLAKE3's own threads, like b3sum."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    try:
        hasher.update_mmap(path)
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except IsADirectoryError:
        raise NotFound(f"{path} is a directory, not a file") from None
    return hasher.hexdigest()
