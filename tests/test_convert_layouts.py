"""Every fixture layout (tests/rig/layouts.py), selected as fetch selects it, converts and loads.

These are the repos the hub serves in the other tests: `.bin` folders, legacy shards, SDXL with
fp16 variants next to onnx/openvino exports, fp16 branches, portraitplus with its root checkpoints,
and the single-file checkpoints with the config folder they follow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from packager.convert.converter import convert
from packager.convert.settings import ConvertSettings
from packager.convert.verify import verify_artifact
from packager.source.select import select_files
from tests.rig import layouts as L

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _source_state(folder: Path, selected: list[str], component: str) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for rel in selected:
        if rel.startswith(f"{component}/") and not rel.endswith(".json"):
            path = folder / rel
            out.update(
                load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
            )
    return out


@pytest.mark.parametrize(
    ("repo", "branch", "variant"),
    [
        (L.SD_BIN, "main", None),
        (L.SD_BIN_SHARDED, "main", None),
        (L.SDXL, "main", "fp16"),
        (L.SD_FP16_BRANCH, "fp16", None),
        (L.PORTRAITPLUS, "main", None),
        (L.SD_EVERYTHING, "main", "fp16"),
    ],
)
def test_each_layout_converts_to_a_pipeline_plain_diffusers_loads(
    hub_layouts, tmp_path, repo, branch, variant
):
    import torch
    from diffusers import DiffusionPipeline

    folder = hub_layouts[repo].refs[branch]
    index = json.loads((folder / "model_index.json").read_text())
    selected = list(select_files(_files(folder), index, variant=variant).files)
    out = tmp_path / "art"
    manifest = convert(
        folder,
        selected,
        out,
        name="tiny",
        settings=ConvertSettings(),
        source_info={"kind": "hub", "repo": repo},
    )

    verify_artifact(out)
    assert not [p for p in _files(out) if p.endswith((".bin", ".ckpt", ".onnx", ".msgpack", ".xml"))]
    for entry in manifest.weight_files:
        component = entry.path.split("/")[0]
        got = _load(out / entry.path)
        want = _source_state(folder, selected, component)
        assert sorted(got) == sorted(want), entry.path
        for key, t in want.items():
            expected = t.half() if t.is_floating_point() else t
            assert got[key].dtype == expected.dtype, f"{entry.path}: {key}"
            assert torch.equal(got[key], expected), f"{entry.path}: {key}"
    pipe = DiffusionPipeline.from_pretrained(out, dtype=torch.float16)
    assert type(pipe).__name__ == index["_class_name"]


@pytest.mark.parametrize("checkpoint", [L.SINGLE_FILE_CKPT, L.SINGLE_FILE_SAFETENSORS])
def test_the_single_file_layout_converts_with_its_config_repo(hub_layouts, tmp_path, checkpoint):
    from diffusers import DiffusionPipeline

    config = hub_layouts[L.SD_CONFIG].folder
    index = json.loads((config / "model_index.json").read_text())
    selected = list(select_files(_files(config), index, weights=False).files)
    manifest = convert(
        config,
        selected,
        tmp_path / "art",
        name="tiny",
        settings=ConvertSettings(),
        source_info={"kind": "file"},
        checkpoint=hub_layouts[L.SD_ORIGINAL].folder / checkpoint,
    )
    assert {e.path for e in manifest.weight_files} == {
        f"unet/{DIFFUSERS_WEIGHTS}",
        f"vae/{DIFFUSERS_WEIGHTS}",
        "text_encoder/model.safetensors",
    }
    DiffusionPipeline.from_pretrained(tmp_path / "art")


def _load(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(path)
