"""Environment variables the packager reads, each read here and nowhere else.

huggingface_hub, boto3 and the runpod SDK read their own variables (HF_ENDPOINT, HF_HOME,
AWS_ENDPOINT_URL, AWS_PROFILE, ...) through their own code: we follow their
conventions rather than re-reading them, and list them here only where we pass them on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from volume_sync.s3 import CONNECT_TIMEOUT as CONNECT_TIMEOUT  # seconds to connect, for every request


def hf_token() -> str | None:
    """The hub token, from HF_TOKEN (huggingface_hub's own variable). Never logged or stored."""
    return os.environ.get("HF_TOKEN") or None


def env_value(name: str) -> str | None:
    """A variable the recipe names (`token_env: HF_TOKEN`, `CIVITAI_TOKEN`): read here, never stored
    or logged."""
    return os.environ.get(name) or None


def runpod_api_key() -> str | None:
    return os.environ.get("RUNPOD_API_KEY") or None


def runpod_api_base_url() -> str:
    """RunPod's API host, from the runpod SDK's own variable: GraphQL lives at `/graphql` under it,
    REST v2 at `/v2/...`; tests point it at a local stand-in."""
    return (os.environ.get("RUNPOD_API_BASE_URL") or "https://api.runpod.io").rstrip("/")


def build_dir() -> Path:
    """Root of everything the packager writes locally (artifacts, default store, contexts)."""
    return Path(os.environ.get("PACKAGER_BUILD_DIR", "build"))


def network_timeout(configured: float = 60.0) -> float:
    """Seconds a network transfer may go without progress: PACKAGER_TIMEOUT, else the recipe's
    `store.timeout` (60 by default). A value that is not a positive number is ignored with a note."""
    raw = os.environ.get("PACKAGER_TIMEOUT")
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if 0 < value <= 86400:
            return value
        print(
            f"note: PACKAGER_TIMEOUT={raw[:20]!r} is not a number of seconds; using {configured}",
            file=sys.stderr,
        )
    return configured


def stall_message(where: str, seconds: float, *, connecting: bool) -> str:
    """The one line for a request to `where` (scheme://host:port) that timed out."""
    if connecting:
        return f"could not connect to {where} within {CONNECT_TIMEOUT:g} s: check the network and the URL"
    return (
        f"{where} accepted the connection but sent nothing for {seconds:g} s: check the network and "
        "the URL (store.timeout or PACKAGER_TIMEOUT allow longer)"
    )


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


# Shortest secret value the scans look for. Real keys are longer (AWS 20/40, HF tokens 37, RunPod
# 40+); shorter values are test credentials such as `test` or `minioadmin`, which as substrings
# would refuse any lock or context holding a common word.
MIN_SECRET_LEN = 16
_warned_short: set[str] = set()


def secret_values() -> list[str]:
    """The values of the secret variables set right now that are long enough to scan for.

    A shorter value in a secret variable is named once on stderr, never an error.
    """
    found = []
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if not value:
            continue
        if len(value) >= MIN_SECRET_LEN:
            found.append(value)
        elif name not in _warned_short:
            _warned_short.add(name)
            print(
                f"note: {name} is shorter than {MIN_SECRET_LEN} characters, too short to scan for leaks",
                file=sys.stderr,
            )
    return found
