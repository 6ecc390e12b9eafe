"""Run one checked request through the loaded pipeline: scheduler, seed, safety checker, OOM.

The pipeline object is shared by every job, so whatever a request changes on it (scheduler,
safety checker) is set for that request and put back afterwards, even when inference fails.
Only the parameters the pipeline's `__call__` has are passed (family.CallSpec); fields left unset
are not passed at all, so the pipeline's own defaults apply.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from worker_runtime.family import CallSpec
from worker_runtime.load import Loaded
from worker_runtime.requests import Generation


class OutOfMemory(Exception):
    """The device ran out of memory; the worker asks RunPod for a fresh one (refresh_worker)."""


@dataclass(frozen=True)
class Result:
    images: list[Any]  # for videos: each video's first frame
    seed: int
    scheduler: str
    inference_ms: float
    nsfw: list[bool] | None
    videos: list[list[Any]] | None = None  # PIL frames of each video
    fps: int | None = None


class Schedulers:
    """The artifact's scheduler plus every diffusers scheduler compatible with it, built on demand.

    A switch is `OtherScheduler.from_config(artifact scheduler config)`, as diffusers recommends:
    the betas and timestep settings the model was trained with carry over.
    """

    def __init__(self, pipe: Any) -> None:
        self.default = pipe.scheduler
        self.default_name = type(pipe.scheduler).__name__
        self._built: dict[str, Any] = {self.default_name: self.default}
        self._names: frozenset[str] | None = None

    def names(self) -> frozenset[str]:
        if self._names is None:
            # `compatibles` imports each scheduler module: done on the first request that asks.
            compatible = {cls.__name__: cls for cls in self.default.compatibles}
            self._classes = compatible
            self._names = frozenset(compatible) | {self.default_name}
        return self._names

    def get(self, name: str | None) -> Any:
        name = name or self.default_name
        if name not in self._built:
            self.names()
            self._built[name] = self._classes[name].from_config(self.default.config)
        return self._built[name]


def call_kwargs(gen: Generation, call: CallSpec) -> dict[str, Any]:
    """The checked request as `__call__` keyword arguments, for the parameters the pipeline has."""
    kwargs: dict[str, Any] = {
        "prompt": gen.prompt,
        "num_inference_steps": gen.num_inference_steps,
        "guidance_scale": gen.guidance_scale,
        "width": gen.width,
        "height": gen.height,
        "output_type": "pil",
    }
    optional = {
        "negative_prompt": gen.negative_prompt,
        "true_cfg_scale": gen.true_cfg_scale,
        "max_sequence_length": gen.max_sequence_length,
        "num_frames": gen.num_frames,
        "fps": gen.fps,
        "num_images": gen.num_images,
    }
    for field, value in optional.items():
        param = call.param(field)
        if value is not None and param is not None:
            kwargs[param] = value
    # Image-to-image and inpainting: the parameters share the request fields' names.
    for param, value in (
        ("image", gen.init_image),
        ("mask_image", gen.mask_image),
        ("strength", gen.strength),
    ):
        if value is not None:
            kwargs[param] = value
    return {k: v for k, v in kwargs.items() if k in call.params}


def run(
    loaded: Loaded, gen: Generation, schedulers: Schedulers, torch: Any, call: CallSpec, pipe: Any = None
) -> Result:
    """Run `gen` on `pipe` (the loaded pipeline unless given: its image-to-image or inpainting
    sibling, which shares its modules), with the request's scheduler set on that pipeline."""
    pipe = loaded.pipe if pipe is None else pipe
    seed = gen.seed if gen.seed is not None else secrets.randbits(32)
    # A CPU generator gives the same latents for a seed on every device (CUDA's RNG differs).
    generator = torch.Generator("cpu").manual_seed(seed)
    scheduler = schedulers.get(gen.scheduler)
    checker = getattr(pipe, "safety_checker", None)
    pipe.scheduler = scheduler
    if checker is not None and not gen.safety_checker:
        pipe.safety_checker = None
    started = time.perf_counter()
    try:
        out = pipe(**call_kwargs(gen, call), generator=generator)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        raise OutOfMemory(_oom_message(gen, exc)) from None
    except MemoryError as exc:
        raise OutOfMemory(_oom_message(gen, exc)) from None
    finally:
        pipe.scheduler = schedulers.default
        if checker is not None:
            pipe.safety_checker = checker
    if loaded.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed_ms = (time.perf_counter() - started) * 1000
    nsfw = getattr(out, "nsfw_content_detected", None)
    if call.video is not None:
        videos = [list(frames) for frames in out.frames]
        first = [frames[0] for frames in videos]
        return Result(first, seed, type(scheduler).__name__, elapsed_ms, nsfw, videos, gen.fps)
    return Result(list(out.images), seed, type(scheduler).__name__, elapsed_ms, nsfw)


def _oom_message(gen: Generation, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    frames = f" x {gen.num_frames} frames" if gen.num_frames else ""
    return (
        f"out of memory at {gen.width}x{gen.height}{frames}, {gen.num_images} image(s), "
        f"{gen.num_inference_steps} steps: {first[:200]}"
    )
