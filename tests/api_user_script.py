"""A pipeline's use of every public function, type-checked with ``mypy --strict``
by tests/test_api.py (it is not run: the calls are tested there on real data)."""

from __future__ import annotations

import sys
from pathlib import Path

import fitsync
from fitsync.errors import FitsyncError
from fitsync.events import BytesDone, Event, FileFinished, Totals
from fitsync.progress import tqdm_bar


def on_progress(event: Event) -> None:
    if isinstance(event, Totals):
        print(f"{event.phase}: {event.files} files, {event.bytes} bytes")
    elif isinstance(event, BytesDone):
        pass
    elif isinstance(event, FileFinished) and event.error:
        print(f"{event.path}: {event.error}", file=sys.stderr)


def nightly(archive: Path, copy: Path) -> int:
    select = fitsync.Selection(profile="saao-nightly", max_age="30d", where=["instrument=shoc"])
    options = fitsync.RemoteOptions(timeout=30.0, accept_new_host_key=False)
    for interrupted in fitsync.recover(copy):  # a crash during last night's --inplace run
        print(interrupted["path"], interrupted["outcome"])
    try:
        result: fitsync.MirrorResult = fitsync.mirror("saao:/data", copy, select=select, progress=on_progress,
                                                      remote_options=options, checksum=True, inplace=True)
    except FitsyncError as error:
        print(f"fitsync: {error}", file=sys.stderr)
        return error.exit_code
    for action in result.files:
        print(action.path, action.action, action.bytes_moved, action.bytes_reused, action.built, action.error)
    report = fitsync.compare(copy, "sutherland:/data", checksum=True, select=select)
    if not report.agree:
        print(report.to_dict()["counts"])
    return result.exit_code


def release(root: Path) -> None:
    written: fitsync.ManifestResult = fitsync.manifest(root, output=root / "fitsync-manifest.jsonl", blocks=True)
    print(written.files, written.bytes, written.to_dict())
    for entry in fitsync.manifest(root, format="jsonl"):
        print(entry)
    audit: fitsync.AuditResult = fitsync.audit(root, fits=True)
    print(audit.clean, audit.exit_code)


def iact(store: str) -> None:
    for production in fitsync.datasets(store):
        print(production)
    fitsync.mirror(store, "crab", select=fitsync.Selection(production="hess_dl3_dr1", runlist="crab_runs.txt"),
                   progress=tqdm_bar())


def shapepipe() -> None:
    select = fitsync.Selection(profile="shapepipe", where=["tile=@tile_numbers.txt"])
    report = fitsync.missing("results", expect="type=final_cat,logs", select=select, output="missing.txt")
    print(report.exit_code)
    with fitsync.open("canfar:/results") as remote:
        for entry in remote.list():
            print(entry.path, entry.size, entry.mtime)


if __name__ == "__main__":
    sys.exit(nightly(Path(sys.argv[1]), Path(sys.argv[2])))
