"""IACT data stores: list productions and copy observation subsets.

A store follows the gamma-astro-data-formats "data storage" convention: an
HDU index table (one row per HDU: OBS_ID, HDU_TYPE, FILE_DIR, FILE_NAME, ...)
and an observation index table (one row per OBS_ID). ctools' ``master.json``
names the productions of a store and their two index files.

Listing reads the figures from the index tables (master.json's totals are
shown beside them when they disagree: the H.E.S.S. DL3 DR1 master.json says
106 observations, its index lists 105). Copying takes the files the HDU index
names for the requested OBS_IDs, mirrors them with the normal engine, and
writes subset index tables and a master.json into the destination, merged by
OBS_ID with what is already there.

Index tables are input from outside: every FILE_DIR/FILE_NAME is resolved
relative to the index file (or its BASE_DIR keyword) and must stay inside the
store root or inside a root the user allows with ``--allow-root``.
astropy is imported only when a table is read or written.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import logging
import os
import posixpath
import urllib.parse
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

import blake3

from fitsync.errors import (
    EXIT_DIFFERENCES,
    EXIT_FAILED,
    EXIT_OK,
    BadInput,
    FitsyncError,
    NotFound,
    UnsafePath,
    UsageError,
)
from fitsync.paths import safe_relpath
from fitsync.remotes import open_remote, parse_location
from fitsync.remotes.base import Remote

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.options import RemoteOptions, Selection

log = logging.getLogger("fitsync")

MASTER_JSON = "master.json"
DEFAULT_INDEXES = ("hdu-index.fits.gz", "obs-index.fits.gz")
# Where files that live outside the store root (allowed with --allow-root)
# are put inside the destination, under the allowed root's name.
OUTSIDE_DIR = "_outside"
MAX_INDEX_BYTES = 512 << 20
COPY_CHUNK = 4 << 20


# -- productions ---------------------------------------------------------------


@dataclass(frozen=True)
class Production:
    name: str
    hdu_index: str  # path of the HDU index, relative to the store root
    obs_index: str
    declared: dict = field(default_factory=dict, compare=False)  # the master.json entry


def read_master(remote: Remote) -> list[Production]:
    """The productions of a store: master.json, or the bare index pair of a
    store without one (gammapy's layout) as a production named ``default``."""
    try:
        raw = read_bytes(remote, MASTER_JSON, limit=16 << 20)
    except NotFound:
        return _bare_store(remote)
    try:
        master = json.loads(raw)
        datasets = master["datasets"]
        if not isinstance(datasets, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise BadInput(f"{remote.url}/{MASTER_JSON} is not a ctools master.json (no 'datasets' list)") from None
    productions = []
    for number, item in enumerate(datasets, 1):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadInput(f"{MASTER_JSON}: dataset {number} has no name")
        try:
            hdu = safe_relpath(str(item.get("hduindx", "")), what=f"{MASTER_JSON} hduindx of {item['name']}")
            obs = safe_relpath(str(item.get("obsindx", "")), what=f"{MASTER_JSON} obsindx of {item['name']}")
        except UnsafePath as exc:
            raise UnsafePath(f"{exc}; the store's master.json is not usable") from None
        productions.append(Production(item["name"], hdu, obs, dict(item)))
    return productions


def _bare_store(remote: Remote) -> list[Production]:
    for hdu, obs in (DEFAULT_INDEXES, ("hdu-index.fits", "obs-index.fits")):
        if _exists(remote, hdu) and _exists(remote, obs):
            return [Production("default", hdu, obs, {})]
    raise NotFound(f"{remote.url} has no {MASTER_JSON} and no hdu-index/obs-index; is it an IACT data store?")


def find_production(productions: list[Production], name: str) -> Production:
    for production in productions:
        if production.name == name:
            return production
    names = ", ".join(p.name for p in productions) or "none"
    raise NotFound(f"no production named {name!r} in the store; available: {names}")


# -- reading remote files -----------------------------------------------------------


def read_bytes(remote: Remote, path: str, limit: int = MAX_INDEX_BYTES) -> bytes:
    entry = remote.stat(path)
    if entry.size > limit:
        raise BadInput(f"{path} is {entry.size} bytes, larger than an index file can be ({limit}); refusing it")
    parts, total = [], 0
    with remote.open_read(path) as f:
        # A raw reader may return short reads: read until end of file.
        for chunk in iter(lambda: f.read(COPY_CHUNK), b""):
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise BadInput(f"{path} grew past {limit} bytes while being read; refusing it")
    return b"".join(parts)


def _exists(remote: Remote, path: str) -> bool:
    try:
        remote.stat(path)
        return True
    except NotFound:
        return False


def read_index_table(remote: Remote, path: str):
    """The first binary table of an index file as an astropy Table with str columns."""
    from astropy.io import fits
    from astropy.table import Table

    data = gunzip_bounded(read_bytes(remote, path), path)
    try:
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            tables = [h for h in hdul if isinstance(h, fits.BinTableHDU)]
            if not tables:
                raise BadInput(f"{path} has no binary table; it is not an index file")
            table = Table.read(tables[0], character_as_bytes=False)
    except FitsyncError:
        raise
    except Exception as exc:  # astropy raises many types on damaged input
        raise BadInput(f"{path} cannot be read as a FITS index table: {exc}") from None
    if "OBS_ID" not in table.colnames:
        raise BadInput(f"{path} has no OBS_ID column; it is not an HDU or observation index")
    return table


def gunzip_bounded(data: bytes, path: str, limit: int = 4 * MAX_INDEX_BYTES) -> bytes:
    """Uncompress gzip data (an index may be .fits.gz) without letting a
    hostile file expand past ``limit``."""
    if not data.startswith(b"\x1f\x8b"):
        return data
    inflater = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BadInput(f"{path} is not valid gzip data: {exc}") from None
    if len(out) > limit:
        raise BadInput(f"{path} expands past {limit} bytes; refusing it as an index file")
    return out


def table_bytes(table, gzip_it: bool) -> bytes:
    """Serialize ``table`` as a FITS file (primary HDU + the table), gzipped if asked."""
    from astropy.io import fits

    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(table)]).writeto(buffer, checksum=True)
    data = buffer.getvalue()
    return gzip.compress(data, mtime=0) if gzip_it else data


# -- summaries (fitsync datasets) -----------------------------------------------------


@dataclass
class Summary:
    """One production of an IACT data store, with figures read from its index tables."""

    name: str
    hdu_index: str
    obs_index: str
    observations: int
    observations_in_hdu_index: int
    events: int | None
    livetime_s: float | None
    ontime_s: float | None
    files: int
    disk_bytes: int
    missing_files: list = field(default_factory=list)
    outside_files: int = 0
    declared: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def summarize(remote: Remote, production: Production, locator: "Locator") -> Summary:
    hdu = read_index_table(remote, production.hdu_index)
    obs = read_index_table(remote, production.obs_index)
    sizes, missing, outside = _file_sizes(remote, production, hdu, locator)
    return Summary(
        name=production.name,
        hdu_index=production.hdu_index,
        obs_index=production.obs_index,
        observations=len(set(int(x) for x in obs["OBS_ID"])),
        observations_in_hdu_index=len(set(int(x) for x in hdu["OBS_ID"])),
        events=_column_sum(obs, "EVENT_COUNT", int),
        livetime_s=_column_sum(obs, "LIVETIME", float),
        ontime_s=_column_sum(obs, "ONTIME", float),
        files=len(sizes) + len(missing),
        disk_bytes=sum(sizes.values()),
        missing_files=sorted(missing),
        outside_files=outside,
        declared={k: v for k, v in production.declared.items() if k not in ("name", "hduindx", "obsindx")},
    )


def _column_sum(table, name: str, kind):
    if name not in table.colnames:
        return None
    column = table[name]
    values = column.compressed() if hasattr(column, "compressed") else column
    return kind(sum(kind(v) for v in values))


def _file_sizes(remote, production, hdu, locator) -> tuple[dict, list, int]:
    sizes: dict = {}
    missing: list = []
    outside = 0
    for location in {locator.locate(row, production) for row in hdu}:
        source = remote if location.root is None else locator.root_remote(location.root)
        outside += location.root is not None
        try:
            sizes[location] = source.stat(location.path).size
        except NotFound:
            missing.append(location.display)
    return sizes, missing, outside


def format_summary(summary: Summary) -> str:
    """Human-readable lines; master.json's own figures beside any that disagree."""
    declared = summary.declared
    lines = [summary.name, f"  index files:  {summary.hdu_index}, {summary.obs_index}"]
    lines.append("  observations: " + _with_declared(summary.observations, declared.get("Total observations")))
    if summary.observations_in_hdu_index != summary.observations:
        lines.append(f"                ({summary.observations_in_hdu_index} in the HDU index)")
    events = "unknown (no EVENT_COUNT column)" if summary.events is None else summary.events
    lines.append("  events:       " + _with_declared(events, declared.get("Total events")))
    lines.append("  livetime:     " + _hours(summary.livetime_s)
                 + (f" (ontime {_hours(summary.ontime_s)})" if summary.ontime_s is not None else "")
                 + _declared_note(declared.get("Total time")))
    size = f"{summary.files} files, {human_bytes(summary.disk_bytes)}"
    lines.append("  disk:         " + size + _declared_note(declared.get("Disk usage")))
    if summary.outside_files:
        lines.append(f"                ({summary.outside_files} files outside the store root)")
    if summary.missing_files:
        shown = ", ".join(summary.missing_files[:5]) + (" ..." if len(summary.missing_files) > 5 else "")
        lines.append(f"  missing:      {len(summary.missing_files)} files the index lists are not in the store: {shown}")
    return "\n".join(lines)


def _with_declared(value, declared) -> str:
    if declared is None or str(declared) == str(value):
        return str(value)
    return f"{value} (master.json says {declared})"


def _declared_note(declared) -> str:
    return f" (master.json says {declared})" if declared is not None else ""


def _hours(seconds) -> str:
    return "unknown" if seconds is None else f"{seconds / 3600:.2f} h"


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


# -- where index rows point -----------------------------------------------------------


@dataclass(frozen=True)
class Location:
    root: str | None  # None: the store itself; else the allowed root it lies in
    path: str  # safe relative path under that root

    @property
    def display(self) -> str:
        return self.path if self.root is None else f"{self.root.rstrip('/')}/{self.path}"

    def destination(self) -> str:
        """Where the file goes inside the destination store."""
        if self.root is None:
            return self.path
        name = posixpath.basename(self.root.rstrip("/")) or "root"
        return safe_relpath(f"{OUTSIDE_DIR}/{name}/{self.path}")


class Locator:
    """Resolves FILE_DIR/FILE_NAME of HDU index rows to locations that are
    provably inside the store root or an allowed root."""

    def __init__(self, store_spec: str, allowed_roots: Iterable[str] = (), options: RemoteOptions | None = None):
        self.prefix, self.store_path = split_location(store_spec)
        self.options = options
        self.allowed: list[tuple[str, str]] = []  # (root spec, absolute path)
        for root in allowed_roots:
            prefix, path = split_location(root, relative_to=self.prefix)
            if prefix != self.prefix:
                raise UsageError(f"--allow-root={root} is not on the same host as the store {store_spec}")
            self.allowed.append((join_location(prefix, path), path))
        self._remotes: dict[str, Remote] = {}

    def locate(self, row, production: Production) -> Location:
        index_dir = posixpath.dirname(production.hdu_index)
        file_dir = _cell(row, "FILE_DIR")
        file_name = _cell(row, "FILE_NAME")
        if not file_name or "/" in file_name or file_name in (".", ".."):
            raise UnsafePath(f"HDU index row of OBS_ID {_obs_id(row)} has FILE_NAME {file_name!r}; refusing it")
        base = self.base_dir(row, index_dir)
        target = posixpath.normpath(posixpath.join(base, file_dir, file_name))
        where = _inside(target, self.store_path)
        if where is not None:
            return Location(None, safe_relpath(where, what="index file path"))
        for spec, root_path in self.allowed:
            where = _inside(target, root_path)
            if where is not None:
                return Location(spec, safe_relpath(where, what="index file path"))
        raise UnsafePath(
            f"HDU index row of OBS_ID {_obs_id(row)} points to {target}, outside the store root "
            f"{self.store_path} (FILE_DIR {file_dir!r}); allow that directory with --allow-root=DIR if you trust it"
        )

    def base_dir(self, row, index_dir: str) -> str:
        """Absolute directory FILE_DIR is relative to: BASE_DIR if the table
        sets it (absolute, or relative to the index file), else the index file's."""
        base = str(row.meta.get("BASE_DIR", "") or "").strip()
        here = posixpath.join(self.store_path, index_dir)
        if "\x00" in base or "\\" in base:
            raise UnsafePath(f"BASE_DIR {base!r} of the HDU index is not a usable path; refusing it")
        return posixpath.join(here, base) if base else here  # join keeps an absolute BASE_DIR as is

    def root_remote(self, spec: str) -> Remote:
        if spec not in self._remotes:
            self._remotes[spec] = open_remote(spec, self.options)
        return self._remotes[spec]

    def close(self) -> None:
        for remote in self._remotes.values():
            remote.close()


def _cell(row, name: str) -> str:
    try:
        value = row[name]
    except KeyError:
        raise BadInput(f"the HDU index has no {name} column") from None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip()


def _obs_id(row) -> str:
    try:
        return str(int(row["OBS_ID"]))
    except (KeyError, ValueError, TypeError):
        return "?"


def _inside(target: str, root: str) -> str | None:
    root = posixpath.normpath(root)
    if target == root:
        return None
    prefix = root if root.endswith("/") else root + "/"
    return target[len(prefix):] if target.startswith(prefix) else None


def split_location(spec: str, relative_to: str | None = None) -> tuple[str, str]:
    """(prefix, absolute POSIX path) of a location: ``/data/x`` -> ("", "/data/x");
    ``sftp://h/data`` -> ("sftp://h", "/data"); ``dropbox:/x`` -> ("dropbox:", "/x");
    ``host:dir`` -> ("host:", "/~/dir") so relative scp paths still normalize."""
    scheme, url = parse_location(spec)
    if scheme == "file" and not url.startswith("file://"):
        if relative_to:  # a bare path given for a remote store names a path on that host
            return relative_to, posixpath.normpath(url if url.startswith("/") else "/~/" + url)
        return "", posixpath.normpath(os.path.abspath(os.path.expanduser(url)))
    if url.startswith("file://"):
        return "", posixpath.normpath(os.path.abspath(url[len("file://"):]))
    if "://" in url:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}", posixpath.normpath(urllib.parse.unquote(parts.path) or "/")
    head, _, path = url.partition(":")
    path = path if path.startswith("/") else "/~/" + path
    return head + ":", posixpath.normpath(path)


def join_location(prefix: str, path: str) -> str:
    """Inverse of split_location."""
    if prefix.endswith(":") and "://" not in prefix and path.startswith("/~/"):
        return prefix + path[3:]
    return prefix + path


# -- runlists ------------------------------------------------------------------------


def read_runlist(path: str) -> list[int]:
    """OBS_IDs, one integer per line, ``#`` comments; order kept, repeats dropped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise NotFound(f"runlist {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read runlist {path}: {exc}") from None
    ids: dict[int, None] = {}
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not text.isascii() or not text.lstrip("+").isdigit():
            raise BadInput(f"{path}:{number}: {text!r} is not an OBS_ID; a runlist has one integer per line")
        ids[int(text)] = None
    return list(ids)


# -- copying a production ------------------------------------------------------------


def rows_with_obs_ids(table, ids: set[int], keep: bool = True):
    import numpy as np

    mask = np.array([(int(v) in ids) == keep for v in table["OBS_ID"]], dtype=bool)
    return table[mask]


@dataclass
class SubsetPlan:
    production: Production
    hdu: object  # astropy Table, rows for the wanted OBS_IDs
    obs: object
    wanted: list[int]
    unknown: list[int]
    kept_local: list[int]
    files: dict  # Location -> source size or None (missing from the store)
    rows_by_obs: dict  # OBS_ID -> list of Locations


def plan_subset(src: Remote, production: Production, selection: Selection, locator: Locator,
                dst_hdu=None) -> SubsetPlan:
    hdu = read_index_table(src, production.hdu_index)
    obs = read_index_table(src, production.obs_index)
    in_index = [int(x) for x in dict.fromkeys(int(v) for v in hdu["OBS_ID"])]
    requested = read_runlist(selection.runlist) if selection.runlist else in_index
    known = set(in_index)
    unknown = [i for i in requested if i not in known]
    wanted = [i for i in requested if i in known]
    kept_local: list[int] = []
    if selection.keep_local and dst_hdu is not None:
        present = {int(v) for v in dst_hdu["OBS_ID"]}
        kept_local = [i for i in wanted if i in present]
        wanted = [i for i in wanted if i not in present]
    wanted_set = set(wanted)
    hdu_rows = rows_with_obs_ids(hdu, wanted_set)
    obs_rows = rows_with_obs_ids(obs, wanted_set)
    rows_by_obs: dict[int, list[Location]] = {}
    for row in hdu_rows:
        rows_by_obs.setdefault(int(row["OBS_ID"]), []).append(locator.locate(row, production))
    files = {}
    for location in dict.fromkeys(loc for locs in rows_by_obs.values() for loc in locs):
        source = src if location.root is None else locator.root_remote(location.root)
        try:
            files[location] = source.stat(location.path).size
        except NotFound:
            files[location] = None
    return SubsetPlan(production, hdu_rows, obs_rows, wanted, unknown, kept_local, files, rows_by_obs)


def mirror_production(src_remote: Remote, dst_remote: Remote, store_spec: str, selection: Selection,
                      options: RemoteOptions | None, dry_run: bool, mirror_paths) -> int:
    """``fitsync mirror STORE DST --production=NAME [--runlist=FILE]``.

    ``mirror_paths(paths)`` (from the mirror command) mirrors exactly those
    store-relative paths with every mirror feature and returns its summary.
    Then the subset index tables and master.json are written into DST for
    the observations whose files are all there. Returns the exit code.
    """
    name = selection.production
    if not name:
        raise UsageError("--production=NAME is required; list the names with 'fitsync datasets STORE'")
    locator = Locator(store_spec, selection.allow_root, options)
    try:
        production = find_production(read_master(src_remote), name)
        dst_hdu = existing_table(dst_remote, production.hdu_index)
        plan = plan_subset(src_remote, production, selection, locator, dst_hdu)
        _report_unknown(plan)
        store_paths = sorted({loc.path for loc in plan.files if loc.root is None and plan.files[loc] is not None})
        result = mirror_paths(store_paths)
        code = _exit_code_of(result)
        if not dry_run:
            code = max(code, _copy_outside_files(plan, locator, dst_remote, result))
        complete, incomplete = _complete_observations(plan, dst_remote, dry_run)
        if incomplete:
            failed = any(reason.endswith("not copied") for reason in incomplete.values())
            code = max(code, EXIT_FAILED if failed else EXIT_DIFFERENCES)
            for obs_id, reason in sorted(incomplete.items()):
                log.warning("OBS_ID %d: %s; its index rows are not written", obs_id, reason)
        if not dry_run and (complete or dst_hdu is not None):
            write_subset_indexes(dst_remote, plan, complete, dst_hdu, keep_local=selection.keep_local)
        if plan.unknown:
            code = max(code, EXIT_DIFFERENCES)
        return code
    finally:
        locator.close()


def _report_unknown(plan: SubsetPlan) -> None:
    if plan.unknown:
        numbers = ", ".join(str(i) for i in plan.unknown)
        log.warning("OBS_ID not in the index of %s: %s", plan.production.name, numbers)
    if plan.kept_local:
        log.info("--keep-local: %d observations already in the destination were left as they are",
                 len(plan.kept_local))


def _exit_code_of(result) -> int:
    """The mirror's verdict: an int, an object with exit_code/files_failed, or a dict."""
    if isinstance(result, int):
        return result
    if isinstance(result, dict):
        if "exit_code" in result:
            return int(result["exit_code"])
        return EXIT_FAILED if result.get("files_failed") else EXIT_OK
    if hasattr(result, "exit_code"):
        return int(result.exit_code)
    if getattr(result, "files_failed", 0):
        return EXIT_FAILED
    if getattr(result, "files_incomplete", 0):
        return EXIT_DIFFERENCES
    return EXIT_OK


def _copy_outside_files(plan: SubsetPlan, locator: Locator, dst: Remote, result=None) -> int:
    """Files under an allowed root outside the store: copied once each,
    verified, and counted in the mirror's ``result`` (a MirrorResult) too."""
    code = EXIT_OK
    for location, size in plan.files.items():
        if location.root is None or size is None:
            continue
        try:
            copied = copy_file(locator.root_remote(location.root), location.path, dst, location.destination())
        except FitsyncError as exc:
            log.error("%s: %s", location.display, exc)
            code = EXIT_FAILED
            _count_outside(result, location.destination(), size, None, str(exc))
            continue
        _count_outside(result, location.destination(), size, copied, None)
    return code


def _count_outside(result, path: str, size: int, copied: bool | None, error: str | None) -> None:
    if result is None or not hasattr(result, "files_total"):
        return
    from fitsync.results import FileAction

    result.files_total += 1
    result.bytes_total += size
    if error is not None:
        result.files_failed += 1
        result.failures.append({"path": path, "reason": error})
        result.files.append(FileAction(path, "failed", error=error))
    elif copied:
        result.files_new += 1
        result.bytes_transferred += size
        result.files.append(FileAction(path, "new", size))
    else:
        result.files_unchanged += 1


def copy_file(src: Remote, path: str, dst: Remote, dst_path: str) -> bool:
    """Copy one file unless DST already has it with the same size and mtime;
    the bytes are verified after the write. Returns True when copied."""
    entry = src.stat(path)
    try:
        have = dst.stat(dst_path)
        if have.size == entry.size and abs(have.mtime - entry.mtime) < 1.0:
            return False
    except NotFound:
        pass
    hasher = blake3.blake3()

    def chunks():
        with src.open_read(path) as f:
            for chunk in iter(lambda: f.read(COPY_CHUNK), b""):
                hasher.update(chunk)
                yield chunk

    dst.write_atomic(dst_path, chunks(), mtime=entry.mtime)
    if dst.digest(dst_path, "blake3") != hasher.hexdigest():
        dst.delete(dst_path)
        raise FitsyncError(f"{dst_path}: the copy does not match the source; it was removed")
    return True


def _complete_observations(plan: SubsetPlan, dst: Remote, dry_run: bool) -> tuple[list[int], dict[int, str]]:
    """OBS_IDs whose every file is in DST with the source's size."""
    status: dict = {}
    for location, size in plan.files.items():
        if size is None:
            status[location] = "missing from the store"
        elif dry_run:
            status[location] = None
        else:
            try:
                same = dst.stat(location.destination()).size == size
            except NotFound:
                same = False
            status[location] = None if same else "not copied"
    complete, incomplete = [], {}
    for obs_id in plan.wanted:
        problems = [(loc, status[loc]) for loc in plan.rows_by_obs.get(obs_id, []) if status[loc]]
        if problems:
            location, reason = problems[0]
            incomplete[obs_id] = f"{location.display} is {reason}"
        else:
            complete.append(obs_id)
    return complete, incomplete


# -- writing the destination's indexes ------------------------------------------------


def existing_table(remote: Remote, path: str):
    """DST's index table at ``path``, or None when there is none yet."""
    try:
        remote.stat(path)
    except NotFound:
        return None
    return read_index_table(remote, path)


def write_subset_indexes(dst: Remote, plan: SubsetPlan, complete: list[int], dst_hdu, keep_local: bool) -> None:
    """hdu-index and obs-index for the copied OBS_IDs merged with DST's, then master.json."""
    production = plan.production
    chosen = set(complete)
    hdu = _rewrite_file_dirs(plan, chosen)
    obs = rows_with_obs_ids(plan.obs, chosen)
    hdu = merge_by_obs_id(dst_hdu, hdu, keep_local)
    obs = merge_by_obs_id(existing_table(dst, production.obs_index), obs, keep_local)
    _write_table(dst, production.hdu_index, hdu)
    _write_table(dst, production.obs_index, obs)
    write_master(dst, production, obs, hdu)


def _rewrite_file_dirs(plan: SubsetPlan, chosen: set[int]):
    """FILE_DIR of each row relative to the index file's place in DST, so the
    destination store works without BASE_DIR or paths outside it."""
    table = rows_with_obs_ids(plan.hdu, chosen).copy(copy_data=True)
    table.meta.pop("BASE_DIR", None)
    index_dir = posixpath.dirname(plan.production.hdu_index) or "."
    order = {}
    for obs_id, locations in plan.rows_by_obs.items():
        order[obs_id] = iter(locations)
    new_dirs = []
    for row in table:
        location = next(order[int(row["OBS_ID"])])
        new_dirs.append(posixpath.relpath(posixpath.dirname(location.destination()) or ".", index_dir))
    if len(table):
        width = max(len(d) for d in new_dirs)
        table.replace_column("FILE_DIR", _string_column(new_dirs, width))
    return table


def _string_column(values: list[str], width: int):
    import numpy as np

    return np.array(values, dtype=f"U{max(width, 1)}")


def merge_by_obs_id(existing, incoming, keep_local: bool):
    """Rows of ``existing`` for OBS_IDs not in ``incoming``, plus ``incoming``
    (or, with keep_local, existing rows win for OBS_IDs in both)."""
    from astropy.table import vstack

    if existing is None or len(existing) == 0:
        merged = incoming
    else:
        incoming_ids = {int(v) for v in incoming["OBS_ID"]}
        existing_ids = {int(v) for v in existing["OBS_ID"]}
        if keep_local:
            incoming = rows_with_obs_ids(incoming, existing_ids, keep=False)
            kept = existing
        else:
            kept = rows_with_obs_ids(existing, incoming_ids, keep=False)
        merged = vstack([kept, incoming], join_type="outer", metadata_conflicts="silent")
        merged.meta = dict(incoming.meta or existing.meta)
    merged = merged.copy()
    merged.sort("OBS_ID", kind="stable")
    return merged


def _write_table(dst: Remote, path: str, table) -> None:
    data = table_bytes(table, gzip_it=path.endswith(".gz"))
    dst.write_atomic(path, [data], expected_digest=blake3.blake3(data).hexdigest())


def write_master(dst: Remote, production: Production, obs, hdu) -> None:
    """master.json in DST: this production's entry (re)computed from the
    written indexes; other productions already there are kept."""
    try:
        master = json.loads(read_bytes(dst, MASTER_JSON, limit=16 << 20))
        datasets = [d for d in master.get("datasets", []) if isinstance(d, dict)]
    except (NotFound, ValueError, AttributeError):
        master, datasets = {}, []
    entry = {
        "name": production.name,
        "hduindx": production.hdu_index,
        "obsindx": production.obs_index,
        "Total observations": len({int(v) for v in obs["OBS_ID"]}),
    }
    ontime = _column_sum(obs, "ONTIME", float)
    if ontime is not None:
        entry["Total time"] = f"{ontime / 3600:.1f} hours"
    events = _column_sum(obs, "EVENT_COUNT", int)
    if events is not None:
        entry["Total events"] = events
    entry["Date created"] = dt.date.today().isoformat()
    entry["Copied by"] = "fitsync"
    replaced = False
    for i, existing in enumerate(datasets):
        if existing.get("name") == production.name:
            datasets[i] = entry
            replaced = True
    if not replaced:
        datasets.append(entry)
    master = dict(master) if isinstance(master, dict) else {}
    master["datasets"] = datasets
    data = (json.dumps(master, indent=2) + "\n").encode("utf-8")
    dst.write_atomic(MASTER_JSON, [data], expected_digest=blake3.blake3(data).hexdigest())
