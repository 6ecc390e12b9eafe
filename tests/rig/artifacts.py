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
