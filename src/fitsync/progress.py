"""What a run tells the user: itemized lines, a progress bar, a log file.

stdout carries results (itemize lines, the JSON summary); stderr carries the
progress bar and errors, so ``--json`` output stays machine-readable.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from fitsync.errors import UsageError

log = logging.getLogger("fitsync")


def setup_logging(log_file: str | None, quiet: bool, verbose: bool = False) -> None:
    """Errors to stderr (always); a timestamped log appended to ``log_file``."""
    root = logging.getLogger("fitsync")
    # Without a log file nothing below WARNING is shown: keep the level there so
    # that per-file records are not even built (they cost ~50 us each).
    root.setLevel((logging.DEBUG if verbose else logging.INFO) if log_file else logging.WARNING)
    root.handlers.clear()
    root.propagate = False
    console = _StderrHandler()
    console.setLevel(logging.ERROR if quiet else logging.WARNING)
    console.setFormatter(logging.Formatter("fitsync: %(message)s"))
    root.addHandler(console)
    if log_file:
        try:
            handler = logging.FileHandler(os.path.expanduser(log_file), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write the log file {log_file} ({exc.strerror}); "
                             "check that its directory exists and is writable") from None
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)


def log_to_file_only(level: int, message: str) -> None:
    """A record for the log file alone (the terminal was told already)."""
    for handler in logging.getLogger("fitsync").handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.LogRecord("fitsync", level, __file__, 0, message, None, None))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record, so a
    handler set up by one in-process run never writes to a closed stream."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class Reporter:
    """Thread-safe sink for per-file lines and progress.

    ``itemize`` counts -i: 1 lists changed files, 2 unchanged ones too, in
    rsync's --itemize-changes format, sorted by path when the run ends (the
    workers finish in any order). The log file gets fitsync's own line for
    every file, with the reason.
    """

    def __init__(self, *, itemize: int = 0, quiet: bool = False, show_progress: bool | None = None, out=None):
        self.itemize = 0 if quiet else int(itemize)
        self.quiet = quiet
        self.out = out
        if show_progress is None:
            show_progress = not quiet and sys.stderr.isatty()
        self.show_progress = show_progress
        self._bar = None
        self._lock = threading.Lock()
        self._items: list[tuple[str, str]] = []  # (path, itemized line), printed by flush()

    @property
    def itemize_unchanged(self) -> bool:
        return self.itemize >= 2

    def item(self, item, level: int = logging.INFO, built: str | None = None) -> None:
        """A decision or outcome for one file (an engine.plan.Item); ``built``
        says how an updated file was written (engine.update)."""
        from fitsync.engine.plan import Action, itemize_line, rsync_itemize

        if log.isEnabledFor(level):
            log.log(level, itemize_line(item) + (f" [{built}]" if built else ""))
        if self.itemize and (item.action != Action.UNCHANGED or self.itemize_unchanged):
            line = rsync_itemize(item)
            if built and (item.action in (Action.DELTA, Action.REPAIR) or built == "resumed"):
                line += f" ({built})"
            with self._lock:
                self._items.append((item.path, line))

    def note(self, path: str, text: str) -> None:
        """An itemized line that is not a file's decision (a symlink), in path order."""
        log.info("%s", text)
        if self.itemize:
            with self._lock:
                self._items.append((path, text))

    def flush(self) -> None:
        """Print the itemized lines gathered so far, in path order."""
        with self._lock:
            items, self._items = sorted(self._items), []
            if items and self._bar is not None:
                self._bar.clear()
        out = self.out or sys.stdout
        for _, text in items:
            print(text, file=out)
        if items:
            out.flush()

    def phase(self, name: str, total: int, unit: str = "B") -> None:
        """Start a progress phase with a fixed total (scan, then transfer)."""
        self.close_phase()
        log.info("%s: %d %s", name, total, unit)
        if self.show_progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=name, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000,
                             file=sys.stderr, leave=False, dynamic_ncols=True)

    def advance(self, amount: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(amount)

    def close_phase(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class TqdmBar:
    """A ``progress`` callback for the Python API that draws a tqdm bar of
    bytes per phase (``tqdm.auto``: a terminal bar, or a widget in Jupyter).
    Thread-safe; the bar closes when every file of the phase has finished."""

    def __init__(self, **tqdm_options):
        self.options = {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "leave": False, **tqdm_options}
        self._bar = None
        self._left = 0
        self._lock = threading.Lock()

    def __call__(self, event) -> None:
        from fitsync.events import BytesDone, FileFinished, MoreListed, Totals

        with self._lock:
            if isinstance(event, MoreListed) and self._bar is not None:
                self._bar.total += event.bytes  # the same bar, grown
                self._bar.refresh()
                self._left += event.files
            elif isinstance(event, (Totals, MoreListed)):
                self._close()
                if event.files:
                    from tqdm.auto import tqdm

                    self._bar = tqdm(total=event.bytes, desc=event.phase, **self.options)
                    self._left = event.files
            elif self._bar is not None and isinstance(event, BytesDone):
                self._bar.update(event.bytes)
            elif self._bar is not None and isinstance(event, FileFinished):
                self._left -= 1
                if self._left <= 0:
                    self._close()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def tqdm_bar(**tqdm_options) -> TqdmBar:
    """A ready ``progress=`` callback: ``fitsync.mirror(src, dst, progress=fitsync.progress.tqdm_bar())``.
    Keyword arguments go to tqdm (``desc``, ``file``, ``disable``, ...)."""
    return TqdmBar(**tqdm_options)
