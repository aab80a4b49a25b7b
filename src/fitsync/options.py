"""Typed options: what the command line and the Python API hand the engine.

``cli/options.py`` is the only code that reads docopt's dictionary; it turns
it into these frozen objects, and everything below ``cli/`` takes them. The
public API (``fitsync.mirror`` and friends) builds the same objects from its
keyword arguments, so a run behaves the same whichever door it came in by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

from fitsync.errors import UsageError


@dataclass(frozen=True)
class RemoteOptions:
    """How locations are opened: credentials, trust, retries, connections.

    ``None`` means the backend's default (or, for ``timeout``, a named
    remote's own ``timeout`` key, then 60 s).
    """

    accept_new_host_key: bool = False  # trust and record an SSH host key seen for the first time
    ca_bundle: Optional[str] = None  # CA certificates for HTTPS (Dropbox included)
    dropbox_config: Optional[str] = None  # INI file with [dropbox] shared_url, password, access_token
    verify_key: Optional[str] = None  # a release manifest must carry a valid Ed25519 signature by this key
    timeout: Optional[float] = None  # seconds of silence before an SSH connection counts as lost (0: never)
    retries: Optional[int] = None  # retries of a transient failure
    jobs: Optional[int] = None  # files worked on at once (connections and channels follow it)
    allow_password_in_url: bool = False  # accept https://user:password@host/ (visible to every local user)

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout < 0:
            raise UsageError(f"timeout must be 0 or more seconds, not {self.timeout}")
        if self.retries is not None and self.retries < 0:
            raise UsageError(f"retries must be 0 or more, not {self.retries}")
        if self.jobs is not None and self.jobs < 1:
            raise UsageError(f"jobs must be at least 1, not {self.jobs}")


def _strings(value: Iterable[str] | str | None) -> Tuple[str, ...]:
    """A tuple of strings from one string, an iterable of them, or None."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


@dataclass(frozen=True)
class Selection:
    """Which files a command works on (see docs/selection.md).

    Every criterion given must hold. ``include``/``exclude`` are rsync filter
    patterns; the first rule that matches decides. Rules in ``filters``
    (``"+ PATTERN"`` to include, ``"- PATTERN"`` to exclude) keep the order
    given and come first, then every ``include``, then every ``exclude``.
    ``where`` clauses (``"field=v1,v2"``, ``"field=@file"``) need a
    ``template`` or a ``profile``. ``production`` and ``runlist`` pick an IACT
    data store's production and observations (``mirror`` only).
    """

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    filters: Sequence[str] = ()
    include_from: Optional[str] = None  # a file of include patterns, one per line (after ``include``)
    exclude_from: Optional[str] = None  # a file of exclude patterns, one per line (after ``exclude``)
    files_from: Optional[str] = None  # a file listing the paths, one per line
    since: Optional[str] = None  # 2026-11-01, 2026-11-01T18:00, 30d, 12h, today, yesterday
    max_age: Optional[str] = None  # 30d, 12h
    min_age: Optional[str] = None  # only files at least this old (by mtime): 1h, 2d
    min_size: Optional[str] = None  # only files at least this large: 100k, 1.5G (K = 1024; KB = 1000)
    max_size: Optional[str] = None  # only files at most this large
    date: Optional[str] = None  # YYYY-MM-DD (local time)
    template: Optional[str] = None  # '{yyyy}/{mmdd}/{name}'
    profile: Optional[str] = None  # a saved template profile (saao-nightly, vast-pilot, shapepipe, ...)
    where: Sequence[str] = ()
    production: Optional[str] = None  # IACT data store: the production to copy
    runlist: Optional[str] = None  # IACT data store: a file of OBS_IDs
    keep_local: bool = False  # IACT data store: local index rows win when merging
    allow_root: Sequence[str] = ()  # IACT data store: index paths allowed outside the store

    def __post_init__(self) -> None:
        # Lists (and single strings) are accepted; tuples are stored, so the object stays hashable.
        for name in ("include", "exclude", "filters", "where", "allow_root"):
            object.__setattr__(self, name, _strings(getattr(self, name)))
        for rule in self.filters:
            if rule[:2] not in ("+ ", "- ") or not rule[2:].strip():
                raise UsageError(f"filter rule {rule!r}: write '+ PATTERN' to include or '- PATTERN' to exclude")

    def ordered_rules(self) -> list[tuple[bool, str]]:
        """(include?, pattern) in the order they are tried."""
        rules = [(rule[0] == "+", rule[2:].strip()) for rule in self.filters]
        return rules + [(True, p) for p in self.include] + [(False, p) for p in self.exclude]

    def matcher(self, now=None):
        """The compiled matcher (fitsync.selection.Selection), or None when
        nothing is narrowed: then the selection code is not even imported
        (~20 ms of a no-op run's start-up)."""
        if not self.selects_files():
            return None
        from fitsync.selection import build_selection

        return build_selection(self, now)

    def selects_files(self) -> bool:
        """Whether any criterion narrows the files (the data store keys do not)."""
        return bool(self.filters or self.include or self.exclude or self.include_from or self.exclude_from
                    or self.files_from or self.since or self.max_age or self.min_age or self.min_size
                    or self.max_size or self.date or self.template or self.profile or self.where)
