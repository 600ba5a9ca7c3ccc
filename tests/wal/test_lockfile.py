"""The one lock-file helper behind the writer lock and the replay lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from wal.errors import ReplayLocked, WalError, WalLocked
from wal.lockfile import REPLAY_LOCK, WRITER_LOCK, replay_lock, writer_lock

_HOLD = """
import sys
from wal.lockfile import {factory}
lock = {factory}(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def _holder(factory: str, wal_dir: Path) -> subprocess.Popen[str]:
    """Another process holding the lock (flock is per open file: the same process could
    take it twice through two fds, so the test needs a second process)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD.format(factory=factory), str(wal_dir)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


@pytest.mark.parametrize(
    ("factory", "name", "error", "says"),
    [
        ("writer_lock", WRITER_LOCK, WalLocked, "in use by another writer"),
        ("replay_lock", REPLAY_LOCK, ReplayLocked, "another replayer holds"),
    ],
)
def test_a_held_lock_refuses_with_the_holders_pid(
    tmp_path: Path, factory: str, name: str, error: type[WalError], says: str
) -> None:
    make = writer_lock if factory == "writer_lock" else replay_lock
    proc = _holder(factory, tmp_path)
    try:
        assert (tmp_path / name).read_text() == f"{proc.pid}\n"
        with pytest.raises(error, match=f"{says}.*pid {proc.pid}"):
            make(str(tmp_path)).acquire()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    lock = make(str(tmp_path))  # the holder is gone: its flock went with it
    lock.acquire()
    assert (tmp_path / name).read_text() == f"{os.getpid()}\n"
    lock.release()
    lock.release()  # a second release is a no-op


def test_writer_and_replay_locks_are_independent(tmp_path: Path) -> None:
    writer, replayer = writer_lock(str(tmp_path)), replay_lock(str(tmp_path))
    writer.acquire()
    replayer.acquire()
    writer.release()
    replayer.release()


def test_the_replay_lock_creates_its_directory(tmp_path: Path) -> None:
    wal_dir = tmp_path / "not-yet"
    lock = replay_lock(str(wal_dir))
    lock.acquire()
    assert (wal_dir / REPLAY_LOCK).is_file()
    lock.release()


def test_the_lock_fd_is_not_inherited(tmp_path: Path) -> None:
    lock = writer_lock(str(tmp_path))
    lock.acquire()
    try:
        fds = os.listdir("/proc/self/fd")
        locked = [fd for fd in fds if _target(fd) == str(tmp_path / WRITER_LOCK)]
        assert len(locked) == 1
        assert not os.get_inheritable(int(locked[0]))
    finally:
        lock.release()


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
