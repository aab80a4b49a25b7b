"""How a mirror decides: both listings walked side by side (engine/march.py)
or, for two local trees with nothing per-file to consider, compared in C;
each pair decided by plan.decide; contents judged where --checksum or
--manifest asks; incomplete FITS sources held back. The planning half of
engine.mirror.Mirror, as a mixin."""

from __future__ import annotations

import os

from fitsync.errors import TransferFailed
from fitsync.engine.plan import Action, Item, decide, deletions, same_mtime
from fitsync.remotes.base import Capability
from fitsync.remotes.local import entry_of
from fitsync.engine.contents import compare_contents
from fitsync.engine.locations import refuse_empty_source
from fitsync.threads import run_beside


class Planning:
    """Mirror's planning (it needs src, dst, options, result, reporter, resolution and fail())."""

    def plan(self) -> list[Item]:
        if self.can_plan_in_bulk():
            return self.plan_in_bulk()
        return self.plan_by_march()

    def plan_by_march(self) -> list[Item]:
        """Walk both listings side by side (engine/march.py), holding nothing per
        unchanged file: a no-op run keeps counters, not the tree. Pairs whose
        contents --checksum or --manifest must judge are decided after the walk,
        once their digests are known; the items come out in path order."""
        from fitsync.engine.march import paired, prefetched, selected

        o = self.options
        expected = o.manifest.entries if o.manifest is not None else {}
        judge_contents = o.checksum or o.manifest is not None
        src_side = prefetched(lambda: selected(self.src.list(), o.selection, o.only_paths))
        dst_side = (prefetched(lambda: selected(self.dst.list(), o.selection, o.only_paths))
                    if self.dst.exists() else iter(()))
        items, to_judge, gone = [], [], {}
        files = size = 0
        for path, src, dst in paired(src_side, dst_side):
            if src is None:
                if o.delete and path not in o.protected:  # held only when they are to go
                    gone[path] = dst
                continue
            files += 1
            size += src.size
            if dst is not None and dst.size == src.size:
                if judge_contents:
                    to_judge.append((src, dst))
                    continue
                if same_mtime(dst.mtime, src.mtime, self.resolution):
                    # The common case of a large no-op run, kept free of per-file objects.
                    self.result.files_unchanged += 1
                    if self.reporter.itemize_unchanged:
                        self.reporter.item(Item(path, Action.UNCHANGED, "same size and mtime"))
                    continue
            items.append(decide(src, dst, mtime_resolution=self.resolution,
                                expected_digest=_digest_in(expected, path)))
        for path, reason in self.src.rejected_names:
            # Names the source holds but this file system cannot (or must not) be given.
            self.fail(Item(path, Action.NEW, reason), TransferFailed(reason))
        self.result.files_total, self.result.bytes_total = files, size
        if to_judge:
            items = sorted(items + self.judge_contents(to_judge, expected), key=lambda item: item.path)
        items = self.hold_back_incomplete_sources(items)
        if o.delete:
            items.extend(refuse_empty_source(self.src, deletions(set(), gone), self.result, o))
        return items

    def judge_contents(self, pairs: list, expected: dict) -> list[Item]:
        """Decisions for same-size pairs once --checksum or --manifest has judged their bytes."""
        differs, reasons = compare_contents(self, pairs)
        return [decide(src, dst, mtime_resolution=self.resolution, content_differs=differs.get(src.path),
                       content_reason=reasons.get(src.path, "content differs"),
                       expected_digest=_digest_in(expected, src.path))
                for src, dst in pairs]

    def can_plan_in_bulk(self) -> bool:
        """Whether both sides list in bulk and the plan needs nothing per file
        but size, mtime and (--checksum between two local trees) equal bytes:
        no selection, no manifest, no line per unchanged file. The common
        no-op re-run then builds no object per file."""
        o = self.options
        if not (self.src.has_bulk_listing and self.dst.has_bulk_listing) or self.reporter.itemize_unchanged:
            return False
        if o.links == "follow":
            return False  # the files links lead to are listed in Python
        if o.selection is not None or o.only_paths is not None or o.manifest is not None:
            return False
        if o.checksum:
            # Two local trees are compared byte by byte in C, log file or not
            # (a log file used to switch this to hashing both sides).
            return Capability.LOCAL in self.src.capabilities and Capability.LOCAL in self.dst.capabilities
        return True

    def plan_in_bulk(self) -> list[Item]:
        """``plan`` from two bulk listings compared in C: entries are made only
        for files that differ. Same decisions, counts and order as ``plan``."""
        dst_listing = run_beside(self.dst.bulk_listing)  # both walks release the GIL
        src_listing = self.src.bulk_listing()
        dst_listing = dst_listing()
        for path, reason in self.src.rejected_names:
            self.fail(Item(path, Action.NEW, reason), TransferFailed(reason))
        self.result.files_total = len(src_listing)
        self.result.bytes_total = src_listing.total_size
        diff = src_listing.diff(dst_listing, max(self.resolution, 1e-6), keep_unchanged=self.options.checksum)
        decided = [
            (i, decide(entry_of(src_listing.row(i)), entry_of(dst_listing.row(j)) if j >= 0 else None,
                       mtime_resolution=self.resolution))
            for i, j in diff.differing
        ]
        repairs = self.repairs_in_bulk(diff) if self.options.checksum else []
        self.result.files_unchanged += diff.unchanged - len(repairs)
        if repairs:
            decided = sorted(decided + repairs, key=lambda pair: pair[0])
        items = [item for _, item in decided]
        if not src_listing.in_str_order:
            items.sort(key=lambda item: item.path)  # the order plan() gives
        items = self.hold_back_incomplete_sources(items)
        if self.options.delete:
            kept = {e.path: e for e in map(entry_of, map(dst_listing.row, diff.only_other))
                    if e.path not in self.options.protected}
            items.extend(refuse_empty_source(self.src, deletions(set(), kept), self.result, self.options))
        return items

    def repairs_in_bulk(self, diff) -> list[tuple[int, Item]]:
        """--checksum between two local trees: compare the bytes of every file
        unchanged by size and mtime, the copies side by side (both are on this
        machine: reading them is all a digest would cost, and nothing needs
        hashing). Returns (source index, REPAIR item) of those that differ."""
        count = diff.unchanged
        if not count:
            return []
        self.reporter.phase("scan", 2 * diff.unchanged_bytes)
        parts = max(1, min(self.options.jobs, count))
        bounds = [count * p // parts for p in range(parts + 1)]
        # Each part compares its files with the GIL released: one core each.
        waits = [run_beside(lambda lo=lo, hi=hi: diff.compare_contents(self.src.local_root(), self.dst.local_root(), lo, hi))
                 for lo, hi in zip(bounds[1:-1], bounds[2:])]
        found = diff.compare_contents(self.src.local_root(), self.dst.local_root(), bounds[0], bounds[1])
        for wait in waits:
            found += wait()
        self.reporter.advance(2 * diff.unchanged_bytes)
        self.reporter.close_phase()
        repairs = []
        for k, errno_value, _side in found:
            i, j = diff.unchanged_pair(k)
            # The reasons compare_contents() gives when digests differ or could not be had.
            reason = "content differs"
            if errno_value:
                reason = f"could not compare (cannot read: {os.strerror(errno_value)})"
            src, dst = entry_of(diff.first.row(i)), entry_of(diff.second.row(j))
            repairs.append((i, decide(src, dst, mtime_resolution=self.resolution, content_differs=True,
                                      content_reason=reason)))
        return repairs

    def hold_back_incomplete_sources(self, items: list[Item]) -> list[Item]:
        """A local source FITS file about to be transferred whose structure is
        incomplete is still being written: skip it (and keep the destination's copy)."""
        if not self.options.fits_check or Capability.LOCAL not in self.src.capabilities:
            return items
        checked = []
        for item in items:
            state = self._fits_state(item.path) if item.transfers else None
            if state is not None and state[0] == "incomplete":
                item = Item(item.path, Action.INCOMPLETE, state[1], item.src, item.dst, item.expected_digest)
            checked.append(item)
        return checked

    def _fits_state(self, path: str):
        """(state, reason) of a local source FITS file, None for other files."""
        from fitsync.engine.transfer import local_fits_state

        try:
            return local_fits_state(self.src.local_path(path), path)
        except OSError:
            return None


def _digest_in(manifest_entries: dict, path: str):
    """The BLAKE3 a --manifest gives ``path``, or None."""
    entry = manifest_entries.get(path)
    return entry.blake3 if entry is not None else None
