"""Cached mode on a real Docker engine: the slim image serves from a RunPod-shaped HF cache.

The artifact is published to the local hub, `snapshot_download` lays the commit out the way RunPod's
cached models do (`<volume>/huggingface-cache/hub/models--org--name/snapshots/<commit>/`, symlinks
into `blobs/`), and that folder is mounted at /runpod-volume in a container with no network. The
worker finds the commit from the image's MODEL_REPO/MODEL_COMMIT, checks and loads it, answers one
request, and writes nothing into the cache; a commit the cache lacks stops it with one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

from artifact_format import manifest as mf
from packager.image import build as image_build
from packager.publish.hub_repo import publish
from packager.source.drift import ensure_lock
from packager.source.lock import record_artifact_id, record_published
from packager.source.recipe import load_recipe
from tests.e2e.test_images import assert_served_a_png, run_worker
from tests.rig.artifacts import make_artifact, tiny_recipe, tiny_source
from tests.rig.docker_env import DockerRig
from tests.rig.fixtures_hub import HUB_TOKEN
from tests.rig.localhub import LocalHub

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO_ID = "publisher/tiny-e2e-cached"


def _readable_by_all(root: Path) -> None:
    """The container runs as nobody: the cache must be readable (and not writable) by it."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_cached_image_serves_from_a_mounted_hf_cache_and_names_a_missing_commit(
    docker_rig: DockerRig, hub: LocalHub, tmp_path: Path
) -> None:
    source = tiny_source(tmp_path / "source")
    folder, artifact_id = make_artifact(source, tmp_path / "artifact")
    extra = (
        f"image: {{base: '{docker_rig.base_image}', base_has_torch: false,"
        f" repository: '{docker_rig.registry}/packager-e2e'}}\n"
        f"mode: cached\npublish: {{repo: {REPO_ID}}}\n"
        "worker:\n  defaults: {num_inference_steps: 2, width: 128, height: 128}\n"
    )
    loaded = load_recipe(tiny_recipe(tmp_path / "recipes", source, "tiny", extra))
    manifest = mf.load(folder)
    published = publish(
        folder, manifest, artifact_id, repo=REPO_ID, private=True, token=HUB_TOKEN, token_env="HF_TOKEN"
    )
    lock = record_artifact_id(loaded, ensure_lock(loaded, frozen=False, quiet=True), artifact_id)
    record_published(loaded, lock, published.repo, published.commit)

    volume = tmp_path / "runpod-volume"
    cache = volume / "huggingface-cache" / "hub"
    snapshot_download(REPO_ID, revision=published.commit, cache_dir=cache, token=HUB_TOKEN)
    _readable_by_all(volume)
    before = sorted(str(p.relative_to(volume)) for p in volume.rglob("*"))

    built = image_build.build(
        loaded,
        None,
        manifest,
        artifact_id,
        "cached",
        pip_find_links=docker_rig.find_links,
        quiet=True,
        client=docker_rig.client(),
    )
    env = dict(e.split("=", 1) for e in docker_rig.client().images.get(built.tag).attrs["Config"]["Env"])
    assert env["MODEL_REPO"] == REPO_ID
    assert env["MODEL_COMMIT"] == published.commit
    assert "MODEL_DIR" not in env
    assert HUB_TOKEN not in str(env)
    assert not any(step.step.startswith("weights") for step in built.layers)  # slim: no weight layers

    ran = run_worker(docker_rig, built.tag, tmp_path, volume=volume)
    assert_served_a_png(ran)
    assert "pulling" not in ran.logs
    assert sorted(str(p.relative_to(volume)) for p in volume.rglob("*")) == before

    wrong = "f" * 40
    ran = run_worker(docker_rig, built.tag, tmp_path, volume=volume, env={"MODEL_COMMIT": wrong})
    assert ran.exit_code != 0
    errors = [line for line in ran.logs.splitlines() if line.startswith("worker: error:")]
    assert errors == [
        f"worker: error: {REPO_ID}@{wrong}: not in the Hugging Face cache (looked in /runpod-volume/"
        f"huggingface-cache/hub/models--publisher--tiny-e2e-cached/snapshots/{wrong}); is the endpoint's"
        " cached model set to this repo and commit?"
    ]
