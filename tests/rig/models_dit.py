"""Tiny random-weight transformer pipelines: FLUX.1 dev/schnell, SD3, PixArt-Σ, Wan and LTX-Video.

The real architectures at toy widths (one or two blocks, 8-32 channels), built deterministically from
fixed seeds and offline: CLIP tokenizers and T5 tokenizers come from tests/rig/tokenizer.py. Each
folder `save_*` writes loads with plain `DiffusionPipeline.from_pretrained` and generates on a CPU in
about a second at the sizes the tests use.

What the real models have and the tests depend on is kept:
- the VAEs' compression (8x for the image models; Wan 8x spatial / 4x temporal with a 2x2 patch,
  so sizes are multiples of 16 and frame counts 4k+1; LTX 32x / 8x, multiples of 32 and 8k+1);
- the T5 encoders are transformers' own `T5EncoderModel` / `UMT5EncoderModel` (with their fp32
  keep-lists), saved in several shards with `model.safetensors.index.json` as the hub repos ship them;
- FLUX.1 dev and schnell differ only in `transformer/config.json`'s `guidance_embeds`;
- the schedulers are the ones the model repos configure.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.rig.models import TEXT_HIDDEN, text_encoder_config, tiny_vae
from tests.rig.tokenizer import t5_vocab_size, write_clip_tokenizer, write_t5_tokenizer

T5_HIDDEN = 32
# Tensor bytes per T5 shard: the tiny encoders (~120 kB) come out in 3-4 files, like the real ones.
T5_SHARD_BYTES = 40_000
# The Flux transformer ships in shards on the hub too.
FLUX_SHARD_BYTES = 200_000


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp)


def _t5_tokenizer(model_max_length: int = 512) -> Any:
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_t5_tokenizer(Path(tmp), model_max_length)
        return AutoTokenizer.from_pretrained(tmp)


def _t5_config(umt5: bool = False) -> Any:
    from transformers import T5Config, UMT5Config

    cls = UMT5Config if umt5 else T5Config
    return cls(
        vocab_size=t5_vocab_size(),
        d_model=T5_HIDDEN,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",  # T5 v1.1 / UMT5, as every one of these pipelines uses
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        is_encoder_decoder=False,
        use_cache=False,
    )


def _t5(seed: int, umt5: bool = False) -> Any:
    from transformers import T5EncoderModel, UMT5EncoderModel

    _seeded(seed)
    return (UMT5EncoderModel if umt5 else T5EncoderModel)(_t5_config(umt5))


def _clip(seed: int, with_projection: bool = False) -> Any:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok = _clip_tokenizer()
    config = text_encoder_config(
        len(tok), bos=tok.bos_token_id, eos=tok.eos_token_id, projection_dim=TEXT_HIDDEN
    )
    _seeded(seed)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _image_vae(seed: int, latent_channels: int, **extra: Any) -> Any:
    """An AutoencoderKL with 4 blocks: the real 8x downsampling, at 8 channels a block."""
    return tiny_vae(seed, (8, 8, 8, 8), 128, 4, latent_channels=latent_channels, layers_per_block=1, **extra)


# ---- the pipelines: settings from models_dit.json, the shared widths added here ----------------------

# family → component → its settings that are plain numbers and names. Flux's transformer takes 16
# input channels (4 latent channels packed 2x2); PixArt's gives out 8 (learned sigma: twice the latent).
_CONFIGS: dict[str, dict[str, dict[str, Any]]] = json.loads(Path(__file__).with_suffix(".json").read_text())


def _seeded_model(seed: int, cls: Any, **config: Any) -> Any:
    """`cls(**config)` with torch seeded first: the same random weights on every build."""
    _seeded(seed)
    return cls(**config)


def _quiet(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_flux_pipeline(seed: int = 100, guidance_embeds: bool = True) -> Any:
    """FLUX.1 dev (`guidance_embeds=True`, guidance-distilled) or schnell (False, timestep-distilled)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    c = _CONFIGS["flux"]
    transformer = _seeded_model(
        seed,
        FluxTransformer2DModel,
        **c["transformer"],
        joint_attention_dim=T5_HIDDEN,
        pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=guidance_embeds,
    )
    # schnell's repo configures no dynamic shifting; dev's does.
    shifts = {"shift": 3.0 if guidance_embeds else 1.0, "use_dynamic_shifting": guidance_embeds}
    return _quiet(
        FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**shifts, **c["scheduler"]),
            vae=_image_vae(seed + 1, 4, **c["vae"]),
            text_encoder=_clip(seed + 2),
            tokenizer=_clip_tokenizer(),
            text_encoder_2=_t5(seed + 3),
            tokenizer_2=_t5_tokenizer(),
            transformer=transformer,
        )
    )


def build_sd3_pipeline(seed: int = 110) -> Any:
    """SD3 / 3.5: two CLIP encoders with projections and a T5 (`text_encoder_3`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    c = _CONFIGS["sd3"]
    # The pooled projection is both CLIPs', concatenated.
    widths = {"joint_attention_dim": T5_HIDDEN, "pooled_projection_dim": 2 * TEXT_HIDDEN}
    return _quiet(
        StableDiffusion3Pipeline(
            transformer=_seeded_model(seed, SD3Transformer2DModel, **c["transformer"], **widths),
            scheduler=FlowMatchEulerDiscreteScheduler(**c["scheduler"]),
            vae=_image_vae(seed + 1, 4, **c["vae"]),
            text_encoder=_clip(seed + 2, with_projection=True),
            tokenizer=_clip_tokenizer(),
            text_encoder_2=_clip(seed + 3, with_projection=True),
            tokenizer_2=_clip_tokenizer(),
            text_encoder_3=_t5(seed + 4),
            tokenizer_3=_t5_tokenizer(),
        )
    )


def build_pixart_sigma_pipeline(seed: int = 120) -> Any:
    """PixArt-Σ: a DiT with a T5 encoder. `sample_size` 32 selects the 256 px aspect-ratio bins."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    c = _CONFIGS["pixart-sigma"]
    transformer = _seeded_model(
        seed, PixArtTransformer2DModel, **c["transformer"], caption_channels=T5_HIDDEN
    )
    return _quiet(
        PixArtSigmaPipeline(
            tokenizer=_t5_tokenizer(300),
            text_encoder=_t5(seed + 2),
            vae=_image_vae(seed + 1, 4),
            transformer=transformer,
            scheduler=DPMSolverMultistepScheduler(**c["scheduler"]),
        )
    )


def build_wan_pipeline(seed: int = 130) -> Any:
    """Wan 2.1 text-to-video: UMT5 encoder, a 3D DiT with 1x2x2 patches, the causal Wan VAE."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    c = _CONFIGS["wan"]
    return _quiet(
        WanPipeline(
            tokenizer=_t5_tokenizer(),
            text_encoder=_t5(seed + 2, umt5=True),
            vae=_seeded_model(seed + 1, AutoencoderKLWan, **c["vae"]),
            scheduler=UniPCMultistepScheduler(**c["scheduler"]),
            transformer=_seeded_model(seed, WanTransformer3DModel, **c["transformer"], text_dim=T5_HIDDEN),
        )
    )


def build_ltx_pipeline(seed: int = 140) -> Any:
    """LTX-Video: T5 encoder, a 3D DiT, and the LTX VAE at its real 32x spatial / 8x temporal ratio."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    c = _CONFIGS["ltx"]
    transformer = _seeded_model(
        seed, LTXVideoTransformer3DModel, **c["transformer"], caption_channels=T5_HIDDEN
    )
    return _quiet(
        LTXPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**c["scheduler"]),
            vae=_seeded_model(seed + 1, AutoencoderKLLTXVideo, **c["vae"]),
            text_encoder=_t5(seed + 2),
            tokenizer=_t5_tokenizer(128),
            transformer=transformer,
        )
    )


# ---- saving as the hub repos ship them --------------------------------------------------------------

# name → (builder, T5 component, CLIP tokenizer folders, T5 tokenizer folder + its max length)
PIPELINES: dict[str, tuple[Callable[[], Any], str, tuple[str, ...], tuple[str, int]]] = {
    "flux-dev": (
        lambda: build_flux_pipeline(guidance_embeds=True),
        "text_encoder_2",
        ("tokenizer",),
        ("tokenizer_2", 512),
    ),
    "flux-schnell": (
        lambda: build_flux_pipeline(guidance_embeds=False),
        "text_encoder_2",
        ("tokenizer",),
        ("tokenizer_2", 512),
    ),
    "sd3": (build_sd3_pipeline, "text_encoder_3", ("tokenizer", "tokenizer_2"), ("tokenizer_3", 512)),
    "pixart-sigma": (build_pixart_sigma_pipeline, "text_encoder", (), ("tokenizer", 300)),
    "wan": (build_wan_pipeline, "text_encoder", (), ("tokenizer", 512)),
    "ltx": (build_ltx_pipeline, "text_encoder", (), ("tokenizer", 128)),
}


def save_pipeline(kind: str, folder: Path) -> Path:
    """Write the tiny `kind` pipeline (a key of PIPELINES) as its hub repo's diffusers folders.

    The T5 encoder is re-saved in shards with its index (and FLUX's transformer too), the way the
    real repos ship them; tokenizers are our offline ones, written as files we control.
    """
    builder, t5_component, clip_tokenizers, (t5_tokenizer, t5_max) = PIPELINES[kind]
    pipe = builder()
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    _reshard(getattr(pipe, t5_component), folder / t5_component, T5_SHARD_BYTES)
    if kind.startswith("flux"):
        _reshard(pipe.transformer, folder / "transformer", FLUX_SHARD_BYTES)
    for name in clip_tokenizers:
        shutil.rmtree(folder / name)
        write_clip_tokenizer(folder / name)
    shutil.rmtree(folder / t5_tokenizer)
    write_t5_tokenizer(folder / t5_tokenizer, t5_max)
    for st in folder.rglob("*.safetensors"):
        st.chmod(0o644)
    return folder


def _reshard(model: Any, folder: Path, shard_bytes: int) -> None:
    for old in folder.glob("*.safetensors*"):
        old.unlink()
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=shard_bytes)
    index = next(folder.glob("*.safetensors.index.json"))
    weight_map = json.loads(index.read_text())["weight_map"]
    assert len(set(weight_map.values())) > 1, f"{folder}: expected several shards"
