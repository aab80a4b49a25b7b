"""The mirror engine: list both sides, decide per file, transfer, delete.

Decisions come from ``plan.decide`` (pure); bytes are written only by
``transfer``. This module orchestrates: listing, content comparison, FITS
checks of sources, the worker pool, retries, the lock and the summary.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from fitsync.errors import (EXIT_FAILED, BadInput, ConnectionFailed, FitsyncError,
                            NotFound, SourceChanged, TransferFailed, VerificationFailed)
from fitsync.paths import shown
from fitsync.engine.plan import Action, Item
from fitsync.progress import Reporter
from fitsync.remotes.base import Capability, Remote
from fitsync.remotes.retry import RetryPolicy, was_retried
from fitsync.engine.links import mirror_links
from fitsync.engine.mirror_options import MirrorOptions
from fitsync.engine.mirror_plan import Planning
from fitsync.engine.locations import (RemoteLock, check_locations, describe_os_error, new_directories,
                                     prepare_local_destination)
from fitsync.results import FileAction, MirrorResult

if TYPE_CHECKING:  # pragma: no cover
    from fitsync.engine import transfer

# transfer, lock, scan and thread pools are imported where used: a no-op run
# needs few of them, and their import time is paid on every run.

log = logging.getLogger("fitsync")

# Counters and failure lists are updated from the worker threads.
_COUNTER_LOCK = threading.RLock()

RETRYABLE = (SourceChanged, VerificationFailed, ConnectionFailed, TimeoutError, ConnectionError)


class Mirror(Planning):
    def __init__(self, src: Remote, dst: Remote, options: MirrorOptions, reporter: Reporter | None = None):
        self.src = src
        self.dst = dst
        self.options = options
        self.reporter = reporter or Reporter()
        self.result = MirrorResult(dry_run=options.dry_run)
        self.aborted: FitsyncError | None = None  # a failure that ends the whole run
        self.resolution = max(src.mtime_resolution, dst.mtime_resolution)
        self.recorded = None  # what DST's copy of a release manifest says its files are
        self.stopping = False  # set on Ctrl-C: start no further file
        self.throttle = None
        if options.bwlimit:
            from fitsync.throttle import Throttle

            self.throttle = Throttle(options.bwlimit)
        self.progress = options.progress

    # -- the run -------------------------------------------------------
    def run(self) -> MirrorResult:
        started = time.monotonic()
        if self.options.inplace:
            from fitsync.engine.inplace_update import refuse_unless_possible

            refuse_unless_possible(self.dst, True)
        check_locations(self.src, self.dst)
        local_dst = Capability.STAGED in self.dst.capabilities
        if local_dst and not self.options.dry_run:
            prepare_local_destination(self.dst)
        lock = self.destination_lock(local_dst)
        if lock:
            lock.acquire()
            if local_dst:
                self.dst.clear_state("tmp")  # a killed run's temporaries; nothing there is reusable
        self.configure_remotes()
        try:
            if lock and local_dst:
                self.recover_updates_in_place()
            items = self.plan()
            self.execute(items)
            mirror_links(self)
            if lock and Capability.RESUMES in self.dst.capabilities and not self.result.files_failed:
                # Every transfer completed, so what is left in partial/ belongs to
                # source versions that no longer exist. Something planted there
                # meanwhile is left alone, not a failure of the copies made.
                try:
                    self.dst.clear_state("partial")
                except BadInput as exc:
                    log.warning("%s", exc)
        finally:
            self.reporter.close_phase()
            self.reporter.flush()
            if lock:
                lock.release()
            if local_dst and not self.options.dry_run:
                self.dst.tidy_state_dir()
        self.result.seconds = time.monotonic() - started
        if self.result.files_failed:
            self.result.exit_code = EXIT_FAILED
        return self.result

    def configure_remotes(self) -> None:
        """What the options ask of the two locations themselves (also on a cluster's workers)."""
        self.src.configure(follow_links=self.options.links == "follow")
        self.dst.configure(replaces_other_types=self.options.delete, fsync=self.options.fsync)

    def destination_lock(self, local_dst: bool):
        """The lock that keeps two mirrors from writing DST at once: a file in a
        local DST, or whatever a remote backend offers (lock()/unlock())."""
        if self.options.dry_run:
            return None
        if local_dst:
            from fitsync.lock import DirectoryLock

            return DirectoryLock(self.dst.state_dir())
        if Capability.LOCK in self.dst.capabilities:
            return RemoteLock(self.dst)
        return None

    # -- execution ----------------------------------------------------------
    def execute(self, items: list[Item]) -> None:
        transfers = [i for i in items if i.transfers]
        for item in items:
            if item.action == Action.UNCHANGED:
                self.result.files_unchanged += 1
                self.reporter.item(item)
            elif item.action == Action.INCOMPLETE:
                self.record_incomplete(item, item.reason)
        if self.reporter.itemize:
            for directory in new_directories(self.dst, [i.path for i in items if i.action == Action.NEW]):
                self.reporter.note(directory + "/", f"cd+++++++++ {shown(directory)}/")
        if self.options.dry_run:
            for item in items:
                if item.transfers or item.action == Action.DELETE:
                    self.reporter.item(item)
                    self._count(item.action)
                    self.result.files.append(FileAction(item.path, item.action.value))
                    if item.action == Action.NEW:
                        self.result.bytes_transferred += item.src.size
                    elif item.transfers:
                        self.result.bytes_to_update += item.src.size
            return
        total = sum(i.src.size for i in transfers)
        self.reporter.phase("transfer", total)
        if self.progress is not None:
            from fitsync.events import Totals

            self.progress(Totals("transfer", len(transfers), total))
        if self.options.cluster is not None and transfers:
            from fitsync.engine.cluster_mirror import transfer_on_cluster

            transfer_on_cluster(self, transfers)
        else:
            self.prepare_destination_for_transfers(transfers)
            self.transfer_all(transfers)
        self.reporter.close_phase()
        if self.aborted is not None:
            raise self.aborted
        doomed = [i for i in items if i.action == Action.DELETE]
        if doomed and self.result.files_failed:
            log.warning("not deleting %d destination files because %d transfers failed",
                        len(doomed), self.result.files_failed)
            return
        limit = self.options.max_delete
        if limit is not None and len(doomed) > limit:
            reason = (f"--delete would remove {len(doomed)} files, more than --max-delete={limit}; "
                      "none was deleted (check the source, or raise the limit)")
            log.info("%s", reason)  # the CLI prints the failure; the log file keeps it too
            self.result.failures.append({"path": ".", "reason": reason})
            self.result.exit_code = EXIT_FAILED
            return
        for item in doomed:
            self.delete(item)

    def prepare_destination_for_transfers(self, transfers: list[Item]) -> None:
        if Capability.STAGED in self.dst.capabilities and any(i.action == Action.DELTA for i in transfers):
            # Read now: a transfer of this run may replace it with the new release's.
            from fitsync.recorded import RecordedSignatures

            self.recorded = RecordedSignatures.of_destination(self.dst.local_root(), self.resolution)

    def transfer_all(self, transfers: list[Item]) -> None:
        """Move ``transfers`` on ``jobs`` threads of this process."""
        if not transfers:
            return
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(max_workers=max(1, self.options.jobs)) as pool:
            futures = {pool.submit(self.transfer_with_retries, item): item for item in transfers}
            try:
                for future in cf.as_completed(futures):
                    future.result()
            except KeyboardInterrupt:
                # Start no further file; those in flight finish or keep their
                # partial data for the next run. Then the interrupt goes on.
                self.stopping = True
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def record_incomplete(self, item: Item, reason: str) -> None:
        self.result.files_incomplete += 1
        self.result.incomplete.append({"path": item.path, "reason": reason})
        self.result.files.append(FileAction(item.path, Action.INCOMPLETE.value, error=reason))
        self.reporter.item(Item(item.path, Action.INCOMPLETE, f"{reason}; skipped"))
        log.warning("%s: source is incomplete (%s); skipped", item.path, reason)

    def _count(self, action: Action) -> None:
        field_name = {
            Action.NEW: "files_new", Action.DELTA: "files_updated",
            Action.REPAIR: "files_repaired", Action.DELETE: "files_deleted",
        }[action]
        setattr(self.result, field_name, getattr(self.result, field_name) + 1)

    def transfer_with_retries(self, item: Item) -> None:
        if self.aborted is not None or self.stopping:
            return
        if self.progress is not None:
            from fitsync.events import FileStarted

            self.progress(FileStarted(item.path, item.src.size))
        tries = RetryPolicy(self.options.retries, base_delay=self.options.retry_delay).tracker()
        while True:
            try:
                moved = self.transfer_one(item)
            except RETRYABLE as exc:
                if not getattr(exc, "transient", True):
                    if isinstance(exc, ConnectionFailed):
                        # Credentials or a host key: every other file would fail
                        # the same way, and retrying could lock an account.
                        self.aborted = exc
                    self.fail(item, exc)
                    return
                if was_retried(exc):  # its backend retried it already: retries never nest
                    self.fail(item, exc)
                    return
                if isinstance(exc, SourceChanged):
                    item = self.refresh_source(item)
                    if item is None or item.action == Action.INCOMPLETE:
                        return
                if not tries.again(f"{item.path}: {exc}"):
                    self.fail(item, exc)
                    return
                continue
            except (FitsyncError, OSError) as exc:
                self.fail(item, exc)
                return
            except Exception as exc:  # a bug must cost one file, not the run
                log.debug("internal error on %s", item.path, exc_info=True)
                self.fail(item, TransferFailed(f"internal error: {type(exc).__name__}: {exc}"))
                return
            with _COUNTER_LOCK:
                self._count(item.action)
                self.result.bytes_transferred += moved.transferred
                self.result.bytes_reused += moved.reused
                self.result.files.append(FileAction(item.path, item.action.value, moved.transferred, moved.reused,
                                                    built=moved.built))
            self.reporter.item(item, built=moved.built)
            if self.progress is not None:
                from fitsync.events import FileFinished

                self.progress(FileFinished(item.path, item.action.value, moved.transferred, moved.reused))
            return

    def transfer_one(self, item: Item) -> transfer.Moved:
        advance, fits_check = self._advance_for(item.path), self.options.fits_check
        if Capability.STAGED in self.dst.capabilities:  # pulled into its staging area
            from fitsync.engine.update import pull_delta, pull_new_file

            if item.action == Action.NEW or item.dst is None:
                return pull_new_file(self.src, self.dst, item, advance, fits_check)
            return pull_delta(self.src, self.dst, item, advance, fits_check, self.recorded,
                              inplace=self.options.inplace, whole_file=self.options.whole_file)
        from fitsync.engine.push import push

        return push(self.src, self.dst, item, advance, fits_check)

    def recover_updates_in_place(self) -> None:
        """Roll back (or forward) updates in place that a crash interrupted,
        before anything is compared: a file left mid-update must not be
        mistaken for either version."""
        from fitsync.engine.inplace_update import recover

        recover(self.dst)

    def _advance_for(self, path: str):
        """The bytes-done callback of one file's transfer: ``advance(n)`` after
        reading n bytes from the source, ``advance(n, matched=True)`` for bytes
        a delta takes from the old copy (progress, but no read to throttle)."""
        progress, reporter, throttle = self.progress, self.reporter, self.throttle

        if progress is not None:
            from fitsync.events import BytesDone

        def advance(amount: int, matched: bool = False) -> None:
            reporter.advance(amount)
            if progress is not None:
                progress(BytesDone(path, amount))
            if throttle is not None and not matched:
                throttle.consume(amount)
        return advance

    def refresh_source(self, item: Item) -> Item | None:
        """After the source changed under us: look again, and re-check FITS completeness."""
        try:
            entry = self.src.stat(item.path)
        except NotFound:
            self.fail(item, TransferFailed(f"{item.path} disappeared from the source during the run"))
            return None
        refreshed = Item(item.path, item.action, item.reason, entry, item.dst, item.expected_digest)
        if self.options.fits_check and Capability.LOCAL in self.src.capabilities:
            state = self._fits_state(item.path)
            if state is not None and state[0] == "incomplete":
                with _COUNTER_LOCK:
                    self.record_incomplete(refreshed, state[1])
                return Item(item.path, Action.INCOMPLETE, state[1], entry, item.dst)
        return refreshed

    def fail(self, item: Item, exc: BaseException) -> None:
        reason = str(exc) if isinstance(exc, FitsyncError) else describe_os_error(exc)
        with _COUNTER_LOCK:
            self.result.files_failed += 1
            self.result.failures.append({"path": item.path, "reason": reason})  # JSON escapes it
            self.result.files.append(FileAction(item.path, "failed", error=reason))
        log.error("%s: %s", shown(item.path), reason)
        if self.progress is not None:
            from fitsync.events import FileFinished

            self.progress(FileFinished(item.path, "failed", error=reason))

    def delete(self, item: Item) -> None:
        try:
            self.dst.delete(item.path)
        except (FitsyncError, OSError) as exc:
            self.fail(item, exc)
            return
        self._count(Action.DELETE)
        self.result.files.append(FileAction(item.path, Action.DELETE.value))
        self.reporter.item(item)
        if self.progress is not None:
            from fitsync.events import FileFinished

            self.progress(FileFinished(item.path, Action.DELETE.value))
