"""Names derived from an artifact: image tags and the worker's environment.

Render, build, deploy and serve all need the same answers; computing them in one place keeps the
image a build pushes and the image a deploy points at from ever disagreeing.
"""

from __future__ import annotations

import json

from artifact_format import manifest as mf
from artifact_format.vocab import Mode, short_id
from packager.source.recipe import LoadedRecipe

# Inside baked images the artifact lives here; on a volume it lives under <mount>/models/.
BAKED_MODEL_DIR = "/models/artifact"


def image_tag(repository: str, name: str, artifact_id: str, mode: Mode) -> str:
    """`<repository>:<name>-<id[:12]>-<mode>`: one tag per artifact and mode, reused by endpoints."""
    return f"{repository}:{name}-{short_id(artifact_id)}-{mode}"


def published_model(loaded: LoadedRecipe, artifact_id: str) -> tuple[str, str]:
    """(repo, commit) that holds the artifact on the hub, from the lock `packager publish` wrote."""
    from packager.errors import ImageError
    from packager.source.lock import read_lock

    publish = loaded.recipe.publish
    if publish is None:
        raise ImageError(f"{loaded.path}: cached mode needs a `publish: {{repo: org/name}}` section")
    lock = read_lock(loaded)
    published = lock.published if lock is not None and lock.artifact_id == artifact_id else None
    if published is None or published["repo"] != publish.repo:
        raise ImageError(
            f"{loaded.path}: artifact {short_id(artifact_id)} is not published to {publish.repo} yet:"
            f" run `packager publish {loaded.path}`"
        )
    return published["repo"], published["commit"]


def model_reference(repo: str, commit: str) -> str:
    """How a RunPod endpoint names a cached model pinned to a commit (never a moving branch)."""
    return f"https://huggingface.co/{repo}:{commit}"


def weights_tag(repository: str, artifact_id: str, weights_digest: str) -> str:
    """`<repository>:weights-<id[:12]>-<digest[:8]>`: the baked worker image's parent, per artifact
    and base (the digest covers the base and the requirements), shared by every recipe."""
    return f"{repository}:weights-{short_id(artifact_id)}-{weights_digest[:8]}"


def model_dir(loaded: LoadedRecipe, artifact_id: str, mode: Mode) -> str:
    if mode == "baked":
        return BAKED_MODEL_DIR
    return str(mf.volume_path(loaded.recipe.volume.mount, loaded.recipe.name, artifact_id))


def worker_config(loaded: LoadedRecipe) -> str:
    """The recipe's `worker` section as compact JSON (the worker's WORKER_CONFIG)."""
    return json.dumps(loaded.recipe.worker.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def worker_env(
    loaded: LoadedRecipe, artifact_id: str, mode: Mode, artifact_uri: str | None = None
) -> dict[str, str]:
    """Non-secret environment the worker reads. Credentials are never part of it."""
    env = {
        "MODEL_DIR": model_dir(loaded, artifact_id, mode),
        "HF_HUB_OFFLINE": "1",
        "WORKER_CONFIG": worker_config(loaded),
        "VOLUME_MOUNT": loaded.recipe.volume.mount,
    }
    if mode == "cached":
        # The worker finds RunPod's copy of the published commit in the HF cache; with a volume
        # attached as well it can fall back to pulling ARTIFACT_URI there.
        del env["MODEL_DIR"]
        env["MODEL_REPO"], env["MODEL_COMMIT"] = published_model(loaded, artifact_id)
    if mode in ("volume", "cached") and artifact_uri:
        env["ARTIFACT_URI"] = artifact_uri
        # The worker's boto3 must reach the same S3-compatible store (R2, MinIO, ...) to pull.
        if loaded.recipe.store.endpoint_url:
            env["AWS_ENDPOINT_URL"] = loaded.recipe.store.endpoint_url
    return env
