"""Environment variables the packager reads, each read here and nowhere else.

huggingface_hub, boto3 and the runpod SDK read their own variables (HF_ENDPOINT, HF_HOME,
AWS_ENDPOINT_URL, AWS_PROFILE, ...) through their own code: we follow their
conventions rather than re-reading them, and list them here only where we pass them on.
"""

from __future__ import annotations

import os
from pathlib import Path


def hf_token() -> str | None:
    """The hub token, from HF_TOKEN (huggingface_hub's own variable). Never logged or stored."""
    return os.environ.get("HF_TOKEN") or None


def publish_token(variable: str) -> str | None:
    """The hub write token for `packager publish`, from the variable the recipe names. Never logged."""
    return os.environ.get(variable) or None


def runpod_api_key() -> str | None:
    return os.environ.get("RUNPOD_API_KEY") or None


def runpod_api_base_url() -> str:
    """RunPod's API host, from the runpod SDK's own variable: GraphQL lives at `/graphql` under it,
    REST v2 at `/v2/...`; tests point it at a local stand-in."""
    return (os.environ.get("RUNPOD_API_BASE_URL") or "https://api.runpod.io").rstrip("/")


def build_dir() -> Path:
    """Root of everything the packager writes locally (artifacts, default store, contexts)."""
    return Path(os.environ.get("PACKAGER_BUILD_DIR", "build"))


def docker_host() -> str | None:
    return os.environ.get("DOCKER_HOST") or None


# Names of variables that hold secrets: scrubbed from anything we render, log or hand to a build.
SECRET_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "RUNPOD_API_KEY",
    "BUCKET_ACCESS_KEY_ID",
    "BUCKET_SECRET_ACCESS_KEY",
)


def secret_values() -> list[str]:
    """The values of the secret variables set right now, for redaction checks."""
    return [v for k in SECRET_ENV_VARS if (v := os.environ.get(k)) and len(v) >= 4]
