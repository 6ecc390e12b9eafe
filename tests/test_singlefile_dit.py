"""A FLUX.1 or SD3 transformer as one file (BFL's / SAI's key names, or an fp8 e4m3fn file as ComfyUI
users share them) plus `config:` naming the diffusers repo: the repo brings the text encoders, VAE,
tokenizers and scheduler, locked and fetched like a hub source, and the artifact is the one the
diffusers folders themselves convert to, file for file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.rig import layouts_dit as D
from tests.rig.cli import run_packager
from tests.rig.fixtures_hub import HUB_TOKEN, write_recipe
from tests.rig.original_dit import write_original_transformer
from tests.rig.worker import decode_png, start_worker

# family → (config repo, what its original file is called in the wild)
FAMILIES = {
    "flux": (D.FLUX_SCHNELL, "flux1-schnell.safetensors"),
    "sd3": (D.SD35_MEDIUM, "sd3.5_medium.safetensors"),
}


def convert(recipe: Path, env: dict[str, str], build: Path) -> tuple[Path, Any]:
    """`packager convert RECIPE`: the artifact folder and the finished process."""
    done = run_packager(
        "convert", str(recipe), env={**env, "HF_TOKEN": HUB_TOKEN, "PACKAGER_BUILD_DIR": str(build)}
    )
    assert done.returncode == 0, done.stderr
    (folder,) = (build / "artifacts" / "model").iterdir()
    return folder, done


def files_of(artifact: Path) -> dict[str, str]:
    manifest = json.loads((artifact / "manifest.json").read_text())
    return {f["path"]: f["sha256"] for f in manifest["files"]}


def tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(path))
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_transformer_file_plus_config_converts_to_the_diffusers_folders_artifact(
    hub: Any, hub_env: dict[str, str], hub_layouts: dict[str, Any], tmp_path: Path, family: str
) -> None:
    repo, file_name = FAMILIES[family]
    diffusers_folder = hub_layouts[repo].folder
    checkpoint = write_original_transformer(diffusers_folder, tmp_path / "ckpt" / file_name, family=family)
    recipe = write_recipe(
        tmp_path / "single", f"name: model\nsource:\n  file: {checkpoint}\n  config: {repo}\n"
    )
    single, done = convert(recipe, hub_env, tmp_path / "build-single")
    assert "precision: auto → bf16" in done.stderr

    # The lock takes the rest of the pipeline from the repo, never its transformer weights.
    lock = json.loads(recipe.with_suffix(".lock").read_text())
    locked = set(lock["files"])
    assert not any(f.startswith("transformer/") and "safetensors" in f for f in locked)
    assert "vae/diffusion_pytorch_model.safetensors" in locked
    assert any(f.startswith("text_encoder_2/model") for f in locked)
    assert lock["source"]["checkpoint"]["name"] == file_name
    assert not any(f.startswith("transformer/") and f.endswith(".safetensors") for f in hub.files_sent(repo))

    reference = write_recipe(tmp_path / "repo", f"name: model\nsource:\n  repo: {repo}\n")
    from_repo, _ = convert(reference, hub_env, tmp_path / "build-repo")
    assert files_of(single) == files_of(from_repo)

    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(single, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt="a red fox",
        num_inference_steps=2,
        width=64,
        height=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 64, 64, 3)
    assert torch.isfinite(torch.as_tensor(out)).all()

    config = {"defaults": {"num_inference_steps": 2, "width": 64, "height": 64}}
    worker = start_worker(single, tmp_path / "worker", WORKER_CONFIG=json.dumps(config))
    try:
        job = worker.runsync({"prompt": "a red fox", "seed": 3})
    finally:
        worker.stop()
    assert job["status"] == "COMPLETED", job
    assert decode_png(job["output"]["image_base64"]).size == (64, 64)


def test_an_fp8_e4m3fn_transformer_file_converts_as_its_weights_say(
    hub: Any, hub_env: dict[str, str], hub_layouts: dict[str, Any], tmp_path: Path
) -> None:
    """auto: the fp8 weights widened to bf16 (exactly: every e4m3fn value is a bf16 value);
    fp8: the same fp8 bytes kept, and norms and embeddings in bf16."""
    import torch
    from diffusers import DiffusionPipeline, FluxTransformer2DModel

    repo, _ = FAMILIES["flux"]
    diffusers_folder = hub_layouts[repo].folder
    checkpoint = write_original_transformer(
        diffusers_folder, tmp_path / "flux1-schnell-fp8-e4m3fn.safetensors", family="flux", fp8=True
    )
    source = f"source:\n  file: {checkpoint}\n  config: {repo}\n"
    auto, _ = convert(write_recipe(tmp_path / "auto", f"name: model\n{source}"), hub_env, tmp_path / "b1")
    fp8, _ = convert(
        write_recipe(tmp_path / "fp8", f"name: model\n{source}precision: fp8\n"), hub_env, tmp_path / "b2"
    )

    original = FluxTransformer2DModel.from_pretrained(diffusers_folder / "transformer").state_dict()
    widened = tensors(auto / "transformer")
    stored = tensors(fp8 / "transformer")
    assert set(widened) == set(stored) == set(original)
    for name, tensor in original.items():
        expect = tensor.to(torch.float8_e4m3fn) if tensor.dim() == 2 else tensor
        assert widened[name].dtype == torch.bfloat16
        assert torch.equal(widened[name], expect.to(torch.bfloat16)), name
        if stored[name].dtype == torch.float8_e4m3fn:
            want = expect.to(torch.float8_e4m3fn)  # the file's fp8 bytes; its fp32 biases cast
            assert torch.equal(stored[name].view(torch.uint8), want.view(torch.uint8)), name
    assert sum(t.dtype == torch.float8_e4m3fn for t in stored.values()) >= 20

    pipe = DiffusionPipeline.from_pretrained(auto, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt="a fox", num_inference_steps=2, width=64, height=64, output_type="np").images
    assert torch.isfinite(torch.as_tensor(out)).all()


def test_a_full_sd_checkpoint_takes_from_its_config_repo_only_what_it_lacks(
    hub: Any, hub_env: dict[str, str], hub_layouts: dict[str, Any], tmp_path: Path
) -> None:
    """The UNet, VAE and CLIP of an original SD checkpoint come from the file; a config repo with all
    weights (here with a safety checker) brings only the safety checker's."""
    from tests.rig import layouts as L

    checkpoint = hub_layouts[L.SD_ORIGINAL].folder / L.SINGLE_FILE_SAFETENSORS
    recipe = write_recipe(tmp_path, f"name: model\nsource:\n  file: {checkpoint}\n  config: {L.SD_BIN}\n")
    locked = run_packager("lock", str(recipe), env=hub_env)
    assert locked.returncode == 0, locked.stderr
    files = json.loads(recipe.with_suffix(".lock").read_text())["files"]
    assert [f for f in files if f.endswith((".safetensors", ".bin"))] == ["safety_checker/pytorch_model.bin"]
    assert "unet/config.json" in files
    # What `auto` came to, from the config repo's files the lock just cached.
    (row,) = [line.split(None, 1) for line in locked.stdout.splitlines() if line.startswith("precision")]
    assert row[1].startswith("auto → fp16 ("), row
    assert "unet=fp16" in row[1], row


def test_a_transformer_file_of_another_variant_than_the_config_is_one_line(
    hub: Any, hub_env: dict[str, str], hub_layouts: dict[str, Any], tmp_path: Path
) -> None:
    """FLUX.1 dev's file (with its guidance embedder) under schnell's config: refused, never trimmed,
    and the message says what diffusers reads the file as."""
    checkpoint = write_original_transformer(
        hub_layouts[D.FLUX_DEV].folder, tmp_path / "flux1-dev.safetensors", family="flux"
    )
    body = f"name: model\nsource:\n  file: {checkpoint}\n  config: {D.FLUX_SCHNELL}\n"
    recipe = write_recipe(tmp_path, body)
    done = run_packager("convert", str(recipe), env={**hub_env, "PACKAGER_BUILD_DIR": str(tmp_path / "b")})
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.endswith(
        "transformer: the checkpoint has 4 weight(s) that transformer/config.json "
        "(FluxTransformer2DModel) has no place for, e.g. time_text_embed.guidance_embedder.linear_1.bias; "
        "diffusers reads the file as 'flux-dev' (config: black-forest-labs/FLUX.1-dev)"
    )
    assert not list((tmp_path / "b").rglob("manifest.json"))
    assert not list((tmp_path / "b").rglob("*.safetensors"))


def test_a_local_config_folder_brings_what_the_file_lacks_and_drifts_like_one(
    hub_layouts: dict[str, Any], tmp_path: Path
) -> None:
    import shutil

    config = tmp_path / "flux-schnell"
    shutil.copytree(hub_layouts[D.FLUX_SCHNELL].folder, config)
    checkpoint = write_original_transformer(config, tmp_path / "flux1-schnell.safetensors", family="flux")
    recipe = write_recipe(tmp_path, f"name: model\nsource:\n  file: {checkpoint}\n  config: {config}\n")
    assert run_packager("lock", str(recipe)).returncode == 0
    files = json.loads(recipe.with_suffix(".lock").read_text())["files"]
    weights = {f.partition("/")[0] for f in files if f.endswith(".safetensors")}
    assert weights == {"text_encoder", "text_encoder_2", "vae"}
    assert run_packager("lock", str(recipe), "--check").returncode == 0

    vae = config / "vae" / "diffusion_pytorch_model.safetensors"
    vae.write_bytes(vae.read_bytes()[:-1] + b"\0")
    drifted = run_packager("lock", str(recipe), "--check")
    assert drifted.returncode == 1
    assert "files changed: vae/diffusion_pytorch_model.safetensors" in drifted.stderr
