"""The streaming part of conversion: one job per output file, cast chunk by chunk on a small thread
pool and written at final offsets while a thread per file hashes, so memory stays at a few chunk
buffers however big the model is."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact_format import manifest as mf
from packager.convert.precision import ComponentPrecision
from packager.convert.safetensors_writer import (
    Engine,
    Entry,
    FileWriter,
    Layout,
    dtype_code,
    dtype_label,
    layout,
)
from packager.convert.settings import ConvertSettings, TensorTransform
from packager.convert.shards import Shard, plan_shards
from packager.convert.tensor_reader import TensorSet
from packager.errors import ConvertError

if TYPE_CHECKING:
    import torch


@dataclass
class ComponentWeights:
    """One component's source tensors, opened once, and the dtype each is written in."""

    folder: str  # the component folder in the artifact
    file_name: str  # its weights file name when one file holds them all
    origin: str  # source file(s), for messages
    tensors: TensorSet
    names: list[str]  # what is written: every tensor less re-tied aliases
    rules: ComponentPrecision
    transform: TensorTransform | None = None
    kept_fp32: set[str] = field(default_factory=set)

    def dtype_of(self, name: str) -> torch.dtype:
        import torch

        t = self.tensors.tensors[name]
        if t.is_floating_point() and name in self.kept_fp32:
            return torch.float32
        return self.rules.dtype_for(name, t.dtype)

    def nbytes(self, name: str) -> int:
        return self.tensors.tensors[name].numel() * self.dtype_of(name).itemsize

    def shards(self, limit: int) -> list[Shard]:
        return plan_shards(self.file_name, {n: self.nbytes(n) for n in self.names}, limit)


@dataclass
class WeightsJob:
    """One output weights file: a shard (or the whole) of one component."""

    out_rel: str
    weights: ComponentWeights
    names: list[str]
    size_hint: int  # bytes written: the biggest file goes first
    overflowed: set[str] = field(default_factory=set)
    writer: FileWriter | None = None
    flat: _FlatSource | None = None

    @property
    def origin(self) -> str:
        return self.weights.origin


class _FlatSource:
    """1-D views of the tensors to store, made once per tensor while it is being written.

    This is the one place a tensor's values can change before the cast: `transform` (when set)
    gets each whole source tensor and returns what to store instead. Its result, like the copy of
    a non-contiguous tensor, is kept only until the tensor's last chunk is written, so memory
    stays bounded by the largest tensor.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], transform: TensorTransform | None = None) -> None:
        self._tensors = tensors
        self._transform = transform
        self._copies: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def flat(self, name: str) -> torch.Tensor:
        t = self._tensors[name]
        if self._transform is None and t.is_contiguous():
            return t.reshape(-1)
        with self._lock:
            copy = self._copies.get(name)
            if copy is None:
                made = self._transform(name, t) if self._transform is not None else t
                copy = self._copies[name] = made.contiguous().reshape(-1)
            return copy

    def release(self, name: str) -> None:
        with self._lock:
            self._copies.pop(name, None)


def run_jobs(
    jobs: list[WeightsJob], tmp: Path, settings: ConvertSettings, verify: bool, workers: int, progress: bool
) -> list[mf.FileEntry]:
    """Write every job's file into `tmp`; the manifest entries of the written files, in job order."""
    # Largest first: its hash is the longest sequential task, so it should start first.
    jobs = sorted(jobs, key=lambda j: (-j.size_hint, j.out_rel))
    engine = Engine(workers)
    bar = _progress_bar(jobs, progress)
    try:

        def start(job: WeightsJob) -> None:
            try:
                _queue_file(job, engine, tmp, settings, verify, bar)
            except BaseException as exc:
                engine.fail(exc)  # stop the other files' work too, now
                raise

        _write_all(jobs, engine, start)
        return [_finished(job) for job in jobs]
    except BaseException as exc:
        engine.fail(exc)
        raise
    finally:
        engine.close()
        for job in jobs:
            if job.writer is not None:
                job.writer.close()
        if bar is not None:
            bar.close()


def _queue_file(
    job: WeightsJob, engine: Engine, tmp: Path, settings: ConvertSettings, verify: bool, bar: Any
) -> None:
    """Open the job's source, lay out its file and start writing it on the engine."""
    from packager.convert.verify import ReadBack

    out_path = tmp / job.out_rel
    out_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tensors = job.weights.tensors
    plan = _layout_for(job)
    if bar is not None:
        bar.total += plan.data_bytes
        bar.refresh()
    job.flat = _FlatSource(tensors.tensors, job.weights.transform)
    fill = _filler(job, plan, settings, engine.chunk_bytes)
    readback = None
    if verify:
        origin = tensors.origin

        def readback(path: Path) -> ReadBack:
            return ReadBack(path, job.out_rel, plan, origin)

    job.writer = FileWriter(engine, out_path, plan, fill, readback, bar.update if bar else None)
    job.writer.start()


def _write_all(jobs: list[WeightsJob], engine: Engine, start: Callable[[WeightsJob], None]) -> None:
    """Queue the jobs two at a time and wait until each file is written (rewritten for keep_fp32)."""
    # Two files are queued at once, each with its own buffers: while the biggest file's hash
    # (sequential by nature) catches up, the next file is opened and cast.
    with ThreadPoolExecutor(2, thread_name_prefix="queue") as queuers:
        try:
            queued = [queuers.submit(start, job) for job in jobs]
            for job, started in zip(jobs, queued, strict=True):
                _wait(started, engine)
                assert job.writer is not None
                job.writer.wait_written()
                if job.overflowed:
                    # keep_fp32: the first pass found every tensor that overflows; write the file
                    # again with those in fp32 (fp32 holds any value the source had: once is enough).
                    job.writer.abandon()
                    job.weights.kept_fp32 |= job.overflowed
                    job.overflowed = set()
                    start(job)
        except BaseException as exc:
            engine.fail(exc)  # before leaving the block, which waits for the queueing threads
            raise


def _finished(job: WeightsJob) -> mf.FileEntry:
    """The written file's manifest entry, once its hash is complete."""
    assert job.writer is not None
    size, sha = job.writer.finish()
    if job.overflowed:  # only an fp64 source beyond even fp32's range gets here
        raise ConvertError(f"{job.origin}: {sorted(job.overflowed)[0]} overflows even float32")
    codes = [dtype_code(e.dtype) for e in job.writer.plan.entries]
    return mf.FileEntry(job.out_rel, size, sha, len(codes), dtype_label(codes))


def _wait(future: Future[Any], engine: Engine) -> None:
    """The future's result, giving up as soon as any other task of the engine has failed."""
    while True:
        try:
            future.result(timeout=0.05)
            return
        except FutureTimeout:
            engine.raise_if_failed()


def _layout_for(job: WeightsJob) -> Layout:
    specs = []
    for name in job.names:
        t = job.weights.tensors.tensors[name]
        specs.append((name, job.weights.dtype_of(name), tuple(t.shape)))
    return layout(specs)


def _filler(
    job: WeightsJob, plan: Layout, settings: ConvertSettings, chunk_bytes: int
) -> Callable[[Entry, int, int, Any], None]:
    """Cast one piece into the output buffer, catching values the target dtype cannot hold."""
    import torch

    assert job.flat is not None
    flat = job.flat
    # How many chunks each tensor spans: its contiguous copy (if any) is dropped after the last.
    remaining = {
        e.name: (e.start + e.nbytes - 1) // chunk_bytes - e.start // chunk_bytes + 1
        for e in plan.entries
        if e.nbytes
    }
    lock = threading.Lock()

    def fill(entry: Entry, lo: int, hi: int, dst: torch.Tensor) -> None:
        src_full = flat.flat(entry.name)
        src = src_full[lo:hi]
        dst.copy_(src)
        if dst.dtype == torch.float8_e4m3fn and src.dtype != dst.dtype:
            # The cast saturates silently: anything past fp8's range would be stored wrong.
            if src.numel() and float(src.abs().max()) > torch.finfo(dst.dtype).max:
                _overflow_fp8(job, entry, src_full)
        elif (
            src.dtype != dst.dtype
            and dst.is_floating_point()
            and torch.finfo(dst.dtype).max < torch.finfo(src.dtype).max
        ):
            lo_v, hi_v = torch.aminmax(dst)
            if not (torch.isfinite(lo_v) and torch.isfinite(hi_v)):
                overflow = int(torch.isinf(dst).sum()) > int(torch.isinf(src).sum())
                if overflow:
                    _overflow(job, entry, src_full, settings)
        with lock:
            remaining[entry.name] -= 1
            last = remaining[entry.name] == 0
        if last:
            flat.release(entry.name)

    return fill


def _overflow_fp8(job: WeightsJob, entry: Entry, src: torch.Tensor) -> None:
    peak = float(src.float().abs().max())
    where = job.weights.tensors.origin.get(entry.name, job.origin)
    comp = job.weights.folder.split("/")[0]
    raise ConvertError(
        f"{where}: tensor {entry.name} has values beyond float8_e4m3fn's range (max |x| = {peak:.6g}); "
        f'keep its layer out of fp8 with precision_overrides: {{{comp}: {{"{entry.name}": bf16}}}}'
    )


def _overflow(job: WeightsJob, entry: Entry, src: torch.Tensor, settings: ConvertSettings) -> None:
    import torch

    if settings.fp16_overflow == "keep_fp32":
        job.overflowed.add(entry.name)
        return
    finite = src[torch.isfinite(src)]
    peak = float(finite.abs().max()) if finite.numel() else float("nan")
    kind = str(entry.dtype).removeprefix("torch.")
    where = job.weights.tensors.origin.get(entry.name, job.origin)
    raise ConvertError(
        f"{where}: tensor {entry.name} has values beyond the {kind} "
        f"range (max |x| = {peak:.6g}); set fp16_overflow: keep_fp32 to keep it in fp32, "
        "or use precision: bf16"
    )


def _progress_bar(jobs: list[WeightsJob], enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=0, unit="B", unit_scale=True, desc="convert", leave=False)
