"""FITS integrity without a manifest: what a FITS file proves about itself.

A FITS file carries its own record structure, an END card per header, data
sizes from BITPIX/NAXISn/PCOUNT/GCOUNT, often CHECKSUM/DATASUM keywords, and
for ``.fits.gz`` a gzip CRC32 and length. ``check_file`` reads every byte at
most once (plain files through an mmap, skipping data units that carry no
checksum; gzip files in one streaming pass) and reports per file and per HDU.

Statuses of a file:

- ``ok``: nothing wrong (a file without checksums can be ok: "checksum absent"
  is information, not a failure);
- ``incomplete``: the bytes stop early, as in a file still being written;
- ``broken``: the bytes are damaged (structure, gzip CRC/length, checksums).

See docs/fits-audit.md for every check and how it compares with astropy.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from fitsync import fits
from fitsync.errors import NotFound
from fitsync.fits import ABSENT, BAD, BROKEN, INCOMPLETE, OK, UNCHECKED, WARNING, Problem
from fitsync.fits_walker import HduWalker, is_prefix_of
from fitsync.mapped import mapped_file
from fitsync.paths import join_under, safe_relpath
from fitsync.fits_gzip import GZIP_MAGIC, GzipChecker
from fitsync.fits_tiles import check_tile_compressed, is_tile_compressed

STATE_DIR = ".fitsync"  # fitsync's own state inside a tree (see remotes.local)
READ_CHUNK = 1 << 20  # compressed bytes per read
PREAD_CHUNK = 8 << 20  # bytes per read when a plain file is not memory-mapped

STATUS_OK = "ok"
STATUS_BROKEN = BROKEN
STATUS_INCOMPLETE = INCOMPLETE
STATUS_NOT_FITS = "not-fits"


def is_fits_candidate(name: str, first_bytes: bytes) -> bool:
    """True for FITS names (.fits .fit .fts, gzipped, .fz) or content that
    starts like a FITS primary header."""
    return fits.looks_like_fits(name, first_bytes)


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------


def _status_of(problems: Iterable[Problem]) -> str:
    severities = {p.severity for p in problems}
    if BROKEN in severities:
        return STATUS_BROKEN
    if INCOMPLETE in severities:
        return STATUS_INCOMPLETE
    return STATUS_OK


@dataclass
class FileReport:
    path: str
    size: int
    compression: str | None = None  # "gzip" or None
    hdus: list = field(default_factory=list)  # list[HduResult]
    problems: list = field(default_factory=list)  # file-level problems (gzip, trailing bytes...)

    @property
    def all_problems(self) -> list[Problem]:
        return list(self.problems) + [p for hdu in self.hdus for p in hdu.problems]

    @property
    def status(self) -> str:
        return _status_of(self.all_problems)

    @property
    def checksums(self) -> str:
        """Summary over HDUs: ok, bad, absent (no HDU has any), partial
        (some HDUs have none) or unchecked."""
        statuses = [s for h in self.hdus for s in (h.checksum, h.datasum, h.zhecksum, h.zdatasum)]
        if BAD in statuses:
            return BAD
        if all(s == ABSENT for s in statuses):
            return ABSENT
        if UNCHECKED in (h.checksum for h in self.hdus) or UNCHECKED in (h.datasum for h in self.hdus):
            return UNCHECKED
        if any(h.checksum == ABSENT and h.datasum == ABSENT for h in self.hdus):
            return "partial"
        return OK

    def first_problem(self) -> str:
        worst = sorted(self.all_problems, key=lambda p: (BROKEN, INCOMPLETE, WARNING).index(p.severity))
        return worst[0].message if worst else ""

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "size": self.size,
            "status": self.status,
            "compression": self.compression,
            "checksums": self.checksums,
            "hdu_count": len(self.hdus),
            "problems": [p.to_dict() for p in self.problems],
            "hdus": [h.to_dict() for h in self.hdus],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# ---------------------------------------------------------------------------
# Checking one file
# ---------------------------------------------------------------------------


def check_file(path: str, hasher=None, display_path: str | None = None, mapped: bool = True) -> FileReport:
    """Check one local file. ``hasher`` (anything with ``update``) also sees
    every raw byte, so an audit against a manifest digest reads the file once.
    ``mapped=False`` reads with pread instead of an mmap: slower, but safe for
    a file that may be truncated while it is read (an mmap would then kill
    the process with SIGBUS), such as a mirror's source.
    Raises NotFound when the file cannot be opened."""
    shown = display_path if display_path is not None else path
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except OSError as exc:
        raise NotFound(f"{path}: cannot open ({exc.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        kind = format_of(path, os.pread(f.fileno(), len(fits.FITS_MAGIC), 0))
        if kind == "gzip":
            report = _check_gzip_file(f, hasher)
        elif kind == "misnamed":
            report = misnamed_gzip_report()
            _hash_rest(f, hasher)
        else:
            report = _check_plain_file(f, size, hasher, mapped)
    report.path, report.size = shown, size
    if report.compression is None and any(is_tile_compressed(h) for h in report.hdus):
        check_tile_compressed(path, report)
    return report


def format_of(name: str, head: bytes) -> str:
    """"gzip", "plain" (FITS, or anything to be judged as FITS) or
    "misnamed" (a .gz name on bytes that are neither gzip nor FITS), from the
    first 9 bytes (fewer only when that is the whole file)."""
    if head.startswith(GZIP_MAGIC) or head == GZIP_MAGIC[:1]:
        return "gzip"
    if head and name.lower().endswith(".gz") and not is_prefix_of(head, fits.FITS_MAGIC):
        return "misnamed"
    return "plain"


def misnamed_gzip_report() -> FileReport:
    problem = Problem(BROKEN, "gzip-header", "named .gz but starts with neither the gzip magic bytes nor a FITS header", 0)
    return FileReport("", 0, "gzip", [], [problem])


def _check_plain_file(f, size: int, hasher, mapped: bool) -> FileReport:
    if size and mapped:
        with mapped_file(f.fileno(), what=f.name) as mapping:
            view = memoryview(mapping)
            try:
                if hasher is not None:
                    hasher.update(view)
                return _walked_report(size, lambda pos, n: view[pos : pos + n], skip_data=True)
            finally:
                view.release()
    buf = memoryview(bytearray(PREAD_CHUNK if size else 0))

    def read_at(pos: int, n: int) -> memoryview:
        got = os.preadv(f.fileno(), [buf[: min(n, PREAD_CHUNK)]], pos)
        if hasher is not None:
            hasher.update(buf[:got])
        return buf[:got]

    return _walked_report(size, read_at, skip_data=hasher is None)


def _walked_report(size: int, read_at, skip_data: bool) -> FileReport:
    """The structure report of a plain FITS file of ``size`` bytes read through ``read_at``."""
    walker = HduWalker()
    _walk(walker, size, read_at, skip_data)
    hdus, problems = walker.finish()
    return FileReport("", size, None, hdus, problems)


def _walk(walker: HduWalker, size: int, read_at, skip_data: bool) -> None:
    """Feed the walker the file's bytes, skipping data units it does not
    need (no checksum keywords) unless ``skip_data`` is False: those pages
    are never touched. Stops early if the file turns out shorter than
    ``size`` (it shrank while being read)."""
    pos = 0
    while pos < size:
        skip = min(walker.skippable(), size - pos) if skip_data else 0
        if skip:
            walker.skip(skip)
            pos += skip
            continue
        piece = read_at(pos, min(walker.wants() or size - pos, size - pos))
        if not len(piece):
            return
        walker.feed(piece)
        pos += len(piece)


def _check_gzip_file(f, hasher) -> FileReport:
    walker = HduWalker()
    gz = GzipChecker(walker.feed)
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    while not gz.failed:
        n = f.readinto(buf)
        if not n:
            break
        if hasher is not None:
            hasher.update(view[:n])
        gz.feed(view[:n])
    if gz.failed:  # the digest still covers every byte
        _hash_rest(f, hasher)
    return gzip_report(gz, walker)


def _hash_rest(f, hasher) -> None:
    if hasher is not None:
        for chunk in iter(lambda: f.read(READ_CHUNK), b""):
            hasher.update(chunk)


def gzip_report(gz: GzipChecker, walker: HduWalker) -> FileReport:
    gz_problems = gz.finish()
    hdus, fits_problems = walker.finish()
    if any(p.severity == BROKEN for p in gz_problems):
        # The FITS bytes stop where decoding failed: their "truncation" is a
        # consequence, not a second finding.
        fits_problems = [p for p in fits_problems if p.kind != "truncated"]
        for hdu in hdus:
            hdu.problems = [p for p in hdu.problems if p.kind != "truncated"]
    return FileReport("", 0, "gzip", hdus, gz_problems + fits_problems)


# ---------------------------------------------------------------------------
# For the sync engine and the manifest writer
# ---------------------------------------------------------------------------


def quick_state(path: str) -> tuple[str, str]:
    """("ok" | "incomplete" | "broken" | "not-fits", reason) of a local file.

    Reads the headers of a plain file, and its data only for HDUs with
    CHECKSUM/DATASUM; decompresses a .gz once. For the sync engine: an
    incomplete source is skipped, a broken or incomplete destination copy is
    corrupt and repaired."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(fits.FITS_MAGIC))
    except OSError as exc:
        return STATUS_BROKEN, f"cannot read {path}: {exc.strerror}"
    if not is_fits_candidate(os.path.basename(path), head):
        return STATUS_NOT_FITS, ""
    report = check_file(path, mapped=False)  # a source may shrink under us
    if report.status == STATUS_OK:
        return STATUS_OK, "checksum absent" if report.checksums == ABSENT else ""
    return report.status, report.first_problem()


def plain_structure_state(read_at, size: int) -> tuple[str, str]:
    """Like quick_state, for an uncompressed FITS file read through
    ``read_at(offset, length)`` (a remote file): headers only, no data unit
    is read, so it costs a few kilobytes whatever the file's size."""
    report = _walked_report(size, read_at, skip_data=True)
    return report.status, report.first_problem()


def audit_and_digest(path: str, display_path: str | None = None, algo: str = "blake3",
                     hasher=None) -> tuple[FileReport | None, str]:
    """One read of a local file for ``audit --manifest --fits``: its digest
    and, for a FITS candidate, its FITS report (None for other files).
    ``hasher`` (a hashes.TeeHasher) takes the place of ``algo``'s."""
    from fitsync import hashes

    with open(path, "rb") as f:
        head = f.read(len(fits.FITS_MAGIC))
    if not is_fits_candidate(os.path.basename(path), head):
        if hasher is None:
            return None, hashes.file_digest(path, algo)
        hashes.hash_file_into(path, hasher)
        return None, hasher.hexdigest()
    hasher = hasher if hasher is not None else hashes.new_hasher(algo)
    report = check_file(path, hasher=hasher, display_path=display_path)
    return report, hasher.hexdigest()


def manifest_fields(report: FileReport) -> dict:
    """The FITS record a manifest keeps for a file: how many HDUs, each HDU's
    CHECKSUM and DATASUM status, so a later audit can tell a file that never
    had checksums from one that lost them."""
    return {
        "state": report.status,
        "hdus": len(report.hdus),
        "checksum": [h.checksum for h in report.hdus],
        "datasum": [h.datasum for h in report.hdus],
    }


def fits_manifest_fields(path: str) -> dict:
    return manifest_fields(check_file(path))


def manifest_regressions(recorded: dict, report: FileReport) -> list[str]:
    """What changed for the worse since a manifest recorded ``recorded``
    (as made by ``manifest_fields``): lost HDUs, lost checksum keywords."""
    now = manifest_fields(report)
    found = []
    if recorded.get("hdus") != now["hdus"]:
        found.append(f"{report.path}: had {recorded.get('hdus')} HDUs, now {now['hdus']}")
    for key in ("checksum", "datasum"):
        for index, (before, after) in enumerate(zip(recorded.get(key) or [], now[key])):
            if before != ABSENT and after == ABSENT:
                found.append(f"{report.path}: HDU {index} lost its {key.upper()} keyword")
    return found


# ---------------------------------------------------------------------------
# Auditing a tree
# ---------------------------------------------------------------------------


def iter_fits_files(root: str) -> Iterator[str]:
    """Relative POSIX paths of FITS candidates under ``root``, sorted,
    without following symlinks and without fitsync's state directory."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != STATE_DIR]
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            rel = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
            if is_fits_candidate(name, b"") or _starts_like_fits(full):
                yield rel


def _starts_like_fits(full: str) -> bool:
    try:
        with open(full, "rb") as f:
            return f.read(len(fits.FITS_MAGIC)) == fits.FITS_MAGIC
    except OSError:
        return False


def _check_under(root: str, rel: str) -> FileReport:
    full = join_under(root, rel)
    try:
        return check_file(full, display_path=rel)
    except NotFound as exc:
        return FileReport(rel, 0, None, [], [Problem(BROKEN, "unreadable", str(exc))])


def audit_tree(root: str, paths: Iterable[str] | None = None, jobs: int | None = None) -> list[FileReport]:
    """Check every FITS file under ``root`` (or just ``paths``, relative to
    it, e.g. a manifest's entries), ``jobs`` files at a time."""
    if os.path.isfile(root):
        return [check_file(root, display_path=os.path.basename(root))]
    if not os.path.isdir(root):
        raise NotFound(f"{root}: no such directory; give the tree to audit")
    if paths is None:
        selected = list(iter_fits_files(root))
    else:
        selected = sorted({safe_relpath(p) for p in paths})
        selected = [p for p in selected if is_fits_candidate(p, b"") or _starts_like_fits(join_under(root, p))]
    workers = max(1, jobs or min(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda rel: _check_under(root, rel), selected))


def printable(path: str) -> str:
    """A path as printed: control characters escaped (fitsync.paths.shown)."""
    from fitsync.paths import shown

    return shown(path)


def format_table(reports: list[FileReport]) -> str:
    """One line per file (status, HDUs, checksums, path); the problems of
    files that are not ok below them; a summary line."""
    lines = [f"{'STATUS':<11} {'HDUS':>4}  {'CHECKSUMS':<9}  PATH"]
    for report in reports:
        lines.append(f"{report.status:<11} {len(report.hdus):>4}  {report.checksums:<9}  {printable(report.path)}")
        for problem in report.all_problems:
            if report.status != STATUS_OK or problem.severity == WARNING:
                lines.append(f"{'':<11}   {problem.severity}: {problem.message}")
    lines.append(summary_line(reports))
    return "\n".join(lines)


def summary_line(reports: list[FileReport]) -> str:
    count = {s: 0 for s in (STATUS_OK, STATUS_INCOMPLETE, STATUS_BROKEN)}
    for report in reports:
        count[report.status] += 1
    absent = sum(1 for r in reports if r.checksums == ABSENT)
    return (
        f"{len(reports)} FITS file(s): {count[STATUS_OK]} ok, {count[STATUS_BROKEN]} broken, "
        f"{count[STATUS_INCOMPLETE]} incomplete; {absent} without CHECKSUM/DATASUM (not a failure)"
    )


def exit_code(reports: list[FileReport]) -> int:
    """0 when every file is ok, 1 when any is broken or incomplete."""
    return 0 if all(r.status == STATUS_OK for r in reports) else 1


def run_fits_audit(target_root: str, json_out: bool, out=sys.stdout, jobs: int | None = None) -> int:
    """``fitsync audit TARGET --fits``: audit, print a table (or JSON), and
    return the exit code (0 clean, 1 a file is broken or incomplete)."""
    reports = audit_tree(target_root, jobs=jobs)
    if json_out:
        document = {
            "target": target_root,
            "summary": {s: sum(1 for r in reports if r.status == s) for s in (STATUS_OK, STATUS_BROKEN, STATUS_INCOMPLETE)},
            "files": [r.to_dict() for r in reports],
        }
        out.write(json.dumps(document, indent=1, sort_keys=True) + "\n")
    else:
        out.write(format_table(reports) + "\n")
    return exit_code(reports)
