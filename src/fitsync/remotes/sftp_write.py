"""SFTP destinations: uploads under a temporary name, verified and renamed
(by the agent when there is one), patches applied on the host, deletes, and
the destination lock. Mixed into SftpRemote (remotes/sftp.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import socket
import stat as stat_mod
import time
import uuid
from typing import Iterable

import paramiko

from fitsync.errors import (BadInput, ConnectionFailed, FitsyncError, Locked,
                            NotFound, TransferFailed, UnsafePath, VerificationFailed)
from fitsync.hashes import new_hasher
from fitsync.remotes.base import Resume
from fitsync.remotes.sftp_io import CountedChunks, write_pipelined
from fitsync.remotes.sftp_resume import Checkpoints, kept_bytes, open_part, partial_paths
from fitsync.remotes.statefiles import STATE_DIR
from fitsync.sshconn import SshConnection

log = logging.getLogger("fitsync.remotes.sftp")


class SftpWriting:
    """The writing half of SftpRemote."""

    def _temp_path(self, path: str) -> str:
        name = posixpath.basename(path)[:100]
        return posixpath.join(self.root, STATE_DIR, "tmp", f"{name}.{uuid.uuid4().hex[:12]}.part")

    def _makedirs(self, sftp: paramiko.SFTPClient, directory: str, create: bool = True) -> None:
        """Check, and with ``create`` make, every directory from the root down to
        ``directory``, each with lstat: one that is a symlink is refused. SFTP
        has no openat, so this runs before each use (a swap between the check
        and the write is the one window left; the agent's renames, patches and
        deletes go through descriptors and have none). The root itself may be
        a symlink: that is the user's choice, as in rsync."""
        rel = posixpath.relpath(directory, self.root)
        if rel == ".":
            return
        if rel == ".." or rel.startswith("../"):
            raise UnsafePath(f"{directory} is not inside {self.root} on {self.target.hostname}")
        current = self.root
        parts = rel.split("/")
        # The state directory is private, as in a local destination: its names are predictable.
        mode = 0o700 if parts[0] == STATE_DIR else 0o777
        for depth, part in enumerate(parts):
            current = posixpath.join(current, part)
            try:
                found = sftp.lstat(current).st_mode
            except FileNotFoundError:
                if not create:
                    raise
                if depth == 0:
                    self._make_root(sftp)  # a first write to a new destination
                self._mkdir(sftp, current, mode)
                continue
            if stat_mod.S_ISLNK(found):
                raise UnsafePath(f"{rel}: {part} is a symlink in the destination on {self.target.hostname}; "
                                 "refusing to write through it")
            if not stat_mod.S_ISDIR(found):
                raise BadInput(f"{current} on {self.target.hostname} exists and is not a directory")

    def _make_root(self, sftp: paramiko.SFTPClient) -> None:
        """Make the root and its missing parents (above the root, symlinks are
        the user's own layout and are followed)."""
        missing, directory = [], self.root
        while directory not in ("/", "", "."):
            try:
                if stat_mod.S_ISDIR(sftp.stat(directory).st_mode):
                    break
                raise BadInput(f"{directory} on {self.target.hostname} exists and is not a directory")
            except FileNotFoundError:
                missing.append(directory)
                directory = posixpath.dirname(directory)
        for d in reversed(missing):
            self._mkdir(sftp, d)

    @staticmethod
    def _mkdir(sftp: paramiko.SFTPClient, directory: str, mode: int = 0o777) -> None:
        try:
            sftp.mkdir(directory, mode)  # the server's umask applies as well
        except OSError as exc:
            try:  # another writer may have made it meanwhile
                made = stat_mod.S_ISDIR(sftp.lstat(directory).st_mode)
            except OSError:
                made = False
            if not made:
                raise exc

    def write_atomic(self, path, chunks: Iterable[bytes], *, mtime=None, expected_digest=None,
                     resume: Resume | None = None) -> None:
        """Upload to a temporary name, verify, set mtime, rename. ``chunks``
        can be consumed once, so a lost connection fails the file (the sync
        engine retries it) instead of resuming here; with ``resume`` the
        bytes acknowledged so far are kept for that retry (remotes/sftp_resume)."""
        final = self.remote_path(path)
        if resume is not None:
            tmp, record = partial_paths(self.root, resume.key)
        else:
            tmp, record = self._temp_path(path), None
        counted = CountedChunks(chunks)
        for attempt in (1, 2):
            conn = self.connection()
            generation = conn.generation
            try:
                if not self._upload(conn, tmp, final, counted, expected_digest, mtime, resume, record):
                    self._call(f"rename into {final}", lambda c: self._rename(c.sftp(), tmp, final))
                if record is not None:
                    self._remove_quietly(record, defer=False)
                self._sweep_stale_temps()
                return
            except BaseException as exc:
                # Lost: the transport's own error, or the session it could not open.
                lost = isinstance(exc, Exception) and (
                    (isinstance(exc, ConnectionFailed) and exc.transient)
                    or (not isinstance(exc, FitsyncError) and self._lost(exc, conn)))
                interrupted = not isinstance(exc, Exception)  # Ctrl-C, exit
                if record is None or not (lost or interrupted):
                    # A part's name is fixed per source version: a retry may be
                    # writing it by the time a deferred removal would run.
                    self._remove_quietly(tmp, defer=record is None)
                    if record is not None:
                        self._remove_quietly(record, defer=False)
                if interrupted:
                    raise
                if lost and attempt == 1 and counted.taken == 0:
                    # The connection had died before this file began (its
                    # transport had not noticed yet): not this file's failure.
                    conn.reconnect(generation)
                    continue
                if isinstance(exc, FitsyncError):
                    raise
                if not lost:
                    raise self._sftp_error(exc, f"write {final}") from None
                # ConnectionFailed: the sync engine retries the file
                raise ConnectionFailed(f"connection to {self.target.describe()} lost while writing {final}: "
                                       f"{conn.why_lost(generation, exc)}") from None

    def kept_bytes(self, key: str, size: int) -> int:
        part, record = partial_paths(self.root, key)

        def once(conn):
            sftp = conn.sftp()
            try:  # no symlink on the way (and no directory made just to look)
                self._makedirs(sftp, posixpath.dirname(part), create=False)
            except FileNotFoundError:
                return 0
            return kept_bytes(sftp, part, record, size)
        return self._call(f"look for a partial upload in {posixpath.dirname(part)}", once)

    def _upload(self, conn: SshConnection, tmp: str, final: str, chunks, expected_digest, mtime,
                resume: Resume | None = None, record: str | None = None) -> bool:
        """Upload to ``tmp`` and verify; True when the agent has also renamed it to ``final``."""
        sftp = conn.sftp()
        self._makedirs(sftp, posixpath.dirname(tmp))
        algo = self.digest_algo()
        source_hash = new_hasher("blake3")
        hashers = [source_hash] + ([new_hasher(algo)] if algo != "blake3" else [])
        start = resume.offset if resume is not None else 0
        if start:
            for piece in resume.prefix():  # the kept bytes count in the digests as if sent now
                for h in hashers:
                    h.update(piece)
        with (open_part(sftp, tmp, start) if record is not None else sftp.open(tmp, "wb")) as f:
            if start:
                f.truncate(start)  # what lies past the record was never acknowledged
            # Without an agent nothing re-reads the file before the rename, so
            # a checkpoint must outlive a crash of the host: the part is
            # synced first (fsync@openssh.com; no record where it is missing).
            checkpoints = None if record is None else Checkpoints(
                sftp, record, start, sync_handle=None if self.agent_info() is not None else f.handle)
            try:
                size, written_to = write_pipelined(sftp, f.handle, chunks, hashers, start=start,
                                                   on_acked=checkpoints and checkpoints.acked)
            finally:
                if checkpoints is not None:
                    checkpoints.close()
            if written_to < size:  # it ends in a hole
                f.truncate(size)
        if expected_digest is not None and source_hash.hexdigest() != expected_digest:
            raise VerificationFailed(f"{tmp}: the bytes read from the source do not match its digest")
        with self.using_agent() as agent:
            if agent is not None:
                # The agent re-reads the file on the remote host: what landed is verified, not what was sent.
                # It renames through directory descriptors: nothing can redirect it outside the tree.
                agent.call({"op": "rename", "tmp": tmp, "path": final, "root": self.root, "algo": algo,
                            "expected": hashers[-1].hexdigest(),
                            "mtime_ns": None if mtime is None else int(round(mtime * 1e9))})
                return True
        if sftp.stat(tmp).st_size != size:
            raise VerificationFailed(f"{tmp}: the remote size differs from the bytes sent")
        if mtime is not None:
            sftp.utime(tmp, (int(mtime), int(mtime)))
        return False

    def _rename(self, sftp: paramiko.SFTPClient, tmp: str, final: str) -> None:
        self._makedirs(sftp, posixpath.dirname(final))
        try:
            if stat_mod.S_ISDIR(sftp.stat(final).st_mode):
                raise BadInput(f"{final} is a directory on {self.target.hostname} but a file in the source")
        except FileNotFoundError:
            pass
        sftp.posix_rename(tmp, final)

    def _remove_quietly(self, remote: str, defer: bool = True) -> None:
        """Remove a temporary file; if the connection is down, remember it and
        remove it after the next successful write (or at close), unless not
        ``defer`` (then it waits for the end of a complete run: clear_state)."""
        conn = self._conn
        if conn is None or not conn.alive():  # reconnecting just for this could wait out --timeout
            if defer:
                self._stale_temps.add(remote)
            return
        try:
            conn.sftp().remove(remote)
            self._stale_temps.discard(remote)
        except FileNotFoundError:
            self._stale_temps.discard(remote)
        except Exception:  # the connection is gone: try again later
            if defer:
                self._stale_temps.add(remote)

    def _sweep_stale_temps(self) -> None:
        for remote in list(self._stale_temps):
            self._remove_quietly(remote)

    def verifies_patches_alone(self, digest_algo: str | None = None) -> bool:
        """Whether the agent can check a patch against a digest in ``digest_algo``
        without the new file at hand: any agent the STDLIB suite's, BLAKE3 where installed."""
        if self.agent_info() is None:
            return False
        return digest_algo in (None, "sha256-blocks") or self.digest_algo() == digest_algo

    def apply_recipe(self, path: str, recipe, literals: Iterable[bytes], *, mtime: float,
                     expected_digest: str) -> None:
        """Patch ``path`` remotely: basis runs are copied by the agent, literal
        bytes go up the channel; the agent verifies and renames. It verifies
        with the recipe's STDLIB digest (any agent), or with BLAKE3 where the
        host has it (a push to a stock host brings a STDLIB one: engine.push._push_delta)."""
        info = self.agent_info()
        if info is None:
            raise TransferFailed(f"{self.url} cannot apply patches: no agent")
        final = self.remote_path(path)
        layout = None
        if recipe.digest_algo == "sha256-blocks":
            algo, expected = recipe.digest_algo, recipe.digest
            layout = {"block_size": recipe.layout[0], "boundaries": list(recipe.layout[1])}
        elif self.digest_algo() == "blake3":
            algo, expected = "blake3", expected_digest
        else:
            raise TransferFailed(f"{final}: {self.target.hostname} has no blake3 module to verify a patch "
                                 "checked by BLAKE3")
        header = {"op": "patch", "path": final, "basis": final, "tmp": self._temp_path(path), "root": self.root,
                  "algo": algo, "expected": expected, "mtime_ns": int(round(mtime * 1e9))}
        if layout is not None:
            header["layout"] = layout
        try:
            with self.using_agent() as agent:
                agent.send(header, recipe.to_bytes())
                for chunk in literals:
                    for start in range(0, len(chunk), 1 << 20):
                        agent.send({"op": "data"}, bytes(chunk[start:start + (1 << 20)]))
                agent.send({"op": "end"})
                agent.finish()
        except FitsyncError:
            raise
        except Exception as exc:
            raise TransferFailed(f"patching {final} on {self.target.hostname} failed: {exc}") from None

    # -- the destination lock ------------------------------------------------------------
    def lock(self) -> None:
        """Hold ROOT/.fitsync/lock (created exclusively) so two fitsync runs never
        write this destination at once. A lock left by a dead process of this
        host is reclaimed; any other is reported with how to clear it."""
        path = posixpath.join(self.root, STATE_DIR, "lock")
        ident = f"{os.getpid()} {socket.gethostname()} {int(time.time())}"

        def once(conn):
            sftp = conn.sftp()
            self._makedirs(sftp, posixpath.dirname(path))
            for _ in range(3):
                try:
                    with sftp.open(path, "wx") as f:  # O_CREAT|O_EXCL: one winner
                        f.write(ident.encode())
                    self._lock_path = path
                    return
                except PermissionError:
                    raise
                except OSError:
                    if not self._reclaim_stale_lock(sftp, path):
                        raise Locked(self._lock_message(sftp, path)) from None
            raise Locked(self._lock_message(sftp, path))
        self._call(f"lock {self.url}", once)
        self.clear_state("tmp")  # a killed run's uploads and patches: none of it can be resumed

    def clear_state(self, sub: str) -> None:
        """Empty ROOT/.fitsync/SUB, the caller holding the lock: "tmp" (what
        killed runs left) or "partial" (after a run that completed, uploads
        kept for source versions that no longer exist). Only plain files and
        symlinks directly in it are unlinked (a symlink itself, never what it
        points to), and nothing at all when .fitsync or SUB is not a real
        directory. A failure here costs a warning, not the run: the lock is
        held and must be released by the caller's normal path."""
        state = posixpath.join(self.root, STATE_DIR)
        directory = posixpath.join(state, sub)

        def once(conn):
            sftp = conn.sftp()
            for level in (state, directory):
                try:
                    if not stat_mod.S_ISDIR(sftp.lstat(level).st_mode):
                        log.warning("%s on %s is not a directory (a symlink?); not clearing it",
                                    level, self.target.hostname)
                        return 0
                except FileNotFoundError:
                    return 0
            removed = 0
            for attr in sftp.listdir_attr(directory):  # sftp-server reports lstat() attributes
                if stat_mod.S_ISREG(attr.st_mode) or stat_mod.S_ISLNK(attr.st_mode):
                    with contextlib.suppress(FileNotFoundError):
                        sftp.remove(posixpath.join(directory, attr.filename))
                        removed += 1
            return removed

        try:
            removed = self._call(f"clear {directory}", once)
        except FitsyncError as exc:
            log.warning("could not empty %s on %s: %s", directory, self.target.hostname, exc)
            return
        if removed:
            log.info("removed %d leftover files from %s on %s", removed, directory, self.target.hostname)

    def _read_lock(self, sftp, path: str) -> list:
        try:
            with sftp.open(path, "rb") as f:
                return f.read(200).decode("utf-8", "replace").split()
        except FileNotFoundError:
            return []

    def _reclaim_stale_lock(self, sftp, path: str) -> bool:
        fields = self._read_lock(sftp, path)
        if not fields:
            return True  # it vanished meanwhile: try again
        if len(fields) >= 2 and fields[1] == socket.gethostname() and fields[0].isdigit():
            try:
                os.kill(int(fields[0]), 0)
            except ProcessLookupError:
                log.warning("removing a stale lock of pid %s (gone) on %s", fields[0], self.url)
                sftp.remove(path)
                return True
            except PermissionError:
                pass
        return False

    def _lock_message(self, sftp, path: str) -> str:
        fields = self._read_lock(sftp, path) + ["?", "?", "0"]
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(fields[2]) if fields[2].isdigit() else 0))
        return (f"{self.url} is locked by fitsync pid {fields[0]} on {fields[1]} since {since}; if no such run "
                f"is going on, remove {self.target.hostname}:{path}")

    def unlock(self) -> None:
        path = getattr(self, "_lock_path", None)
        if path is None:
            return
        self._lock_path = None
        try:
            self._call(f"unlock {self.url}", lambda conn: conn.sftp().remove(path))
        except NotFound:
            pass

    def delete(self, path: str) -> None:
        full = self.remote_path(path)

        def once(conn):
            with self.using_agent() as agent:
                if agent is not None:
                    agent.call({"op": "delete", "path": full, "root": self.root})
                    return
            try:
                self._makedirs(conn.sftp(), posixpath.dirname(full), create=False)  # no symlink on the way
                conn.sftp().remove(full)
            except FileNotFoundError:
                return
            self._prune_sftp(conn.sftp(), posixpath.dirname(full))
        self._call(f"delete {full}", once)

    def _prune_sftp(self, sftp, directory: str) -> None:
        while directory != self.root and directory.startswith(self.root + "/"):
            try:
                sftp.rmdir(directory)
            except OSError:
                return
            directory = posixpath.dirname(directory)
