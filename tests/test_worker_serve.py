"""The worker serving a tiny artifact through the runpod SDK's local API, as a client sees it.

One worker process serves the whole module (start-up is seconds of imports). It runs on the CPU in
fp32, with recipe limits small enough that every request here is a 64-128 px, 2-step inference.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.rig.artifacts import make_artifact, tiny_source
from tests.rig.s3 import CountingMotoServer
from tests.rig.worker import Worker, decode_png, start_worker

WORKER_CONFIG = {
    "defaults": {"num_inference_steps": 2, "width": 64, "height": 64},
    "limits": {
        "max_steps": 10,
        "max_width": 256,
        "max_height": 256,
        "max_images": 2,
        "max_pixels": 128 * 256,
    },
}
OUTPUT_BUCKET = "worker-outputs"


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("tiny-artifact")
    return make_artifact(tiny_source(root / "source"), root / "artifact")


@pytest.fixture(scope="module")
def served(
    tiny_artifact: tuple[Path, str], s3_server: CountingMotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Worker, dict[str, Any]]]:
    """The shared worker and the answer to the first request it was sent."""
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="outputs-key",
        aws_secret_access_key="outputs-secret",
    ).create_bucket(Bucket=OUTPUT_BUCKET)
    worker = start_worker(
        tiny_artifact[0],
        tmp_path_factory.mktemp("worker"),
        WORKER_CONFIG=json.dumps(WORKER_CONFIG),
        BUCKET_ENDPOINT_URL=s3_server.endpoint_url,
        BUCKET_ACCESS_KEY_ID="outputs-key",
        BUCKET_SECRET_ACCESS_KEY="outputs-secret",
        BUCKET_NAME=OUTPUT_BUCKET,
    )
    try:
        first = worker.runsync({"prompt": "a red fox", "seed": 1})
        yield worker, first
    finally:
        worker.stop()


def completed(job: dict[str, Any]) -> dict[str, Any]:
    assert job["status"] == "COMPLETED", job
    return dict(job["output"])


def test_runsync_returns_a_png_of_the_requested_size(served: tuple[Worker, dict[str, Any]]) -> None:
    worker, _ = served
    out = completed(
        worker.runsync({"prompt": "a lighthouse", "width": 128, "height": 64, "num_inference_steps": 2})
    )
    image = decode_png(out["image_base64"])
    assert image.size == (128, 64)
    assert image.mode == "RGB"
    assert isinstance(out["seed"], int)
    assert out["$timings"]["inference"] > 0
    assert out["$meta"]["model"] == "tiny"
    assert out["$meta"]["precision"] == "fp32"
    assert out["$meta"]["scheduler"] == "PNDMScheduler"


def test_an_answer_goes_back_in_as_init_image_and_mask_in_both_shapes(
    served: tuple[Worker, dict[str, Any]],
) -> None:
    worker, first = served
    init = completed(first)["image_base64"]
    out = completed(worker.runsync({"prompt": "a red fox, oil", "init_image": init, "strength": 0.5}))
    assert decode_png(out["image_base64"]).size == (64, 64)
    assert out["$meta"]["pipeline"] == "StableDiffusionImg2ImgPipeline"
    request = {
        "modelInputs": {"prompt": "a red fox", "image": init, "mask_image": init, "seed": 2},
        "callInputs": {"PIPELINE": "StableDiffusionInpaintPipeline", "SCHEDULER": "DDIMScheduler"},
    }
    out = completed(worker.runsync(request))
    assert decode_png(out["image_base64"]).size == (64, 64)
    assert out["$meta"]["pipeline"] == "StableDiffusionInpaintPipeline"
    assert out["$meta"]["scheduler"] == "DDIMScheduler"


def test_defaults_come_from_worker_config_and_init_is_timed_once(
    served: tuple[Worker, dict[str, Any]], tiny_artifact: tuple[Path, str]
) -> None:
    worker, first = served
    out = completed(first)
    assert decode_png(out["image_base64"]).size == (64, 64)
    assert out["$meta"]["artifact_id"] == tiny_artifact[1]
    assert out["$timings"]["init"] > 0
    later = completed(worker.runsync({"prompt": "a red fox", "seed": 1}))
    assert "init" not in later["$timings"]
    assert "worker ready: import " in worker.log()


def test_the_same_seed_gives_the_same_image(served: tuple[Worker, dict[str, Any]]) -> None:
    worker, _ = served
    ask = {"prompt": "a castle at dusk", "seed": 1234, "width": 64, "height": 64}
    a = completed(worker.runsync(ask))
    b = completed(worker.runsync(ask))
    other = completed(worker.runsync({**ask, "seed": 1235}))
    assert a["seed"] == b["seed"] == 1234
    assert a["image_base64"] == b["image_base64"]
    assert other["image_base64"] != a["image_base64"]

    unseeded = completed(worker.runsync({"prompt": "a castle at dusk"}))
    again = completed(worker.runsync({"prompt": "a castle at dusk", "seed": unseeded["seed"]}))
    assert again["image_base64"] == unseeded["image_base64"]


def test_docker_diffusers_api_requests_work_unchanged(served: tuple[Worker, dict[str, Any]]) -> None:
    worker, _ = served
    request = {
        "modelInputs": {
            "prompt": "a watercolour owl",
            "num_inference_steps": 2,
            "guidance_scale": 7.5,
            "width": 64,
            "height": 128,
            "seed": 7,
            "num_images_per_prompt": 2,
        },
        "callInputs": {
            "MODEL_ID": "tiny",
            "PIPELINE": "StableDiffusionPipeline",
            "SCHEDULER": "DDIMScheduler",
            "safety_checker": False,
            "xformers_memory_efficient_attention": False,
            "startRequestId": "req-1",
        },
    }
    out = completed(worker.runsync(request))
    images = [decode_png(b64) for b64 in out["images_base64"]]
    assert [im.size for im in images] == [(64, 128), (64, 128)]
    assert out["$meta"]["scheduler"] == "DDIMScheduler"
    assert out["$meta"]["startRequestId"] == "req-1"
    assert out["seed"] == 7

    # The scheduler was switched for that request only.
    plain = completed(worker.runsync({"prompt": "a watercolour owl", "seed": 7}))
    assert plain["$meta"]["scheduler"] == "PNDMScheduler"
    # And the switch changes the image: same request through the artifact's own scheduler differs.
    pndm = {**request, "callInputs": {**request["callInputs"], "SCHEDULER": "PNDMScheduler"}}
    assert completed(worker.runsync(pndm))["images_base64"] != out["images_base64"]


BAD_REQUESTS = [
    ({"negative_prompt": "blurry"}, "prompt: required"),
    ({"prompt": ""}, "prompt: must not be empty"),
    ({"prompt": 5}, "prompt: must be a string"),
    ({"prompt": "x", "width": 100}, "width: must be a multiple of 8"),
    ({"prompt": "x", "height": 4096}, "height: must be between 64 and 256"),
    ({"prompt": "x", "width": 256, "height": 256}, "pixels is over the limit of 32768"),
    ({"prompt": "x", "num_inference_steps": 11}, "num_inference_steps: must be between 1 and 10"),
    ({"prompt": "x", "num_inference_steps": "many"}, "num_inference_steps: must be a whole number"),
    ({"prompt": "x", "num_images": 3}, "num_images: must be between 1 and 2"),
    ({"prompt": "x", "guidance_scale": 99}, "guidance_scale: must be between 0 and 30"),
    ({"prompt": "x", "guidance_scale": 10**400}, "guidance_scale: must be between 0 and 30 (got an integer"),
    ({"prompt": "x", "guidance_scale": float("nan")}, "guidance_scale: must be a number (got nan)"),
    ({"prompt": "x", "init_image": "aGk="}, "init_image: not a PNG or JPEG image"),
    ({"prompt": "x", "seed": -1}, "seed: must be between 0 and"),
    ({"prompt": "x", "scheduler": "NoSuchScheduler"}, "scheduler: 'NoSuchScheduler' is not compatible"),
    ({"prompt": "x", "output": "gif"}, "output: must be one of base64, s3"),
    ({"prompt": "x", "stepz": 3}, "stepz: unknown field"),
    ({"modelInputs": {"prompt": "x", "init_image": "aGk="}}, "modelInputs.init_image: unknown field"),
    ({"modelInputs": {"prompt": "x"}, "callInputs": {"MODEL_ID": "other/model"}}, "callInputs.MODEL_ID"),
    ({"modelInputs": {"prompt": "x"}, "callInputs": {"SEND_URL": "http://x"}}, "callInputs.SEND_URL"),
    ({"modelInputs": {"prompt": "x"}, "callInputs": {"safety_checker": True}}, "without a safety checker"),
    ({"modelInputs": "x"}, "modelInputs: must be a JSON object"),
]


def test_bad_requests_fail_one_by_one_and_the_worker_keeps_serving(
    served: tuple[Worker, dict[str, Any]],
) -> None:
    worker, _ = served
    for i in range(200):
        bad, message = BAD_REQUESTS[i % len(BAD_REQUESTS)]
        job = worker.runsync(bad, timeout=30)
        assert job["status"] == "FAILED", (bad, job)
        assert message in job["error"], (bad, job["error"])
        assert "\n" not in job["error"]
    good = completed(worker.runsync({"prompt": "still here", "seed": 3}))
    assert decode_png(good["image_base64"]).size == (64, 64)


def test_outputs_go_to_s3_when_asked(served: tuple[Worker, dict[str, Any]]) -> None:
    worker, _ = served
    out = completed(worker.runsync({"prompt": "a kite", "seed": 5, "num_images": 2, "output": "s3"}))
    assert "images_base64" not in out
    assert "image_base64" not in out
    assert len(out["image_urls"]) == 2
    for url in out["image_urls"]:
        assert url.startswith("http://127.0.0.1:")
        assert f"/{OUTPUT_BUCKET}/" in url
        with urllib.request.urlopen(url, timeout=10) as resp:
            data = resp.read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    inline = completed(worker.runsync({"prompt": "a kite", "seed": 5, "num_images": 2}))
    assert base64.b64decode(inline["images_base64"][0]) == _fetch(out["image_urls"][0])


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return bytes(resp.read())


def test_the_local_api_routes_are_post_only(served: tuple[Worker, dict[str, Any]]) -> None:
    """The SDK's quirk, pinned so the README stays true: GET /runsync is not a route."""
    worker, _ = served
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(worker.url + "/runsync", timeout=10)
    assert refused.value.code == 405
    # A job sent to /run runs when its status is first asked for.
    status, queued = worker.post("/run", {"input": {"prompt": "later", "seed": 9}})
    assert status == 200
    assert queued["status"] == "IN_PROGRESS"
    status, done = worker.post(f"/status/{queued['id']}", None)
    assert done["status"] == "COMPLETED"
    assert decode_png(done["output"]["image_base64"]).size == (64, 64)
