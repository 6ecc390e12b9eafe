"""Write a safetensors file incrementally: header first, then the tensors' bytes, hashed as written.

The header of a safetensors file only needs names, dtypes and shapes, so it is computed before a
single byte of data exists; the data section is then produced in fixed-size chunks by a small pool
of threads (casting releases the GIL), each chunk written at its final offset with `pwrite` as soon
as it is filled, while one thread per file feeds the chunks, in order, to sha256. Peak memory is
the chunk buffers in flight, whatever the size of the model, and no byte is read back to be hashed.

Layout rules (what `safetensors.torch.save_file` does too): tensors are ordered by element size,
largest first, then by name, so every tensor starts aligned to its element size; the JSON header is
padded with spaces to a multiple of 8 bytes. Same tensors in, same bytes out.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from packager.errors import ConvertError, DiskSpaceError

if TYPE_CHECKING:
    import torch

# Big enough that per-chunk Python overhead is noise (~500 chunks for an SD 1.5 UNet), small
# enough that a chunk is still in the CPU cache when it is written and hashed.
CHUNK_BYTES = 4 << 20
# Files are read by non-root users in images; safetensors' own save_file writes 0600.
FILE_MODE = 0o644

_DTYPE_NAMES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
    "complex64": "C64",
}


def dtype_code(dtype: torch.dtype) -> str:
    """safetensors' name for a torch dtype (`torch.float16` → `F16`)."""
    name = str(dtype).removeprefix("torch.")
    try:
        return _DTYPE_NAMES[name]
    except KeyError:
        raise ConvertError(f"dtype {name} cannot be stored in safetensors") from None


@dataclass(frozen=True)
class Entry:
    """One tensor's place in the file: `start` is relative to the data section."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    nbytes: int

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize


@dataclass(frozen=True)
class Piece:
    """The part of one tensor (elements [lo, hi)) that lands at `offset` inside a chunk."""

    entry: int
    lo: int
    hi: int
    offset: int


@dataclass(frozen=True)
class Layout:
    header: bytes  # the 8-byte length prefix and the padded JSON header
    entries: tuple[Entry, ...]
    data_bytes: int

    @property
    def size(self) -> int:
        return len(self.header) + self.data_bytes

    def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int, list[Piece]]]:
        """(start, length, pieces) for each chunk of the data section, in file order."""
        out: list[tuple[int, int, list[Piece]]] = []
        entries = [(n, e) for n, e in enumerate(self.entries) if e.nbytes]
        i = 0
        for start in range(0, self.data_bytes, chunk_bytes):
            end = min(start + chunk_bytes, self.data_bytes)
            pieces = []
            while i < len(entries) and entries[i][1].start < end:
                n, e = entries[i]
                lo = max(start, e.start)
                hi = min(end, e.start + e.nbytes)
                pieces.append(
                    Piece(n, (lo - e.start) // e.itemsize, (hi - e.start) // e.itemsize, lo - start)
                )
                if e.start + e.nbytes <= end:
                    i += 1
                else:
                    break
            out.append((start, end - start, pieces))
        return out


def layout(
    specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None = None
) -> Layout:
    """Place tensors (name, dtype, shape) in a file and build the header that describes them."""
    ordered = sorted(specs, key=lambda s: (-s[1].itemsize, s[0]))
    entries = []
    offset = 0
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    for name, dtype, shape in ordered:
        numel = 1
        for dim in shape:
            numel *= dim
        nbytes = numel * dtype.itemsize
        entries.append(Entry(name, dtype, tuple(shape), offset, nbytes))
        header[name] = {
            "dtype": dtype_code(dtype),
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return Layout(len(text).to_bytes(8, "little") + text, tuple(entries), offset)


FillFn = Callable[[Entry, int, int, "torch.Tensor"], None]


class ReadBack(Protocol):
    """Checks each written piece against the file as a loader sees it (see packager/verify.py)."""

    def check(self, entry: Entry, lo: int, hi: int, written: torch.Tensor) -> None: ...

    def close(self) -> None: ...


class Engine:
    """The cast-and-write threads shared by every file of one conversion.

    Each file brings its own few chunk buffers (`buffers_per_file`), taken in file order by the
    thread that queues its chunks and given back by its hasher: a file whose hash lags (the UNet,
    whose sha256 is the longest sequential task) cannot starve the next file of buffers, and memory
    stays at buffers x chunk size x files in flight. An error in any task stops all of them.
    """

    def __init__(
        self, workers: int, chunk_bytes: int = CHUNK_BYTES, buffers_per_file: int | None = None
    ) -> None:
        self.chunk_bytes = chunk_bytes
        self.workers = max(1, workers)
        self.buffers_per_file = buffers_per_file or self.workers + 2
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="convert")
        self.error: BaseException | None = None
        self._aborted = threading.Event()

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._aborted.set()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        def run() -> Any:
            if self.aborted:
                return None
            try:
                return fn(*args)
            except BaseException as exc:
                self.fail(exc)
                raise

        return self.pool.submit(run)

    def close(self) -> None:
        self._aborted.set()
        self.pool.shutdown(wait=True, cancel_futures=True)


class FileWriter:
    """One safetensors file being written: fills run on the engine, hashing on its own thread.

    With `readback`, each chunk is compared, right after it is written, with the file as the
    safetensors library maps it (its own header parse and offsets), while the cast bytes are still
    in the buffer: a bit-exact check of every tensor for the price of a memcmp.
    """

    def __init__(
        self,
        engine: Engine,
        path: Path,
        plan: Layout,
        fill: FillFn,
        readback: Callable[[Path], ReadBack] | None = None,
        on_hashed: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.path = path
        self.plan = plan
        self._fill = fill
        self._readback_factory = readback
        self._readback: ReadBack | None = None
        self._on_hashed = on_hashed
        self._chunks = plan.chunks(engine.chunk_bytes)
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._ready: list[bytearray | None] = [None] * len(self._chunks)
        self._events = [threading.Event() for _ in self._chunks]
        self._pending = len(self._chunks)
        self._lock = threading.Lock()
        self.written = threading.Event()
        self._sha = hashlib.sha256()
        self._fd = -1
        self._hasher: threading.Thread | None = None
        self._digest: str | None = None

    def start(self) -> None:
        """Write the header, then queue every chunk; blocks only while all buffers are in flight."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        os.fchmod(self._fd, FILE_MODE)  # the umask must not make it unreadable to other users
        try:
            os.ftruncate(self._fd, self.plan.size)
        except OSError as exc:
            _raise_write_error(exc, self.path)
        _pwrite_all(self._fd, memoryview(self.plan.header), 0, self.path)
        self._sha.update(self.plan.header)
        if self._readback_factory is not None:
            self._readback = self._readback_factory(self.path)
        self._hasher = threading.Thread(target=self._hash_loop, name=f"sha256:{self.path.name}", daemon=True)
        self._hasher.start()
        if not self._chunks:
            self.written.set()
        for _ in range(min(self.engine.buffers_per_file, len(self._chunks))):
            self._free.put(bytearray(self.engine.chunk_bytes))
        for index in range(len(self._chunks)):
            buf = self._take_buffer()
            self.engine.submit(self._fill_chunk, index, buf)

    def _take_buffer(self) -> bytearray:
        while True:
            self.engine.raise_if_failed()
            try:
                return self._free.get(timeout=0.05)
            except queue.Empty:
                continue

    def _fill_chunk(self, index: int, buf: bytearray) -> None:
        import torch

        start, length, pieces = self._chunks[index]
        raw = torch.frombuffer(buf, dtype=torch.uint8)
        for piece in pieces:
            entry = self.plan.entries[piece.entry]
            dst = raw[piece.offset : piece.offset + (piece.hi - piece.lo) * entry.itemsize].view(entry.dtype)
            self._fill(entry, piece.lo, piece.hi, dst)
        _pwrite_all(self._fd, memoryview(buf)[:length], len(self.plan.header) + start, self.path)
        if self._readback is not None:
            for piece in pieces:
                entry = self.plan.entries[piece.entry]
                n = (piece.hi - piece.lo) * entry.itemsize
                self._readback.check(entry, piece.lo, piece.hi, raw[piece.offset : piece.offset + n])
        self._ready[index] = buf
        self._events[index].set()
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self.written.set()

    def _hash_loop(self) -> None:
        try:
            for index, (_, length, _) in enumerate(self._chunks):
                while not self._events[index].wait(0.05):
                    if self.engine.aborted:
                        return
                buf = self._ready[index]
                assert buf is not None
                self._ready[index] = None
                self._sha.update(memoryview(buf)[:length])
                self._free.put(buf)
                if self._on_hashed is not None:
                    self._on_hashed(length)
            self._digest = self._sha.hexdigest()
            while not self._free.empty():  # done: let the buffers go now, not when the job does
                self._free.get_nowait()
        except BaseException as exc:
            self.engine.fail(exc)

    def wait_written(self) -> None:
        while not self.written.wait(0.05):
            self.engine.raise_if_failed()
        self.engine.raise_if_failed()

    def _join_hasher(self) -> None:
        assert self._hasher is not None
        while self._hasher.is_alive():
            self._hasher.join(0.05)
            self.engine.raise_if_failed()

    def finish(self) -> tuple[int, str]:
        """Wait for the last chunk to be hashed; return (size, sha256) of the file."""
        self.wait_written()
        self._join_hasher()
        self.engine.raise_if_failed()
        self.close()
        assert self._digest is not None
        return self.plan.size, self._digest

    def close(self) -> None:
        if self._readback is not None:
            self._readback.close()
            self._readback = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def abandon(self) -> None:
        """Stop caring about this file (it is being rewritten): let its hasher drain, delete it."""
        self._join_hasher()
        self.close()
        self.path.unlink(missing_ok=True)


def _raise_write_error(exc: OSError, path: Path) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskSpaceError(f"{path}: disk full while writing the converted weights") from None
    raise ConvertError(f"{path}: cannot write ({exc.strerror})") from None


def _pwrite_all(fd: int, data: memoryview, offset: int, path: Path) -> None:
    try:
        while data:
            written = os.pwrite(fd, data, offset)
            data = data[written:]
            offset += written
    except OSError as exc:
        _raise_write_error(exc, path)


_FLOAT_CODES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
_CODE_NAMES = {code: name for name, code in _DTYPE_NAMES.items()}
# A header bigger than this is not a weights file (safetensors itself caps it at 100 MB).
_MAX_HEADER = 100 * 1024 * 1024


def dtype_label(codes: Iterable[str]) -> str:
    """The manifest's `dtype` of a weights file: its floating dtypes (`float16`, or
    `float16+float32` when some tensors were kept in fp32); integer buffers such as position ids
    do not count unless the file holds nothing else."""
    codes = set(codes)
    floats = sorted(_FLOAT_CODES[c] for c in codes if c in _FLOAT_CODES)
    if floats:
        return "+".join(floats)
    return "+".join(sorted(_CODE_NAMES.get(c, c.lower()) for c in codes)) or "empty"


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(data section offset, header) of a safetensors file, parsed without the library."""
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) != 8:
            raise ValueError("shorter than a safetensors header")
        length = int.from_bytes(prefix, "little")
        if length > _MAX_HEADER:
            raise ValueError(f"header length {length} is not plausible")
        raw = fh.read(length)
    if len(raw) != length:
        raise ValueError("header is truncated")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return 8 + length, header
