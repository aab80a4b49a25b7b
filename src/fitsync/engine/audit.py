"""Audit a copy against a manifest: ok, missing, corrupt, extra; with --fits,
also each FITS file's own structure and checksums, in the same read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fitsync.formats.manifest import Manifest
from fitsync.remotes.base import Capability, Entry, Remote
from fitsync.scan import digest_entries, for_each_file

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.results import AuditResult


@dataclass
class AuditReport:
    """One audit of a copy (against a manifest, or another copy): files ok,
    missing, corrupt (with a reason) and extra, and FITS findings."""

    ok: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    corrupt: list = field(default_factory=list)  # {"path", "reason"}
    extra: list = field(default_factory=list)
    fits: list = field(default_factory=list)  # per-file FITS reports (dicts), with --fits
    fits_problems: list = field(default_factory=list)  # {"path", "reason"}: broken, incomplete, regressions

    @property
    def clean(self) -> bool:
        return not (self.missing or self.corrupt or self.extra or self.fits_problems)

    def to_dict(self) -> dict:
        data = {
            "clean": self.clean,
            "ok": sorted(self.ok),
            "missing": sorted(self.missing),
            "corrupt": sorted(self.corrupt, key=lambda c: c["path"]),
            "extra": sorted(self.extra),
            "counts": {k: len(getattr(self, k)) for k in ("ok", "missing", "corrupt", "extra")},
        }
        if self.fits or self.fits_problems:
            data["fits"] = sorted(self.fits, key=lambda r: r["path"])
            data["fits_problems"] = sorted(self.fits_problems, key=lambda p: p["path"])
        return data


def audit_against_manifest(target: Remote, manifest: Manifest, *, ignore: set[str] = frozenset(),
                           selection=None, jobs: int | None = None, fits: bool = False, on_done=None,
                           progress=None, cluster=None, root_spec: str = "", options=None,
                           batch_files=None) -> AuditReport:
    """Each file is read once (its digest, and its FITS checks with ``fits``);
    a size mismatch needs no read at all. With ``cluster`` (a Dask Client,
    an Executor or a --dask address) the files are hashed on its workers,
    which open ``root_spec`` with ``options`` themselves."""
    from operator import attrgetter

    from fitsync.engine.march import paired, selected

    report = AuditReport()
    listed = selected((e for e in target.list() if e.path not in ignore), selection)
    recorded_files = sorted(manifest.entries.values(), key=attrgetter("path"))
    to_hash, expected = [], {}
    for path, recorded_file, have in paired(recorded_files, listed, ("the manifest", target.url)):
        if recorded_file is None:
            report.extra.append(path)
        elif have is None:
            if selection is None or _selected(selection, recorded_file):
                report.missing.append(path)
        elif have.size != recorded_file.size:
            report.corrupt.append({"path": path, "reason": f"size {have.size}, manifest says {recorded_file.size}"})
        else:
            to_hash.append(have)
            expected[path] = recorded_file
    for path, reason in target.rejected_names:
        report.corrupt.append({"path": path, "reason": reason})
    want = {e.path: expected[e.path].blake3 for e in to_hash}
    recorded = {e.path: expected[e.path].extra.get("fits") for e in to_hash}
    if cluster is not None:
        from fitsync.engine.cluster_checks import check_on_cluster

        for found in check_on_cluster(cluster, root_spec, options, to_hash, want, recorded, fits=fits, jobs=jobs,
                                      batch_files=batch_files):
            for key in ("ok", "corrupt", "fits", "fits_problems"):
                getattr(report, key).extend(found[key])
        return report
    if not (fits and Capability.LOCAL in target.capabilities):
        from fitsync.events import hashing_progress

        on_done = on_done or hashing_progress(progress, to_hash)
    check_entries(target, to_hash, want, recorded, report, fits=fits, jobs=jobs, on_done=on_done)
    return report


def check_entries(target: Remote, entries: list, want: dict, recorded: dict, report: AuditReport, *, fits: bool,
                  jobs, on_done=None) -> None:
    """Hash ``entries`` (with ``fits``, FITS checks in the same read) and put
    each in ``report``: ok when its BLAKE3 is ``want[path]``, else corrupt.
    ``recorded`` maps a path to the FITS fields its manifest line holds."""
    if fits and Capability.LOCAL in target.capabilities:
        digests, errors = _digest_with_fits(target, entries, recorded, report, jobs)
    else:
        digests, errors = digest_entries(target, entries, jobs=jobs, on_done=on_done)
    for path, error in errors.items():
        report.corrupt.append({"path": path, "reason": error})
    for path, digest in digests.items():
        if digest == want[path]:
            report.ok.append(path)
        else:
            report.corrupt.append({"path": path, "reason": "BLAKE3 differs from the manifest"})


def _digest_with_fits(target: Remote, entries: list[Entry], recorded: dict, report: AuditReport, jobs):
    """Digest every file and check FITS files in the same read; collect FITS findings into ``report``."""
    from fitsync import fitsaudit

    def work(entry):
        return fitsaudit.audit_and_digest(target.local_path(entry.path), display_path=entry.path)

    digests, errors = {}, {}
    for entry, result, error in for_each_file(entries, work, jobs=jobs):
        if error is not None:
            errors[entry.path] = error
            continue
        fits_report, digests[entry.path] = result
        if fits_report is not None:
            _record_fits(report, fits_report, recorded.get(entry.path))
    return digests, errors


def _record_fits(report: AuditReport, fits_report, recorded: dict | None) -> None:
    from fitsync import fitsaudit

    report.fits.append(fits_report.to_dict())
    if fits_report.status != fitsaudit.STATUS_OK:
        report.fits_problems.append({"path": fits_report.path,
                                     "reason": f"{fits_report.status}: {fits_report.first_problem()}"})
    for regression in fitsaudit.manifest_regressions(recorded or {}, fits_report) if recorded else ():
        report.fits_problems.append({"path": fits_report.path, "reason": regression})


def _selected(selection, manifest_entry) -> bool:
    return selection.matches(Entry(manifest_entry.path, manifest_entry.size, manifest_entry.mtime))


def audit_location(target: str, *, manifest: str | None, fits: bool, against: str | None, selection,
                   jobs: int, options, progress=None, cluster=None, batch_files=None) -> "AuditResult":
    """``fitsync.audit``: ``target`` against a manifest (given, or its own
    fitsync-manifest.jsonl), another copy, and/or its FITS structure."""
    import os

    from fitsync.errors import UsageError
    from fitsync.formats.manifest import DEFAULT_NAME
    from fitsync.remotes import open_remote
    from fitsync.results import AuditResult

    if manifest is None and against is None:
        own = os.path.join(target, DEFAULT_NAME)
        manifest = own if os.path.isfile(own) else None
    if manifest is None and against is None and not fits:
        raise UsageError(f"no manifest for {target}: pass --manifest=FILE, --against=LOCATION, "
                         "or --fits to check FITS files by their own structure")
    if cluster is not None and (manifest is None or against is not None):
        raise UsageError("--dask checks a copy against a manifest: give --manifest=FILE (or keep "
                         "fitsync-manifest.jsonl in TARGET), without --against")
    result = AuditResult(target=target)
    matcher = selection.matcher() if selection else None
    if against is not None:
        result.against = _audit_against(target, against, matcher, jobs, options, progress)
    if manifest is not None:
        from fitsync.formats.manifest import load_manifest

        loaded = load_manifest(manifest, options.verify_key)
        with open_remote(target, options) as remote:
            if fits and Capability.LOCAL not in remote.capabilities:
                raise UsageError(f"--fits reads the files' structure on this machine; {target} is not a local path")
            result.manifest = audit_against_manifest(remote, loaded, ignore={DEFAULT_NAME, DEFAULT_NAME + ".sig"},
                                                     selection=matcher, jobs=jobs, fits=fits, progress=progress,
                                                     cluster=cluster, root_spec=target, options=options,
                                                     batch_files=batch_files)
    elif fits:
        from fitsync import fitsaudit

        with open_remote(target, options) as remote:
            if Capability.LOCAL not in remote.capabilities:
                raise UsageError(f"--fits reads the files' structure on this machine; {target} is not a local path")
            local_root = remote.root
        result.fits = fitsaudit.audit_tree(local_root, jobs=jobs)
    return result


def _audit_against(target: str, against: str, matcher, jobs: int, options, progress) -> AuditReport:
    """Audit ``target`` against another copy: compare by content, in audit's terms."""
    from fitsync.remotes import open_source
    from fitsync.engine.compare import compare_trees
    from fitsync.errors import NotFound
    from fitsync.remotes import open_remote

    with open_source(against, options) as reference, open_remote(target, options) as copy:
        for side, name in ((reference, against), (copy, target)):
            if not side.exists():
                raise NotFound(f"{name} does not exist; check the path")
        diff = compare_trees(reference, copy, checksum=True, selection=matcher, jobs=jobs, progress=progress)
    return AuditReport(ok=diff.identical, missing=diff.only_a, corrupt=diff.differ + diff.errors, extra=diff.only_b)
