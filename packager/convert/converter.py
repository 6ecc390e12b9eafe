"""Weights → target-precision safetensors in the diffusers layout (owned by the convert work).

`convert` turns the files of a diffusers folder (or a single-file checkpoint plus the configs it
follows) into an artifact: one safetensors file a component in the target precision, configs and
tokenizer copied unchanged, `model_index.json` updated for dropped components and overrides, and a
manifest that hashes all of it. The work streams: tensors are read from memory maps, cast chunk by
chunk on a small thread pool and written at their final offsets while a thread a file hashes them,
so memory stays at a few chunk buffers however big the model is (see safetensors_writer.py).

Layout decisions:
- Sharded checkpoints are merged into one file a component: loaders map a safetensors file, so one
  big file costs nothing at load time and keeps the artifact a plain diffusers folder.
- Variants (`*.fp16.safetensors`) and `.bin` files are written under the standard names
  (`diffusion_pytorch_model.safetensors` for diffusers components, `model.safetensors` for
  transformers ones), so plain `from_pretrained(dir)` finds them without a variant argument.
- Tensors that alias each other (tied weights saved by torch.save) are stored once when the
  component's class declares the tie (`_tied_weights_keys`), as transformers' own save does;
  otherwise each name is written, because a loader that does not re-tie would miss the others.
- Only floating tensors are cast; integer buffers (position ids) keep their dtype.

The output appears atomically: everything is written into a temp directory beside `out_dir`, the
manifest last, then the directory is renamed into place. Weight files are not fsynced (the page
cache is what makes conversion fast); the manifest is, and `verify_artifact` re-hashes everything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from artifact_format import manifest as mf
from artifact_format.vocab import (
    DIFFUSERS_WEIGHTS,
    INDEX_RE,
    MODEL_INDEX,
    PRECISIONS,
    SCHEDULER_CONFIG,
    TRANSFORMERS_WEIGHTS,
    WEIGHTS_RE,
    Precision,
)
from packager.convert.safetensors_writer import (
    Engine,
    Entry,
    FileWriter,
    Layout,
    dtype_code,
    dtype_label,
    layout,
)
from packager.convert.tensor_reader import TensorSet, open_tensors, read_shard_index
from packager.errors import ConvertError

if TYPE_CHECKING:
    import torch

# Bumped whenever the converter's output bytes can change for the same input: it is hashed into the
# lock's fingerprint, so a new converter invalidates old locks as surely as a new source does.
CONVERTER_VERSION = "1"

Fp16Overflow = Literal["fail", "keep_fp32"]
_OUT_NAME = {
    "diffusion_pytorch_model": DIFFUSERS_WEIGHTS,
    "pytorch_model": TRANSFORMERS_WEIGHTS,
    "model": TRANSFORMERS_WEIGHTS,
}
# Weight formats we never copy into an artifact: anything else with these suffixes is a mistake
# upstream (a root checkpoint, an ONNX export) and would bloat the image by gigabytes.
_FOREIGN_WEIGHTS = (
    ".ckpt",
    ".pt",
    ".pth",
    ".bin",
    ".safetensors",
    ".onnx",
    ".onnx_data",
    ".msgpack",
    ".h5",
    ".pb",
    ".gguf",
    ".tflite",
    ".mlmodel",
)
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class ConvertSettings:
    """The packing settings that change the output (all of them are recorded in the manifest)."""

    precision: Precision = "fp16"
    fp16_overflow: Fp16Overflow = "fail"
    drop: tuple[str, ...] = ()
    # Scheduler class written instead of the source's, built from its config with
    # `SchedulerClass.from_config` (e.g. "DPMSolverMultistepScheduler").
    scheduler: str | None = None
    # Pipeline class for model_index.json's `_class_name` (e.g. "StableDiffusionImg2ImgPipeline").
    pipeline: str | None = None


def target_dtype(precision: str) -> torch.dtype:
    import torch

    try:
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    except KeyError:
        raise ConvertError(f"precision: must be one of {', '.join(PRECISIONS)} (got {precision!r})") from None


def convert(
    src_root: Path,
    files: list[str],
    out_dir: Path,
    *,
    name: str,
    settings: ConvertSettings,
    source_info: dict[str, Any],
    verify: bool = True,
    checkpoint: Path | None = None,
    workers: int = 2,
    progress: bool = False,
) -> mf.Manifest:
    """Convert the selected source files into an artifact at `out_dir` and return its manifest.

    Args:
        src_root: folder the `files` are relative to (a hub snapshot or a local diffusers folder).
        files: repo-relative paths to convert, as selected by the fetch stage. With `checkpoint`,
            the config folder's files (model_index.json, */config.json, tokenizer, scheduler).
        out_dir: where the artifact appears; replaced if it exists, only once the new one is complete.
        name: recipe name (manifest `name`).
        settings: precision, overflow policy, dropped components, scheduler/pipeline overrides.
        source_info: recorded verbatim as the manifest's `source`.
        verify: re-read every written tensor and compare it bit-exactly with the source cast.
        checkpoint: a single-file checkpoint (original SD layout) to take the weights from.
        workers: threads that cast and write (hashing runs on one more thread per file).
        progress: show a progress bar on stderr.

    Returns:
        The manifest written last into `out_dir` (its `artifact_id` names the artifact).

    Raises:
        ConvertError: unsafe or unreadable checkpoint, fp16 overflow (policy "fail"), unknown layout
            or override, a path escaping the output.
        VerifyError: a written tensor does not match the source cast.
        DiskSpaceError: the disk filled up while writing.
    """
    import torch

    dtype = target_dtype(settings.precision)
    if settings.fp16_overflow not in ("fail", "keep_fp32"):
        raise ConvertError(f"fp16_overflow: must be fail or keep_fp32 (got {settings.fp16_overflow!r})")
    rels = [_checked_relpath(f) for f in files]
    for rel in rels:
        if not (src_root / rel).is_file():
            raise ConvertError(f"{src_root / rel}: source file missing")
    if MODEL_INDEX not in rels:
        raise ConvertError(
            f"{src_root}: no {MODEL_INDEX} among the files to convert (not a diffusers pipeline)"
        )
    if checkpoint is not None and not checkpoint.is_file():
        raise ConvertError(f"{checkpoint}: checkpoint file missing")
    index = _read_json(src_root / MODEL_INDEX, MODEL_INDEX)
    plan = _plan_pipeline(index, settings)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o755)
    threads = torch.get_num_threads()
    # The pool below is the parallelism; torch's own intra-op threads would only fight it.
    torch.set_num_threads(1)
    try:
        entries, kept = _write_artifact(
            src_root, rels, tmp, index, plan, settings, dtype, verify, checkpoint, workers, progress
        )
        manifest = mf.Manifest(
            name=name,
            source=dict(source_info),
            precision=settings.precision,
            pipeline=plan.pipeline,
            files=tuple(entries),
            scheduler=plan.scheduler_record,
            dropped=tuple(sorted(settings.drop)),
            packing={
                "converter": CONVERTER_VERSION,
                "fp16_overflow": settings.fp16_overflow,
                "kept_fp32": {k: sorted(v) for k, v in sorted(kept.items())},
            },
        )
        mf.write(manifest, tmp)
        _rename_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return manifest


@dataclass
class _PipelinePlan:
    pipeline: str
    index_bytes: bytes | None  # rewritten model_index.json, None to copy it unchanged
    scheduler_record: dict[str, Any]


def _plan_pipeline(index: dict[str, Any], settings: ConvertSettings) -> _PipelinePlan:
    """Apply drops and overrides to model_index.json; check them against diffusers when needed."""
    components = {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)}
    for comp in settings.drop:
        if comp not in components:
            raise ConvertError(
                f"components.drop: {comp!r} is not a component of this pipeline "
                f"(components: {', '.join(sorted(components))})"
            )
    pipeline = settings.pipeline or str(index.get("_class_name", ""))
    if not pipeline:
        raise ConvertError(f"{MODEL_INDEX}: no _class_name (not a diffusers pipeline)")
    new_index = dict(index)
    for comp in settings.drop:
        new_index[comp] = [None, None]
    if "safety_checker" in settings.drop and "requires_safety_checker" in new_index:
        new_index["requires_safety_checker"] = False
    new_index["_class_name"] = pipeline
    source_scheduler = index.get("scheduler")
    source_class = (
        source_scheduler[1] if isinstance(source_scheduler, list) and len(source_scheduler) == 2 else None
    )
    record: dict[str, Any] = {"class": source_class, "overridden": False}
    if settings.pipeline or settings.drop:
        # Costs a diffusers import (seconds), worth it: a bad drop would otherwise surface only
        # when a worker fails to load the model.
        _check_pipeline_components(pipeline, new_index, settings)
    if settings.scheduler:
        if source_class is None:
            raise ConvertError("scheduler: this pipeline has no scheduler component to replace")
        new_index["scheduler"] = ["diffusers", settings.scheduler]
        record = {"class": settings.scheduler, "overridden": True, "source_class": source_class}
    changed = new_index != index
    return _PipelinePlan(
        pipeline=pipeline,
        index_bytes=(json.dumps(new_index, indent=2, sort_keys=True) + "\n").encode() if changed else None,
        scheduler_record=record,
    )


def _check_pipeline_components(pipeline: str, index: dict[str, Any], settings: ConvertSettings) -> None:
    """Refuse a pipeline class diffusers does not have, or drops it cannot load without."""
    import diffusers

    cls = getattr(diffusers, pipeline, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise ConvertError(f"pipeline: {pipeline!r} is not a diffusers pipeline class")
    expected, _optional = cls._get_signature_keys(cls)
    optional = set(getattr(cls, "_optional_components", []) or [])
    required = set(expected) - optional
    for comp in settings.drop:
        if comp in required:
            raise ConvertError(
                f"components.drop: {pipeline} cannot run without {comp!r} "
                f"(optional components: {', '.join(sorted(optional)) or 'none'})"
            )
    present = {k for k, v in index.items() if isinstance(v, list) and v != [None, None]}
    missing = sorted(required - present - set(settings.drop))
    if missing and settings.pipeline:
        raise ConvertError(f"pipeline: {pipeline} needs components this model lacks: {', '.join(missing)}")


def _scheduler_override(src_config: dict[str, Any], class_name: str) -> bytes:
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ConvertError(f"scheduler: {class_name!r} is not a diffusers scheduler class")
    try:
        scheduler = cls.from_config(src_config)
    except Exception as exc:  # diffusers raises plain ValueError/TypeError for incompatible configs
        raise ConvertError(
            f"scheduler: {class_name} cannot be built from the source config ({exc})"
        ) from None
    return scheduler.to_json_string().encode()


@dataclass
class _WeightsJob:
    """One output weights file and where its tensors come from.

    Sources are opened only when the job's turn comes (`torch.load` of a big `.bin` takes a
    while), so the first file is already being cast while the next ones are opened.
    """

    out_rel: str
    origin: str  # source file(s), for messages
    opener: Callable[[], TensorSet]
    size_hint: int  # source bytes: the biggest file goes first
    component: Any  # its model_index.json entry, for tied-weight rules
    dtype: torch.dtype
    tensors: TensorSet | None = None
    names: list[str] = field(default_factory=list)
    kept_fp32: set[str] = field(default_factory=set)
    overflowed: set[str] = field(default_factory=set)
    writer: FileWriter | None = None
    flat: _FlatSource | None = None

    def open(self) -> TensorSet:
        if self.tensors is None:
            self.tensors = self.opener()
            self.names = _dedupe_aliases(self.tensors, self.component)
        return self.tensors

    def close(self) -> None:
        if self.tensors is not None:
            self.tensors.close()


def _write_artifact(
    src_root: Path,
    rels: list[str],
    tmp: Path,
    index: dict[str, Any],
    plan: _PipelinePlan,
    settings: ConvertSettings,
    dtype: torch.dtype,
    verify: bool,
    checkpoint: Path | None,
    workers: int,
    progress: bool,
) -> tuple[list[mf.FileEntry], dict[str, set[str]]]:
    dropped = set(settings.drop)
    kept_rels = [r for r in rels if r.split("/")[0] not in dropped]
    groups, plain = _classify(kept_rels)
    jobs: list[_WeightsJob] = []
    entries: list[mf.FileEntry] = []
    try:
        if checkpoint is not None:
            from packager.convert.singlefile import checkpoint_components

            from_ckpt = checkpoint_components(checkpoint, src_root, index, dropped)
            for comp, (tensors, out_name) in from_ckpt.items():
                groups.pop(comp, None)  # the checkpoint's weights win over any in the config folder
                size = sum(t.nbytes for t in tensors.tensors.values())
                opener: Callable[[], TensorSet] = functools.partial(_same, tensors)
                out_rel = f"{comp}/{out_name}"
                jobs.append(_WeightsJob(out_rel, checkpoint.name, opener, size, index.get(comp), dtype))
        for folder, paths in sorted(groups.items()):
            out_rel, sources = _pick_weights(folder, paths, src_root)
            label_of = {src_root / r: r for r in sources}
            opener = functools.partial(open_tensors, [src_root / r for r in sources], label_of)
            size = sum((src_root / r).stat().st_size for r in sources)
            jobs.append(
                _WeightsJob(out_rel, ", ".join(sources), opener, size, index.get(folder.split("/")[0]), dtype)
            )

        weighted = {job.out_rel.split("/")[0] for job in jobs}
        for comp, spec in sorted(index.items()):
            if comp in dropped or comp.startswith("_") or not isinstance(spec, list) or None in spec:
                continue
            if f"{comp}/config.json" in plain and comp not in weighted:
                where = (
                    "in the checkpoint or the config folder" if checkpoint else "among the files to convert"
                )
                raise ConvertError(
                    f"{comp}: no weights {where}; fetch them, or drop the component (components.drop)"
                )

        for rel in plain:
            if rel == MODEL_INDEX and plan.index_bytes is not None:
                entries.append(_write_bytes(tmp, rel, plan.index_bytes))
            elif rel == SCHEDULER_CONFIG and settings.scheduler:
                src_config = _read_json(src_root / rel, rel)
                entries.append(_write_bytes(tmp, rel, _scheduler_override(src_config, settings.scheduler)))
            else:
                entries.append(_copy_file(src_root / rel, tmp, rel))
        if settings.scheduler and SCHEDULER_CONFIG not in plain:
            raise ConvertError(f"scheduler: the source has no {SCHEDULER_CONFIG} to build the override from")

        entries += _run_jobs(jobs, tmp, settings, verify, workers, progress)
        kept = {j.out_rel: j.kept_fp32 for j in jobs if j.kept_fp32}
        return entries, kept
    finally:
        for job in jobs:
            job.close()


def _same(tensors: TensorSet) -> TensorSet:
    return tensors


def _classify(rels: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Split files into weights (grouped by folder) and files copied as they are."""
    groups: dict[str, list[str]] = {}
    plain: list[str] = []
    for rel in rels:
        folder, _, base = rel.rpartition("/")
        if WEIGHTS_RE.match(base) or INDEX_RE.match(base):
            if not folder:
                raise ConvertError(f"{rel}: weights at the top of the repo belong to no component")
            groups.setdefault(folder, []).append(rel)
        elif base.lower().endswith(_FOREIGN_WEIGHTS):
            raise ConvertError(
                f"{rel}: not a diffusers component's weights; single-file checkpoints are converted "
                "with `source.file`, other formats are not supported"
            )
        else:
            plain.append(rel)
    return groups, plain


def _pick_weights(folder: str, rels: list[str], src_root: Path) -> tuple[str, list[str]]:
    """The one weight set of a folder (safetensors over .bin) and its output path."""
    sets: dict[tuple[str, str | None, str], dict[str, list[str]]] = {}
    for rel in rels:
        base = rel.rpartition("/")[2]
        m = WEIGHTS_RE.match(base) or INDEX_RE.match(base)
        assert m is not None
        key = (m["stem"], m["variant"] or m["legacy"], m["fmt"])
        kind = "index" if base.endswith(".json") else "weights"
        sets.setdefault(key, {"index": [], "weights": []})[kind].append(rel)
    variants = sorted({(k[0], k[1] or "") for k in sets})
    if len(variants) > 1:
        shown = ", ".join(f"{s}{'.' + v if v else ''}" for s, v in variants)
        raise ConvertError(f"{folder}: several weight sets ({shown}); select one variant")
    fmts = {k[2]: k for k in sets}
    key = fmts.get("safetensors") or fmts["bin"]
    chosen = sets[key]
    weights = sorted(chosen["weights"])
    if chosen["index"]:
        index_rel = chosen["index"][0]
        weight_map = read_shard_index(src_root / index_rel, index_rel)
        needed = sorted({f"{folder}/{shard}" for shard in weight_map.values()})
        absent = [r for r in needed if r not in weights]
        if absent:
            raise ConvertError(f"{index_rel}: shard {absent[0]} is not among the files to convert")
        weights = needed
    if not weights:
        raise ConvertError(f"{folder}: a shard index but no weight files")
    return f"{folder}/{_OUT_NAME[key[0]]}", weights


def _dedupe_aliases(tensors: TensorSet, component: Any) -> list[str]:
    """Names to write: every tensor, less the tie targets its class re-ties on load."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, t in tensors.tensors.items():
        if t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        groups.setdefault(key, []).append(name)
    shared = [sorted(g) for g in groups.values() if len(g) > 1]
    if not shared:
        return sorted(tensors.tensors)
    tied = _tied_targets(component)
    drop: set[str] = set()
    for group in shared:
        targets = [n for n in group if tied(n)]
        if len(targets) < len(group):
            drop.update(targets)
    return sorted(n for n in tensors.tensors if n not in drop)


def _tied_targets(component: Any) -> Callable[[str], bool]:
    """Which names the component's class ties to another on load (transformers' `_tied_weights_keys`)."""
    if not (
        isinstance(component, list) and len(component) == 2 and all(isinstance(c, str) for c in component)
    ):
        return lambda _name: False
    library, class_name = component
    cls = None
    try:
        if library == "transformers":
            import transformers

            cls = getattr(transformers, class_name, None)
        else:
            import diffusers

            cls = getattr(diffusers, class_name, None)
    except ImportError:
        cls = None
    keys = getattr(cls, "_tied_weights_keys", None) or []
    patterns = list(keys.keys()) if isinstance(keys, dict) else list(keys)
    return lambda name: any(name == p or re.fullmatch(p, name) for p in patterns)


class _FlatSource:
    """1-D views of the source tensors; non-contiguous ones are copied once while in use."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors
        self._copies: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def flat(self, name: str) -> torch.Tensor:
        t = self._tensors[name]
        if t.is_contiguous():
            return t.reshape(-1)
        with self._lock:
            copy = self._copies.get(name)
            if copy is None:
                copy = self._copies[name] = t.contiguous().reshape(-1)
            return copy

    def release(self, name: str) -> None:
        with self._lock:
            self._copies.pop(name, None)


def _run_jobs(
    jobs: list[_WeightsJob], tmp: Path, settings: ConvertSettings, verify: bool, workers: int, progress: bool
) -> list[mf.FileEntry]:
    from packager.convert.verify import ReadBack

    # Largest first: its hash is the longest sequential task, so it should start first.
    jobs = sorted(jobs, key=lambda j: (-j.size_hint, j.out_rel))
    engine = Engine(workers)
    bar = _progress_bar(jobs, progress)
    try:

        def start(job: _WeightsJob) -> None:
            try:
                queue_file(job)
            except BaseException as exc:
                engine.fail(exc)  # stop the other files' work too, now
                raise

        def queue_file(job: _WeightsJob) -> None:
            out_path = tmp / job.out_rel
            out_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            tensors = job.open()
            plan = _layout_for(job)
            if bar is not None:
                bar.total += plan.data_bytes
                bar.refresh()
            job.flat = _FlatSource(tensors.tensors)
            fill = _filler(job, plan, settings, engine.chunk_bytes)
            readback = None
            if verify:
                origin = tensors.origin

                def readback(path: Path) -> ReadBack:
                    return ReadBack(path, job.out_rel, plan, origin)

            job.writer = FileWriter(engine, out_path, plan, fill, readback, bar.update if bar else None)
            job.writer.start()

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
                        job.kept_fp32 |= job.overflowed
                        job.overflowed = set()
                        start(job)
            except BaseException as exc:
                engine.fail(exc)  # before leaving the block, which waits for the queueing threads
                raise
        out = []
        for job in jobs:
            assert job.writer is not None
            size, sha = job.writer.finish()
            if job.overflowed:  # only an fp64 source beyond even fp32's range gets here
                raise ConvertError(f"{job.origin}: {sorted(job.overflowed)[0]} overflows even float32")
            codes = [dtype_code(e.dtype) for e in job.writer.plan.entries]
            out.append(mf.FileEntry(job.out_rel, size, sha, len(codes), dtype_label(codes)))
        return out
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


def _wait(future: Future[Any], engine: Engine) -> None:
    """The future's result, giving up as soon as any other task of the engine has failed."""
    while True:
        try:
            future.result(timeout=0.05)
            return
        except FutureTimeout:
            engine.raise_if_failed()


def _layout_for(job: _WeightsJob) -> Layout:
    import torch

    specs = []
    assert job.tensors is not None
    for name in job.names:
        t = job.tensors.tensors[name]
        out = t.dtype
        if t.is_floating_point():
            out = torch.float32 if name in job.kept_fp32 else job.dtype
        specs.append((name, out, tuple(t.shape)))
    return layout(specs)


def _filler(
    job: _WeightsJob, plan: Layout, settings: ConvertSettings, chunk_bytes: int
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
        if (
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


def _overflow(job: _WeightsJob, entry: Entry, src: torch.Tensor, settings: ConvertSettings) -> None:
    import torch

    if settings.fp16_overflow == "keep_fp32":
        job.overflowed.add(entry.name)
        return
    finite = src[torch.isfinite(src)]
    peak = float(finite.abs().max()) if finite.numel() else float("nan")
    kind = str(entry.dtype).removeprefix("torch.")
    where = job.tensors.origin.get(entry.name, job.origin) if job.tensors else job.origin
    raise ConvertError(
        f"{where}: tensor {entry.name} has values beyond the {kind} "
        f"range (max |x| = {peak:.6g}); set fp16_overflow: keep_fp32 to keep it in fp32, "
        "or use precision: bf16"
    )


def _progress_bar(jobs: list[_WeightsJob], enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=0, unit="B", unit_scale=True, desc="convert", leave=False)


def _checked_relpath(rel: str) -> str:
    try:
        return mf.safe_relpath(rel)
    except mf.ManifestError:
        raise ConvertError(
            f"refusing source file {rel!r}: its path would escape the artifact directory"
        ) from None


def _read_json(path: Path, label: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{label}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{label}: not a JSON object")
    return data


def _create(tmp: Path, rel: str) -> int:
    target = tmp / rel
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.fchmod(fd, 0o644)
    return fd


def _write_bytes(tmp: Path, rel: str, data: bytes) -> mf.FileEntry:
    fd = _create(tmp, rel)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return mf.FileEntry(rel, len(data), hashlib.sha256(data).hexdigest())


def _copy_file(src: Path, tmp: Path, rel: str) -> mf.FileEntry:
    """Copy a file byte for byte, hashing what is written."""
    sha = hashlib.sha256()
    size = 0
    fd = _create(tmp, rel)
    try:
        with open(src, "rb") as fh:
            while chunk := fh.read(_COPY_CHUNK):
                sha.update(chunk)
                size += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return mf.FileEntry(rel, size, sha.hexdigest())


def _remove_stale_temps(out_dir: Path) -> None:
    """Delete temp dirs that killed conversions left beside `out_dir` (their process is gone)."""
    prefix = f".{out_dir.name}.tmp-"
    for path in out_dir.parent.glob(f"{prefix}*"):
        pid_text = path.name[len(prefix) :].split("-")[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue


def _rename_into_place(tmp: Path, out_dir: Path) -> None:
    os.chmod(tmp, 0o755)
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    _fsync_dir(out_dir.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
