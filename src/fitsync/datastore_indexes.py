"""The destination's HDU and observation indexes after a subset copy:
rows of the observations copied whole, merged by OBS_ID with what was
there, FILE_DIR rewritten for files kept outside the store, and master.json."""

from __future__ import annotations

import datetime as dt
import json
import logging
import posixpath
from typing import TYPE_CHECKING

import blake3

from fitsync.errors import NotFound
from fitsync.remotes.base import Remote
from fitsync.datastore_files import MASTER_JSON, read_bytes, read_index_table, table_bytes
from fitsync.datastore_summary import column_sum

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.datastore import Production, SubsetPlan

log = logging.getLogger("fitsync")


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
    ontime = column_sum(obs, "ONTIME", float)
    if ontime is not None:
        entry["Total time"] = f"{ontime / 3600:.1f} hours"
    events = column_sum(obs, "EVENT_COUNT", int)
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


def rows_with_obs_ids(table, ids: set[int], keep: bool = True):
    import numpy as np

    mask = np.array([(int(v) in ids) == keep for v in table["OBS_ID"]], dtype=bool)
    return table[mask]
