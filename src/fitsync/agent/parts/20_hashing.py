# -- hashing -------------------------------------------------------------------

def _optional(name):
    try:
        return __import__(name)
    except ImportError:
        return None


class Hashes:
    """Which hashers this host offers; ``avoid`` hides modules for testing the
    stdlib-only negotiation on a host that has them."""

    def __init__(self, avoid=()):
        self.blake3 = None if "blake3" in avoid else _optional("blake3")
        self.xxhash = None if "xxhash" in avoid else _optional("xxhash")

    def available(self):
        names = sorted(hashlib.algorithms_available)
        if self.blake3:
            names.append("blake3")
        if self.xxhash:
            names.append("xxh3_128")
        return names

    def new(self, algo):
        if algo == "blake3":
            if not self.blake3:
                raise AgentError("bad", "blake3 is not available on this host")
            return self.blake3.blake3()
        if algo == "xxh3_128":
            if not self.xxhash:
                raise AgentError("bad", "xxhash is not available on this host")
            return self.xxhash.xxh3_128()
        if algo == "blake2b128":
            return hashlib.blake2b(digest_size=16)
        try:
            return hashlib.new(algo)
        except ValueError:
            raise AgentError("bad", "unknown digest algorithm %r" % algo)

    def block_hasher(self, algo):
        """A function bytes -> digest for per-block strong hashes."""
        if algo == "xxh3_128":
            if not self.xxhash:
                raise AgentError("bad", "xxhash is not available on this host")
            return lambda b: self.xxhash.xxh3_128_digest(b)
        if algo == "blake2b128":
            return lambda b: hashlib.blake2b(b, digest_size=16).digest()
        raise AgentError("bad", "unknown block hash %r" % algo)


def _read_chunks(f, start=0, length=None, size=READ_CHUNK):
    f.seek(start)
    left = length
    while left is None or left > 0:
        chunk = f.read(size if left is None else min(size, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk
