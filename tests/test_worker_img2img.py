"""Image-to-image and inpainting from the artifact the worker loaded: the family's pipelines built
from it on first use (no second load, no new weight tensor), in both request shapes, answering at
the init image's size floored to the model's multiple; over-limit images and too small a
strength x steps refused in one line before the pipeline is called.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.rig.artifacts import family_artifact, make_artifact, tiny_source
from tests.rig.served import Call, blank_pipelines, counting_calls, served_in_process
from tests.rig.worker import decode_png
from worker_runtime import jobs, tasks

WORKER_CONFIG = {
    "defaults": {"num_inference_steps": 2, "width": 64, "height": 64},
    "limits": {"max_steps": 3, "max_width": 128, "max_height": 128, "max_pixels": 128 * 64, "max_images": 2},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> jobs.Served:
    root = tmp_path_factory.mktemp("img2img")
    model_dir, _ = make_artifact(tiny_source(root / "source"), root / "artifact")
    return served_in_process(model_dir, WORKER_CONFIG)


def encoded(size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG", colour: Any = 0) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def variant_classes(served: jobs.Served) -> tuple[type, ...]:
    return tuple(type(served.variants.pipe(task)) for task in tasks.TASKS)


@pytest.fixture
def fake_pipelines(served: jobs.Served) -> Iterator[list[Call]]:
    with blank_pipelines(*variant_classes(served)) as calls:
        yield calls


def weights(pipe: Any) -> dict[int, int]:
    """data_ptr → bytes of every parameter and buffer of the pipeline's modules."""
    import torch

    out = {}
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                out[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return out


def test_the_img2img_and_inpainting_pipelines_share_every_weight(served: jobs.Served) -> None:
    base = served.loaded.pipe
    before = weights(base)
    img2img, inpaint = served.variants.pipe(tasks.IMG2IMG), served.variants.pipe(tasks.INPAINT)
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline"
    for pipe in (img2img, inpaint):
        assert pipe.unet is base.unet
        assert pipe.vae is base.vae
        assert pipe.text_encoder is base.text_encoder
        assert weights(pipe) == before  # the same tensors, none new
    assert weights(base) == before
    assert served.variants.pipe(tasks.IMG2IMG) is img2img  # built once


IMG2IMG_RUNPOD = {"prompt": "a fox", "seed": 3, "init_image": encoded((100, 70)), "strength": 0.5}
IMG2IMG_API = {
    "modelInputs": {"prompt": "a fox", "seed": 3, "image": encoded((100, 70), fmt="JPEG"), "strength": 0.5},
    "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline", "SCHEDULER": "DDIMScheduler"},
}
INPAINT_RUNPOD = {
    "prompt": "a fox",
    "seed": 3,
    "init_image": encoded((100, 70)),
    "mask_image": encoded((100, 70), mode="L", colour=255),
    "scheduler": "EulerDiscreteScheduler",
}
INPAINT_API = {
    "modelInputs": {
        "prompt": "a fox",
        "seed": 3,
        "image": encoded((100, 70), fmt="JPEG"),
        "mask_image": encoded((100, 70), mode="L", colour=255),
    },
    "callInputs": {"PIPELINE": "AutoPipelineForInpainting"},
}


@pytest.mark.parametrize(
    ("body", "pipeline", "scheduler", "strength"),
    [
        (IMG2IMG_RUNPOD, "StableDiffusionImg2ImgPipeline", "PNDMScheduler", 0.5),
        (IMG2IMG_API, "StableDiffusionImg2ImgPipeline", "DDIMScheduler", 0.5),
        (INPAINT_RUNPOD, "StableDiffusionInpaintPipeline", "EulerDiscreteScheduler", 1.0),
        (INPAINT_API, "StableDiffusionInpaintPipeline", "PNDMScheduler", 1.0),
    ],
    ids=["img2img-runpod", "img2img-diffusers-api", "inpaint-runpod", "inpaint-diffusers-api"],
)
def test_img2img_and_inpainting_answer_at_the_init_images_floored_size(
    served: jobs.Served, body: dict[str, Any], pipeline: str, scheduler: str, strength: float
) -> None:
    with counting_calls(*variant_classes(served)) as calls:
        out = jobs.answer(served, {"id": "j", "input": body})
    assert "error" not in out, out
    # 100x70 floored to the UNet's multiple of 8.
    assert decode_png(out["image_base64"]).size == (96, 64)
    assert out["$meta"]["pipeline"] == pipeline
    assert out["$meta"]["scheduler"] == scheduler
    [call] = calls
    assert (call.pipeline, call.scheduler) == (pipeline, scheduler)  # set on the pipeline that ran
    assert call.kwargs["image"].size == (96, 64)
    assert call.kwargs["strength"] == strength
    if pipeline.endswith("InpaintPipeline"):
        assert (call.kwargs["width"], call.kwargs["height"]) == (96, 64)
        assert call.kwargs["mask_image"].size == (96, 64)
    # Every pipeline is back on the artifact's scheduler.
    for task in tasks.TASKS:
        assert type(served.variants.pipe(task).scheduler).__name__ == "PNDMScheduler"


def truncated_png() -> str:
    raw = base64.b64decode(encoded((64, 64), colour=(10, 200, 30)))
    return base64.b64encode(raw[: len(raw) // 2]).decode("ascii")


GIF = base64.b64encode(b"GIF89a" + b"\x00" * 40).decode("ascii")
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"init_image": encoded((200, 64))}, "init_image: 200x64 is over the limits (128x128, 8192 pixels)"),
    ({"init_image": encoded((128, 128))}, "init_image: 128x128 is over the limits (128x128, 8192 pixels)"),
    ({"init_image": encoded((50, 64))}, "init_image: 50x64 is below 64 px a side"),
    (
        {"init_image": encoded((64, 64)), "strength": 0.2},
        "strength: 0.2 x 2 steps is below one denoising step (raise strength or num_inference_steps)",
    ),
    ({"init_image": encoded((64, 64)), "strength": 1.5}, "strength: must be between 0 and 1 (got 1.5)"),
    ({"init_image": encoded((64, 64)), "strength": float("nan")}, "strength: must be a number (got nan)"),
    ({"init_image": "not base64!"}, "init_image: not valid base64"),
    ({"init_image": GIF}, "init_image: not a PNG or JPEG image"),
    ({"init_image": truncated_png()}, "init_image: the PNG data is damaged or truncated"),
    ({"init_image": 10**400}, "init_image: must be a base64 PNG or JPEG string (got int)"),
    ({"init_image": "A" * 10_000_000}, "init_image: 10000000 base64 characters is over the limit of"),
    ({"init_image": encoded((64, 64)), "width": 64}, "width: set by init_image's size"),
    ({"mask_image": encoded((64, 64), mode="L")}, "init_image: required for inpainting"),
    (
        {"init_image": encoded((64, 64)), "mask_image": encoded((72, 64), mode="L")},
        "mask_image: 72x64 does not match init_image's 64x64",
    ),
    ({"strength": 0.5}, "strength: StableDiffusionPipeline is text-to-image (send init_image)"),
    (
        {
            "modelInputs": {"mask_image": encoded((64, 64))},
            "callInputs": {"PIPELINE": "AutoPipelineForInpainting"},
        },
        "modelInputs.image: required for inpainting",
    ),
    (
        {
            "modelInputs": {"image": encoded((64, 64))},
            "callInputs": {"PIPELINE": "StableDiffusionInpaintPipeline"},
        },
        "modelInputs.mask_image: required for inpainting",
    ),
    (
        {"modelInputs": {}, "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}},
        "modelInputs.image: required for image-to-image",
    ),
    (
        {"modelInputs": {"image": encoded((64, 64))}, "callInputs": {"PIPELINE": "StableDiffusionPipeline"}},
        "modelInputs.image: StableDiffusionPipeline is text-to-image",
    ),
    (
        {"modelInputs": {}, "callInputs": {"PIPELINE": "FluxImg2ImgPipeline"}},
        "callInputs.PIPELINE: 'FluxImg2ImgPipeline' is not available (this worker runs "
        "StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, or "
        "AutoPipelineForText2Image",
    ),
]


@pytest.mark.parametrize(("body", "message"), REFUSED)
def test_bad_image_requests_are_one_line_and_never_reach_a_pipeline(
    served: jobs.Served, fake_pipelines: list[Call], body: dict[str, Any], message: str
) -> None:
    if "modelInputs" in body:
        body = {**body, "modelInputs": {"prompt": "a fox", **body["modelInputs"]}}
    else:
        body = {"prompt": "a fox", **body}
    out = jobs.answer(served, {"id": "j", "input": body})
    assert set(out) == {"error"}, out
    assert message in out["error"]
    assert "\n" not in out["error"]
    assert fake_pipelines == []


def test_a_family_without_img2img_answers_one_line(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder: Path = family_artifact("pixart-sigma", tmp_path_factory.mktemp("pixart") / "pixart-sigma")[0]
    served = served_in_process(folder, {"defaults": {"num_inference_steps": 2, "width": 64, "height": 64}})
    for body, message in [
        (
            {"prompt": "a fox", "init_image": encoded((64, 64))},
            "init_image: PixArtSigmaPipeline has no image-to-image pipeline in diffusers",
        ),
        (
            {"modelInputs": {"prompt": "a fox", "image": encoded((64, 64)), "mask_image": encoded((64, 64))}},
            "modelInputs.image: PixArtSigmaPipeline has no inpainting pipeline in diffusers",
        ),
    ]:
        with counting_calls(type(served.loaded.pipe)) as calls:
            out = jobs.answer(served, {"id": "j", "input": body})
        assert out == {"error": message}
        assert calls == []


def test_flux_builds_its_own_img2img_and_inpainting_and_floors_to_16(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = family_artifact("flux-dev", tmp_path_factory.mktemp("flux") / "flux-dev")[0]
    served = served_in_process(folder, {"defaults": {"num_inference_steps": 2, "width": 64, "height": 64}})
    img2img, inpaint = served.variants.spec(tasks.IMG2IMG), served.variants.spec(tasks.INPAINT)
    assert img2img is not None
    assert inpaint is not None
    assert (img2img.pipeline, inpaint.pipeline) == ("FluxImg2ImgPipeline", "FluxInpaintPipeline")
    assert img2img.defaults["strength"] == inpaint.defaults["strength"] == 0.6  # their __call__'s
    with blank_pipelines(*variant_classes(served)) as calls:
        out = jobs.answer(served, {"id": "j", "input": {"prompt": "a fox", "init_image": encoded((100, 70))}})
        assert decode_png(out["image_base64"]).size == (96, 64)
        body = {"prompt": "a fox", "init_image": encoded((100, 70)), "mask_image": encoded((100, 70), "L")}
        jobs.answer(served, {"id": "j", "input": body})
    assert [(c.pipeline, c.kwargs["width"], c.kwargs["height"], c.kwargs["image"].size) for c in calls] == [
        ("FluxImg2ImgPipeline", 96, 64, (96, 64)),
        ("FluxInpaintPipeline", 96, 64, (96, 64)),
    ]
