"""Tiny random-weight Stable Diffusion pipelines, built deterministically (fixed seeds).

They have the real architectures (UNet, VAE, CLIP text encoder, safety checker), so every code path
that loads, converts or serves a real model runs on them, in seconds on a CPU. `make demo` uses this
module too (`python -m tests.rig.models DIR`).

The layouts found in the wild (fp32 `.bin` folders, fp16 variants, root checkpoints, SDXL) are
written by tests/rig/layouts.py on top of `build_sd_pipeline`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tests.rig.tokenizer import write_clip_tokenizer

TEXT_HIDDEN = 32
SAMPLE_SIZE = 16  # latent size; images are 8x this (128 px) by default


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def tiny_vae(
    seed: int, channels: tuple[int, ...], sample_size: int, norm_num_groups: int = 8, **extra: Any
) -> Any:
    """An AutoencoderKL with one encoder and one decoder block a channel count (4 blocks: the real 8x)."""
    from diffusers import AutoencoderKL

    _seeded(seed)
    return AutoencoderKL(
        block_out_channels=channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
        **{"latent_channels": 4, **extra},
    )


def text_encoder_config(vocab_size: int, bos: int, eos: int, **extra: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        **extra,
    )


def build_sd_pipeline(seed: int = 0, with_safety_checker: bool = True) -> Any:
    """A tiny StableDiffusionPipeline with random weights, identical for the same seed."""
    import tempfile

    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer

    _seeded(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = tiny_vae(seed + 1, (16, 32, 32, 32), SAMPLE_SIZE * 8)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = write_clip_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    _seeded(seed + 2)
    text_encoder = CLIPTextModel(
        text_encoder_config(len(vocab), bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id)
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    safety_checker = None
    feature_extractor = None
    if with_safety_checker:
        safety_checker = build_safety_checker(seed + 3)
        feature_extractor = CLIPImageProcessor(
            crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}
        )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=with_safety_checker,
    )
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]
    return pipe


def build_safety_checker(seed: int) -> Any:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    _seeded(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "vocab_size": 1000,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=TEXT_HIDDEN,
    )
    return StableDiffusionSafetyChecker(config)


def save_sd_pipeline(folder: Path, seed: int = 0, with_safety_checker: bool = True) -> Path:
    """Write a tiny pipeline as a diffusers folder with safetensors weights (what save_pretrained does)."""
    pipe = build_sd_pipeline(seed, with_safety_checker=with_safety_checker)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    # save_pretrained re-saves the tokenizer in its own format; keep the BPE files we wrote.
    write_clip_tokenizer(folder / "tokenizer")
    return folder


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.rig.models DIR", file=sys.stderr)
        return 2
    target = Path(argv[0])
    if (target / "model_index.json").exists():
        print(f"{target}: tiny model already present")
        return 0
    tmp = target.with_name(target.name + ".tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    save_sd_pipeline(tmp)
    tmp.rename(target)
    print(f"{target}: tiny Stable Diffusion pipeline written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
