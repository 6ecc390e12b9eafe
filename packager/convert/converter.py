"""Weights → target-precision safetensors in the diffusers layout.

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
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact_format import manifest as mf
from artifact_format.vocab import CONVERTER_VERSION, MODEL_INDEX, SCHEDULER_CONFIG
from packager.convert.files import (
    checked_relpath,
    copy_file,
    read_json,
    remove_stale_temps,
    rename_into_place,
    write_bytes,
)
from packager.convert.jobs import WeightsJob, run_jobs
from packager.convert.model_index import PipelinePlan, plan_pipeline, scheduler_override
from packager.convert.settings import ConvertSettings, target_dtype
from packager.convert.tensor_reader import TensorSet, open_tensors
from packager.convert.weights import classify, pick_weights, same
from packager.errors import ConvertError

if TYPE_CHECKING:
    import torch


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
    rels = [checked_relpath(f) for f in files]
    for rel in rels:
        if not (src_root / rel).is_file():
            raise ConvertError(f"{src_root / rel}: source file missing")
    if MODEL_INDEX not in rels:
        raise ConvertError(
            f"{src_root}: no {MODEL_INDEX} among the files to convert (not a diffusers pipeline)"
        )
    if checkpoint is not None and not checkpoint.is_file():
        raise ConvertError(f"{checkpoint}: checkpoint file missing")
    index = read_json(src_root / MODEL_INDEX, MODEL_INDEX)
    plan = plan_pipeline(index, settings)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
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
        rename_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return manifest


def _write_artifact(
    src_root: Path,
    rels: list[str],
    tmp: Path,
    index: dict[str, Any],
    plan: PipelinePlan,
    settings: ConvertSettings,
    dtype: torch.dtype,
    verify: bool,
    checkpoint: Path | None,
    workers: int,
    progress: bool,
) -> tuple[list[mf.FileEntry], dict[str, set[str]]]:
    dropped = set(settings.drop)
    kept_rels = [r for r in rels if r.split("/")[0] not in dropped]
    groups, plain = classify(kept_rels)
    jobs: list[WeightsJob] = []
    entries: list[mf.FileEntry] = []
    try:
        if checkpoint is not None:
            from packager.convert.singlefile import checkpoint_components

            from_ckpt = checkpoint_components(checkpoint, src_root, index, dropped)
            for comp, (tensors, out_name) in from_ckpt.items():
                groups.pop(comp, None)  # the checkpoint's weights win over any in the config folder
                size = sum(t.nbytes for t in tensors.tensors.values())
                opener: Callable[[], TensorSet] = functools.partial(same, tensors)
                out_rel = f"{comp}/{out_name}"
                jobs.append(WeightsJob(out_rel, checkpoint.name, opener, size, index.get(comp), dtype))
        for folder, paths in sorted(groups.items()):
            out_rel, sources = pick_weights(folder, paths, src_root)
            label_of = {src_root / r: r for r in sources}
            opener = functools.partial(open_tensors, [src_root / r for r in sources], label_of)
            size = sum((src_root / r).stat().st_size for r in sources)
            jobs.append(
                WeightsJob(out_rel, ", ".join(sources), opener, size, index.get(folder.split("/")[0]), dtype)
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
                entries.append(write_bytes(tmp, rel, plan.index_bytes))
            elif rel == SCHEDULER_CONFIG and settings.scheduler:
                src_config = read_json(src_root / rel, rel)
                entries.append(write_bytes(tmp, rel, scheduler_override(src_config, settings.scheduler)))
            else:
                entries.append(copy_file(src_root / rel, tmp, rel))
        if settings.scheduler and SCHEDULER_CONFIG not in plain:
            raise ConvertError(f"scheduler: the source has no {SCHEDULER_CONFIG} to build the override from")

        entries += run_jobs(jobs, tmp, settings, verify, workers, progress)
        kept = {j.out_rel: j.kept_fp32 for j in jobs if j.kept_fp32}
        return entries, kept
    finally:
        for job in jobs:
            job.close()
