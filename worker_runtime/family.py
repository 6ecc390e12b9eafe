"""What the loaded pipeline takes and defaults to, read once at start from its own `__call__`.

Pipelines differ in what a request may carry: FLUX.1 takes a negative prompt only through true CFG
(`true_cfg_scale` > 1), the T5 pipelines take `max_sequence_length`, Wan and LTX make videos
(`num_frames`, and LTX conditions on `frame_rate`), Stable Diffusion takes none of these. Rather than
keeping a table of every pipeline's arguments, the worker inspects the loaded class's `__call__`
signature: a request field maps onto the parameters the pipeline has, and its default is the
pipeline's own. Our tables hold only what diffusers does not declare:

- model-card defaults that differ from `__call__`'s, keyed on the class and its config (FLUX.1 schnell
  is a `FluxPipeline` like dev, told apart by `transformer.config.guidance_embeds`);
- the size and frame-count rules that diffusers only enforces deep inside a call (or silently rounds),
  so a bad request is refused in one line before any tensor is touched.

Resolution order of a default: the recipe's `worker.defaults`, then the model card, then `__call__`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from worker_runtime.config import Defaults
from worker_runtime.errors import StartError

# Request field → the pipeline parameters it may fill (the first one the pipeline has wins, except
# `fps`, which also feeds the MP4 encoder and so applies to every video pipeline).
FIELD_PARAMS: dict[str, tuple[str, ...]] = {
    "width": ("width",),
    "height": ("height",),
    "negative_prompt": ("negative_prompt",),
    "num_inference_steps": ("num_inference_steps",),
    "guidance_scale": ("guidance_scale",),
    "true_cfg_scale": ("true_cfg_scale",),
    "max_sequence_length": ("max_sequence_length",),
    "num_frames": ("num_frames",),
    "fps": ("frame_rate",),
    "num_images": ("num_images_per_prompt", "num_videos_per_prompt"),
}
# FLUX.1's true CFG: the negative branch runs only when true_cfg_scale > 1. Without a value from the
# request or the recipe, a negative prompt switches it on at the value diffusers' docs use.
TRUE_CFG_WITH_NEGATIVE = 4.0


@dataclass(frozen=True)
class VideoRule:
    """Width/height multiple and frame-count step (frames = step*k + 1) of a video family, and the
    MP4 frame rate its model card uses."""

    size_multiple: int
    frame_step: int
    fps: int


# Wan 2.x: VAE 8x spatial, 2x2 patches, 4x temporal compression; 16 fps (model card).
# LTX-Video: VAE 32x spatial, 8x temporal compression; 25 fps (`frame_rate`'s default).
VIDEO_RULES = {"WanPipeline": VideoRule(16, 4, 16), "LTXPipeline": VideoRule(32, 8, 25)}
# Image pipelines whose sizes must be multiples of more than the VAE's 8: FLUX.1 packs 2x2 latents
# (it rounds other sizes down silently), SD3 patches 2x2 (it raises deep in the call).
IMAGE_SIZE_MULTIPLE = {"FluxPipeline": 16, "StableDiffusion3Pipeline": 16}
DEFAULT_SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class CallSpec:
    """The loaded pipeline as requests see it."""

    pipeline: str
    params: frozenset[str]  # every parameter of `__call__`
    defaults: Mapping[str, Any]  # request field → resolved default (None: the pipeline decides)
    size_multiple: int = DEFAULT_SIZE_MULTIPLE
    video: VideoRule | None = None
    card: Mapping[str, Any] = field(default_factory=dict)  # the model-card overrides applied

    def takes(self, request_field: str) -> bool:
        if request_field == "fps":
            return self.video is not None
        return any(p in self.params for p in FIELD_PARAMS.get(request_field, (request_field,)))

    def param(self, request_field: str) -> str | None:
        """The `__call__` parameter a request field fills, or None when it fills none."""
        return next((p for p in FIELD_PARAMS.get(request_field, ()) if p in self.params), None)


def card_defaults(pipe: Any) -> dict[str, Any]:
    """Defaults from the model cards where they differ from the pipeline's `__call__`."""
    name = type(pipe).__name__
    if name == "FluxPipeline" and not _config(getattr(pipe, "transformer", None), "guidance_embeds", True):
        # FLUX.1 schnell: timestep-distilled, no guidance, 4 steps, T5 trained on 256 tokens.
        return {"guidance_scale": 0.0, "num_inference_steps": 4, "max_sequence_length": 256}
    return {}


def describe(pipe: Any, recipe: Defaults) -> CallSpec:
    """Inspect the pipeline's `__call__` once and resolve every default.

    Raises StartError when the recipe sets a default for a field this pipeline cannot take.
    """
    name = type(pipe).__name__
    signature = inspect.signature(type(pipe).__call__)
    params = frozenset(p for p in signature.parameters if p != "self")
    video = VIDEO_RULES.get(name)
    card = card_defaults(pipe)
    spec = CallSpec(
        pipeline=name,
        params=params,
        defaults={},
        size_multiple=video.size_multiple if video else IMAGE_SIZE_MULTIPLE.get(name, DEFAULT_SIZE_MULTIPLE),
        video=video,
        card=card,
    )
    defaults: dict[str, Any] = {}
    for f in fields(Defaults):
        recipe_value = getattr(recipe, f.name)
        if recipe_value is not None and not spec.takes(f.name):
            raise StartError(f"WORKER_CONFIG.defaults.{f.name}: {name} does not take it")
        if recipe_value is not None:
            defaults[f.name] = recipe_value
        elif f.name in card:
            defaults[f.name] = card[f.name]
        elif f.name == "true_cfg_scale":
            defaults[f.name] = None  # set by a negative prompt (see requests.py), else the pipeline's
        elif f.name == "fps" and video is not None:
            defaults[f.name] = video.fps
        elif (param := spec.param(f.name)) is not None:
            default = signature.parameters[param].default
            defaults[f.name] = None if default is inspect.Parameter.empty else default
        else:
            defaults[f.name] = None
    return CallSpec(name, params, defaults, spec.size_multiple, video, card)


def _config(module: Any, key: str, fallback: Any) -> Any:
    config = getattr(module, "config", None)
    if config is None:
        return fallback
    return config.get(key, fallback) if isinstance(config, Mapping) else getattr(config, key, fallback)
