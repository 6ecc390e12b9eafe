"""Hostile requests against the worker's job path: every refusal one line naming the field, before
any arithmetic and before the pipeline is called; nothing a client sends gets a traceback back.

The worker's `jobs.answer` runs in this process on the tiny artifact, with the pipeline's calls
counted. The fuzz test sends arbitrary JSON (and JSON shaped like both request formats, with
values chosen to sit on every bound) and then checks a good request is still answered correctly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.rig.artifacts import make_artifact, tiny_source
from tests.rig.served import Call, blank_pipelines, served_in_process
from tests.rig.worker import REPO, decode_png
from worker_runtime import jobs, requests

WORKER_CONFIG = {
    "defaults": {"num_inference_steps": 2, "width": 64, "height": 64},
    "limits": {"max_steps": 3, "max_width": 128, "max_height": 128, "max_pixels": 128 * 64, "max_images": 2},
}
# Examples the fuzz test tries in each error style (bounded: `make test` runs it).
FUZZ_EXAMPLES = 400


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> jobs.Served:
    root = tmp_path_factory.mktemp("requests")
    model_dir, _ = make_artifact(tiny_source(root / "source"), root / "artifact")
    return served_in_process(model_dir, WORKER_CONFIG)


@pytest.fixture(scope="module")
def reference(served: jobs.Served) -> dict[str, Any]:
    """The answer to a good request before any hostile one was sent."""
    return jobs.answer(served, {"id": "ref", "input": GOOD})


GOOD = {"prompt": "a red fox", "seed": 11}


@contextmanager
def blank_pipeline(served: jobs.Served) -> Iterator[list[Call]]:
    with blank_pipelines(type(served.loaded.pipe)) as calls:
        yield calls


@pytest.fixture
def fake_pipeline(served: jobs.Served) -> Iterator[list[Call]]:
    with blank_pipeline(served) as calls:
        yield calls


def assert_one_line(message: Any) -> None:
    assert isinstance(message, str), message
    assert message.strip(), message
    assert "\n" not in message, message
    assert "Traceback" not in message, message
    assert str(REPO) not in message, message
    assert "site-packages" not in message, message
    assert len(message) <= jobs.MAX_MESSAGE_CHARS, message


def failure_message(out: dict[str, Any]) -> str | None:
    if "error" in out:
        return str(out["error"])
    if "$error" in out:
        assert set(out["$error"]) == {"code", "message"}, out
        return str(out["$error"]["message"])
    return None


# Each class of hostile value, with the line the client gets.
HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"guidance_scale": 10**400}, "guidance_scale: must be between 0 and 30 (got an integer of about 400"),
    ({"guidance_scale": -(10**400)}, "guidance_scale: must be between 0 and 30 (got an integer of about"),
    ({"guidance_scale": float("nan")}, "guidance_scale: must be a number (got nan)"),
    ({"guidance_scale": float("inf")}, "guidance_scale: must be between 0 and 30 (got inf)"),
    ({"guidance_scale": True}, "guidance_scale: must be a number (got True)"),
    ({"guidance_scale": [7.5]}, "guidance_scale: must be a number (got array of 1 item(s))"),
    ({"num_inference_steps": 10**400}, "num_inference_steps: must be between 1 and 3 (got an integer"),
    ({"num_inference_steps": 1e308}, "num_inference_steps: must be between 1 and 3 (got an integer"),
    ({"num_inference_steps": float("-inf")}, "num_inference_steps: must be a whole number (got -inf)"),
    ({"num_inference_steps": False}, "num_inference_steps: must be a whole number (got False)"),
    ({"num_inference_steps": 2.5}, "num_inference_steps: must be a whole number (got 2.5)"),
    ({"width": 10**30}, "width: must be between 64 and 128 (got 1000000000000000000000000000000)"),
    ({"height": {"a": {"b": [1, 2]}}}, "height: must be a whole number (got object of 1 item(s))"),
    ({"num_images": 2**70}, "num_images: must be between 1 and 2 (got 1180591620717411303424)"),
    ({"seed": 2**64}, "seed: must be between 0 and 9223372036854775807 (got 18446744073709551616)"),
    ({"seed": True}, "seed: must be a whole number (got True)"),
    ({"prompt": {"text": "a fox"}}, "prompt: must be a string (got object)"),
    ({"prompt": "a" * 20_000}, "prompt: 20000 characters is over the limit of 10000"),
    ({"output": {"kind": "s3"}}, "output: must be one of base64, s3 (got object of 1 item(s))"),
    ({"scheduler": "x" * 5000}, "scheduler: '" + "x" * 36 + "... is not compatible"),
    ({"k" * 5000: 1}, "'" + "k" * 36 + "...: unknown field"),
]
HOSTILE_DIFFUSERS_API: list[tuple[dict[str, Any], str]] = [
    ({"callInputs": {"MODEL_ID": ["tiny"]}}, "callInputs.MODEL_ID: must be a string (got array)"),
    ({"callInputs": {"PIPELINE": {"x": 1}}}, "callInputs.PIPELINE: must be a string (got object)"),
    ({"callInputs": {"MODEL_PRECISION": 16}}, "callInputs.MODEL_PRECISION: must be a string (got int)"),
    ({"callInputs": {"safety_checker": "no"}}, "callInputs.safety_checker: must be a boolean (got string)"),
    ({"callInputs": {"SCHEDULER": 10**400}}, "callInputs.SCHEDULER: must be a string (got int)"),
    (
        {"callInputs": {"startRequestId": "r" * 100_000}},
        "callInputs.startRequestId: 100000 characters is over the limit of 200",
    ),
    ({"modelInputs": {"guidance_scale": 10**400}}, "modelInputs.guidance_scale: must be between 0 and 30"),
    ({"modelInputs": {"num_images_per_prompt": 1e300}}, "modelInputs.num_images_per_prompt: must be betw"),
]


@pytest.mark.parametrize(("extra", "message"), HOSTILE)
def test_hostile_values_are_refused_in_one_line_naming_the_field(
    served: jobs.Served, fake_pipeline: list[Call], extra: dict[str, Any], message: str
) -> None:
    out = jobs.answer(served, {"id": "x", "input": {"prompt": "a fox", **extra}})
    assert set(out) == {"error"}, out
    assert_one_line(out["error"])
    assert message in out["error"]
    assert fake_pipeline == []


@pytest.mark.parametrize(("extra", "message"), HOSTILE_DIFFUSERS_API)
def test_hostile_diffusers_api_values_are_refused_in_one_line(
    served: jobs.Served, fake_pipeline: list[Call], extra: dict[str, Any], message: str
) -> None:
    body = {**extra, "modelInputs": {"prompt": "a fox", **extra.get("modelInputs", {})}}
    out = jobs.answer(served, {"id": "x", "input": body})
    assert message in out["error"]
    assert_one_line(out["error"])
    assert fake_pipeline == []


def test_a_failing_pipeline_is_one_line_without_server_paths(
    served: jobs.Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"weights at {REPO}/build/artifacts/tiny/unet.safetensors are bad\nsecond line")

    monkeypatch.setattr(type(served.loaded.pipe), "__call__", broken)
    out = jobs.answer(served, {"id": "x", "input": {"prompt": "a fox"}})
    assert out == {"error": "inference failed: RuntimeError: weights at unet.safetensors are bad"}


def test_worker_errors_picks_failed_or_completed_with_error_for_diffusers_api_clients(
    served: jobs.Served, fake_pipeline: list[Call]
) -> None:
    """Through the SDK's own job runner: what RunPod reports for each style and request shape."""
    from runpod.serverless.modules.rp_job import run_job

    def reported(style: str, body: dict[str, Any]) -> dict[str, Any]:
        styled = dataclasses.replace(served, errors=style)
        return dict(asyncio.run(run_job(lambda job: jobs.answer(styled, job), {"id": "j", "input": body})))

    bad_api = {"modelInputs": {"prompt": "a fox", "num_inference_steps": 99}}
    # Default: RunPod's FAILED (an `error` beside the output), in either request shape.
    refused = "modelInputs.num_inference_steps: must be between 1 and 3 (got 99)"
    assert reported("runpod", bad_api) == {"error": refused}
    # diffusers-api: a COMPLETED job (no `error`) whose output carries `$error`.
    assert reported("diffusers-api", bad_api) == {
        "output": {
            "$error": {
                "code": "INVALID_INPUTS",
                "message": refused,
            }
        }
    }
    # RunPod-shaped requests keep RunPod's FAILED under either style.
    assert reported("diffusers-api", {"prompt": "a fox", "seed": -1})["error"].startswith("seed: must be")
    assert fake_pipeline == []
    good = reported("diffusers-api", {"modelInputs": {"prompt": "a fox", "seed": 1}})
    assert set(good) == {"output"}
    assert "image_base64" in good["output"]


# --- fuzz -----------------------------------------------------------------------------------------

_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.integers(min_value=-3, max_value=300)
    # The worker flushes denormals to zero (load.py), process-wide: hypothesis refuses subnormals then.
    | st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False)
    | st.text(max_size=30)
)
ANY_JSON = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=12,
)
# Values on and around every bound the test limits set, and names the worker knows.
EDGES = st.sampled_from(
    [
        *(0, 1, 2, 3, 4, 7.5, 2.0, 30, 30.0001, 63, 64, 65, 72, 128, 136, 2**63 - 1, 2**63, 10**400, 1e308),
        *(float("inf"), float("nan"), -1, True, False, "", " ", "a fox", "base64", "s3", "DDIMScheduler"),
        *("LMS", "tiny", "StableDiffusionPipeline", "fp32", "fp16", "aGk=", [], {}),
    ]
)
FIELD_NAMES = sorted({*requests.RUNPOD_FIELDS, *requests.MODEL_INPUTS, *requests.CALL_INPUTS})
FIELDS = st.dictionaries(
    st.sampled_from(FIELD_NAMES) | st.text(max_size=8), EDGES | ANY_JSON, max_size=6
).map(lambda d: {"prompt": "a fox", **d} if "prompt" not in d and len(d) % 2 else d)
# A good request with one or two fields set to edge values: half of these are served.
NEAR_GOOD = st.dictionaries(st.sampled_from(requests.RUNPOD_FIELDS), EDGES, max_size=2).map(
    lambda d: {**d, "prompt": "a fox"}
)
NEAR_GOOD_API = st.dictionaries(st.sampled_from(requests.MODEL_INPUTS), EDGES, max_size=2).map(
    lambda d: {"modelInputs": {**d, "prompt": "a fox"}}
)
REQUESTS = st.one_of(
    ANY_JSON,
    FIELDS,
    NEAR_GOOD,
    NEAR_GOOD_API,
    st.fixed_dictionaries({"modelInputs": FIELDS}, optional={"callInputs": FIELDS | ANY_JSON}),
    st.fixed_dictionaries({"callInputs": FIELDS}, optional={"modelInputs": ANY_JSON}),
)


@pytest.mark.parametrize("style", ["runpod", "diffusers-api"])
def test_fuzz_no_traceback_no_refused_call_and_still_serving(
    served: jobs.Served, reference: dict[str, Any], style: str
) -> None:
    styled = dataclasses.replace(served, errors=style)
    tried = {"refused": 0, "served": 0}

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=REQUESTS)
    def one(body: Any) -> None:
        body = json.loads(json.dumps(body))  # what a client can send is JSON
        before = len(calls)
        out = jobs.answer(styled, {"id": "fuzz", "input": body})
        assert isinstance(out, dict)
        json.dumps(out)
        message = failure_message(out)
        if message is not None:
            assert_one_line(message)
            assert len(calls) == before, (body, out)  # refused: the pipeline never ran
            tried["refused"] += 1
        else:
            assert len(calls) == before + 1, (body, out)
            assert "image_base64" in out or "images_base64" in out
            tried["served"] += 1

    with blank_pipeline(served) as calls:
        one()
    assert tried["refused"] > tried["served"] > 0, tried
    # The real pipeline, after all that: the same good request gives the same image.
    again = jobs.answer(served, {"id": "ref", "input": GOOD})
    assert again["image_base64"] == reference["image_base64"]
    assert decode_png(again["image_base64"]).size == (64, 64)
