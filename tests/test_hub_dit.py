"""Transformer pipelines as their hub repos ship them: lock and fetch take exactly the diffusers folders
(shards and index included), never the root single files or sample media, and what they take loads
with plain `DiffusionPipeline.from_pretrained` and generates."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from packager.source import drift as lk
from packager.source.fetch import fetch
from packager.source.recipe import load_recipe
from tests.rig import layouts_dit as D
from tests.rig.cli import run_packager
from tests.rig.fixtures_hub import HUB_TOKEN, write_recipe

REPOS = {r.repo_id: r for r in D.DIT_REPOS}
VIDEO = {D.WAN_T2V, D.LTX_VIDEO}
PIPELINE_CLASS = {
    D.FLUX_DEV: "FluxPipeline",
    D.FLUX_SCHNELL: "FluxPipeline",
    D.SD35_MEDIUM: "StableDiffusion3Pipeline",
    D.PIXART_SIGMA: "PixArtSigmaPipeline",
    D.WAN_T2V: "WanPipeline",
    D.LTX_VIDEO: "LTXPipeline",
}
SHARDED = {
    D.FLUX_DEV: ("text_encoder_2", "transformer"),
    D.FLUX_SCHNELL: ("text_encoder_2", "transformer"),
    D.SD35_MEDIUM: ("text_encoder_3",),
    D.PIXART_SIGMA: ("text_encoder",),
    D.WAN_T2V: ("text_encoder",),
    D.LTX_VIDEO: ("text_encoder",),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_for(folder: Path, repo: str) -> Path:
    return write_recipe(folder, f"name: model\nsource:\n  repo: {repo}\n  revision: main\n")


def pipeline_files(folder: Path) -> set[str]:
    """What a diffusers pipeline is made of: model_index.json and its components' folders."""
    index = json.loads((folder / "model_index.json").read_text())
    components = {k for k, v in index.items() if isinstance(v, list) and v[1] is not None}
    return {"model_index.json"} | {
        p.relative_to(folder).as_posix() for c in components for p in (folder / c).iterdir() if p.is_file()
    }


@pytest.mark.parametrize("repo", sorted(REPOS))
def test_fetch_takes_the_pipeline_folders_and_nothing_else(hub, hub_layouts, tmp_path, monkeypatch, repo):
    layout = hub_layouts[repo]
    if layout.gated:
        monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    loaded = load_recipe(recipe_for(tmp_path, repo))
    lock = lk.ensure_lock(loaded, frozen=False, quiet=True)
    result = fetch(loaded, lock, quiet=True)

    folder = layout.folder
    wanted = pipeline_files(folder)
    assert set(lock.files) == wanted
    for component in SHARDED[repo]:
        shards = [f for f in wanted if f.startswith(f"{component}/") and "-of-" in f]
        assert len(shards) >= 2
        assert any(f.endswith(".safetensors.index.json") for f in wanted if component in f)
    # Each needed file once, in full (identical files, such as SD3's two CLIP tokenizers, are one
    # blob to huggingface_hub); not one byte of the root single files or the media.
    sent = hub.files_sent(repo)
    assert set(sent) <= wanted
    assert {sha256(folder / rel) for rel in sent} == {sha256(folder / rel) for rel in wanted}
    assert all(size == (folder / rel).stat().st_size for rel, size in sent.items())
    for extra in REPOS[repo].extras:
        assert extra not in lock.files
        assert not any(extra.split("/")[-1] in path for _, path, _ in hub.requests())
    assert all(sha256(result.root / rel) == sha256(folder / rel) for rel in wanted)


@pytest.mark.parametrize("repo", sorted(REPOS))
def test_the_fetched_files_load_and_generate(hub, hub_layouts, tmp_path, monkeypatch, repo):
    import torch
    from diffusers import DiffusionPipeline

    if hub_layouts[repo].gated:
        monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    loaded = load_recipe(recipe_for(tmp_path, repo))
    result = fetch(loaded, lk.ensure_lock(loaded, frozen=False, quiet=True), quiet=True)
    pipe = DiffusionPipeline.from_pretrained(result.root)
    assert type(pipe).__name__ == PIPELINE_CLASS[repo]
    pipe.set_progress_bar_config(disable=True)
    ask: dict[str, object] = {"prompt": "a red fox", "num_inference_steps": 2, "output_type": "np"}
    ask["generator"] = torch.Generator().manual_seed(0)
    if repo in VIDEO:
        side = 64 if repo == D.LTX_VIDEO else 32
        out = pipe(**ask, width=side, height=side, num_frames=9).frames
        assert out.shape == (1, 9, side, side, 3)
    else:
        out = pipe(**ask, width=64, height=64).images
        assert out.shape == (1, 64, 64, 3)
    assert torch.isfinite(torch.as_tensor(out)).all()


def test_flux_dev_and_schnell_differ_only_in_guidance_embeds(hub_layouts):
    dev, schnell = hub_layouts[D.FLUX_DEV].folder, hub_layouts[D.FLUX_SCHNELL].folder
    dev_config = json.loads((dev / "transformer" / "config.json").read_text())
    schnell_config = json.loads((schnell / "transformer" / "config.json").read_text())
    assert dev_config.pop("guidance_embeds") is True
    assert schnell_config.pop("guidance_embeds") is False
    assert dev_config == schnell_config
    assert json.loads((dev / "model_index.json").read_text())["_class_name"] == "FluxPipeline"


def test_a_gated_repo_needs_hf_token(hub, hub_env, tmp_path):
    recipe = recipe_for(tmp_path, D.SD35_MEDIUM)
    denied = run_packager("lock", str(recipe), env=hub_env)
    assert denied.returncode == 2
    assert denied.stderr.count("\n") == 1
    assert "is gated" in denied.stderr
    assert "HF_TOKEN" in denied.stderr
    assert not recipe.with_suffix(".lock").exists()
    allowed = run_packager("lock", str(recipe), env={**hub_env, "HF_TOKEN": HUB_TOKEN})
    assert allowed.returncode == 0, allowed.stderr
    text = recipe.with_suffix(".lock").read_text()
    assert HUB_TOKEN not in text
    assert "text_encoder_3/model.safetensors.index.json" in text
