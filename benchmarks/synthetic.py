"""A generator-backed remote for memory benchmarks: ``synthetic://N`` lists N
files that exist only as names, made on the fly in path order, each of 2,880
bytes with one mtime, each "digest" the BLAKE3 of its name. A run over it
holds only what fitsync itself keeps, whatever N is.

Register it in the process that runs fitsync:
    fitsync.remotes.register_scheme("synthetic", "synthetic:Backend")
with this directory on sys.path.
"""

from __future__ import annotations

SIZE = 2880
MTIME = 1_700_000_000.0


def make(url: str):
    from fitsync.remotes.base import Capability, Entry, Remote

    class Synthetic(Remote):
        scheme = "synthetic"
        capabilities = frozenset({Capability.READ_RANGE})

        def __init__(self, url: str):
            super().__init__(url)
            self.count = int(url.split("://", 1)[1].strip("/"))

        def list(self):
            for i in range(self.count):
                yield Entry(f"d{i // 10000:06d}/f{i:09d}.fits", SIZE, MTIME)

        def stat(self, path):
            if not _listed(path, self.count):
                from fitsync.errors import NotFound

                raise NotFound(f"{path} is not in {self.url}")
            return Entry(path, SIZE, MTIME)

        def read_range(self, path, offset, length):
            return b"\0" * max(0, min(length, SIZE - offset))

        def digest(self, path, algo="blake3"):
            import blake3

            return blake3.blake3(path.encode()).hexdigest()

    return Synthetic(url)


def _listed(path: str, count: int) -> bool:
    """Whether ``path`` is one of the names list() makes (a published manifest, say, is not)."""
    name = path.rsplit("/", 1)[-1]
    return name.startswith("f") and name.endswith(".fits") and name[1:-5].isdigit() and int(name[1:-5]) < count


class Backend:
    """The class the scheme names: ``from_url`` builds a synthetic remote."""

    @staticmethod
    def from_url(url, options):
        return make(url)
