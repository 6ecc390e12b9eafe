"""`packager deploy` in cached mode pins the endpoint's cached model to the published commit.

REST v2 has no field for it, so deploy sets `modelReferences` through GraphQL `saveEndpoint` (a full
replace) after the REST create or update. The stand-in executes RunPod's GraphQL types, resets every
setting a save leaves out, and shares its endpoint store with the REST side: a second deploy that
finds the REST settings and the pin unchanged proves the save sent every setting back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.rig.runpod_api import RunPodStandIn
from tests.test_deploy import ARTIFACT_A, ARTIFACT_B, RECIPE, SERVERLESS, deploy_json, run_deploy

REPO = "team/tiny-packaged"
COMMIT = "c0ffee" + "0" * 34
REFERENCE = f"https://huggingface.co/{REPO}:{COMMIT}"
CACHED = RECIPE.replace("volume: {id: vol123abc, datacenter: EU-RO-1}\n", "") + f"publish: {{repo: {REPO}}}\n"


def write_lock(recipe: Path, artifact_id: str, commit: str | None = COMMIT) -> None:
    """The lock `packager publish` leaves: the artifact it made and the commit that holds it."""
    lock = {
        "version": 1,
        "name": "tiny",
        "source": {"kind": "path"},
        "files": {},
        "settings": {},
        "fingerprint": "0" * 64,
        "artifact_id": artifact_id,
        "published": {"repo": REPO, "commit": commit} if commit else None,
    }
    recipe.with_suffix(".lock").write_text(json.dumps(lock))


@pytest.fixture
def cached_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(CACHED)
    write_lock(path, ARTIFACT_A)
    return path


def graphql_bodies(api: RunPodStandIn) -> list[dict[str, object]]:
    return [json.loads(r.body) for r in api.requests if r.path == "/graphql"]


def test_cached_deploy_pins_the_published_commit_and_a_rerun_sends_nothing(
    runpod_api: RunPodStandIn, cached_recipe: Path
) -> None:
    first = deploy_json(cached_recipe, runpod_api, "--mode", "cached", "--artifact-id", ARTIFACT_A)
    assert first["endpoint"]["action"] == "created"
    assert first["model_references"] == [REFERENCE]
    (endpoint,) = runpod_api.endpoints.values()
    assert endpoint["modelReferences"] == [REFERENCE]
    assert endpoint["env"]["MODEL_COMMIT"] == COMMIT
    assert runpod_api.writes() == [("POST", SERVERLESS), ("POST", "/graphql")]
    save = graphql_bodies(runpod_api)[-1]
    assert "saveEndpoint" in str(save["query"])
    sent = save["variables"]["input"]  # type: ignore[index]
    # A full replace: every setting went back as RunPod held it, not reset to its defaults.
    assert (sent["workersMax"], sent["idleTimeout"]) == (2, 7)
    assert sent["flashBootType"] == "PRIORITY_FLASHBOOT"
    assert set(sent["gpuIds"].split(",")) == {"ADA_24", "AMPERE_24"}

    runpod_api.requests.clear()
    again = deploy_json(cached_recipe, runpod_api, "--mode", "cached", "--artifact-id", ARTIFACT_A)
    assert again["endpoint"]["action"] == "unchanged"
    assert runpod_api.writes() == []
    assert again["writes"] == 0


def test_a_new_publish_moves_the_pin_and_the_image_env_in_one_patch_and_one_save(
    runpod_api: RunPodStandIn, cached_recipe: Path
) -> None:
    deploy_json(cached_recipe, runpod_api, "--mode", "cached", "--artifact-id", ARTIFACT_A)
    newer = "beef" + "1" * 36
    write_lock(cached_recipe, ARTIFACT_B, newer)
    runpod_api.requests.clear()
    out = deploy_json(cached_recipe, runpod_api, "--mode", "cached", "--artifact-id", ARTIFACT_B)
    (endpoint,) = runpod_api.endpoints.values()
    assert endpoint["modelReferences"] == [f"https://huggingface.co/{REPO}:{newer}"]
    assert out["writes"] == 2
    assert [w[0] for w in runpod_api.writes()] == ["PATCH", "POST"]


def test_dry_run_shows_the_pinned_reference_and_writes_nothing(
    runpod_api: RunPodStandIn, cached_recipe: Path
) -> None:
    offline = run_deploy(cached_recipe, None, "--mode", "cached", "--artifact-id", ARTIFACT_A, "--dry-run")
    assert offline.returncode == 0, offline.stderr
    assert REFERENCE in offline.stdout
    assert "saveEndpoint" in offline.stdout

    deploy_json(cached_recipe, runpod_api, "--mode", "baked", "--artifact-id", ARTIFACT_A)
    runpod_api.requests.clear()
    plan = deploy_json(
        cached_recipe, runpod_api, "--mode", "cached", "--artifact-id", ARTIFACT_A, "--dry-run"
    )
    assert runpod_api.writes() == []
    saves = [r for r in plan["requests"] if "saveEndpoint" in json.dumps(r.get("body"))]
    assert len(saves) == 1
    assert saves[0]["body"]["variables"]["input"]["modelReferences"] == [REFERENCE]


def test_baked_and_volume_endpoints_hold_no_cached_model(runpod_api: RunPodStandIn, tmp_path: Path) -> None:
    """An endpoint that leaves cached mode under one name is unpinned; a new baked one is never read."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(CACHED.replace("deploy:\n", "deploy:\n  endpoint_name: tiny-endpoint\n"))
    write_lock(recipe, ARTIFACT_A)
    deploy_json(recipe, runpod_api, "--mode", "cached", "--artifact-id", ARTIFACT_A)
    out = deploy_json(recipe, runpod_api, "--mode", "baked", "--artifact-id", ARTIFACT_A)
    (endpoint,) = runpod_api.endpoints.values()
    assert endpoint["modelReferences"] == []
    assert out["model_references"] == []

    fresh = tmp_path / "other.yaml"
    fresh.write_text(RECIPE.replace("name: tiny", "name: other"))
    runpod_api.requests.clear()
    deploy_json(fresh, runpod_api, "--mode", "volume", "--artifact-id", ARTIFACT_A)
    assert graphql_bodies(runpod_api) == []


def test_cached_deploy_before_publish_is_one_line(runpod_api: RunPodStandIn, tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(CACHED)
    write_lock(recipe, ARTIFACT_A, commit=None)
    result = run_deploy(recipe, runpod_api, "--mode", "cached", "--artifact-id", ARTIFACT_A)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "packager publish" in lines[0]
    assert runpod_api.requests == []
