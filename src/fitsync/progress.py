"""What a run tells the user: itemized lines, a progress bar, a log file.

stdout carries results (itemize lines, the JSON summary); stderr carries the
progress bar and errors, so ``--json`` output stays machine-readable.
"""

from __future__ import annotations

import logging
import sys
import threading

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
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)


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
    """Thread-safe sink for per-file lines and progress."""

    def __init__(self, *, itemize: bool = False, quiet: bool = False, show_progress: bool | None = None, out=None):
        self.itemize = itemize and not quiet
        self.quiet = quiet
        self.out = out or sys.stdout
        if show_progress is None:
            show_progress = not quiet and sys.stderr.isatty()
        self.show_progress = show_progress
        self._bar = None
        self._lock = threading.Lock()

    def line(self, text: str, level: int = logging.INFO) -> None:
        """A result line (itemize, dry-run), also logged when a log file is kept."""
        if log.isEnabledFor(level):
            log.log(level, text)
        if self.itemize:
            with self._lock:
                if self._bar is not None:
                    self._bar.clear()
                print(text, file=self.out, flush=True)

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
        from fitsync.events import BytesDone, FileFinished, Totals

        with self._lock:
            if isinstance(event, Totals):
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
