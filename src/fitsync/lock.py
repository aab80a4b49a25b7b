"""A lock inside a local destination so two mirrors never write it at once.

The lock file holds ``pid host``. A lock whose process is gone (same host,
no such PID) is stale and is reclaimed; creation is atomic (O_EXCL), so two
racing mirrors cannot both win.
"""

from __future__ import annotations

import os
import stat
import threading

from fitsync.errors import BadInput, Locked, TransferFailed

LOCK_NAME = "lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirectoryLock:
    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, LOCK_NAME)
        self.held = False

    def acquire(self) -> None:
        for _ in range(3):
            if self._try_create():
                self.held = True
                return
            if not self._reclaim_if_stale():
                raise Locked(self._held_message())
        raise Locked(self._held_message())

    def _try_create(self) -> bool:
        """Create the lock with its content in one step: write ``pid host`` to a
        private file, then link() it to the lock name, which fails if the lock
        exists. A lock is therefore never seen empty (and taken for stale)."""
        tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}"
        try:
            try:
                os.unlink(tmp)  # a leftover (or planted) entry of that name is never written through
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {os.uname().nodename}\n")
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise TransferFailed(
                f"cannot write the lock {self.path}: {exc.strerror}; free space or fix the destination's permissions"
            ) from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _owner(self) -> tuple[int | None, str]:
        """(pid, host) written in the lock. Opened without blocking or following
        a link and read bounded: a FIFO or a huge file there cannot hang the run."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, ""
        except OSError as exc:
            raise BadInput(f"{self.path} is not a lock fitsync wrote ({exc.strerror}); remove it and run again") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BadInput(f"{self.path} is not a lock file fitsync wrote (a FIFO, socket or directory); "
                               "remove it and run again")
            pid_text, _, host = os.read(fd, 256).decode("utf-8", "replace").strip().partition(" ")
            return int(pid_text), host
        except ValueError:
            return None, ""
        finally:
            os.close(fd)

    def _reclaim_if_stale(self) -> bool:
        pid, host = self._owner()
        if pid is None or (host == os.uname().nodename and not _pid_alive(pid)):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return True
        return False

    def _held_message(self) -> str:
        pid, host = self._owner()
        return (
            f"destination is locked by PID {pid} on host {host} ({self.path}); "
            "wait for that mirror to finish, or remove the lock if that process is gone"
        )

    def release(self) -> None:
        if self.held:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
