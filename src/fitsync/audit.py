"""Audit a copy against a manifest: ok, missing, corrupt, extra."""

from __future__ import annotations

from dataclasses import dataclass, field

from fitsync.manifest import Manifest
from fitsync.remotes.base import Remote
from fitsync.scan import digest_entries


@dataclass
class AuditReport:
    ok: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    corrupt: list = field(default_factory=list)  # {"path", "reason"}
    extra: list = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.corrupt or self.extra)

    def to_json(self) -> dict:
        return {
            "clean": self.clean,
            "ok": sorted(self.ok),
            "missing": sorted(self.missing),
            "corrupt": sorted(self.corrupt, key=lambda c: c["path"]),
            "extra": sorted(self.extra),
            "counts": {k: len(getattr(self, k)) for k in ("ok", "missing", "corrupt", "extra")},
        }


def audit_against_manifest(target: Remote, manifest: Manifest, *, ignore: set[str] = frozenset(),
                           selection=None, jobs: int | None = None, on_done=None) -> AuditReport:
    """Each file is read once (its digest); a size mismatch needs no read at all."""
    report = AuditReport()
    listed = {e.path: e for e in target.list() if e.path not in ignore and (selection is None or selection.matches(e))}
    expected = {p: m for p, m in manifest.entries.items() if selection is None or p in listed or _selected(selection, m)}
    to_hash = []
    for path, want in expected.items():
        have = listed.get(path)
        if have is None:
            report.missing.append(path)
        elif have.size != want.size:
            report.corrupt.append({"path": path, "reason": f"size {have.size}, manifest says {want.size}"})
        else:
            to_hash.append(have)
    report.extra = [p for p in listed if p not in manifest.entries]
    digests, errors = digest_entries(target, to_hash, jobs=jobs, on_done=on_done)
    for path, error in errors.items():
        report.corrupt.append({"path": path, "reason": error})
    for path, digest in digests.items():
        if digest == expected[path].blake3:
            report.ok.append(path)
        else:
            report.corrupt.append({"path": path, "reason": "BLAKE3 differs from the manifest"})
    return report


def _selected(selection, manifest_entry) -> bool:
    from fitsync.remotes.base import Entry

    return selection.matches(Entry(manifest_entry.path, manifest_entry.size, manifest_entry.mtime))
