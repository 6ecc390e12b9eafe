"""Read the weight files while Python is busy importing torch and diffusers, hashing them on the way.

A cold worker spends seconds in imports (CPU-bound, one core) and seconds reading weights
(I/O-bound: a network volume gives 200-400 MB/s). Background threads reading the files while the
main thread imports make the two overlap, and since the bytes pass through memory anyway, each
file's sha256 is checked against the manifest in the same pass: every weight byte is verified
for the price of the hashing CPU, on cores the import thread does not use.

Three ways to read, chosen by the caller:
- no hashing, page cache only: `sendfile` into /dev/null, so the kernel fills the page cache
  without a copy into Python (a few percent of a core);
- hashing: each file mapped read-only and hashed 16 MiB at a time straight from the page cache
  (no copy; hashlib releases the GIL), files in parallel on `threads` threads;
- `keep=True` (network storage, see storage.py): each file read into one buffer of its own by
  several threads in 32 MiB `preadv` chunks at once, each chunk hashed as soon as the chunks before
  it are in; the loader builds its tensors on those buffers instead of faulting pages in through a
  memory map.

Read errors never stop the worker on their own (the loader reads the files anyway and names a
real problem); a hash that does not match, or a file the hashing could not read, does.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from worker_runtime.errors import StartError

_CHUNK = 64 * 1024 * 1024
HASH_CHUNK = 16 * 1024 * 1024
KEEP_CHUNK = 32 * 1024 * 1024
KEEP_THREADS = 8


class Readahead:
    """Threads reading `paths`; `bytes_read`/`seconds` say how far they got, `check()` the verdict."""

    def __init__(
        self,
        paths: Sequence[Path],
        expected: Mapping[Path, str] | None = None,
        threads: int = 1,
        keep: bool = False,
    ) -> None:
        # Largest first: the long files start early and the short ones fill in around them.
        self.paths = sorted(paths, key=lambda p: -_size(p))
        self.expected = dict(expected or {})
        self.threads = max(1, threads)
        self.keep = keep
        self.buffers: dict[Path, bytearray] = {}
        self.bytes_read = 0
        self.seconds = 0.0
        self.error: str | None = None
        self.hash_seconds = 0.0
        self._mismatch: str | None = None
        self._hashing: dict[Path, _InOrder] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="readahead", daemon=True)

    def start(self) -> Readahead:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def check(self) -> None:
        """Wait for the hashes; StartError naming the first file whose bytes are not the manifest's."""
        if not self.expected:
            return
        self.join()
        if self._mismatch:
            raise StartError(self._mismatch)

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            for path in self.paths:
                _advise(path)
            if self.keep:
                self._read_kept()
            else:
                with ThreadPoolExecutor(self.threads, thread_name_prefix="readahead") as pool:
                    for done in [pool.submit(self._read_one, p) for p in self.paths]:
                        done.result()
        except OSError as exc:
            self._fail_read(exc)
        finally:
            self.seconds = time.perf_counter() - started

    def _fail_read(self, exc: OSError) -> None:
        with self._lock:
            self.error = self.error or f"{exc.filename or ''}: {exc.strerror or exc}"
            if self.expected and self._mismatch is None:
                self._mismatch = (
                    f"{exc.filename}: could not be read to check its sha256 ({exc.strerror or exc})"
                )

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n

    def _read_one(self, path: Path) -> None:
        try:
            want = self.expected.get(path)
            if want is None:
                self._count(_read_into_cache(path))
                return
            self._verdict(path, self._hash_mapped(path), want)
        except OSError as exc:
            self._fail_read(exc)

    def _hash_mapped(self, path: Path) -> str:
        """sha256 of the file hashed straight from the page cache through a read-only map.

        `pread` into a buffer copies every byte once more before hashing it: about a third more
        CPU than the hash itself (4.27 GB: 3.8 vs 2.8 CPU s here), on the core the imports share.
        """
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return digest.hexdigest()
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    for offset in range(0, size, HASH_CHUNK):
                        chunk = view[offset : offset + HASH_CHUNK]
                        digest.update(chunk)
                        self._count(len(chunk))
                        chunk.release()
                finally:
                    view.release()
        return digest.hexdigest()

    def _verdict(self, path: Path, got: str, want: str) -> None:
        if got != want:
            with self._lock:
                self._mismatch = self._mismatch or f"{path}: sha256 {got[:16]}… does not match the manifest"

    def _read_kept(self) -> None:
        """Every file into its own buffer, many chunks in flight at once, hashed as they arrive."""
        jobs: list[tuple[Path, int, int]] = []
        for path in self.paths:
            size = _size(path)
            self.buffers[path] = bytearray(size)
            self._hashing[path] = _InOrder(size)
            jobs += [(path, off, min(KEEP_CHUNK, size - off)) for off in range(0, size, KEEP_CHUNK)]
            if size == 0:
                self._hash_ready(path)
        with ThreadPoolExecutor(max(self.threads, KEEP_THREADS), thread_name_prefix="load") as pool:
            reads: list[Future[None]] = [pool.submit(self._read_chunk, p, o, n) for p, o, n in jobs]
            for read in reads:
                read.result()

    def _read_chunk(self, path: Path, offset: int, length: int) -> None:
        # A handle of its own for every chunk: network filesystems cap each open file's stream, and
        # the volume's bandwidth is only reached with several streams at once.
        view = memoryview(self.buffers[path])[offset : offset + length]
        fd = os.open(path, os.O_RDONLY)
        try:
            done = 0
            while done < length:
                n = os.preadv(fd, [view[done:]], offset + done)
                if n == 0:
                    raise OSError(0, f"file ended at {offset + done} bytes", str(path))
                done += n
        finally:
            os.close(fd)
        self._count(length)
        state = self._hashing[path]
        with state.lock:
            state.arrived.add(offset)
        self._hash_ready(path)

    def _hash_ready(self, path: Path) -> None:
        """Hash the file's chunks that have arrived in order; one thread a file does it at a time."""
        if path not in self.expected:
            return
        state = self._hashing[path]
        view = memoryview(self.buffers[path])
        with state.lock:
            if state.busy:
                return  # the thread hashing this file will find the new chunk
            state.busy = True
        started = time.perf_counter()
        while True:
            with state.lock:
                if state.next >= state.size or state.next not in state.arrived:
                    state.busy = False
                    finished = state.next >= state.size and not state.reported
                    state.reported = state.reported or finished
                    break
                offset = state.next
            end = min(offset + KEEP_CHUNK, state.size)
            state.digest.update(view[offset:end])
            with state.lock:
                state.next = end
        with self._lock:
            self.hash_seconds += time.perf_counter() - started
        if finished:
            self._verdict(path, state.digest.hexdigest(), self.expected[path])


class _InOrder:
    """A file's sha256 fed chunk by chunk in file order, whichever order the chunks arrive in."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.digest = hashlib.sha256()
        self.next = 0
        self.arrived: set[int] = set()
        self.busy = False
        self.reported = False
        self.lock = threading.Lock()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


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
    offset = 0
    while n := os.preadv(fd, [buf], offset):
        total += n
        offset += n
    return total


def hash_threads() -> int:
    """Hashing threads beside the import thread: every core but the one the imports run on."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def start(
    paths: Sequence[Path],
    expected: Mapping[Path, str] | None = None,
    threads: int | None = None,
    keep: bool = False,
) -> Readahead:
    return Readahead(paths, expected, threads or hash_threads(), keep).start()
