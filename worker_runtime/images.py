"""Images a request sends (`init_image`, `mask_image`): which pipeline they call for, and their
decoding: base64 PNG or JPEG, bounded before decoding, sized to the model's multiple.

The size is read from the image header before any pixel is decoded, and checked against the
worker's limits (`max_width`, `max_height`, `max_pixels`), so a decompression bomb costs a header
read. The base64 text is bounded first by what an uncompressed image of `max_pixels` could take.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worker_runtime import fields, tasks
from worker_runtime.config import Limits
from worker_runtime.errors import RequestError, kind_of
from worker_runtime.family import CallSpec

FORMATS = ("PNG", "JPEG")
# An RGBA image of max_pixels stored uncompressed, plus room for metadata chunks, as base64.
HEADROOM_BYTES = 1 << 20


def max_base64_chars(limits: Limits) -> int:
    return (limits.max_pixels * 4 + HEADROOM_BYTES) * 4 // 3


def decode(value: Any, where: str, limits: Limits, mode: str) -> Any:
    """A base64 PNG/JPEG (a `data:` URL prefix allowed) → a PIL image in `mode`, within the limits.

    Raises RequestError naming `where` for anything else.
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, str):
        raise RequestError(f"{where}: must be a base64 PNG or JPEG string (got {kind_of(value)})")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    bound = max_base64_chars(limits)
    if len(text) > bound:
        raise RequestError(f"{where}: {len(text)} base64 characters is over the limit of {bound}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: not valid base64") from None
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (UnidentifiedImageError, OSError):
        raise RequestError(f"{where}: not a PNG or JPEG image") from None
    width, height = image.size
    if width > limits.max_width or height > limits.max_height or width * height > limits.max_pixels:
        raise RequestError(
            f"{where}: {width}x{height} is over the limits ({limits.max_width}x{limits.max_height}, "
            f"{limits.max_pixels} pixels)"
        )
    try:
        image.load()
        return image.convert(mode)
    except (OSError, ValueError, SyntaxError):
        raise RequestError(f"{where}: the {image.format} data is damaged or truncated") from None


def task_of(
    values: Mapping[str, Any],
    prefix: str,
    image_key: str,
    task: str | None,
    call: CallSpec,
    variants: Callable[[str], CallSpec | None],
) -> tuple[str, CallSpec]:
    """Which pipeline runs: the one PIPELINE named, else inpainting with a mask, image-to-image with
    an init image, text-to-image without; and what it takes."""
    sent = [key for key in (image_key, "mask_image", "strength") if values.get(key) is not None]
    inferred = tasks.INPAINT if "mask_image" in sent else tasks.IMG2IMG if image_key in sent else None
    task = task or inferred or tasks.TEXT2IMG
    if task == tasks.TEXT2IMG:
        if sent:
            raise RequestError(f"{prefix}{sent[0]}: {call.pipeline} is text-to-image (send {image_key})")
        return task, call
    described = tasks.DESCRIPTIONS[task]
    if image_key not in sent:
        raise RequestError(f"{prefix}{image_key}: required for {described}")
    if task == tasks.INPAINT and "mask_image" not in sent:
        raise RequestError(f"{prefix}mask_image: required for inpainting")
    if task == tasks.IMG2IMG and "mask_image" in sent:
        raise RequestError(f"{prefix}mask_image: only for inpainting (this request is image-to-image)")
    spec = variants(task)
    if spec is None:
        raise RequestError(f"{prefix}{image_key}: {call.pipeline} has no {described} pipeline in diffusers")
    return task, spec


@dataclass(frozen=True)
class Pictures:
    init: Any
    mask: Any
    strength: float
    size: tuple[int, int]


def pictures(
    values: Mapping[str, Any],
    limits: Limits,
    call: CallSpec,
    prefix: str,
    image_key: str,
    task: str,
    steps: int,
) -> Pictures:
    """The init (and mask) image, decoded within the limits and sized to the model's multiple."""
    for key in ("width", "height"):
        if values.get(key) is not None:
            raise RequestError(
                f"{prefix}{key}: set by {prefix}{image_key}'s size (send it at the size wanted)"
            )
    strength = fields.number(values, "strength", call.defaults.get("strength"), 0.0, 1.0, prefix)
    if strength is None or int(steps * strength) < 1:
        raise RequestError(
            f"{prefix}strength: {strength or 0:g} x {steps} steps is below one denoising step "
            "(raise strength or num_inference_steps)"
        )
    init = decode(values[image_key], f"{prefix}{image_key}", limits, "RGB")
    multiple = call.size_multiple
    width, height = (side - side % multiple for side in init.size)
    if min(width, height) < fields.MIN_SIDE:
        raise RequestError(
            f"{prefix}{image_key}: {init.size[0]}x{init.size[1]} is below {fields.MIN_SIDE} px a side "
            f"(after flooring to a multiple of {multiple})"
        )
    mask = None
    if task == tasks.INPAINT:
        mask = decode(values["mask_image"], f"{prefix}mask_image", limits, "L")
        if mask.size != init.size:
            raise RequestError(
                f"{prefix}mask_image: {mask.size[0]}x{mask.size[1]} does not match {prefix}{image_key}'s "
                f"{init.size[0]}x{init.size[1]}"
            )
    if init.size != (width, height):
        # The same resize diffusers' image processor makes, done here so every pipeline of the
        # family answers at this size, also those whose `__call__` takes no height/width.
        init = init.resize((width, height))
        mask = mask.resize((width, height)) if mask is not None else None
    return Pictures(init, mask, float(strength), (width, height))
