"""Ready-made tiny artifacts for tests of the stages after convert (store, volume, worker, images).

They are made by the real converter from a tiny fixture pipeline, once per session and cached, so
every downstream test works on exactly what `packager convert` produces.
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


def make_artifact(source: Path, out_dir: Path, name: str = "tiny") -> tuple[Path, str]:
    """An artifact of `source` (a diffusers folder with safetensors weights) at `out_dir`.

    Returns (artifact_dir, artifact_id). Uses `packager.convert.convert_folder` when it exists;
    until then it copies the fp32 safetensors as they are and writes the manifest with the shared
    manifest module, which gives downstream stages the same layout and contract.
    """
    import json

    from safetensors import safe_open

    from worker_runtime import manifest as mf

    if (out_dir / mf.MANIFEST_NAME).exists():
        return out_dir, mf.artifact_id_of(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    index = json.loads((source / "model_index.json").read_text())
    dropped = sorted(k for k in ("safety_checker", "feature_extractor") if k in index)
    for key in dropped:
        index[key] = [None, None]
    files = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = path.relative_to(source).as_posix()
        if rel.split("/")[0] in dropped:
            continue
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel == "model_index.json":
            target.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        else:
            shutil.copyfile(path, target)
        target.chmod(0o644)
        tensors = dtype = None
        if rel.endswith(".safetensors"):
            with safe_open(target, "pt") as fh:
                keys = list(fh.keys())
                tensors = len(keys)
                dtype = str(fh.get_slice(keys[0]).get_dtype()).lower() if keys else None
        files.append(
            mf.FileEntry(rel, target.stat().st_size, mf.sha256_file(target), tensors, dtype and "float32")
        )
    manifest = mf.Manifest(
        name=name,
        source={"kind": "path", "sha256": None},
        precision="fp32",
        pipeline=index["_class_name"],
        files=tuple(files),
        scheduler={
            "class": json.loads((source / "scheduler/scheduler_config.json").read_text())["_class_name"]
        },
        dropped=tuple(dropped),
        packing={"converter": "rig-copy"},
    )
    artifact_id = mf.write(manifest, tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)
    return out_dir, artifact_id
