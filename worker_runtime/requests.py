"""Job input → a checked generation request, for both request shapes the worker accepts.

RunPod-native input (flat):
    {"prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "true_cfg_scale",
     "width", "height", "seed", "num_images", "max_sequence_length", "num_frames", "fps",
     "scheduler", "output", "init_image", "mask_image", "strength"}

docker-diffusers-api input, so its users can move without changing clients:
    {"modelInputs": {prompt, negative_prompt, num_inference_steps, guidance_scale, true_cfg_scale,
                     width, height, seed, num_images_per_prompt, max_sequence_length, num_frames,
                     fps, image, mask_image, strength},
     "callInputs": {MODEL_ID, PIPELINE, SCHEDULER, MODEL_PRECISION, safety_checker,
                    startRequestId, xformers_memory_efficient_attention, output}}
MODEL_ID and MODEL_PRECISION must name what this worker serves (one artifact per endpoint: there is
nothing to switch to); PIPELINE names the loaded pipeline or its image-to-image / inpainting sibling
(tasks.py), by class or AutoPipeline name. xformers_memory_efficient_attention is accepted and has
no effect (PyTorch's own attention kernels are used). Training and status callbacks (SEND_URL) are
not part of this worker and are refused by name.

An init image makes the request image-to-image, a mask image with it inpainting (or PIPELINE says
which): the output has the init image's size floored to the model's multiple, and `strength` x
`num_inference_steps` must make at least one denoising step.

Which of these fields a request may carry, and their defaults, depend on the loaded pipeline
(family.py): a field it cannot take is refused in one line naming the field and the pipeline.

Every check happens here, before any tensor is touched, so a bad request costs microseconds and
can never leave the pipeline half-configured. Each refusal is one line naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from worker_runtime import fields, images, tasks
from worker_runtime.config import Limits
from worker_runtime.errors import RequestError, kind_of, short
from worker_runtime.family import TRUE_CFG_WITH_NEGATIVE, CallSpec

MAX_SEED = 2**63 - 1
# Echoed back in `$meta`: a client's id, not a payload.
MAX_REQUEST_ID_CHARS = 200
# The T5 pipelines refuse more (FLUX.1 and SD3 cap at 512); a bound on what a prompt costs.
MAX_SEQUENCE_LENGTH = 512
MAX_FPS = 60
OUTPUTS = ("base64", "s3")
# docker-diffusers-api's old short scheduler names, still sent by some clients.
SCHEDULER_ALIASES = {"LMS": "LMSDiscreteScheduler", "DDIM": "DDIMScheduler", "PNDM": "PNDMScheduler"}

# The fields both request shapes take under the same names.
_SHARED_FIELDS = (
    "prompt",
    "negative_prompt",
    "num_inference_steps",
    "guidance_scale",
    "true_cfg_scale",
    "width",
    "height",
    "seed",
)
RUNPOD_FIELDS = (
    *_SHARED_FIELDS,
    "num_images",
    "max_sequence_length",
    "num_frames",
    "fps",
    "scheduler",
    "output",
    "init_image",
    "mask_image",
    "strength",
)
MODEL_INPUTS = (
    *_SHARED_FIELDS,
    "num_images_per_prompt",
    "max_sequence_length",
    "num_frames",
    "fps",
    "image",
    "mask_image",
    "strength",
)
# Fields only some pipelines take (checked against the pipeline's `__call__`).
PIPELINE_FIELDS = ("negative_prompt", "true_cfg_scale", "max_sequence_length", "num_frames", "fps")
CALL_INPUTS = (
    "MODEL_ID",
    "PIPELINE",
    "SCHEDULER",
    "MODEL_PRECISION",
    "safety_checker",
    "startRequestId",
    "xformers_memory_efficient_attention",
    "output",
)


@dataclass(frozen=True)
class Generation:
    """One checked request: everything the pipeline call needs, nothing left to default."""

    prompt: str
    negative_prompt: str | None  # None: not passed (the pipeline's own default)
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    num_images: int
    seed: int | None
    scheduler: str | None  # a diffusers class name, or None for the artifact's own
    output: Literal["base64", "s3"]
    safety_checker: bool  # run the artifact's safety checker (False when it has none)
    request_id: str | None = None
    true_cfg_scale: float | None = None
    max_sequence_length: int | None = None
    num_frames: int | None = None  # video pipelines only
    fps: int | None = None  # video pipelines only: the MP4's rate (and LTX's `frame_rate`)
    task: str = tasks.TEXT2IMG
    init_image: Any = None  # PIL RGB, already at (width, height)
    mask_image: Any = None  # PIL L, already at (width, height)
    strength: float | None = None


@dataclass(frozen=True)
class Serving:
    """What this worker serves and allows: the context every request is checked against."""

    call: CallSpec  # what the pipeline takes and defaults to (recipe defaults folded in)
    limits: Limits
    default_size: tuple[int, int]
    pipeline: str
    model_ids: frozenset[str]
    precision: str
    has_safety_checker: bool
    can_upload: bool
    # Names of the schedulers the pipeline can switch to; computed on first use (imports them).
    schedulers: Callable[[], Collection[str]] = field(default=lambda: ())
    # What the image-to-image / inpainting pipeline takes (None: the family has none); builds it.
    variants: Callable[[str], CallSpec | None] = field(default=lambda task: None)


def parse(raw: Any, serving: Serving) -> Generation:
    """Check a job's `input` and fill in defaults. Raises RequestError naming the bad field."""
    if not isinstance(raw, Mapping):
        raise RequestError(f"input: must be a JSON object (got {kind_of(raw)})")
    if "modelInputs" in raw or "callInputs" in raw:
        return _parse_diffusers_api(raw, serving)
    fields.only(raw, RUNPOD_FIELDS, "")
    return _build(raw, serving, prefix="", num_images_key="num_images", image_key="init_image")


def _parse_diffusers_api(raw: Mapping[str, Any], serving: Serving) -> Generation:
    fields.only(raw, ("modelInputs", "callInputs"), "")
    model_inputs = raw.get("modelInputs")
    call_inputs = raw.get("callInputs", {})
    if not isinstance(model_inputs, Mapping):
        raise RequestError(f"modelInputs: must be a JSON object (got {kind_of(model_inputs)})")
    if call_inputs is None:
        call_inputs = {}
    if not isinstance(call_inputs, Mapping):
        raise RequestError(f"callInputs: must be a JSON object (got {kind_of(call_inputs)})")
    fields.only(model_inputs, MODEL_INPUTS, "modelInputs.")
    fields.only(call_inputs, CALL_INPUTS, "callInputs.")

    model_id = fields.optional(call_inputs, "MODEL_ID", str, "callInputs.")
    if model_id and model_id not in serving.model_ids:
        served = ", ".join(sorted(serving.model_ids))
        raise RequestError(
            f"callInputs.MODEL_ID: {short(model_id)} is not served here (this worker serves {served})"
        )
    task = _pipeline_task(fields.optional(call_inputs, "PIPELINE", str, "callInputs."), serving)
    precision = fields.optional(call_inputs, "MODEL_PRECISION", str, "callInputs.")
    if precision and precision != serving.precision:
        raise RequestError(
            f"callInputs.MODEL_PRECISION: {short(precision)} is not available "
            f"(this artifact is {serving.precision})"
        )
    fields.optional(call_inputs, "xformers_memory_efficient_attention", bool, "callInputs.")
    request_id = fields.optional(call_inputs, "startRequestId", str, "callInputs.")
    if request_id is not None and len(request_id) > MAX_REQUEST_ID_CHARS:
        raise RequestError(
            f"callInputs.startRequestId: {len(request_id)} characters is over the limit of "
            f"{MAX_REQUEST_ID_CHARS}"
        )
    safety = fields.optional(call_inputs, "safety_checker", bool, "callInputs.")
    if safety and not serving.has_safety_checker:
        raise RequestError(
            "callInputs.safety_checker: this artifact was packaged without a safety checker "
            "(send false, or package the model keeping it)"
        )
    merged = dict(model_inputs)
    for key, target in (("SCHEDULER", "scheduler"), ("output", "output")):
        if key in call_inputs:
            merged[target] = call_inputs[key]
    gen = _build(
        merged,
        serving,
        prefix="modelInputs.",
        num_images_key="num_images_per_prompt",
        image_key="image",
        task=task,
        scheduler_field="callInputs.SCHEDULER",
        output_field="callInputs.output",
    )
    keep_checker = serving.has_safety_checker if safety is None else safety
    return replace(gen, safety_checker=keep_checker, request_id=request_id)


def _build(
    values: Mapping[str, Any],
    serving: Serving,
    *,
    prefix: str,
    num_images_key: str,
    image_key: str,
    task: str | None = None,
    scheduler_field: str = "scheduler",
    output_field: str = "output",
) -> Generation:
    task, call = images.task_of(values, prefix, image_key, task, serving.call, serving.variants)
    lim = serving.limits
    d = call.defaults
    for key in PIPELINE_FIELDS:
        if values.get(key) is not None and not call.takes(key):
            raise RequestError(f"{prefix}{key}: {call.pipeline} does not take it")
    prompt = values.get("prompt")
    if prompt is None:
        raise RequestError(f"{prefix}prompt: required")
    prompt = fields.string(prompt, f"{prefix}prompt")
    if not prompt.strip():
        raise RequestError(f"{prefix}prompt: must not be empty")
    negative = values.get("negative_prompt")
    negative = (
        d["negative_prompt"] if negative is None else fields.string(negative, f"{prefix}negative_prompt")
    )
    true_cfg = _true_cfg(values, call, negative, lim.max_guidance, prefix)
    steps = fields.whole(values, "num_inference_steps", d["num_inference_steps"], 1, lim.max_steps, prefix)
    guidance = fields.number(values, "guidance_scale", d["guidance_scale"], 0.0, lim.max_guidance, prefix)
    pictures = None
    if task == tasks.TEXT2IMG:
        width, height = _size(values, serving, call, prefix)
    else:
        pictures = images.pictures(values, serving.limits, call, prefix, image_key, task, steps)
        width, height = pictures.size
    num_images = fields.whole(values, num_images_key, d["num_images"] or 1, 1, lim.max_images, prefix)
    max_seq = None
    if call.takes("max_sequence_length"):
        max_seq = fields.whole(
            values, "max_sequence_length", d["max_sequence_length"], 1, MAX_SEQUENCE_LENGTH, prefix
        )
    frames, fps = _video(values, call, lim, width * height, prefix)
    seed = values.get("seed")
    if seed is not None:
        seed = fields.whole(values, "seed", 0, 0, MAX_SEED, prefix)
    scheduler = _scheduler(values.get("scheduler"), serving, scheduler_field)
    output = values.get("output", "base64")
    if output not in OUTPUTS:
        raise RequestError(f"{output_field}: must be one of {', '.join(OUTPUTS)} (got {short(output)})")
    if output == "s3" and not serving.can_upload:
        raise RequestError(
            f"{output_field}: 's3' needs BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and "
            "BUCKET_SECRET_ACCESS_KEY set on the endpoint"
        )
    return Generation(
        prompt=prompt,
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=width,
        height=height,
        num_images=num_images,
        seed=seed,
        scheduler=scheduler,
        output=output,
        safety_checker=serving.has_safety_checker,
        true_cfg_scale=true_cfg,
        max_sequence_length=max_seq,
        num_frames=frames,
        fps=fps,
        task=task,
        init_image=pictures.init if pictures else None,
        mask_image=pictures.mask if pictures else None,
        strength=pictures.strength if pictures else None,
    )


def _pipeline_task(name: str | None, serving: Serving) -> str | None:
    """callInputs.PIPELINE → the task it names (None: inferred from the images sent)."""
    if not name:
        return None
    if name == serving.pipeline:
        return tasks.TEXT2IMG
    if name in tasks.AUTO_PIPELINES:
        return tasks.AUTO_PIPELINES[name]
    available = [serving.pipeline]
    for task in (tasks.IMG2IMG, tasks.INPAINT):
        spec = serving.variants(task)
        if spec is not None and spec.pipeline == name:
            return task
        available += [spec.pipeline] if spec is not None else []
    raise RequestError(
        f"callInputs.PIPELINE: {short(name)} is not available (this worker runs {', '.join(available)}, "
        f"or {', '.join(tasks.AUTO_PIPELINES)})"
    )


def _size(values: Mapping[str, Any], serving: Serving, call: CallSpec, prefix: str) -> tuple[int, int]:
    lim, d, multiple = serving.limits, call.defaults, call.size_multiple
    width = fields.side(
        values, "width", d["width"] or serving.default_size[0], lim.max_width, multiple, call, prefix
    )
    height = fields.side(
        values, "height", d["height"] or serving.default_size[1], lim.max_height, multiple, call, prefix
    )
    if width * height > lim.max_pixels:
        raise RequestError(
            f"{prefix}width x {prefix}height: {width}x{height} = {width * height} pixels is over the "
            f"limit of {lim.max_pixels}"
        )
    return width, height


def _true_cfg(
    values: Mapping[str, Any], call: CallSpec, negative: str | None, hi: float, prefix: str
) -> float | None:
    """FLUX.1 runs a negative prompt only as true CFG: on at 4.0 unless the request or recipe says."""
    if not call.takes("true_cfg_scale"):
        return None
    scale: float | None = fields.number(
        values, "true_cfg_scale", call.defaults["true_cfg_scale"], 0.0, hi, prefix
    )
    if not negative:
        return scale
    if scale is None:
        return TRUE_CFG_WITH_NEGATIVE
    if scale <= 1:
        raise RequestError(
            f"{prefix}negative_prompt: {call.pipeline} uses a negative prompt only with "
            f"true_cfg_scale > 1 (got {scale:g})"
        )
    return scale


def _video(
    values: Mapping[str, Any], call: CallSpec, lim: Limits, pixels: int, prefix: str
) -> tuple[int | None, int | None]:
    """num_frames (step*k + 1, within the limits) and fps, for video pipelines."""
    if call.video is None:
        return None, None
    step = call.video.frame_step
    frames = fields.whole(values, "num_frames", call.defaults["num_frames"], 1, lim.max_frames, prefix)
    if (frames - 1) % step:
        raise RequestError(
            f"{prefix}num_frames: {call.pipeline} makes {step}k+1 frames (1, {step + 1}, {2 * step + 1}, …; "
            f"got {frames})"
        )
    if frames * pixels > lim.max_video_pixels:
        raise RequestError(
            f"{prefix}num_frames: {frames} frames x {pixels} pixels = {frames * pixels} is over the "
            f"limit of {lim.max_video_pixels}"
        )
    fps = fields.whole(values, "fps", call.defaults["fps"], 1, MAX_FPS, prefix)
    return frames, fps


def _scheduler(value: Any, serving: Serving, where: str) -> str | None:
    if value is None or value == "":
        return None
    name = fields.string(value, where)
    name = SCHEDULER_ALIASES.get(name, name)
    available = serving.schedulers()
    if name not in available:
        raise RequestError(
            f"{where}: {short(value)} is not compatible with {serving.pipeline} (one of: "
            f"{', '.join(sorted(available))})"
        )
    return name
