"""The packing settings that change a converter's output, and the dtype each precision means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from artifact_format.vocab import (
    PRECISIONS,
    Precision,
)
from packager.errors import ConvertError

if TYPE_CHECKING:
    import torch


Fp16Overflow = Literal["fail", "keep_fp32"]


@dataclass(frozen=True)
class ConvertSettings:
    """The packing settings that change the output (all of them are recorded in the manifest)."""

    precision: Precision = "fp16"
    fp16_overflow: Fp16Overflow = "fail"
    drop: tuple[str, ...] = ()
    # Scheduler class written instead of the source's, built from its config with
    # `SchedulerClass.from_config` (e.g. "DPMSolverMultistepScheduler").
    scheduler: str | None = None
    # Pipeline class for model_index.json's `_class_name` (e.g. "StableDiffusionImg2ImgPipeline").
    pipeline: str | None = None


def target_dtype(precision: str) -> torch.dtype:
    import torch

    try:
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    except KeyError:
        raise ConvertError(f"precision: must be one of {', '.join(PRECISIONS)} (got {precision!r})") from None
