"""Lock files: an exclusive flock on one file per role in the WAL directory, so that one
process at a time writes the log (`writer.lock`) and one replays it (`replay.lock`).

An flock belongs to the open file: it goes away when the fd is closed or the process dies,
whatever the cause, so a crash never leaves a stale lock behind. The file holds the
holder's pid, for the message another process gets when it finds the lock taken. The fd
is close-on-exec: a child process never inherits (and so never prolongs) the lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

from wal.errors import ReplayLocked, WalError, WalLocked

WRITER_LOCK = "writer.lock"
REPLAY_LOCK = "replay.lock"


class LockFile:
    """An exclusive, non-blocking flock on `path`. `refused(holder pid)` builds the error
    `acquire` raises when another process holds it."""

    def __init__(
        self, path: str, refused: Callable[[str], WalError], *, make_dir: bool = False
    ) -> None:
        self.path = path
        self._refused = refused
        self._make_dir = make_dir
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._make_dir:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise self._refused(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the fd releases the flock); a no-op when not held."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def writer_lock(wal_dir: str) -> LockFile:
    """The directory's writer lock: `WalLog` and `ferry wal repair` hold it."""
    return LockFile(
        os.path.join(wal_dir, WRITER_LOCK),
        lambda holder: WalLocked(f"{wal_dir} is in use by another writer (pid {holder})"),
    )


def replay_lock(wal_dir: str) -> LockFile:
    """The directory's replay lock: one replayer (child process or `ferry replay`) at a time.
    The directory is created if need be: a replayer may be started before any writer."""
    path = os.path.join(wal_dir, REPLAY_LOCK)
    return LockFile(
        path,
        lambda holder: ReplayLocked(f"another replayer holds {path} (pid {holder})"),
        make_dir=True,
    )
