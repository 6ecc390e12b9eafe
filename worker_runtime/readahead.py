"""Pull the weight files into the page cache while Python is busy importing torch and diffusers.

A cold worker spends seconds in imports (CPU-bound, one core) and seconds reading weights
(I/O-bound: a network volume gives 200-400 MB/s). Done one after the other they add up; a
background thread reading the files while the main thread imports makes them overlap, so the
loader and the first inference find the bytes already in memory.

The reads use `sendfile` into /dev/null: the kernel fills the page cache without copying into
Python, which costs a few percent of a core instead of a full memcpy of every weight (it matters
on small CPU boxes where the import thread needs the other core). Filesystems that refuse
sendfile fall back to plain reads. Errors never stop the worker: the loader reads the files anyway
and reports a real problem with the file name.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_CHUNK = 64 * 1024 * 1024


class Readahead:
    """A daemon thread reading `paths` in order; `bytes_read`/`seconds` say how far it got."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.bytes_read = 0
        self.seconds = 0.0
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="readahead", daemon=True)

    def start(self) -> Readahead:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            # Tell the kernel about every file first, so a device with deep queues can start on all.
            for path in self.paths:
                _advise(path)
            for path in self.paths:
                self.bytes_read += _read_into_cache(path)
        except OSError as exc:
            self.error = f"{exc.filename or ''}: {exc.strerror or exc}"
        finally:
            self.seconds = time.perf_counter() - started


def _advise(path: Path) -> None:
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def _read_into_cache(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        try:
            return _sendfile_to_null(fd, size)
        except OSError:
            return _plain_read(fd)
    finally:
        os.close(fd)


def _sendfile_to_null(fd: int, size: int) -> int:
    sink = os.open(os.devnull, os.O_WRONLY)
    try:
        offset = 0
        while offset < size:
            sent = os.sendfile(sink, fd, offset, min(_CHUNK, size - offset))
            if sent == 0:
                break
            offset += sent
        return offset
    finally:
        os.close(sink)


def _plain_read(fd: int) -> int:
    buf = memoryview(bytearray(8 * 1024 * 1024))
    total = 0
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(os.dup(fd), "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            total += n
    return total


def start(paths: Sequence[Path]) -> Readahead:
    return Readahead(paths).start()
