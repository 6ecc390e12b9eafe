"""Single-file checkpoints (original SD layout) → a diffusers artifact, offline, via packager.convert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from packager.convert.converter import convert
from packager.convert.settings import ConvertSettings
from packager.errors import ConvertError
from tests.rig.artifacts import files_of, tiny_with_and_without_checker
from tests.rig.layouts import write_original_checkpoint
from tests.rig.worker import draw


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny pipeline, its config folder (no weights) and the same as single-file checkpoints."""
    root = tmp_path_factory.mktemp("singlefile")
    both = tiny_with_and_without_checker(root)
    plain = both["plain"]
    config = root / "config"
    shutil.copytree(plain, config)
    for weights in config.rglob("*.safetensors"):
        weights.unlink()
    return {
        **both,
        "config": config,
        "safetensors": write_original_checkpoint(plain, root / "tiny-sd.safetensors"),
        "ckpt": write_original_checkpoint(plain, root / "tiny-sd.ckpt"),
    }


def run(config: Path, checkpoint: Path, out: Path, **settings: Any) -> Any:
    return convert(
        config,
        files_of(config),
        out,
        name="tiny",
        settings=ConvertSettings(**settings),
        source_info={"kind": "file", "sha256": "0" * 64},
        checkpoint=checkpoint,
    )


def state(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(path)


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_a_single_file_checkpoint_becomes_the_diffusers_pipeline_it_came_from(tiny, tmp_path, fmt):
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    out = tmp_path / "art"
    manifest = run(tiny["config"], tiny[fmt], out, precision="fp32")

    for comp, name in (
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ):
        got, want = state(out / comp / name), state(tiny["plain"] / comp / name)
        assert sorted(got) == sorted(want), comp
        assert all(torch.equal(got[k], t) for k, t in want.items()), comp
        assert manifest.file(f"{comp}/{name}").tensors == len(want)
    assert (out / "tokenizer" / "vocab.json").read_bytes() == (
        tiny["config"] / "tokenizer" / "vocab.json"
    ).read_bytes()
    assert manifest.source == {"kind": "file", "sha256": "0" * 64}

    def render(folder: Path) -> Any:
        return draw(DiffusionPipeline.from_pretrained(folder), "a tiny cat", 3)

    assert np.array_equal(render(out), render(tiny["plain"]))


def test_fp16_from_a_checkpoint_is_the_cast_of_its_tensors(tiny, tmp_path):
    out = tmp_path / "art"
    manifest = run(tiny["config"], tiny["ckpt"], out)
    got = state(out / "vae" / "diffusion_pytorch_model.safetensors")
    want = state(tiny["plain"] / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(got[k].dtype == t.half().dtype and (got[k] == t.half()).all() for k, t in want.items())
    assert manifest.file("vae/diffusion_pytorch_model.safetensors").dtype == "float16"


def test_a_malicious_ckpt_is_refused_and_never_runs(tiny, tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "callbacks": Payload()}, ckpt)
    with pytest.raises(ConvertError, match=r"evil\.ckpt: refused to unpickle: it needs io\.open"):
        run(tiny["config"], ckpt, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_a_config_folder_that_does_not_match_the_checkpoint_is_named(tiny, tmp_path):
    config = tmp_path / "config"
    shutil.copytree(tiny["config"], config)
    unet_config = json.loads((config / "unet" / "config.json").read_text())
    unet_config["block_out_channels"] = [16, 64]
    (config / "unet" / "config.json").write_text(json.dumps(unet_config))
    with pytest.raises(
        ConvertError, match=r"unet: \S+ is \[32, .*does the config folder match the checkpoint"
    ):
        run(config, tiny["safetensors"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_components_the_checkpoint_lacks_must_have_weights_or_be_dropped(tiny, tmp_path):
    """SD checkpoints carry no safety checker: a config that has one needs its weights or a drop."""
    config = tmp_path / "config"
    shutil.copytree(tiny["full"], config)
    for weights in config.rglob("*.safetensors"):
        if weights.parent.name != "safety_checker":
            weights.unlink()
    bare = tmp_path / "bare"
    shutil.copytree(config, bare)
    (bare / "safety_checker" / "model.safetensors").unlink()

    with pytest.raises(
        ConvertError, match=r"safety_checker: no weights in the checkpoint or the config folder"
    ):
        run(bare, tiny["safetensors"], tmp_path / "out")
    dropped = run(
        bare, tiny["safetensors"], tmp_path / "dropped", drop=("feature_extractor", "safety_checker")
    )
    assert dropped.dropped == ("feature_extractor", "safety_checker")
    with_checker = run(config, tiny["safetensors"], tmp_path / "with")  # taken from the config folder
    assert with_checker.file("safety_checker/model.safetensors").tensors == len(
        state(tiny["full"] / "safety_checker" / "model.safetensors")
    )


def test_a_scaled_fp8_checkpoint_is_refused_in_one_line(tiny, tmp_path):
    """ComfyUI's "scaled fp8" files carry a scale per layer; converting the weights without it would
    store values off by that factor, so such a file is refused before anything is written."""
    import torch
    from safetensors.torch import save_file

    weights = {
        k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state(tiny["safetensors"]).items()
    }
    first = next(k for k, v in weights.items() if v.dtype == torch.float8_e4m3fn)
    weights[first.removesuffix(".weight") + ".scale_weight"] = torch.tensor(0.5)
    weights["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    path = tmp_path / "scaled-fp8.safetensors"
    save_file(weights, path)
    with pytest.raises(
        ConvertError,
        match=r"^scaled-fp8\.safetensors: a scaled fp8 checkpoint \(per-layer scale_weight tensors\)",
    ):
        run(tiny["config"], path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
