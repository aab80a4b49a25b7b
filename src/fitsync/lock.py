"""A lock inside a local destination so two mirrors never write it at once.

The lock file holds ``pid host``. A lock whose process is gone (same host,
no such PID) is stale and is reclaimed; creation is atomic (O_EXCL), so two
racing mirrors cannot both win.
"""

from __future__ import annotations

import os
import socket

from fitsync.errors import Locked

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
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if self._reclaim_if_stale():
                    continue
                raise Locked(self._held_message()) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return
        raise Locked(self._held_message())

    def _owner(self) -> tuple[int | None, str]:
        try:
            with open(self.path) as f:
                pid_text, _, host = f.read().strip().partition(" ")
            return int(pid_text), host
        except (OSError, ValueError):
            return None, ""

    def _reclaim_if_stale(self) -> bool:
        pid, host = self._owner()
        if pid is None or (host == socket.gethostname() and not _pid_alive(pid)):
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
