"""A lock inside a local destination so two mirrors never write it at once.

The lock file holds ``pid host``. A lock whose process is gone (same host,
no such PID) is stale and is reclaimed; creation is atomic (O_EXCL), so two
racing mirrors cannot both win.
"""

from __future__ import annotations

import os
import threading

from fitsync.errors import Locked, TransferFailed

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
            with open(tmp, "w") as f:
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
        try:
            with open(self.path) as f:
                pid_text, _, host = f.read().strip().partition(" ")
            return int(pid_text), host
        except (OSError, ValueError):
            return None, ""

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
