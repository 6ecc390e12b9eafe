"""`packager deploy` against a local stand-in for RunPod's REST API v2.

Each test runs the real command in a subprocess with RUNPOD_API_BASE_URL pointing at the stand-in,
which validates every body against the request schemas of RunPod's published OpenAPI document,
keeps RunPod's prose rules, answers reads the way RunPod normalises them, and records every request.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from packager.image import naming
from tests.rig.cli import run_packager
from tests.rig.runpod_api import RunPodStandIn

ARTIFACT_A = "a1" * 32
ARTIFACT_B = "b2" * 32
SERVERLESS = "/v2/serverless"
# Planted in the environment of every run: none may reach the API, stdout, stderr or the state file.
PLANTED = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEY000001",
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-value-do-not-send",
    "BUCKET_SECRET_ACCESS_KEY": "planted-bucket-secret-value",
    "HF_TOKEN": "hf_plantedtokenvalue000000",
}
RECIPE = """\
name: tiny
source: {path: ./model}
store: {uri: s3://models-bucket/store}
image: {repository: registry.example.com/team/sd}
volume: {id: vol123abc, datacenter: EU-RO-1}
worker:
  defaults: {num_inference_steps: 4, width: 128, height: 128}
deploy:
  gpu_ids: AMPERE_24,ADA_24
  workers_min: 0
  workers_max: 2
  idle_timeout: 7
  flashboot: priority
  scaler_value: 2
  execution_timeout_ms: 120000
  container_disk_gb: 15
  registry_auth_id: regauth123
  env: {PULL_TIMEOUT_S: "90"}
  secrets:
    AWS_ACCESS_KEY_ID: store_key_id
    AWS_SECRET_ACCESS_KEY: store_secret
    BUCKET_SECRET_ACCESS_KEY: bucket_secret
"""


def write_recipe(folder: Path, body: str = RECIPE) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(body)
    return path


def run_command(
    command: str, recipe: Path, api: RunPodStandIn | None, *args: str, key: str | None = "standin"
) -> subprocess.CompletedProcess[str]:
    """`packager COMMAND RECIPE ARGS` with only the planted secrets and the stand-in in its env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "AWS_", "BUCKET_", "HF_"))}
    env.update(PLANTED)
    env["HOME"] = str(recipe.parent)  # no ~/.runpod credentials from the machine running the tests
    if api is not None:
        env["RUNPOD_API_BASE_URL"] = api.url
        if key is not None:
            env["RUNPOD_API_KEY"] = api.api_key if key == "standin" else key
    return run_packager(command, str(recipe), *args, env=env, timeout=120)


def run_deploy(
    recipe: Path, api: RunPodStandIn | None, *args: str, key: str | None = "standin"
) -> subprocess.CompletedProcess[str]:
    return run_command("deploy", recipe, api, *args, key=key)


def deploy_json(recipe: Path, api: RunPodStandIn, *args: str) -> dict[str, Any]:
    result = run_deploy(recipe, api, "--json", *args)
    assert result.returncode == 0, result.stderr
    assert_no_secrets(result.stdout + result.stderr)
    return json.loads(result.stdout)


def assert_no_secrets(text: str) -> None:
    for value in PLANTED.values():
        assert value not in text


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return write_recipe(tmp_path)


def test_first_deploy_creates_the_endpoint_the_recipe_describes_in_one_post(
    runpod_api: RunPodStandIn, recipe: Path
) -> None:
    out = deploy_json(recipe, runpod_api, "--mode", "volume", "--artifact-id", ARTIFACT_A)

    assert out["endpoint"]["action"] == "created"
    assert out["template"] is None
    assert runpod_api.writes() == [("POST", SERVERLESS)]
    assert [r.status for r in runpod_api.requests] == [200, 201]
    assert all(r.headers["Authorization"] == f"Bearer {runpod_api.api_key}" for r in runpod_api.requests)

    (endpoint,) = runpod_api.endpoints.values()
    assert endpoint["id"] == out["endpoint"]["id"]
    assert endpoint["name"] == "tiny-volume"
    assert endpoint["type"] == "QUEUE"
    assert (
        out["image"]
        == endpoint["image"]
        == naming.image_tag("registry.example.com/team/sd", "tiny", ARTIFACT_A, "volume")
    )
    assert (endpoint["disk"], endpoint["registry"]) == (15, "regauth123")
    # CUDA as a floor, from the default base image (pytorch ...-cuda12.8-...): 12.8 and every newer.
    assert endpoint["gpu"] == {
        "pools": ["AMPERE_24", "ADA_24"],
        "count": 1,
        "minCudaVersion": "12.8",
        "allowedCudaVersions": [],
    }
    # Every setting sent explicitly, none left to RunPod's defaults (idle 10 s, flashboot OFF, ...).
    assert endpoint["workers"] == {"min": 0, "max": 2, "idleTimeout": 7}
    assert endpoint["scaling"] == {"type": "QUEUE_DELAY", "queueDelay": 2}
    assert endpoint["flashboot"] == "PRIORITY_FLASHBOOT"
    assert endpoint["timeout"] == 120_000
    assert (endpoint["networkVolumes"], endpoint["dataCenterIds"]) == (["vol123abc"], ["EU-RO-1"])
    env = endpoint["env"]
    assert env["MODEL_DIR"] == f"/runpod-volume/models/tiny/{ARTIFACT_A}"
    assert env["ARTIFACT_URI"] == f"s3://models-bucket/store/tiny/{ARTIFACT_A}"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PULL_TIMEOUT_S"] == "90"
    assert json.loads(env["WORKER_CONFIG"])["defaults"]["num_inference_steps"] == 4
    assert env["AWS_SECRET_ACCESS_KEY"] == "{{ RUNPOD_SECRET_store_secret }}"
    assert env["BUCKET_SECRET_ACCESS_KEY"] == "{{ RUNPOD_SECRET_bucket_secret }}"
    assert out["url"] == f"https://api.runpod.ai/v2/{endpoint['id']}/runsync"


def test_an_unchanged_recipe_sends_zero_writes(runpod_api: RunPodStandIn, recipe: Path) -> None:
    first = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)
    runpod_api.requests.clear()

    again = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A)

    assert again.returncode == 0, again.stderr
    assert runpod_api.writes() == []
    # The id stored after the first deploy: one read of that endpoint, no list; then one GraphQL
    # read of its cached models (a query, not a write).
    assert [(r.method, r.path) for r in runpod_api.requests] == [
        ("GET", f"{SERVERLESS}/{first['endpoint']['id']}"),
        ("POST", "/graphql"),
    ]
    assert "unchanged" in again.stdout
    assert "nothing to change" in again.stdout


def test_a_new_image_is_one_patch_of_the_image(runpod_api: RunPodStandIn, recipe: Path) -> None:
    first = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)

    second = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_B)

    endpoint_id = first["endpoint"]["id"]
    assert second["endpoint"] == {**first["endpoint"], "action": "updated", "changed": ["image"]}
    assert runpod_api.writes() == [("POST", SERVERLESS), ("PATCH", f"{SERVERLESS}/{endpoint_id}")]
    new_image = naming.image_tag("registry.example.com/team/sd", "tiny", ARTIFACT_B, "baked")
    assert runpod_api.bodies("PATCH") == [{"image": new_image}]
    assert runpod_api.endpoints[endpoint_id]["image"] == new_image
    assert runpod_api.endpoints[endpoint_id]["flashboot"] == "PRIORITY_FLASHBOOT"  # PATCH left it


def test_a_new_artifact_in_volume_mode_patches_image_and_env_together(
    runpod_api: RunPodStandIn, recipe: Path
) -> None:
    deploy_json(recipe, runpod_api, "--mode", "volume", "--artifact-id", ARTIFACT_A)

    second = deploy_json(recipe, runpod_api, "--mode", "volume", "--artifact-id", ARTIFACT_B)

    assert second["endpoint"]["changed"] == ["image", "env"]
    assert second["writes"] == 1
    (patch,) = runpod_api.bodies("PATCH")
    assert set(patch) == {"image", "env"}
    assert patch["env"]["MODEL_DIR"].endswith(ARTIFACT_B)
    assert patch["env"]["AWS_SECRET_ACCESS_KEY"] == "{{ RUNPOD_SECRET_store_secret }}"  # env goes whole


def test_a_setting_change_patches_only_that_setting(runpod_api: RunPodStandIn, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    first = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)
    write_recipe(
        tmp_path, RECIPE.replace("workers_max: 2", "workers_max: 5").replace("ADA_24\n", "HOPPER_141\n")
    )

    second = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)

    assert (second["endpoint"]["action"], second["endpoint"]["changed"]) == ("updated", ["gpu", "workers"])
    (patch,) = runpod_api.bodies("PATCH")
    assert patch == {
        "gpu": {
            "pools": ["AMPERE_24", "HOPPER_141"],
            "count": 1,
            "minCudaVersion": "12.8",
            "allowedCudaVersions": [],
        },
        "workers": {"min": 0, "max": 5, "idleTimeout": 7},
    }
    endpoint = runpod_api.endpoints[first["endpoint"]["id"]]
    assert (endpoint["timeout"], endpoint["flashboot"], endpoint["disk"]) == (
        120_000,
        "PRIORITY_FLASHBOOT",
        15,
    )


def test_an_explicit_cuda_list_replaces_the_floor_and_clears_it(
    runpod_api: RunPodStandIn, tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path)
    deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)
    write_recipe(tmp_path, RECIPE + '  allowed_cuda_versions: ["12.8", "13.0"]\n')

    deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)

    (patch,) = runpod_api.bodies("PATCH")
    assert patch["gpu"]["allowedCudaVersions"] == ["12.8", "13.0"]
    assert patch["gpu"]["minCudaVersion"] == ""
    (endpoint,) = runpod_api.endpoints.values()
    assert (endpoint["gpu"]["allowedCudaVersions"], endpoint["gpu"]["minCudaVersion"]) == (
        ["12.8", "13.0"],
        None,
    )


def test_an_endpoint_made_elsewhere_is_found_by_name_among_many_and_matched_tolerantly(
    runpod_api: RunPodStandIn, recipe: Path
) -> None:
    for i in range(450):
        runpod_api.add_endpoint(name=f"other-{i:03d}", image="x:1", gpu={"pools": ["AMPERE_16"]})
    plan = json.loads(run_deploy(recipe, None, "--artifact-id", ARTIFACT_A, "--dry-run", "--json").stdout)
    body = plan["requests"][1]["body"]
    # The same settings in another order, with RunPod's defaults where the recipe sends empties.
    same = {
        **body,
        "env": dict(reversed(list(body["env"].items()))),
        "gpu": {**body["gpu"], "pools": list(reversed(body["gpu"]["pools"]))},
    }
    for key in ("ports", "args", "dataCenterIds", "networkVolumes"):
        same.pop(key)
    made = runpod_api.add_endpoint(**same)
    runpod_api.requests.clear()

    out = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)

    assert out["endpoint"] == {"name": "tiny-baked", "id": made["id"], "action": "unchanged", "changed": []}
    assert runpod_api.writes() == []
    assert len(runpod_api.endpoints) == 451
    # Remembered: the next run reads it by id.
    runpod_api.requests.clear()
    deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)
    # ... and its cached models, which only GraphQL shows.
    assert [r.path for r in runpod_api.requests] == [f"{SERVERLESS}/{made['id']}", "/graphql"]


def test_the_state_file_holds_ids_only_and_a_stale_id_falls_back_to_the_name(
    runpod_api: RunPodStandIn, recipe: Path
) -> None:
    first = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)
    state_file = recipe.with_suffix(".deploy.json")
    text = state_file.read_text()
    assert first["endpoint"]["id"] in text
    assert "RUNPOD_SECRET" not in text
    assert runpod_api.api_key not in text
    assert_no_secrets(text)
    del runpod_api.endpoints[first["endpoint"]["id"]]  # deleted in the console

    again = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)

    assert again["endpoint"]["action"] == "created"
    assert again["endpoint"]["id"] != first["endpoint"]["id"]
    assert again["endpoint"]["id"] in state_file.read_text()


def test_secrets_reach_runpod_only_as_references(runpod_api: RunPodStandIn, recipe: Path) -> None:
    for args in (["--mode", "volume"], ["--mode", "baked"], ["--dry-run"], ["--dry-run", "--json"]):
        result = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A, *args)
        assert result.returncode == 0, result.stderr
        assert_no_secrets(result.stdout + result.stderr)
    traffic = runpod_api.raw_traffic()
    assert "RUNPOD_SECRET_store_secret" in traffic
    assert_no_secrets(traffic)
    assert_no_secrets(json.dumps(list(runpod_api.endpoints.values())))


def test_dry_run_prints_the_exact_requests_and_sends_nothing(runpod_api: RunPodStandIn, recipe: Path) -> None:
    result = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A, "--dry-run", "--json", key=None)

    assert result.returncode == 0, result.stderr
    assert runpod_api.requests == []
    plan = json.loads(result.stdout)
    assert [(r["method"], r["url"]) for r in plan["requests"]] == [
        ("GET", runpod_api.url + SERVERLESS),
        ("POST", runpod_api.url + SERVERLESS),
        ("PATCH", runpod_api.url + SERVERLESS + "/{id}"),
    ]
    body = plan["requests"][1]["body"]
    assert body["env"]["AWS_SECRET_ACCESS_KEY"] == "{{ RUNPOD_SECRET_store_secret }}"
    assert plan["requests"][1]["headers"]["Authorization"] == "Bearer $RUNPOD_API_KEY"

    # What the dry run shows is what deploy sends.
    deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)
    assert runpod_api.bodies("POST") == [body]

    text = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A, "--dry-run", key=None)
    assert text.returncode == 0
    assert f"POST {runpod_api.url}{SERVERLESS}\n" in text.stdout
    assert '"flashboot": "PRIORITY_FLASHBOOT"' in text.stdout


def test_dry_run_with_a_key_reads_and_prints_the_exact_patch(runpod_api: RunPodStandIn, recipe: Path) -> None:
    first = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)
    state_before = recipe.with_suffix(".deploy.json").read_text()
    runpod_api.requests.clear()

    plan = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_B, "--dry-run")

    assert runpod_api.writes() == []
    assert plan["dry_run"] is True
    new_image = naming.image_tag("registry.example.com/team/sd", "tiny", ARTIFACT_B, "baked")
    (patch,) = plan["requests"]
    assert (patch["method"], patch["url"], patch["body"]) == (
        "PATCH",
        f"{runpod_api.url}{SERVERLESS}/{first['endpoint']['id']}",
        {"image": new_image},
    )
    assert recipe.with_suffix(".deploy.json").read_text() == state_before
    unchanged = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A, "--dry-run")
    assert "nothing to change: deploy would send no write" in unchanged.stdout


def test_a_named_template_is_kept_in_step_beside_the_endpoint(
    runpod_api: RunPodStandIn, tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path, RECIPE.replace("deploy:\n", "deploy:\n  template_name: tiny-worker\n"))
    first = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)
    second = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_B)

    assert first["template"]["action"] == "created"
    assert second["template"]["changed"] == ["image"]
    (template,) = runpod_api.templates.values()
    assert (template["serverless"], template["startSsh"], template["startJupyter"]) == (True, False, False)
    assert template["image"] == runpod_api.endpoints[first["endpoint"]["id"]]["image"]
    assert runpod_api.writes() == [
        ("POST", "/v2/templates"),
        ("POST", SERVERLESS),
        ("PATCH", f"/v2/templates/{template['id']}"),
        ("PATCH", f"{SERVERLESS}/{first['endpoint']['id']}"),
    ]


def test_missing_api_key_is_one_line(runpod_api: RunPodStandIn, recipe: Path) -> None:
    result = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A, key=None)

    assert "RUNPOD_API_KEY" in one_line_error(result)
    assert result.stdout == ""
    assert runpod_api.requests == []


@pytest.mark.parametrize(
    ("which", "expect"),
    [
        ("wrong", "RUNPOD_API_KEY was rejected by the RunPod API (401)"),
        ("null", "RunPod does not know this RUNPOD_API_KEY's account"),
        ("html", "was refused (403) by an HTML page, not by the API"),
    ],
)
def test_each_auth_failure_is_one_clear_line(
    runpod_api: RunPodStandIn, recipe: Path, which: str, expect: str
) -> None:
    key = {"wrong": "rp_wrong_key_0123456789", "null": runpod_api.null_key, "html": runpod_api.html_key}[
        which
    ]

    result = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A, key=key)

    assert expect in one_line_error(result)
    assert runpod_api.writes() == []
    assert runpod_api.endpoints == {}


def test_an_api_refusal_is_reported_as_its_problem_detail(runpod_api: RunPodStandIn, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, RECIPE.replace("id: vol123abc", "id: volunknown"))

    result = run_deploy(recipe, runpod_api, "--mode", "volume", "--artifact-id", ARTIFACT_A)

    assert one_line_error(result) == (
        "packager: error: RunPod API: POST /v2/serverless: 400 Bad Request: "
        "network volume volunknown not found\n"
    )
    assert runpod_api.endpoints == {}


def test_two_endpoints_with_the_managed_name_are_refused(runpod_api: RunPodStandIn, recipe: Path) -> None:
    one = runpod_api.add_endpoint(name="tiny-baked", image="x:1", gpu={"pools": ["AMPERE_24"]})
    two = runpod_api.add_endpoint(name="tiny-baked", image="x:1", gpu={"pools": ["AMPERE_24"]})

    error = one_line_error(run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A))

    assert one["id"] in error
    assert two["id"] in error
    assert "deploy.endpoint_name" in error
    assert runpod_api.writes() == []


def test_request_count_scaling_sends_no_idle_timeout(runpod_api: RunPodStandIn, tmp_path: Path) -> None:
    body = RECIPE.replace("  idle_timeout: 7\n", "  scaler_type: REQUEST_COUNT\n")
    recipe = write_recipe(tmp_path, body)

    deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)
    again = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A)

    (sent,) = runpod_api.bodies("POST", SERVERLESS)
    assert sent["workers"] == {"min": 0, "max": 2}
    assert sent["scaling"] == {"type": "REQUEST_COUNT", "requestCount": 2}
    assert again["endpoint"]["action"] == "unchanged"
