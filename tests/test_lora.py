"""LoRAs fused at package time: the artifact equals diffusers' own `load_lora_weights` + `fuse_lora`.

The LoRAs are built offline for the tiny SD pipeline (tests/rig/loras.py) in kohya and PEFT key
formats, with a text encoder part and LoCon convolutions. The oracle is diffusers with peft,
loading the same source folder in fp32; our artifact is converted at fp32 and compared tensor by
tensor.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from artifact_format import manifest as mf
from packager.convert.lora import read_pairs
from packager.errors import ConvertError
from packager.pipeline.artifact import convert_to
from packager.source import lock as lk
from packager.source.drift import check_lock, refresh_lock
from packager.source.recipe import load_recipe
from tests.rig import layouts as L
from tests.rig.cli import run_packager
from tests.rig.fixtures_hub import write_recipe
from tests.rig.loras import kohya_lora, peft_lora, save_lora


@pytest.fixture
def model(hub_layouts: Any, tmp_path: Path) -> Path:
    """A plain fp32 SD folder (no safety checker) beside the recipes."""
    return Path(shutil.copytree(hub_layouts[L.SD_FP16_BRANCH].folder, tmp_path / "model"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe(folder: Path, loras: str, *, name: str = "lora") -> Path:
    body = f"name: {name}\nsource:\n  path: ./model\nprecision: fp32\nloras:\n{loras}"
    return write_recipe(folder, body, name)


def tensors(folder: Path, comp: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    name = "model.safetensors" if comp == "text_encoder" else "diffusion_pytorch_model.safetensors"
    return load_file(str(folder / comp / name))


def diffusers_fused(model: Path, loras: list[tuple[Path, float]]) -> dict[str, dict[str, Any]]:
    """The oracle: diffusers loads each LoRA with peft and fuses it at its scale."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model), torch_dtype=torch.float32)
    for i, (path, scale) in enumerate(loras):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"l{i}")
        pipe.fuse_lora(lora_scale=scale, adapter_names=[f"l{i}"])
        pipe.unload_lora_weights()  # keeps the fused weights, drops the adapter
    return {"unet": pipe.unet.state_dict(), "text_encoder": pipe.text_encoder.state_dict()}


def assert_matches_oracle(artifact: Path, model: Path, oracle: dict[str, dict[str, Any]]) -> set[str]:
    """Every weight within fp32 tolerance of the oracle; returns the weights the LoRAs changed."""
    import torch

    changed = set()
    for comp, expected in oracle.items():
        ours, source = tensors(artifact, comp), tensors(model, comp)
        assert set(ours) == set(expected), comp
        for name, want in expected.items():
            torch.testing.assert_close(ours[name], want, rtol=1e-5, atol=1e-5, msg=f"{comp} {name}")
            if not torch.equal(ours[name], source[name]):
                changed.add(f"{comp}.{name}")
    return changed


def test_kohya_lora_and_locon_fuse_like_diffusers(model: Path, tmp_path: Path) -> None:
    lora = save_lora(kohya_lora(model), tmp_path / "loras" / "style.safetensors")
    rec = recipe(tmp_path, "  - path: loras/style.safetensors\n    scale: 0.7\n")
    artifact = convert_to(load_recipe(rec), tmp_path / "out", quiet=True)

    changed = assert_matches_oracle(artifact.dir, model, diffusers_fused(model, [(lora, 0.7)]))
    assert "unet.down_blocks.0.resnets.0.conv1.weight" in changed  # LoCon 3x3 conv
    assert "unet.mid_block.attentions.0.proj_in.weight" in changed  # 1x1 conv from a linear-shaped LoRA
    assert "text_encoder.encoder.layers.0.self_attn.q_proj.weight" in changed
    assert len(changed) == 14
    manifest = mf.load(artifact.dir)
    assert [(f.sha256, f.scale, f.components) for f in manifest.fused_loras] == [
        (sha256(lora), 0.7, ("text_encoder", "unet"))
    ]
    assert manifest.fused_loras[0].source == {
        "kind": "file",
        "name": "style.safetensors",
        "size": lora.stat().st_size,
        "sha256": sha256(lora),
    }


def test_each_module_is_fused_with_its_own_alpha_and_alpha_r_when_absent(model: Path, tmp_path: Path) -> None:
    """W + scale·(alpha/r)·B·A computed here by hand: diffusers itself applies one alpha to a kohya
    file's modules whose alphas differ, and that alpha to a module that has none."""
    import torch

    state = kohya_lora(model, varied_alpha=True, locon=True)
    save_lora(state, tmp_path / "varied.safetensors")
    rec = recipe(tmp_path, "  - path: varied.safetensors\n    scale: 0.6\n")
    artifact = convert_to(load_recipe(rec), tmp_path / "out", quiet=True)
    unet, source = tensors(artifact.dir, "unet"), tensors(model, "unet")
    for module in (
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",  # no alpha: alpha = r
        "down_blocks.0.resnets.0.conv1",
    ):
        name = "lora_unet_" + module.replace(".", "_")
        down, up = state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"]
        alpha = float(state[f"{name}.alpha"]) if f"{name}.alpha" in state else 4.0
        w = source[f"{module}.weight"]
        want = w + 0.6 * (alpha / 4) * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
        torch.testing.assert_close(unet[f"{module}.weight"], want, rtol=1e-5, atol=1e-5)


def test_two_loras_peft_and_kohya_stack_like_diffusers(model: Path, tmp_path: Path) -> None:
    peft = save_lora(peft_lora(model), tmp_path / "peft.safetensors")
    kohya = save_lora(kohya_lora(model, locon=False, seed=5), tmp_path / "kohya.safetensors")
    rec = recipe(tmp_path, "  - path: peft.safetensors\n    scale: 1.3\n  - path: kohya.safetensors\n")
    artifact = convert_to(load_recipe(rec), tmp_path / "out", quiet=True)

    oracle = diffusers_fused(model, [(peft, 1.3), (kohya, 1.0)])
    assert len(assert_matches_oracle(artifact.dir, model, oracle)) == 12
    assert [f.scale for f in mf.load(artifact.dir).fused_loras] == [1.3, 1.0]


def convert_fails(tmp_path: Path, model: Path, state: dict[str, Any]) -> str:
    save_lora(state, tmp_path / "bad.safetensors")
    rec = recipe(tmp_path, "  - path: bad.safetensors\n", name="bad")
    result = run_packager("convert", str(rec), "-o", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("packager: error: ")]
    assert len(errors) == 1, result.stderr
    assert not (tmp_path / "out").exists()
    return errors[0]


def test_a_lora_key_that_matches_nothing_fails_in_one_line(model: Path, tmp_path: Path) -> None:
    import torch

    state = kohya_lora(model, text=False, locon=False)
    state["lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"] = torch.zeros(4, 64)
    state["lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight"] = torch.zeros(64, 4)
    line = convert_fails(tmp_path, model, state)
    assert "bad.safetensors" in line
    assert "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight" in line
    assert "maps to no module of unet" in line


def test_a_lora_of_the_wrong_shape_fails_naming_the_key(model: Path, tmp_path: Path) -> None:
    import torch

    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    state = {f"{name}.lora_down.weight": torch.zeros(4, 48), f"{name}.lora_up.weight": torch.zeros(64, 4)}
    line = convert_fails(tmp_path, model, state)
    assert f"{name}.lora_" in line
    assert "does not fit unet" in line
    assert "[64, 64]" in line


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("lora_unet_mid_block_attentions_0_proj_in.hada_w1_a", "LoHa"),
        ("lora_unet_mid_block_attentions_0_proj_in.lokr_w1", "LoKr"),
        ("lora_unet_mid_block_attentions_0_proj_in.dora_scale", "DoRA"),
        ("unet.mid_block.attentions.0.proj_in.lora_magnitude_vector", "DoRA"),
    ],
)
def test_loha_lokr_and_dora_are_refused_by_name(model: Path, tmp_path: Path, key: str, kind: str) -> None:
    import torch

    state = kohya_lora(model, text=False, locon=False)
    state[key] = torch.ones(4, 4)
    path = save_lora(state, tmp_path / "variant.safetensors")
    with pytest.raises(ConvertError) as err:
        read_pairs(
            path,
            path.name,
            "StableDiffusionPipeline",
            json.loads((model / "model_index.json").read_text()),
            model,
        )
    assert str(err.value).startswith(f"variant.safetensors: a {kind} file (key {key})")


def test_lock_pins_each_lora_and_its_scale_enters_the_fingerprint(model: Path, tmp_path: Path) -> None:
    lora = save_lora(kohya_lora(model, text=False), tmp_path / "style.safetensors")
    rec = recipe(tmp_path, "  - path: style.safetensors\n    scale: 0.5\n")
    lock, status, _ = refresh_lock(load_recipe(rec), quiet=True)
    assert status == "created"
    assert lock.source["loras"] == [
        {
            "kind": "file",
            "name": "style.safetensors",
            "size": lora.stat().st_size,
            "sha256": sha256(lora),
            "scale": 0.5,
        }
    ]
    text = rec.with_suffix(".lock").read_text()
    again, status, _ = refresh_lock(load_recipe(rec), quiet=True)
    assert (status, again.fingerprint, rec.with_suffix(".lock").read_text()) == (
        "unchanged",
        lock.fingerprint,
        text,
    )

    rec.write_text(rec.read_text().replace("scale: 0.5", "scale: 0.8"))
    _, reasons = check_lock(load_recipe(rec))
    assert reasons == ["recipe changed: loras[0].scale 0.5 → 0.8"]
    rescaled, status, _ = refresh_lock(load_recipe(rec), quiet=True)
    assert status == "updated"
    assert rescaled.fingerprint != lock.fingerprint

    save_lora(kohya_lora(model, text=False, seed=9), lora)
    _, reasons = check_lock(load_recipe(rec))
    assert reasons == ["loras[0] changed: style.safetensors"]
    relocked = lk.build_lock(load_recipe(rec), quiet=True)
    assert relocked.fingerprint != rescaled.fingerprint
    assert relocked.source["loras"][0]["sha256"] == sha256(lora)


def test_a_sha256_the_file_does_not_have_fails_the_lock_in_one_line(model: Path, tmp_path: Path) -> None:
    save_lora(kohya_lora(model, text=False), tmp_path / "style.safetensors")
    rec = recipe(tmp_path, f"  - path: style.safetensors\n    sha256: {'ab' * 32}\n")
    result = run_packager("lock", str(rec))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"packager: error: loras[0]: style.safetensors has sha256 {sha256(tmp_path / 'style.safetensors')}, "
        f"the recipe says {'ab' * 32}"
    ]
    assert not rec.with_suffix(".lock").exists()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("  - repo: org/loras\n", "6: loras.0: a hub LoRA needs `file` (the weights file in the repo)"),
        (
            "  - path: a.safetensors\n    url: https://example.com/a\n",
            "6: loras.0: give exactly one of repo, path or url (got path, url)",
        ),
        ("  - path: a.safetensors\n    scale: .inf\n", "7: loras.0.scale: input should be a finite number"),
        ("  - path: a.safetensors\n    sha256: abc\n", "7: loras.0.sha256: invalid value 'abc'"),
        ("  - path: a.safetensors\n    weight: 1\n", "7: loras.0.weight: unknown field"),
    ],
)
def test_validate_reports_a_bad_lora_entry_in_one_line(tmp_path: Path, entry: str, message: str) -> None:
    rec = recipe(tmp_path, entry)
    result = run_packager("validate", str(rec))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"packager: error: {rec}:{message}"), lines


def test_hub_and_url_loras_are_locked_fetched_and_fused(
    model: Path, tmp_path: Path, hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from packager.source.lora_inputs import fetch_loras
    from tests.rig.download_server import TOKEN, DownloadServers

    kohya = save_lora(kohya_lora(model, locon=False), tmp_path / "kohya.safetensors")
    hub.create_repo("me/loras")
    commit = hub.commit("me/loras", {"style/kohya.safetensors": kohya})
    peft = save_lora(peft_lora(model), tmp_path / "peft.safetensors")
    servers = DownloadServers(peft.read_bytes())
    monkeypatch.setenv("CIVITAI_TOKEN", TOKEN)
    try:
        entries = (
            "  - repo: me/loras\n    file: style/kohya.safetensors\n    scale: 0.9\n"
            f"  - url: {servers.url}\n    token_env: CIVITAI_TOKEN\n"
        )
        loaded = load_recipe(recipe(tmp_path, entries))
        lock, _, _ = refresh_lock(loaded, quiet=True)
        hub_record, url_record = lock.source["loras"]
        assert hub_record == {
            "kind": "hub",
            "repo": "me/loras",
            "revision": "main",
            "commit": commit,
            "file": "style/kohya.safetensors",
            "size": kohya.stat().st_size,
            "sha256": sha256(kohya),
            "scale": 0.9,
        }
        assert (url_record["url"], url_record["name"], url_record["sha256"]) == (
            servers.url,
            "dreamy_v1.safetensors",
            sha256(peft),
        )
        assert TOKEN not in loaded.lock_path.read_text()
        fetched, _ = fetch_loras(loaded, lock, quiet=True)
        assert [(f.path.read_bytes(), f.scale) for f in fetched] == [
            (kohya.read_bytes(), 0.9),
            (peft.read_bytes(), 1.0),
        ]

        artifact = convert_to(loaded, tmp_path / "out", quiet=True)
    finally:
        servers.close()
    fused = mf.load(artifact.dir).fused_loras
    assert [(f.sha256, f.scale, f.source.get("kind")) for f in fused] == [
        (sha256(kohya), 0.9, "hub"),
        (sha256(peft), 1.0, "url"),
    ]
    assert fused[0].source["commit"] == commit
    assert "scale" not in fused[0].source
