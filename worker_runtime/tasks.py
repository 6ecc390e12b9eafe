"""Image-to-image and inpainting from the loaded pipeline: the same weights, built on first use.

diffusers' `AutoPipelineForImage2Image.from_pipe` / `AutoPipelineForInpainting.from_pipe` make the
family's img2img or inpainting pipeline (StableDiffusionImg2ImgPipeline, FluxInpaintPipeline, ...)
from the loaded one's modules: no second load, no weight copied. They are built the first time a
request asks for one (a text-to-image endpoint pays nothing) and kept. A family diffusers has no
such pipeline for (PixArt-Sigma, the video pipelines) answers that in one line.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

from worker_runtime.family import CallSpec

TEXT2IMG, IMG2IMG, INPAINT = "text2img", "img2img", "inpaint"
TASKS = (TEXT2IMG, IMG2IMG, INPAINT)
# docker-diffusers-api clients name a pipeline class, or one of diffusers' AutoPipeline classes.
AUTO_PIPELINES = {
    "AutoPipelineForText2Image": TEXT2IMG,
    "AutoPipelineForImage2Image": IMG2IMG,
    "AutoPipelineForInpainting": INPAINT,
}
DESCRIPTIONS = {IMG2IMG: "image-to-image", INPAINT: "inpainting"}


class Variants:
    """The loaded pipeline and, once asked for, its image-to-image and inpainting siblings."""

    def __init__(self, pipe: Any, call: CallSpec) -> None:
        self._pipes: dict[str, Any] = {TEXT2IMG: pipe}
        self._specs: dict[str, CallSpec | None] = {TEXT2IMG: call}

    def spec(self, task: str) -> CallSpec | None:
        """What the task's pipeline takes (with its own `strength` default), or None when this family
        has no pipeline for it. Builds the pipeline on first use."""
        if task not in self._specs:
            self._build(task)
        return self._specs[task]

    def pipe(self, task: str) -> Any:
        if task not in self._specs:
            self._build(task)
        return self._pipes[task]

    def _build(self, task: str) -> None:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        auto = AutoPipelineForImage2Image if task == IMG2IMG else AutoPipelineForInpainting
        base = self._pipes[TEXT2IMG]
        try:
            pipe = auto.from_pipe(base)
        except ValueError:  # diffusers' "can't find a pipeline linked to ..." for this family
            self._specs[task] = None
            return
        pipe.set_progress_bar_config(disable=True)
        signature = inspect.signature(type(pipe).__call__)
        strength = signature.parameters.get("strength")
        base_spec = self._specs[TEXT2IMG]
        assert base_spec is not None
        defaults = dict(base_spec.defaults)
        defaults["strength"] = None if strength is None else strength.default
        self._pipes[task] = pipe
        self._specs[task] = replace(
            base_spec,
            pipeline=type(pipe).__name__,
            params=frozenset(p for p in signature.parameters if p != "self"),
            defaults=defaults,
        )
