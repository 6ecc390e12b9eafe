"""What a user sees of precision: convert says what `auto` resolved to and warns about fp16 risks."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.rig.cli import run_packager
from tests.rig.models_dit import save_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]


def packager(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PACKAGER_BUILD_DIR": str(cwd / "build")}
    return run_packager(*args, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def pixart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pipeline("pixart-sigma", tmp_path_factory.mktemp("pixart") / "model")


def test_convert_says_what_auto_resolved_to_and_records_it(pixart: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "pixart.yaml"
    recipe.write_text(f"name: pixart\nsource: {{path: {pixart}}}\nshard_size: 2KB\n")

    converted = packager("convert", str(recipe), cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    assert "precision: auto → bf16 (text_encoder=bf16, transformer=bf16, vae=bf16)" in converted.stderr
    (folder,) = (tmp_path / "build" / "artifacts" / "pixart").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["precision"] == "bf16"
    assert manifest["schema"] == 2
    assert manifest["components"]["text_encoder"] == {
        "compute": "bfloat16",
        "skip_modules": [],
        "storage": "bfloat16",
    }
    index = folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    assert index.is_file()


def test_explicit_fp16_on_a_t5_pipeline_warns_in_one_line(pixart: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "pixart.yaml"
    recipe.write_text(f"name: pixart\nsource: {{path: {pixart}}}\nprecision: fp16\n")
    converted = packager("convert", str(recipe), cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    warnings = [line for line in converted.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: text_encoder (T5EncoderModel) in fp16: T5 encoders overflow fp16 (NaN embeddings, "
        "black images); use precision: auto or bf16"
    ]
    assert "precision: fp16 (text_encoder=fp16, transformer=fp16, vae=fp16; " in converted.stderr


def test_a_bad_override_is_one_line(pixart: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "pixart.yaml"
    recipe.write_text(f"name: pixart\nsource: {{path: {pixart}}}\nprecision_overrides: {{unet: fp32}}\n")
    converted = packager("convert", str(recipe), cwd=tmp_path)
    assert converted.returncode == 2
    assert (
        converted.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "precision_overrides: 'unet' is not a component with weights "
            "(components: text_encoder, transformer, vae)"
        )
    )


def test_lock_and_validate_say_what_auto_resolved_to_per_component(pixart: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "pixart.yaml"
    recipe.write_text(f"name: pixart\nsource: {{path: {pixart}}}\n")
    before = packager("validate", str(recipe), cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    assert "precision: auto →" not in before.stdout  # no lock yet: nothing resolved

    locked = packager("lock", str(recipe), cwd=tmp_path)
    assert locked.returncode == 0, locked.stderr
    resolved = "auto → bf16 (text_encoder=bf16, transformer=bf16, vae=bf16)"
    assert [line.split(None, 1) for line in locked.stdout.splitlines() if line.startswith("precision")] == [
        ["precision", resolved]
    ]
    after = packager("validate", str(recipe), cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert f"# precision: {resolved} (for pixart.lock)" in after.stdout.splitlines()


def test_the_keep_lists_in_force_are_named_wherever_precision_is_said(pixart: Path, tmp_path: Path) -> None:
    """fp16: transformers keeps T5's `wo` in fp32, and lock, validate and convert all say so."""
    recipe = tmp_path / "pixart.yaml"
    recipe.write_text(f"name: pixart\nsource: {{path: {pixart}}}\nprecision: fp16\n")
    line = (
        "precision: fp16 (text_encoder=fp16, transformer=fp16, vae=fp16; "
        "text_encoder (T5EncoderModel) keeps wo in fp32)"
    )
    locked = packager("lock", str(recipe), cwd=tmp_path)
    assert locked.returncode == 0, locked.stderr
    rows = [row.split(None, 1) for row in locked.stdout.splitlines() if row.startswith("precision")]
    assert rows == [["precision", line.removeprefix("precision: ")]]
    assert f"# {line} (for pixart.lock)" in packager("validate", str(recipe), cwd=tmp_path).stdout
    converted = packager("convert", str(recipe), cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    assert line in converted.stderr.splitlines()
