"""The packing settings that change a converter's output."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from artifact_format.vocab import RecipePrecision

if TYPE_CHECKING:
    import torch


Fp16Overflow = Literal["fail", "keep_fp32"]
# One tensor's values as they are to be stored, before the cast (a dequantised fp8 weight, a fused
# LoRA): called once per tensor, its result kept only while that tensor is being written.
TensorTransform = Callable[[str, "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class ConvertSettings:
    """The packing settings that change the output (all of them are recorded in the manifest)."""

    precision: RecipePrecision = "auto"
    fp16_overflow: Fp16Overflow = "fail"
    drop: tuple[str, ...] = ()
    # A component's precision, or fnmatch patterns of tensor names within one (see precision.py).
    precision_overrides: Mapping[str, str | Mapping[str, str]] = field(default_factory=dict)
    # Most tensor bytes in one weight file (a single bigger tensor gets a file of its own).
    shard_size: int = 5 * 10**9
    # Scheduler class written instead of the source's, built from its config with
    # `SchedulerClass.from_config` (e.g. "DPMSolverMultistepScheduler").
    scheduler: str | None = None
    # Pipeline class for model_index.json's `_class_name` (e.g. "StableDiffusionImg2ImgPipeline").
    pipeline: str | None = None
