"""`packager invoke`: jobs sent to a deployed endpoint (RunPod stand-ins) and to `packager serve`.

The remote tests run the real command in a subprocess, with the GraphQL stand-in (where `deploy`
left the endpoint, found by its name) and the serverless stand-in answering the runpod SDK's
`Endpoint.run` and status calls through a handler that answers as the worker does.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from packager.deploy import invoke as client
from tests.rig.artifacts import tiny_recipe, tiny_source
from tests.rig.cli import run_packager
from tests.rig.runpod_api import RunPodStandIn
from tests.rig.runpod_serverless import ServerlessStandIn
from tests.rig.worker import decode_png, packager_serve, worker_env

LINE_RE = re.compile(r"^Request took \d+\.\d+s \(inference: \d+\.\d+s(, init: \d+\.\d+s)?\)$")


def png(width: int, height: int, colour: str = "red") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class FakeWorker:
    """Answers as worker_runtime does: a PNG, `$timings` in ms, `init` only on its first job."""

    def __init__(self) -> None:
        self.inputs: list[Any] = []

    def __call__(self, job_input: Any) -> Any:
        self.inputs.append(job_input)
        if job_input.get("prompt") == "fail me":
            return {"error": "prompt: refused by the test worker"}
        if job_input.get("prompt") == "diffusers-api error":
            return {"$error": {"code": "BAD_REQUEST", "message": "strength: too low"}}
        timings = {"inference": 4800.0} | ({"init": 3100.0} if len(self.inputs) == 1 else {})
        return {"image_base64": png(96, 64), "seed": 1, "$timings": timings}


@pytest.fixture
def endpoint() -> Iterator[tuple[RunPodStandIn, ServerlessStandIn, FakeWorker]]:
    worker = FakeWorker()
    with RunPodStandIn() as api:
        api.add_endpoint(name="tiny-baked", gpu={"pools": ["ADA_24"], "count": 1})
        ep = api.add_endpoint(name="other-baked", gpu={"pools": ["ADA_24"], "count": 1})
        with ServerlessStandIn(worker, api.endpoints, api_key=api.api_key) as jobs:
            yield api, jobs, worker
        assert ep["id"] in api.endpoints


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\nsource: {path: ./model}\n")
    return path


def run_invoke(
    recipe: Path, api: RunPodStandIn, jobs: ServerlessStandIn, *args: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env["HOME"] = str(recipe.parent)
    env["PACKAGER_BUILD_DIR"] = str(recipe.parent / "build")
    env["RUNPOD_API_BASE_URL"] = api.url
    env["RUNPOD_ENDPOINT_BASE_URL"] = jobs.base_url
    env["RUNPOD_API_KEY"] = key or api.api_key
    return run_packager("invoke", str(recipe), *args, env=env, timeout=120)


def test_invoke_finds_the_endpoint_by_name_times_runs_and_saves_images(
    endpoint: tuple[RunPodStandIn, ServerlessStandIn, FakeWorker], recipe: Path
) -> None:
    api, jobs, worker = endpoint
    proc = run_invoke(
        recipe, api, jobs, "--prompt", "a fox", "--input", '{"seed": 7}', "--runs", "3", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    wanted = next(e["id"] for e in api.endpoints.values() if e["name"] == "tiny-baked")
    assert report["where"] == f"endpoint {wanted}"
    assert worker.inputs == [{"seed": 7, "prompt": "a fox"}] * 3
    assert report["runs"] == 3
    assert report["cold_runs"] == [1]
    assert 0 < report["p50_s"] <= report["p95_s"]
    assert [j["status"] for j in report["jobs"]] == ["COMPLETED"] * 3
    assert len(report["saved"]) == 3
    for saved in report["saved"]:
        assert Path(saved).parent == recipe.parent / "build" / "invoke"
        with open(saved, "rb") as fh:
            assert decode_png(base64.b64encode(fh.read()).decode()).size == (96, 64)
    # Every job went through `run` then `status`, with the key as a bearer token.
    paths = [p for _, p, _ in jobs.requests]
    assert sum(p == f"/v2/{wanted}/run" for p in paths) == 3
    assert all(p.startswith(f"/v2/{wanted}/status/job-") for p in paths if not p.endswith("/run"))
    assert {auth for *_, auth in jobs.requests} == {f"Bearer {api.api_key}"}


def test_invoke_prints_docker_diffusers_apis_line_and_the_percentiles(
    endpoint: tuple[RunPodStandIn, ServerlessStandIn, FakeWorker], recipe: Path
) -> None:
    api, jobs, _ = endpoint
    ep = next(e["id"] for e in api.endpoints.values() if e["name"] == "other-baked")
    proc = run_invoke(recipe, api, jobs, "--endpoint-id", ep, "--runs", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.match(r"^\[1/2\] Request took \d+\.\ds \(inference: 4\.8s, init: 3\.1s\) cold$", lines[0])
    assert re.match(r"^saved .*/build/invoke/tiny-job-1\.png$", lines[1])
    assert re.match(r"^\[2/2\] Request took \d+\.\ds \(inference: 4\.8s\)$", lines[2])
    assert re.match(r"^2 runs: p50 \d+\.\ds, p95 \d+\.\ds; cold worker on run\(s\) 1$", lines[-1])
    assert all(f"/v2/{ep}/" in p for _, p, _ in jobs.requests)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("fail me", "FAILED: prompt: refused by the test worker"),
        ("diffusers-api error", "FAILED: BAD_REQUEST: strength: too low"),
    ],
)
def test_a_failed_job_prints_its_error_and_exits_1(
    endpoint: tuple[RunPodStandIn, ServerlessStandIn, FakeWorker], recipe: Path, prompt: str, message: str
) -> None:
    api, jobs, _ = endpoint
    proc = run_invoke(recipe, api, jobs, "--prompt", prompt)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"packager: error: job job-1 {message}"]
    assert not (recipe.parent / "build" / "invoke").exists()


def test_a_job_past_its_deadline_says_how_long_and_the_last_status(
    endpoint: tuple[RunPodStandIn, ServerlessStandIn, FakeWorker], recipe: Path
) -> None:
    api, jobs, _ = endpoint
    jobs.run_s = 30
    started = time.monotonic()
    proc = run_invoke(recipe, api, jobs, "--timeout", "2")
    assert time.monotonic() - started < 25
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert re.match(
        r"^packager: error: job job-1 on endpoint \w+: no answer after 2s \(last status IN_PROGRESS\)", line
    )


@pytest.mark.parametrize(
    ("args", "key", "message"),
    [
        (("--mode", "volume"), None, "no RunPod endpoint named 'tiny-volume': run `packager deploy RECIPE`"),
        (("--endpoint-id", "nosuchendpoint"), None, "endpoint nosuchendpoint answered HTTP 404"),
        ((), "rp_wrong_key", "RUNPOD_API_KEY was rejected"),
        (("--input", "[1, 2]"), None, "--input: must be a JSON object (got list)"),
    ],
)
def test_setup_mistakes_are_one_line(
    endpoint: tuple[RunPodStandIn, ServerlessStandIn, FakeWorker],
    recipe: Path,
    args: tuple[str, ...],
    key: str | None,
    message: str,
) -> None:
    api, jobs, _ = endpoint
    proc = run_invoke(recipe, api, jobs, *args, key=key)
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("packager: error: "), line
    assert message in line, line


def test_videos_and_several_images_are_saved_under_their_own_extensions(tmp_path: Path) -> None:
    mp4 = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 32
    output = {
        "images_base64": [png(8, 8), png(8, 8, "blue")],
        "video_base64": base64.b64encode(mp4).decode(),
    }
    paths = client.save_outputs(output, tmp_path / "out", "tiny-job")
    assert sorted(p.name for p in paths) == ["tiny-job-0.png", "tiny-job-1.png", "tiny-job-2.mp4"]
    assert (tmp_path / "out" / "tiny-job-2.mp4").read_bytes() == mp4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 21)]
    assert client.percentile(values, 50) == 10.5
    assert client.percentile(values, 95) == pytest.approx(19.05)
    assert client.percentile([3.0], 95) == 3.0


# ------------------------------------------------------------------------------ --local


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str], str]]:
    """`packager serve` on a tiny recipe (CPU, 2 steps, 64 px), and its URL."""
    root = tmp_path_factory.mktemp("invoke-local")
    extra = "worker:\n  defaults:\n    num_inference_steps: 2\n    width: 64\n    height: 64\n"
    recipe = tiny_recipe(root / "recipes", tiny_source(root / "source"), extra=extra)
    env = worker_env(None, PACKAGER_BUILD_DIR=str(root / "build"))
    log = root / "serve.log"
    with packager_serve(recipe, env, log) as (proc, url):
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/openapi.json", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        yield recipe, env, url


def test_invoke_local_prints_the_line_and_saves_the_image(served: tuple[Path, dict[str, str], str]) -> None:
    recipe, env, url = served
    proc = run_packager(
        "invoke", str(recipe), "--local", url, "--runs", "2", "--input", '{"seed": 3, "width": 128}', env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert LINE_RE.match(lines[0].removeprefix("[1/2] ").removesuffix(" cold")), lines
    assert lines[0].endswith(" cold")
    assert ", init: " in lines[0]
    assert ", init: " not in lines[2]
    saved = Path(lines[1].removeprefix("saved "))
    assert saved.parent == Path(env["PACKAGER_BUILD_DIR"]) / "invoke"
    from PIL import Image

    with Image.open(saved) as image:
        assert image.size == (128, 64)
    assert "cold worker on run(s) 1" in lines[-1]


def test_invoke_local_fails_in_one_line_with_the_workers_error(
    served: tuple[Path, dict[str, str], str],
) -> None:
    recipe, env, url = served
    proc = run_packager("invoke", str(recipe), "--local", url, "--input", '{"width": 100}', env=env)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert re.match(r"^packager: error: job \S+ FAILED: width: must be a multiple of 8 \(got 100\)", line), (
        line
    )
