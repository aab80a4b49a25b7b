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

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import blake3

from fitsync.errors import (EXIT_DIFFERENCES, EXIT_FAILED, EXIT_OK, BadInput,
                            FitsyncError, NotFound, UnsafePath, UsageError)
from fitsync.paths import safe_relpath
from fitsync.remotes.base import Remote
from fitsync.datastore_files import (COPY_CHUNK, DEFAULT_INDEXES, MASTER_JSON, exists_on, read_bytes,
                                     read_index_table)
from fitsync.datastore_indexes import existing_table, rows_with_obs_ids, write_subset_indexes
from fitsync.datastore_locator import Location, Locator

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.options import RemoteOptions, Selection

log = logging.getLogger("fitsync")


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
        if exists_on(remote, hdu) and exists_on(remote, obs):
            return [Production("default", hdu, obs, {})]
    raise NotFound(f"{remote.url} has no {MASTER_JSON} and no hdu-index/obs-index; is it an IACT data store?")


def find_production(productions: list[Production], name: str) -> Production:
    for production in productions:
        if production.name == name:
            return production
    names = ", ".join(p.name for p in productions) or "none"
    raise NotFound(f"no production named {name!r} in the store; available: {names}")


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
