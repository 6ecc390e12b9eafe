"""`packager deploy` against a local stand-in for RunPod's GraphQL API.

Each test runs the real command in a subprocess with RUNPOD_API_BASE_URL pointing at the stand-in,
which validates every request against RunPod's schema (unknown or missing fields, wrong types,
quoted enums are refused) and keeps the templates and endpoints it was asked to save.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from graphql import parse_value, value_from_ast_untyped
from hypothesis import given
from hypothesis import strategies as st

from packager.deploy import runpod_api as gql
from packager.errors import DeployError
from packager.image import naming
from packager.source.recipe import load_recipe
from tests.rig.cli import run_packager
from tests.rig.runpod_api import RunPodStandIn

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT_A = "a1" * 32
ARTIFACT_B = "b2" * 32
# Planted in the environment of every run: none may reach the API, stdout or stderr.
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
  flashboot: true
  scaler_type: REQUEST_COUNT
  scaler_value: 2
  execution_timeout_ms: 120000
  container_disk_gb: 15
  allowed_cuda_versions: ["12.8", "12.9"]
  registry_auth_id: regauth123
  env: {PULL_TIMEOUT_S: "90"}
  secrets:
    AWS_ACCESS_KEY_ID: store_key_id
    AWS_SECRET_ACCESS_KEY: store_secret
    BUCKET_SECRET_ACCESS_KEY: bucket_secret
{extra}"""


def write_recipe(folder: Path, extra: str = "", body: str = RECIPE) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(body.replace("{extra}", extra))
    return path


def run_deploy(
    recipe: Path, api: RunPodStandIn | None, *args: str, key: str | None = "standin", home: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "AWS_", "BUCKET_", "HF_"))}
    env.update(PLANTED)
    env["HOME"] = str(home)  # no ~/.runpod credentials from the machine running the tests
    if api is not None:
        env["RUNPOD_API_BASE_URL"] = api.url
        if key is not None:
            env["RUNPOD_API_KEY"] = api.api_key if key == "standin" else key
    return run_packager("deploy", str(recipe), *args, env=env, timeout=120)


def deploy_json(recipe: Path, api: RunPodStandIn, *args: str, home: Path) -> dict[str, Any]:
    result = run_deploy(recipe, api, "--json", *args, home=home)
    assert result.returncode == 0, result.stderr
    assert_no_secrets(result.stdout + result.stderr)
    return json.loads(result.stdout)


def assert_no_secrets(text: str) -> None:
    for value in PLANTED.values():
        assert value not in text


def env_of(template: dict[str, Any]) -> dict[str, str]:
    return {e["key"]: e["value"] for e in template["env"]}


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return write_recipe(tmp_path)


def test_first_deploy_creates_the_template_and_endpoint_the_recipe_describes(
    runpod_api: RunPodStandIn, recipe: Path, tmp_path: Path
) -> None:
    out = deploy_json(recipe, runpod_api, "--mode", "volume", "--artifact-id", ARTIFACT_A, home=tmp_path)

    assert (out["template"]["action"], out["endpoint"]["action"]) == ("created", "created")
    assert runpod_api.mutations() == ["saveTemplate", "saveEndpoint"]
    assert all(r.status == 200 and not r.errors for r in runpod_api.requests)
    # The SDK's GraphQL helper is the transport: its user agent and its bearer auth.
    assert all(r.headers["User-Agent"].startswith("RunPod-Python-SDK/") for r in runpod_api.requests)
    assert all(r.headers["Authorization"] == f"Bearer {runpod_api.api_key}" for r in runpod_api.requests)

    (template,) = runpod_api.templates.values()
    image = naming.image_tag("registry.example.com/team/sd", "tiny", ARTIFACT_A, "volume")
    assert out["image"] == template["imageName"] == image
    assert template["id"] == out["template"]["id"]
    assert template["name"] == "tiny-volume-template"
    assert (template["isServerless"], template["volumeInGb"], template["containerDiskInGb"]) == (True, 0, 15)
    assert template["containerRegistryAuthId"] == "regauth123"
    assert template["volumeMountPath"] == "/runpod-volume"
    env = env_of(template)
    assert env["MODEL_DIR"] == f"/runpod-volume/models/tiny/{ARTIFACT_A}"
    assert env["ARTIFACT_URI"] == f"s3://models-bucket/store/tiny/{ARTIFACT_A}"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PULL_TIMEOUT_S"] == "90"
    assert json.loads(env["WORKER_CONFIG"])["defaults"]["num_inference_steps"] == 4
    assert env["AWS_SECRET_ACCESS_KEY"] == "{{ RUNPOD_SECRET_store_secret }}"
    assert env["AWS_ACCESS_KEY_ID"] == "{{ RUNPOD_SECRET_store_key_id }}"
    assert env["BUCKET_SECRET_ACCESS_KEY"] == "{{ RUNPOD_SECRET_bucket_secret }}"

    (endpoint,) = runpod_api.endpoints.values()
    assert endpoint["id"] == out["endpoint"]["id"]
    assert endpoint["name"] == "tiny-volume"
    assert endpoint["templateId"] == template["id"]
    assert endpoint["gpuIds"] == "AMPERE_24,ADA_24"
    assert endpoint["networkVolumeId"] == "vol123abc"
    assert endpoint["locations"] == "EU-RO-1"  # the volume's datacenter
    assert endpoint["flashBootType"] == "FLASHBOOT"
    assert endpoint["executionTimeoutMs"] == 120_000
    assert endpoint["allowedCudaVersions"] == "12.8,12.9"
    assert (endpoint["workersMin"], endpoint["workersMax"], endpoint["idleTimeout"]) == (0, 2, 7)
    assert (endpoint["scalerType"], endpoint["scalerValue"]) == ("REQUEST_COUNT", 2)
    assert out["url"].endswith(f"/{endpoint['id']}/runsync")


def test_a_second_identical_deploy_sends_no_mutation(
    runpod_api: RunPodStandIn, recipe: Path, tmp_path: Path
) -> None:
    first = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A, home=tmp_path)
    before = len(runpod_api.mutations())

    again = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A, home=tmp_path)

    assert again.returncode == 0, again.stderr
    assert len(runpod_api.mutations()) == before == 2
    assert "nothing to change" in again.stdout
    assert again.stdout.count("unchanged") == 2
    assert first["template"]["id"] in again.stdout
    assert first["endpoint"]["id"] in again.stdout


def test_a_new_image_updates_the_template_in_place_and_the_endpoint_keeps_it(
    runpod_api: RunPodStandIn, recipe: Path, tmp_path: Path
) -> None:
    first = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A, home=tmp_path)

    second = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_B, home=tmp_path)

    assert second["template"]["action"] == "updated"
    assert second["template"]["id"] == first["template"]["id"]
    assert "imageName" in second["template"]["changed"]
    assert second["endpoint"] == {**first["endpoint"], "action": "unchanged"}
    assert runpod_api.mutations() == ["saveTemplate", "saveEndpoint", "saveTemplate"]
    (template,) = runpod_api.templates.values()
    assert template["imageName"] == naming.image_tag(
        "registry.example.com/team/sd", "tiny", ARTIFACT_B, "baked"
    )
    (endpoint,) = runpod_api.endpoints.values()
    assert endpoint["templateId"] == template["id"]

    # --image overrides the tag and is again an in-place update.
    third = deploy_json(
        recipe, runpod_api, "--artifact-id", ARTIFACT_B, "--image", "ghcr.io/me/w:v2", home=tmp_path
    )
    assert (third["template"]["id"], third["template"]["changed"]) == (first["template"]["id"], ["imageName"])
    assert runpod_api.templates[first["template"]["id"]]["imageName"] == "ghcr.io/me/w:v2"


def test_an_endpoint_setting_change_resends_the_whole_endpoint(
    runpod_api: RunPodStandIn, recipe: Path, tmp_path: Path
) -> None:
    first = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A, home=tmp_path)
    write_recipe(tmp_path, body=RECIPE.replace("workers_max: 2", "workers_max: 5"))

    second = deploy_json(recipe, runpod_api, "--artifact-id", ARTIFACT_A, home=tmp_path)

    assert second["template"]["action"] == "unchanged"
    assert (second["endpoint"]["action"], second["endpoint"]["changed"]) == ("updated", ["workersMax"])
    assert second["endpoint"]["id"] == first["endpoint"]["id"]
    (endpoint,) = runpod_api.endpoints.values()
    # saveEndpoint replaces the whole endpoint: a partial input would have reset these to defaults.
    assert endpoint["workersMax"] == 5
    assert (endpoint["flashBootType"], endpoint["executionTimeoutMs"], endpoint["idleTimeout"]) == (
        "FLASHBOOT",
        120_000,
        7,
    )


def test_secrets_reach_runpod_only_as_references(
    runpod_api: RunPodStandIn, recipe: Path, tmp_path: Path
) -> None:
    for args in (["--mode", "volume"], ["--mode", "baked"], ["--dry-run"], ["--dry-run", "--json"]):
        result = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A, *args, home=tmp_path)
        assert result.returncode == 0, result.stderr
        assert_no_secrets(result.stdout + result.stderr)
    traffic = runpod_api.raw_traffic()
    assert "RUNPOD_SECRET_store_secret" in traffic
    assert_no_secrets(traffic)
    assert_no_secrets(json.dumps([*runpod_api.templates.values(), *runpod_api.endpoints.values()]))


def test_dry_run_sends_nothing_and_needs_no_key(
    runpod_api: RunPodStandIn, recipe: Path, tmp_path: Path
) -> None:
    result = run_deploy(
        recipe, runpod_api, "--artifact-id", ARTIFACT_A, "--dry-run", "--json", key=None, home=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert runpod_api.requests == []
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True
    assert [r["mutation"] for r in plan["requests"]] == ["saveTemplate", "saveEndpoint"]
    template_env = {e["key"]: e["value"] for e in plan["requests"][0]["input"]["env"]}
    assert template_env["AWS_SECRET_ACCESS_KEY"] == "{{ RUNPOD_SECRET_store_secret }}"
    assert "flashBootType: FLASHBOOT" in plan["requests"][1]["document"]

    text = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A, "--dry-run", key=None, home=tmp_path)
    assert text.returncode == 0
    assert "mutation { saveTemplate(input:" in text.stdout
    assert runpod_api.requests == []


def test_missing_api_key_is_one_line_and_exit_2(
    runpod_api: RunPodStandIn, recipe: Path, tmp_path: Path
) -> None:
    result = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A, key=None, home=tmp_path)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "RUNPOD_API_KEY" in result.stderr
    assert result.stdout == ""
    assert runpod_api.requests == []


def test_a_rejected_key_is_one_line(runpod_api: RunPodStandIn, recipe: Path, tmp_path: Path) -> None:
    result = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A, key="rp_wrong_key", home=tmp_path)

    assert result.returncode == 2
    assert result.stderr.startswith("packager: error: RUNPOD_API_KEY was rejected")
    assert result.stderr.count("\n") == 1
    assert [r.status for r in runpod_api.requests] == [401]
    assert runpod_api.templates == {}


def test_a_graphql_error_is_reported_as_its_message(runpod_api: RunPodStandIn, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, body=RECIPE.replace("id: vol123abc", "id: volunknown"))

    result = run_deploy(recipe, runpod_api, "--mode", "volume", "--artifact-id", ARTIFACT_A, home=tmp_path)

    assert result.returncode == 2
    assert result.stderr == "packager: error: RunPod API: Network volume volunknown not found\n"
    assert runpod_api.endpoints == {}


def test_two_endpoints_with_the_managed_name_are_refused(
    runpod_api: RunPodStandIn, recipe: Path, tmp_path: Path
) -> None:
    template = runpod_api.add_template(
        name="elsewhere", imageName="x:1", isServerless=True, containerDiskInGb=5, volumeInGb=0
    )
    one = runpod_api.add_endpoint(name="tiny-baked", templateId=template["id"], gpuIds="AMPERE_24")
    two = runpod_api.add_endpoint(name="tiny-baked", templateId=template["id"], gpuIds="AMPERE_24")

    result = run_deploy(recipe, runpod_api, "--artifact-id", ARTIFACT_A, home=tmp_path)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert one["id"] in result.stderr
    assert two["id"] in result.stderr
    assert "deploy.endpoint_name" in result.stderr
    (template_after,) = [t for t in runpod_api.templates.values() if t["name"] == "tiny-baked-template"]
    assert runpod_api.endpoints[one["id"]]["templateId"] == template["id"]  # nothing repointed
    assert template_after["imageName"].endswith("-baked")


@pytest.mark.parametrize(
    ("volume", "extra", "expect"),
    [
        ("", "", "volume.id: volume mode needs"),
        ("vol123abc", "  env: {HF_TOKEN: x}\n", "deploy.env.HF_TOKEN: holds a credential"),
        ("vol123abc", "  env: {MODEL_DIR: /elsewhere}\n", "deploy.env.MODEL_DIR: set by the packager"),
        (
            "vol123abc",
            "  secrets: {AWS_SECRET_ACCESS_KEY: 'bad name!'}\n",
            "deploy.secrets.AWS_SECRET_ACCESS_KEY",
        ),
        ("vol123abc", "  execution_timeout_ms: 2000\n", "deploy.execution_timeout_ms"),
    ],
)
def test_undeployable_recipes_fail_before_any_request(
    runpod_api: RunPodStandIn, tmp_path: Path, volume: str, extra: str, expect: str
) -> None:
    volume_line = f"volume: {{id: {volume}}}\n" if volume else ""
    body = f"name: tiny\nsource: {{path: ./model}}\n{volume_line}deploy:\n  gpu_ids: AMPERE_24\n{extra}"
    recipe = write_recipe(tmp_path, body=body)

    result = run_deploy(recipe, runpod_api, "--mode", "volume", "--artifact-id", ARTIFACT_A, home=tmp_path)

    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1
    assert expect in result.stderr
    assert runpod_api.requests == []


def test_the_stand_in_refuses_what_runpod_refuses(
    runpod_api: RunPodStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other tests mean something only if the rig is strict: check it, through our own client."""
    monkeypatch.setenv("RUNPOD_API_BASE_URL", runpod_api.url)
    key = runpod_api.api_key
    tpl = {
        "name": "t",
        "imageName": "i:1",
        "dockerArgs": "",
        "containerDiskInGb": 5,
        "volumeInGb": 0,
        "env": [],
    }
    with pytest.raises(DeployError, match="unknown field 'bogus'"):
        gql.run(gql.mutation("saveTemplate", {**tpl, "bogus": 1}, "id"), key)
    with pytest.raises(DeployError, match="required field 'imageName'"):
        gql.run(gql.mutation("saveTemplate", {k: v for k, v in tpl.items() if k != "imageName"}, "id"), key)
    with pytest.raises(DeployError, match="Int cannot represent non-integer value"):
        gql.run(gql.mutation("saveTemplate", {**tpl, "containerDiskInGb": "5"}, "id"), key)
    with pytest.raises(DeployError, match="volumeInGb must be 0"):
        gql.run(gql.mutation("saveTemplate", {**tpl, "isServerless": True, "volumeInGb": 5}, "id"), key)
    saved = gql.run(gql.mutation("saveTemplate", {**tpl, "isServerless": True}, "id"), key)
    ep = {"name": "e", "templateId": saved["saveTemplate"]["id"], "gpuIds": "AMPERE_24"}
    with pytest.raises(DeployError, match="non-enum value"):
        gql.run(gql.mutation("saveEndpoint", {**ep, "flashBootType": "FLASHBOOT"}, "id"), key)
    with pytest.raises(DeployError, match="Template name must be unique"):
        gql.run(gql.mutation("saveTemplate", {**tpl, "isServerless": True}, "id"), key)
    with pytest.raises(DeployError, match="RUNPOD_API_KEY was rejected"):
        gql.run(gql.STATE_QUERY, "rp_not_the_key")
    made = gql.run(gql.mutation("saveEndpoint", {**ep, "flashBootType": gql.Enum("OFF")}, "id"), key)
    assert made["saveEndpoint"]["id"] in runpod_api.endpoints


@given(st.text())
def test_any_string_survives_as_a_graphql_literal(text: str) -> None:
    value = value_from_ast_untyped(parse_value(gql.literal({"key": "K", "value": text})))
    assert value == {"key": "K", "value": text}


def test_cuda_versions_follow_the_base_image_when_the_recipe_names_none(tmp_path: Path) -> None:
    from packager.deploy.deploy import allowed_cuda_versions

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nsource: {path: m}\nimage: {base: 'python:3.11-slim'}\n")
    assert allowed_cuda_versions(load_recipe(recipe)) == ()
    recipe.write_text("name: x\nsource: {path: m}\nimage: {base: 'nvidia/cuda:12.8.1-cudnn-runtime'}\n")
    assert allowed_cuda_versions(load_recipe(recipe)) == ("12.8", "12.9")
    recipe.write_text(
        "name: x\nsource: {path: m}\nimage: {base: 'pytorch/pytorch:2.9.1-cuda12.6-cudnn9-runtime'}\n"
    )
    assert allowed_cuda_versions(load_recipe(recipe)) == ("12.6", "12.7", "12.8", "12.9")
