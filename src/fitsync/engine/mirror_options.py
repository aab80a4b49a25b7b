"""What a mirror run does besides making DST equal SRC (engine.mirror.Mirror's options)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.events import ProgressCallback


class MirrorOptions:
    """What a mirror run does besides making DST equal SRC by size and mtime
    (built by ``fitsync.api.mirror_options``; mutable: a data store run sets
    ``only_paths``, --extract ``protected``). The class attributes are the
    defaults; keywords set the rest. A plain class: a dataclass of this size
    costs every run ~3 ms of start-up to generate its methods."""

    checksum = False
    delete = False
    dry_run = False
    manifest = None  # fitsync.formats.manifest.Manifest of the source
    jobs = 2
    retries = 3
    fits_check = True
    selection = None  # anything with matches(Entry) -> bool
    only_paths: set | None = None  # mirror exactly these (dataset subsets)
    retry_delay = 0.5
    progress: ProgressCallback | None = None  # receives fitsync.events
    links = "skip"  # symlinks in a local source: skip, links, unsafe-links, follow
    bwlimit: int | None = None  # bytes per second read from the source, all files together
    max_delete: int | None = None  # --delete removes nothing when it would remove more
    allow_empty_source = False  # --delete may empty the destination when the source lists nothing
    fsync = False  # each local file synced before its rename, its directory after
    inplace = False  # changed files of a local destination updated in place, under an undo journal
    whole_file: bool | None = None  # False: a local source's changed files travel as deltas all the same
    extract_max: int | None = None  # --extract: bytes an archive may unpack to (None: the default bound)
    cluster = None  # --dask: transfers on a cluster (an address, a Dask Client or an Executor)
    batch_files: int | None = None  # files per batch on a cluster (engine.cluster.batch_size)
    max_connections: int | None = None  # to one remote location from the whole cluster
    locations = None  # engine.cluster_mirror.Locations: how the workers open both sides

    def __init__(self, **options):
        self.protected: set = set()  # never deleted (e.g. files unpacked by --extract)
        for name, value in options.items():
            if not hasattr(self, name):
                raise TypeError(f"MirrorOptions has no option {name!r}")
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"MirrorOptions({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"
