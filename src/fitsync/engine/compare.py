"""Compare two trees: only on A, only on B, differing, identical."""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, field

from fitsync.engine.plan import same_mtime
from fitsync.remotes.base import Remote
from fitsync.scan import common_algorithm, digest_entries


@dataclass
class CompareReport:
    """What ``fitsync.compare`` found: paths only on A, only on B, differing
    (with a reason), identical, and those that could not be compared."""

    only_a: list = field(default_factory=list)
    only_b: list = field(default_factory=list)
    differ: list = field(default_factory=list)  # {"path", "reason"}
    identical: list = field(default_factory=list)
    errors: list = field(default_factory=list)  # {"path", "reason"}

    @property
    def agree(self) -> bool:
        return not (self.only_a or self.only_b or self.differ or self.errors)

    def to_dict(self) -> dict:
        from fitsync import __version__

        return {
            "version": __version__,
            "agree": self.agree,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "differ": self.differ,
            "identical": self.identical,
            "errors": self.errors,
            "counts": {k: len(getattr(self, k)) for k in ("only_a", "only_b", "differ", "identical", "errors")},
        }

    def combined_lines(self) -> list[str]:
        """rclone check --combined: + only on A, - only on B, * differ, = identical, ! error."""
        lines = [(p, "+") for p in self.only_a] + [(p, "-") for p in self.only_b]
        lines += [(d["path"], "*") for d in self.differ] + [(p, "=") for p in self.identical]
        lines += [(e["path"], "!") for e in self.errors]
        return [f"{mark} {path}" for path, mark in sorted(lines)]


def compare_trees(a: Remote, b: Remote, *, checksum: bool = False, selection=None, jobs: int | None = None,
                  on_done=None, progress=None, cluster=None, roots: tuple = (), options=None,
                  batch_files=None) -> CompareReport:
    """Pair the listings of ``a`` and ``b``; with ``checksum`` hash the pairs of
    equal size on both sides: here, or on ``cluster`` (a Dask Client, an
    Executor or a --dask address), whose workers open ``roots`` (the
    locations of a and b) with ``options`` themselves."""
    from fitsync.engine.march import paired, prefetched, selected

    report = CompareReport()
    resolution = max(a.mtime_resolution, b.mtime_resolution)
    to_hash = []  # (entry on a, entry on b) of equal size, with --checksum
    # Both listed at once, each in a thread of its own (two hosts wait at once).
    left = prefetched(lambda: selected(a.list(), selection))
    right = prefetched(lambda: selected(b.list(), selection))
    for path, x, y in paired(left, right):
        if y is None:
            report.only_a.append(path)
        elif x is None:
            report.only_b.append(path)
        elif x.size != y.size:
            report.differ.append({"path": path, "reason": f"size {x.size} vs {y.size}"})
        elif checksum:
            to_hash.append((x, y))
        elif not same_mtime(x.mtime, y.mtime, resolution):
            report.differ.append({"path": path, "reason": "mtime differs"})
        else:
            report.identical.append(path)
    for side in (a, b):  # known once each listing has been walked
        for path, reason in side.rejected_names:
            report.errors.append({"path": path, "reason": reason})
    if to_hash and cluster is not None:
        from fitsync.engine.cluster_checks import compare_on_cluster

        for found in compare_on_cluster(cluster, roots, options, to_hash, common_algorithm(a, b), jobs=jobs or 2,
                                        batch_files=batch_files):
            _add(report, found)
    elif to_hash:
        from fitsync.events import hashing_progress

        on_done = on_done or hashing_progress(progress, [x for x, _ in to_hash], sides=2)
        _add(report, judge_pairs(a, b, [x for x, _ in to_hash], [y for _, y in to_hash],
                                 common_algorithm(a, b), jobs, on_done))
    report.differ.sort(key=lambda d: d["path"])
    report.identical.sort()
    report.errors.sort(key=lambda d: d["path"])
    return report


def _add(report: CompareReport, found: dict) -> None:
    for key in ("identical", "differ", "errors"):
        getattr(report, key).extend(found[key])


def judge_pairs(a: Remote, b: Remote, left: list, right: list, algo: str, jobs, on_done=None) -> dict:
    """Hash ``left`` on ``a`` and ``right`` on ``b`` (the same paths, in the
    same order) with ``algo``, both sides at once: {"identical": [paths],
    "differ": [{"path", "reason"}], "errors": [{"path", "reason"}]}."""
    found: dict = {"identical": [], "differ": [], "errors": []}
    with cf.ThreadPoolExecutor(max_workers=2) as pool:  # both sides at once
        side_a = pool.submit(digest_entries, a, left, algo=algo, jobs=jobs, on_done=on_done)
        side_b = pool.submit(digest_entries, b, right, algo=algo, jobs=jobs, on_done=on_done)
        (da, ea), (db, eb) = side_a.result(), side_b.result()
    for entry in left:
        path = entry.path
        error = ea.get(path) or eb.get(path)
        if error:
            found["errors"].append({"path": path, "reason": error})
        elif da[path] != db[path]:
            found["differ"].append({"path": path, "reason": f"{algo} differs"})
        else:
            found["identical"].append(path)
    return found
