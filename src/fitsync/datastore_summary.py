"""`fitsync datasets`: what a data store's production holds (observations,
live time, files and their sizes), from its index tables."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fitsync.errors import NotFound
from fitsync.remotes.base import Remote
from fitsync.datastore_files import read_index_table

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.datastore import Production
    from fitsync.datastore_locator import Locator

log = logging.getLogger("fitsync")


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
        events=column_sum(obs, "EVENT_COUNT", int),
        livetime_s=column_sum(obs, "LIVETIME", float),
        ontime_s=column_sum(obs, "ONTIME", float),
        files=len(sizes) + len(missing),
        disk_bytes=sum(sizes.values()),
        missing_files=sorted(missing),
        outside_files=outside,
        declared={k: v for k, v in production.declared.items() if k not in ("name", "hduindx", "obsindx")},
    )


def column_sum(table, name: str, kind):
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
