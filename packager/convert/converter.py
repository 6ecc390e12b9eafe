"""Weights → target-precision safetensors in the diffusers layout.

`convert` turns the files of a diffusers folder (or a single-file checkpoint plus the configs it
follows) into an artifact: each component's weights in the dtype precision.py decides tensor by
tensor, packed into files of at most `shard_size` tensor bytes, configs and
tokenizer copied unchanged, `model_index.json` updated for dropped components and overrides, and a
manifest that hashes all of it. The work streams: tensors are read from memory maps, cast chunk by
chunk on a small thread pool and written at their final offsets while a thread a file hashes them,
so memory stays at a few chunk buffers however big the model is (see safetensors_writer.py).

Layout decisions:
- Every component is re-packed by `shard_size`, sharded source or not: one image layer a file, and
  registries refuse layers over 10 GB. A component that fits is one file under the standard name;
  otherwise shards and the `*.safetensors.index.json` that `from_pretrained` reads (shards.py).
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

import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact_format import manifest as mf
from artifact_format.vocab import CONVERTER_VERSION, INDEX_RE, MODEL_INDEX, SCHEDULER_CONFIG
from packager.convert.files import (
    checked_relpath,
    copy_file,
    read_json,
    remove_stale_temps,
    rename_into_place,
    write_bytes,
)
from packager.convert.jobs import ComponentWeights, WeightsJob, run_jobs
from packager.convert.lora import LoraSpec, plan_fusion
from packager.convert.model_index import PipelinePlan, plan_pipeline, scheduler_override
from packager.convert.precision import PrecisionPlan, plan_precision
from packager.convert.settings import ConvertSettings
from packager.convert.shards import index_bytes, index_name
from packager.convert.tensor_reader import TensorSet, open_tensors
from packager.convert.weights import classify, dedupe_aliases, pick_weights
from packager.errors import ConvertError

if TYPE_CHECKING:
    pass


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
    notify: Callable[[str], None] | None = None,
    loras: Sequence[LoraSpec] = (),
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
        notify: receives one line a message for the user: what each component is stored in,
            and a warning for each explicit fp16 on a component known to overflow in it.
        loras: fused into the weights they name, in order, as each weight is written (lora.py);
            recorded as the manifest's `fused_loras`.

    Returns:
        The manifest written last into `out_dir` (its `artifact_id` names the artifact).

    Raises:
        ConvertError: unsafe or unreadable checkpoint, fp16 overflow (policy "fail"), unknown layout
            or override, a path escaping the output, a LoRA that does not fit the pipeline.
        VerifyError: a written tensor does not match the source cast.
        DiskSpaceError: the disk filled up while writing.
    """
    import torch

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
    precision = plan_precision(
        index, src_root, settings.precision, settings.precision_overrides, set(settings.drop)
    )
    if notify is not None:
        notify(precision.summary())
        for line in precision.warnings:
            notify(line)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o755)
    threads = torch.get_num_threads()
    # The pool below is the parallelism; torch's own intra-op threads would only fight it.
    torch.set_num_threads(1)
    try:
        entries, kept, fused = _write_artifact(
            src_root,
            rels,
            tmp,
            index,
            plan,
            settings,
            precision,
            verify,
            checkpoint,
            (workers, progress),
            list(loras),
        )
        manifest = mf.Manifest(
            name=name,
            source=dict(source_info),
            precision=precision.resolved,
            pipeline=plan.pipeline,
            files=tuple(entries),
            scheduler=plan.scheduler_record,
            dropped=tuple(sorted(settings.drop)),
            components=precision.record(),
            fused_loras=fused,
            packing={
                "converter": CONVERTER_VERSION,
                "precision": settings.precision,
                "precision_overrides": {
                    k: v if isinstance(v, str) else dict(sorted(v.items()))
                    for k, v in sorted(settings.precision_overrides.items())
                },
                "shard_size": settings.shard_size,
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
    precision: PrecisionPlan,
    verify: bool,
    checkpoint: Path | None,
    run: tuple[int, bool],
    loras: list[LoraSpec],
) -> tuple[list[mf.FileEntry], dict[str, set[str]], tuple[mf.FusedLora, ...]]:
    """Write the configs and every component's weights into `tmp`; `run` is (workers, progress)."""
    dropped = set(settings.drop)
    kept_rels = [r for r in rels if r.split("/")[0] not in dropped]
    groups, plain = classify(kept_rels)
    components: list[ComponentWeights] = []
    try:
        _open_components(src_root, groups, index, precision, checkpoint, dropped, components)
        _require_weights(index, dropped, plain, components, checkpoint)
        fused: tuple[mf.FusedLora, ...] = ()
        if loras:
            transforms, fused = plan_fusion(loras, components, plan.pipeline, index, src_root)
            for weights in components:
                weights.transform = transforms.get(weights.folder)
        entries = _write_plain(src_root, plain, tmp, plan, settings)
        jobs: list[WeightsJob] = []
        for weights in components:
            jobs += _shard_jobs(weights, tmp, settings, entries)
        entries += run_jobs(jobs, tmp, settings, verify, *run)
        kept = {c.folder: c.kept_fp32 for c in components if c.kept_fp32}
        return entries, kept, fused
    finally:
        for weights in components:
            weights.tensors.close()


def _open_components(
    src_root: Path,
    groups: dict[str, list[str]],
    index: dict[str, Any],
    precision: PrecisionPlan,
    checkpoint: Path | None,
    dropped: set[str],
    out: list[ComponentWeights],
) -> None:
    """Open every component's source tensors (appended to `out` as they open, so they get closed)."""
    if checkpoint is not None:
        from packager.convert.singlefile import checkpoint_components

        # The lock took weights from the config only for what the checkpoint does not carry.
        from_ckpt = checkpoint_components(checkpoint, src_root, index, dropped | set(groups))
        for comp, (tensors, out_name) in from_ckpt.items():
            out.append(_component(comp, out_name, checkpoint.name, tensors, index, precision))
    for folder, paths in sorted(groups.items()):
        out_rel, sources = pick_weights(folder, paths, src_root)
        label_of = {src_root / r: r for r in sources}
        tensors = open_tensors([src_root / r for r in sources], label_of)
        out_folder, _, out_name = out_rel.rpartition("/")
        out.append(_component(out_folder, out_name, ", ".join(sources), tensors, index, precision))


def _require_weights(
    index: dict[str, Any],
    dropped: set[str],
    plain: list[str],
    components: list[ComponentWeights],
    checkpoint: Path | None,
) -> None:
    """A component with a config.json but no weights would load random: refuse it."""
    weighted = {c.folder.split("/")[0] for c in components}
    for comp, spec in sorted(index.items()):
        if comp in dropped or comp.startswith("_") or not isinstance(spec, list) or None in spec:
            continue
        if f"{comp}/config.json" in plain and comp not in weighted:
            where = "in the checkpoint or the config folder" if checkpoint else "among the files to convert"
            raise ConvertError(
                f"{comp}: no weights {where}; fetch them, or drop the component (components.drop)"
            )


def _write_plain(
    src_root: Path, plain: list[str], tmp: Path, plan: PipelinePlan, settings: ConvertSettings
) -> list[mf.FileEntry]:
    """Configs and tokenizers as they are; model_index.json and the scheduler as the recipe edits them."""
    entries = []
    for rel in plain:
        if rel == MODEL_INDEX and plan.index_bytes is not None:
            entries.append(write_bytes(tmp, rel, plan.index_bytes))
        elif rel == SCHEDULER_CONFIG and settings.scheduler:
            src_config = read_json(src_root / rel, rel)
            entries.append(write_bytes(tmp, rel, scheduler_override(src_config, settings.scheduler)))
        elif not INDEX_RE.match(rel.rpartition("/")[2]):  # shard indexes are written anew
            entries.append(copy_file(src_root / rel, tmp, rel))
    if settings.scheduler and SCHEDULER_CONFIG not in plain:
        raise ConvertError(f"scheduler: the source has no {SCHEDULER_CONFIG} to build the override from")
    return entries


def _shard_jobs(
    weights: ComponentWeights, tmp: Path, settings: ConvertSettings, entries: list[mf.FileEntry]
) -> list[WeightsJob]:
    """One job a file of the component as `shard_size` packs it; the shard index when it takes several."""
    if settings.fp16_overflow == "keep_fp32":
        _prescan_overflow(weights, settings.shard_size)
    shards = weights.shards(settings.shard_size)
    if len(shards) > 1:
        rel = f"{weights.folder}/{index_name(weights.file_name)}"
        entries.append(write_bytes(tmp, rel, index_bytes(shards)))
    return [
        WeightsJob(f"{weights.folder}/{shard.name}", weights, list(shard.tensors), shard.nbytes)
        for shard in shards
    ]


def _component(
    folder: str, file_name: str, origin: str, tensors: TensorSet, index: dict[str, Any], plan: PrecisionPlan
) -> ComponentWeights:
    comp = folder.split("/")[0]
    names = dedupe_aliases(tensors, index.get(comp))
    return ComponentWeights(folder, file_name, origin, tensors, names, plan.for_component(comp))


def _prescan_overflow(weights: ComponentWeights, limit: int) -> None:
    """Find the tensors fp16 cannot hold before packing, when keeping them in fp32 could move
    files past the limit (the rewrite after an overflow found while writing cannot re-pack)."""
    import torch

    narrowed = [
        n
        for n in weights.names
        if weights.dtype_of(n) == torch.float16
        and weights.tensors.tensors[n].is_floating_point()
        and torch.finfo(weights.tensors.tensors[n].dtype).max > torch.finfo(torch.float16).max
    ]
    worst = sum(weights.nbytes(n) for n in weights.names) + sum(weights.nbytes(n) for n in narrowed)
    if not narrowed or worst <= limit:
        return
    for name in narrowed:
        src = weights.tensors.tensors[name]
        if int(torch.isinf(src.to(torch.float16)).sum()) > int(torch.isinf(src).sum()):
            weights.kept_fp32.add(name)
