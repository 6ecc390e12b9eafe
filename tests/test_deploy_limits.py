"""RunPod's limits at `packager validate`, and the strictness of the REST v2 stand-in the deploy
tests rely on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from packager.deploy.runpod_api import Call, RunPodREST
from packager.errors import DeployError
from tests.rig.runpod_api import RunPodStandIn
from tests.test_deploy import SERVERLESS, one_line_error, run_command, write_recipe


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ("  idle_timeout: 3601\n", "deploy.idle_timeout"),
        ("  idle_timeout: 0\n", "deploy.idle_timeout"),
        ("  endpoint_name: ab\n", "deploy.endpoint_name: RunPod names are 3 to 191 characters"),
        ("  gpu_ids: NVIDIA A40\n", "deploy.gpu_ids: 'NVIDIA A40' is not a RunPod GPU pool id"),
        (
            "  allowed_cuda_versions: ['12.10']\n",
            "deploy.allowed_cuda_versions.0: '12.10' is not a CUDA version",
        ),
        ("  min_cuda_version: '12.10'\n", "deploy.min_cuda_version: '12.10' is not a CUDA version"),
        ("  min_cuda_version: '12.8'\n  allowed_cuda_versions: ['12.8']\n", "deploy.min_cuda_version"),
        ("  execution_timeout_ms: 2000\n", "deploy.execution_timeout_ms"),
        ("  execution_timeout_ms: 86400000\n", "deploy.execution_timeout_ms: at or past RunPod's job TTL"),
        ("  scaler_type: REQUEST_COUNT\n  idle_timeout: 30\n", "deploy.idle_timeout: RunPod refuses"),
        ("  scaler_type: QUEUE_DELAY\n  scaler_value: 0\n", "deploy.scaler_value"),
        ("  flashboot: fast\n", "deploy.flashboot"),
    ],
)
def test_validate_checks_every_limit_runpod_enforces(tmp_path: Path, extra: str, expect: str) -> None:
    base = "name: tiny\nsource: {path: ./model}\ndeploy:\n"
    recipe = write_recipe(tmp_path, base + extra)

    result = run_command("validate", recipe, None)

    assert expect in one_line_error(result)


def test_validate_accepts_current_pools_and_the_new_defaults(tmp_path: Path) -> None:
    body = (
        "name: tiny\nsource: {path: ./model}\ndeploy:\n"
        "  gpu_ids: HOPPER_141,ADA_32_PRO,BLACKWELL_96,BLACKWELL_180\n  min_cuda_version: '13.0'\n"
    )
    result = run_command("validate", write_recipe(tmp_path, body), None, "--json")

    assert result.returncode == 0, result.stderr
    deploy = json.loads(result.stdout)["deploy"]
    assert deploy["idle_timeout"] == 60
    assert deploy["execution_timeout_ms"] == 300_000
    assert deploy["flashboot"] is True
    assert deploy["min_cuda_version"] == "13.0"


def test_the_stand_in_refuses_what_runpod_refuses(runpod_api: RunPodStandIn) -> None:
    """The other tests mean something only if the rig is strict: check it through our own client."""
    client = RunPodREST(runpod_api.api_key, runpod_api.url)
    body = {
        "name": "e",
        "type": "QUEUE",
        "image": "i:1",
        "gpu": {"pools": ["ADA_24"]},
        "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
    }

    def refused(payload: dict[str, Any], match: str, method: str = "POST", path: str = SERVERLESS) -> None:
        with pytest.raises(DeployError, match=match):
            client.one(Call(method, path, payload))  # type: ignore[arg-type]

    refused({**body, "bogus": 1}, r"422 .*'bogus' was unexpected")
    refused({k: v for k, v in body.items() if k != "type"}, r"'type' is a required property")
    refused({k: v for k, v in body.items() if k != "image"}, r"'image' is a required property")
    refused({**body, "flashboot": True}, r"True is not of type 'string'")
    refused({**body, "flashboot": "ON"}, r"'ON' is not one of")
    refused({**body, "timeout": "300000"}, r"'300000' is not of type 'integer'")
    refused({**body, "workers": {"idleTimeout": 3601}}, r"3601 is greater than the maximum of 3600")
    refused({**body, "gpu": {"pools": ["NVIDIA A40"]}}, r"400 .*not a serverless GPU pool")
    refused(
        {**body, "gpu": {"pools": ["ADA_24"], "minCudaVersion": "12.8", "allowedCudaVersions": ["12.8"]}},
        "mutually",
    )
    refused({**body, "cpu": [{"id": "cpu3c", "vcpuCount": 2}]}, r"exactly one of gpu or cpu")
    counting = {**body, "scaling": {"type": "REQUEST_COUNT", "requestCount": 1}}
    refused({**counting, "workers": {"idleTimeout": 5}}, r"idleTimeout does not apply")
    made = client.one(Call("POST", SERVERLESS, {**body, "flashboot": "PRIORITY_FLASHBOOT"}))
    assert made is not None
    assert made["flashboot"] == "PRIORITY_FLASHBOOT"
    refused({"type": "LOAD_BALANCER"}, r"'type' was unexpected", "PATCH", f"{SERVERLESS}/{made['id']}")
    refused(
        {"gpu": {"excludedTypes": ["NVIDIA L4"]}},
        r"'pools' is a dependency",
        "PATCH",
        f"{SERVERLESS}/{made['id']}",
    )
    assert client.one(Call("GET", f"{SERVERLESS}/nothere"), missing_ok=True) is None
