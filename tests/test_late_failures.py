"""Failures that used to surface late or leave something behind, caught where they start.

A class model_index.json names that the installed diffusers/transformers lack fails `convert` in one
line (not a worker's start); a failed convert leaves no empty artifact folder and keeps its lock; a
fetch whose bytes do not match the lock leaves no lock pinning them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.rig import layouts as L
from tests.rig.cli import run_packager
from tests.rig.fixtures_hub import write_recipe
from tests.rig.localhub import Blob, LocalHub


def last_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exit 2, no traceback, and its error as the last line of stderr."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("packager: error: "), proc.stderr
    return line


@pytest.fixture
def edited_source(tiny_build: tuple[Path, Path], tmp_path: Path) -> Path:
    source = tmp_path / "source"
    shutil.copytree(tiny_build[0], source)
    return source


def env_for(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PACKAGER_BUILD_DIR": str(tmp_path / "build"), "HOME": str(tmp_path)}


@pytest.mark.parametrize(
    ("component", "value", "expected"),
    [
        (
            "unet",
            ["diffusers", "NoSuchUNet2DModel"],
            "unet: class diffusers.NoSuchUNet2DModel does not exist",
        ),
        (
            "text_encoder",
            ["transformers", "CLIPTextModelNope"],
            "text_encoder: class transformers.CLIPTextModelNope does not exist",
        ),
        ("_class_name", "NoSuchPipeline", "pipeline: 'NoSuchPipeline' is not a diffusers pipeline class"),
    ],
    ids=["diffusers-class", "transformers-class", "pipeline-class"],
)
def test_a_class_the_installed_libraries_lack_fails_convert_and_keeps_the_pin(
    edited_source: Path, tmp_path: Path, component: str, value: object, expected: str
) -> None:
    index_path = edited_source / "model_index.json"
    index = json.loads(index_path.read_text())
    index[component] = value
    index_path.write_text(json.dumps(index))
    recipe = write_recipe(tmp_path, f"name: tiny\nsource: {{path: {edited_source}}}\n")

    proc = run_packager("convert", str(recipe), env=env_for(tmp_path))

    assert expected in last_line_error(proc)
    assert recipe.with_suffix(".lock").is_file(), "a converter failure keeps the pin"
    assert not (tmp_path / "build" / "artifacts").exists(), "no empty artifact folder"


def test_a_fetch_that_does_not_match_the_lock_leaves_no_lock(
    hub: LocalHub, hub_env: dict[str, str], tmp_path: Path
) -> None:
    repo = hub.fork_repo(L.SD_FP16_BRANCH, "tiny/liar")
    head = hub.head("tiny/liar")
    commit = repo.commits[head]
    rel = "unet/diffusion_pytorch_model.safetensors"
    good = commit.files[rel]
    flipped = bytearray(good.path.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    served = hub.put_blob(bytes(flipped))
    # The hub lists the good sha256 and serves other bytes of the same size.
    repo.commits[head] = dataclasses.replace(
        commit, files={**commit.files, rel: Blob(good.sha256, good.oid, good.size, served.path)}
    )
    recipe = write_recipe(tmp_path, "name: liar\nsource: {repo: tiny/liar}\n")

    proc = run_packager("fetch", str(recipe), env=hub_env | {"PACKAGER_BUILD_DIR": str(tmp_path / "b")})

    line = last_line_error(proc)
    assert rel in line
    assert "does not match the lock" in line
    assert not recipe.with_suffix(".lock").exists(), "no lock pins bytes that never arrived intact"
    assert list(tmp_path.glob("*.lock*")) == []
