"""What the public functions return: dataclasses with ``to_dict()``.

``to_dict()`` is exactly what the CLI prints with ``--json``, and carries the
fitsync ``version`` that wrote it (docs/api.md lists every field).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator, List, Optional

from fitsync import __version__


@dataclass
class FileAction:
    """What a run did to one file (unchanged files are counted, not listed)."""

    path: str
    action: str  # new, delta, repair, delete, incomplete, failed
    bytes_moved: int = 0  # bytes read from the source (literals, whole copies)
    bytes_reused: int = 0  # bytes taken from the destination's old copy
    error: Optional[str] = None
    # How a local destination's file was written: copied (new), cloned,
    # kernel copy, in place, rewritten; None for other destinations.
    built: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MirrorResult:
    """Counts, bytes, time and per-file actions of one run. ``to_dict()`` is
    the CLI's ``--json`` summary (``files`` only when asked for)."""

    files_total: int = 0
    files_new: int = 0
    files_updated: int = 0
    files_repaired: int = 0
    files_unchanged: int = 0
    files_deleted: int = 0
    files_failed: int = 0
    files_incomplete: int = 0
    links_skipped: int = 0  # symlinks in the source left out (see ``links``)
    links_copied: int = 0  # symlinks made in the destination (links="links")
    bytes_total: int = 0
    bytes_transferred: int = 0
    bytes_reused: int = 0
    bytes_to_update: int = 0  # dry run: size of the files a delta would update (the most it can move)
    seconds: float = 0.0
    dry_run: bool = False
    failures: List[dict] = field(default_factory=list)  # {"path", "reason"}
    incomplete: List[dict] = field(default_factory=list)  # {"path", "reason"}: sources still being written
    files: List[FileAction] = field(default_factory=list)
    exit_code: int = 0  # what the CLI exits with: 0, 1 (a data store finding), 3 (failures)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_dict(self, files: bool = False) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "files"}
        data["seconds"] = round(self.seconds, 3)
        data["version"] = __version__
        if files:
            data["files"] = [a.to_dict() for a in self.files]
        return data


@dataclass
class ManifestResult:
    """A manifest that was written (``output``), or is being streamed.

    Without ``output``, iterate over the result to get the entries
    (``fitsync.formats.manifest.ManifestEntry``: path, size, mtime, blake3,
    extra), hashed a batch at a time as the iteration asks for them; the
    counts and ``errors`` are complete once the iteration has ended.
    """

    root: str
    format: str
    output: Optional[str] = None
    files: int = 0
    bytes: int = 0
    errors: List[dict] = field(default_factory=list)  # {"path", "reason"}: files that could not be hashed
    signed: bool = False
    entries: Optional[Iterator] = field(default=None, repr=False, compare=False)
    batches: int = 0  # on a cluster: batches hashed by this run
    batches_skipped: int = 0  # on a cluster: batches a resume found done

    def __iter__(self) -> Iterator:
        return iter(self.entries if self.entries is not None else ())

    @property
    def exit_code(self) -> int:
        return 3 if self.errors else 0

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "entries"}
        data["version"] = __version__
        return data


@dataclass
class AuditResult:
    """The findings of ``fitsync.audit``: against a manifest, another copy,
    and/or the FITS structure of each file (those not asked for are None)."""

    target: str
    manifest: Optional[object] = None  # fitsync.engine.audit.AuditReport
    against: Optional[object] = None  # fitsync.engine.audit.AuditReport
    fits: Optional[list] = None  # fitsync.fitsaudit.FileReport of each FITS file (``fits`` without a manifest)

    @property
    def clean(self) -> bool:
        reports = [r for r in (self.manifest, self.against) if r is not None]
        fits_ok = self.fits is None or all(r.status == "ok" for r in self.fits)
        return fits_ok and all(getattr(r, "clean") for r in reports)

    @property
    def exit_code(self) -> int:
        return 0 if self.clean else 1

    def to_dict(self) -> dict:
        data: dict = {"version": __version__, "clean": self.clean}
        for name in ("manifest", "against"):
            report = getattr(self, name)
            if report is not None:
                data[name] = report.to_dict()
        if self.fits is not None:
            data["fits"] = [r.to_dict() for r in self.fits]
        return data
