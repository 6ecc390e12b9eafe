"""Ready-made tiny artifacts for tests of the stages after convert (store, volume, worker, images).

They are made by the real converter from a tiny fixture pipeline and cached, so every downstream
test works on exactly what `packager convert` produces.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.rig.models import save_sd_pipeline


def tiny_source(folder: Path, seed: int = 0, with_safety_checker: bool = False) -> Path:
    if not (folder / "model_index.json").exists():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_sd_pipeline(tmp, seed=seed, with_safety_checker=with_safety_checker)
        tmp.rename(folder)
    return folder


def tiny_recipe(folder: Path, source: Path, name: str = "tiny", extra: str = "") -> Path:
    """Write a minimal recipe for `source` into `folder` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / f"{name}.yaml"
    recipe.write_text(f"name: {name}\nsource:\n  path: {source}\n{extra}")
    return recipe


def make_artifact(
    source: Path, out_dir: Path, name: str = "tiny", precision: str = "fp32"
) -> tuple[Path, str]:
    """The artifact `packager convert` makes of `source` (fp32 by default, the precision a CPU serves
    in), without the safety checker, at `out_dir`. Returns (artifact_dir, artifact_id); cached."""
    from artifact_format import manifest as mf
    from packager.convert.converter import convert
    from packager.convert.settings import ConvertSettings
    from packager.source.local_folder import select_local

    if (out_dir / mf.MANIFEST_NAME).exists():
        return out_dir, mf.artifact_id_of(out_dir)
    drop = ("feature_extractor", "safety_checker")
    manifest = convert(
        source,
        list(select_local(source, drop)),
        out_dir,
        name=name,
        settings=ConvertSettings(precision=precision, drop=drop),  # type: ignore[arg-type]
        source_info={"kind": "path"},
    )
    return out_dir, manifest.artifact_id


def family_artifact(kind: str, root: Path) -> tuple[Path, str]:
    """The fp32 artifact `packager convert` makes of the tiny `kind` pipeline (tests/rig/models_dit.py
    PIPELINES: flux-dev, flux-schnell, sd3, pixart-sigma, wan, ltx). Returns (artifact_dir, id)."""
    from artifact_format import manifest as mf
    from packager.convert.converter import convert
    from packager.convert.settings import ConvertSettings
    from packager.source.local_folder import select_local
    from tests.rig.models_dit import save_pipeline

    out_dir = root / "artifact"
    if (out_dir / mf.MANIFEST_NAME).exists():
        return out_dir, mf.artifact_id_of(out_dir)
    source = root / "source"
    if not (source / "model_index.json").exists():
        save_pipeline(kind, source)
    manifest = convert(
        source,
        list(select_local(source, ())),
        out_dir,
        name=kind,
        settings=ConvertSettings(precision="fp32"),
        source_info={"kind": "path"},
    )
    return out_dir, manifest.artifact_id


def fp8_variant(
    src: Path, out_dir: Path, component: str = "transformer", skip: tuple[str, ...] = ("embed",)
) -> tuple[Path, str]:
    """A schema-2 copy of artifact `src` whose `component` stores every parameter of its Linear and
    Conv layers in float8_e4m3fn and everything else in bfloat16, except the modules `skip` matches
    (stored in bfloat16 whole). What the fp8 converter writes, made by hand for the worker's tests."""
    import re

    import torch
    from safetensors.torch import load_file, save_file

    from artifact_format import manifest as mf

    shutil.copytree(src, out_dir)
    folder = out_dir / component
    state: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(path))
        path.unlink()
    for index in folder.glob("*.index.json"):
        index.unlink()
    layers = _layer_names(out_dir, component)
    out = {}
    for name, tensor in sorted(state.items()):
        module = name.rpartition(".")[0]
        fp8 = module in layers and not any(re.search(p, module) for p in skip)
        out[name] = tensor.to(torch.float8_e4m3fn if fp8 else torch.bfloat16).contiguous()
    save_file(out, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    old = mf.load(src)
    files = [
        f for f in old.files if not f.path.startswith(f"{component}/") or not f.path.endswith(".safetensors")
    ]
    files = [f for f in files if not (f.path.startswith(f"{component}/") and f.path.endswith(".index.json"))]
    weights = folder / "diffusion_pytorch_model.safetensors"
    files.append(
        mf.FileEntry(
            weights.relative_to(out_dir).as_posix(),
            weights.stat().st_size,
            mf.sha256_file(weights),
            len(out),
            "bfloat16+float8_e4m3fn",
        )
    )
    manifest = mf.Manifest(
        name=old.name,
        source=old.source,
        precision="bf16",
        pipeline=old.pipeline,
        files=tuple(files),
        scheduler=old.scheduler,
        dropped=old.dropped,
        packing=old.packing,
        components={component: mf.ComponentPrecision("float8_e4m3fn", "bfloat16", skip)},
    )
    (out_dir / mf.MANIFEST_NAME).unlink()
    return out_dir, mf.write(manifest, out_dir)


def _layer_names(artifact: Path, component: str) -> set[str]:
    """Names of the Linear and Conv modules of an artifact's component (the layers diffusers casts)."""
    import json

    import diffusers
    import torch
    from accelerate import init_empty_weights

    class_name = json.loads((artifact / "model_index.json").read_text())[component][1]
    cls = getattr(diffusers, class_name)
    with init_empty_weights():
        model = cls.from_config(cls.load_config(artifact / component))
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return {name for name, module in model.named_modules() if isinstance(module, kinds)}


def tiny_with_and_without_checker(root: Path) -> dict[str, Path]:
    """The tiny SD pipeline saved with its safety checker ("full") and without it ("plain")."""
    from tests.rig.layouts import without_safety_checker

    full = save_sd_pipeline(root / "full", seed=0, with_safety_checker=True)
    return {"full": full, "plain": without_safety_checker(full, root / "plain")}


def files_of(folder: Path) -> list[str]:
    """Every file under `folder`, as sorted relative POSIX paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
