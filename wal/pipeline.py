"""The segment pipeline: the next segment's file, made ahead of time, off the ack path.

Like etcd's `wal/file_pipeline.go`: a thread of its own creates a file, reserves the
segment's size in it (`segment.prepare_file`: posix_fallocate, or zeros written), fsyncs
it and its directory, and keeps it ready. At a rotation the sync thread `take()`s it and
only writes the header and the batch into it, fdatasyncs, renames it into place and
fsyncs the directory (`segment.install_segment`): no file creation, no allocation, no
second fdatasync while a batch waits. Taking the file starts the next one.

    sync thread                              pipeline thread (`ferry-wal-prealloc`)
    ───────────                              ───────────────────────────────────────
                                             create prealloc-<pid>-1.wal.tmp, fallocate,
                                             fsync it and the directory
    rotation: take() ─▶ prealloc-<pid>-1 ─────▶ create prealloc-<pid>-2.wal.tmp, ...
      header + batch, fdatasync, rename, fsync dir

A rotation never waits for the pipeline: when no file is ready (still being made, or the
last attempt failed, e.g. ENOSPC; with less than twice the segment size free on the disk
the pipeline does not even try, see `_check_room`) `take()` returns None and the sync thread creates a
plain segment inline as before preallocation (version 2, no zero tail). A failed attempt
is logged and counted (`failures`) and tried again at the next rotation; it never makes
the log unwritable by itself: only a failed write or fdatasync does. An unused file is
removed at `close()`, or at the next start (it is a `*.wal.tmp`).
"""

from __future__ import annotations

import errno
import logging
import os
import threading

from wal.segment import SEGMENT_SUFFIX, TMP_SUFFIX, discard, fsync_dir, prepare_file

log = logging.getLogger("ferry.wal")

PREFIX = "prealloc-"  # prealloc-<pid>-<n>.wal.tmp: never the name a crashed run left


def is_pipeline_file(name: str) -> bool:
    """Whether `name` is a file the pipeline made (an unused one is left by a crash)."""
    return name.startswith(PREFIX) and name.endswith(SEGMENT_SUFFIX + TMP_SUFFIX)


class SegmentPipeline:
    """Keeps one preallocated file of `size` bytes ready in `wal_dir` (see the module
    docstring). `take()` is non-blocking and thread-safe; `close()` blocks (run it in a
    thread from the loop)."""

    def __init__(self, wal_dir: str, size: int, mode: str) -> None:
        self._dir = wal_dir
        self._size = size
        self._mode = mode
        self._cond = threading.Condition()
        self._ready: tuple[int, str] | None = None
        self._wanted = True  # make one as soon as the thread starts
        self._stopping = False
        self._count = 0
        self.made = 0  # files made
        self.taken = 0  # ... and taken by a rotation
        self.missed = 0  # rotations that found none ready
        self.failures = 0  # attempts that failed
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="ferry-wal-prealloc", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take(self) -> tuple[int, str] | None:
        """The ready file as (fd open for writing, its `.tmp` path), or None when none is
        ready; either way the pipeline starts on the next one."""
        with self._cond:
            ready, self._ready = self._ready, None
            if ready is None:
                self.missed += 1
            else:
                self.taken += 1
            self._wanted = True
            self._cond.notify()
        return ready

    def ready(self) -> bool:
        with self._cond:
            return self._ready is not None

    def wait_ready(self, timeout: float) -> bool:
        """Block until a file is ready or an attempt failed (tests, benchmarks); True if
        one is ready."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._ready is not None or not self._wanted or self._stopping, timeout
            )
            return self._ready is not None

    def close(self) -> None:
        """Stop the thread, remove the unused file."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        ready, self._ready = self._ready, None
        if ready is not None:
            discard(*ready)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or (self._wanted and not self._ready))
                if self._stopping:
                    return
                self._count += 1
                path = os.path.join(
                    self._dir, f"{PREFIX}{os.getpid()}-{self._count}{SEGMENT_SUFFIX}{TMP_SUFFIX}"
                )
            try:
                self._check_room()
                fd = prepare_file(path, self._size, self._mode)
            except Exception as exc:  # any: the thread must outlive it (rotations go on)
                self._failed(path, exc)
                continue
            try:
                fsync_dir(self._dir)
            except Exception as exc:
                discard(fd, path)
                self._failed(path, exc)
                continue
            with self._cond:
                self._wanted = False
                self._cond.notify_all()
                if self._stopping:
                    discard(fd, path)
                    return
                self._ready = (fd, path)
                self.made += 1

    def _check_room(self) -> None:
        """Raise ENOSPC unless the disk has twice the segment size free. A fallocate that
        fails takes the free space while it tries: a rotation creating its segment inline
        at that moment, or the writer, would get ENOSPC from it. So near a full disk the
        pipeline does not try at all, and the log goes on with plain segments."""
        st = os.statvfs(self._dir)
        free = st.f_bavail * st.f_frsize
        if free < 2 * self._size:
            raise OSError(
                errno.ENOSPC,
                f"No space left for a preallocated segment: {free} bytes free, "
                f"{2 * self._size} wanted (twice the segment size)",
            )

    def _failed(self, path: str, exc: Exception) -> None:
        with self._cond:
            self._wanted = False  # tried again at the next take(), not in a loop
            self.failures += 1
            strerror = exc.strerror if isinstance(exc, OSError) else None
            self.last_error = strerror or repr(exc)
            self._cond.notify_all()
        log.warning(
            "WAL: could not preallocate %s (%s): the next rotation creates its segment "
            "inline, without preallocation; the log stays writable while the disk has room",
            path,
            self.last_error,
        )
