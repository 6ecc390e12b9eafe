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
    if mode == "volume" and artifact_uri:
        env["ARTIFACT_URI"] = artifact_uri
        # The worker's boto3 must reach the same S3-compatible store (R2, MinIO, ...) to pull.
        if loaded.recipe.store.endpoint_url:
            env["AWS_ENDPOINT_URL"] = loaded.recipe.store.endpoint_url
    return env
