"""The recipe's `deploy:` section → the REST v2 bodies of its serverless endpoint (and template).

The endpoint carries its own container settings (image, env, disk, registry): under REST v2 a
template is a snapshot applied once at create, so nothing reaches an endpoint through one later.
`endpoint_body` is assembled from one small function per concern (`ENDPOINT_PARTS`); a setting the
recipe comes to manage is one more part, and `deploy` compares and patches it like the rest.

Secrets never pass through here as values: `deploy.secrets` maps an environment variable to the name
of a RunPod secret, and the env carries `{{ RUNPOD_SECRET_<name> }}`, which RunPod resolves on the
worker.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from artifact_format import manifest as mf
from artifact_format.vocab import Mode
from packager.errors import DeployError, RecipeError
from packager.image import naming
from packager.settings import SECRET_ENV_VARS, secret_values
from packager.source import runpod_limits as limits
from packager.source.recipe import LoadedRecipe

# The worker is a queue handler (`runpod.serverless.start`), not an HTTP server.
ENDPOINT_TYPE = "QUEUE"
FLASHBOOT = {False: "OFF", True: "FLASHBOOT", "priority": "PRIORITY_FLASHBOOT"}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# Where images must live for RunPod to pull them: not on this machine.
_LOCAL_REGISTRIES = ("localhost", "127.0.0.1", "0.0.0.0")


@dataclass(frozen=True)
class Context:
    """What every part of a body is built from."""

    loaded: LoadedRecipe
    mode: Mode
    artifact_id: str
    image: str
    env: dict[str, str]


@dataclass(frozen=True)
class Target:
    """What the recipe asks RunPod to run: the create bodies of the endpoint and its template."""

    mode: Mode
    artifact_id: str
    image: str
    endpoint: dict[str, Any]
    # Only when the recipe names one (`deploy.template_name`): a reusable serverless template.
    template: dict[str, Any] | None
    # The endpoint's cached models: the published commit in cached mode, none otherwise.
    model_references: tuple[str, ...] = ()

    @property
    def endpoint_name(self) -> str:
        return str(self.endpoint["name"])


def plan_target(loaded: LoadedRecipe, *, mode: Mode, artifact_id: str, image: str | None = None) -> Target:
    """The endpoint (and template) the recipe describes, checked; sends nothing.

    Raises RecipeError when the `deploy:` (or `volume:`) section cannot be deployed as written:
    volume mode without `volume.id`, an env var that holds or looks like a credential, a bad secret
    name. RunPod's own limits were checked when the recipe was loaded.
    """
    recipe = loaded.recipe
    if not mf.is_artifact_id(artifact_id):
        raise DeployError(f"not an artifact id: {artifact_id!r} (64 hex digits)")
    image = image or naming.image_tag(recipe.image.repository, recipe.name, artifact_id, mode)
    if mode == "volume" and not recipe.volume.id:
        raise RecipeError(f"{loaded.path}: volume.id: volume mode needs the RunPod network volume id")
    ctx = Context(loaded, mode, artifact_id, image, _environment(loaded, artifact_id, mode))
    endpoint: dict[str, Any] = {}
    for part in ENDPOINT_PARTS:
        endpoint.update(part(ctx))
    template = None
    if recipe.deploy.template_name:
        template = {
            "name": recipe.deploy.template_name,
            **_container(ctx),
            "serverless": True,
            "public": False,
            "category": "NVIDIA",
            # Both default to true on create and inject JUPYTER_PASSWORD / PUBLIC_KEY into the env.
            "startSsh": False,
            "startJupyter": False,
        }
    references = (
        (naming.model_reference(*naming.published_model(loaded, artifact_id)),) if mode == "cached" else ()
    )
    return Target(mode, artifact_id, image, endpoint, template, references)


def endpoint_name(loaded: LoadedRecipe, mode: Mode) -> str:
    return loaded.recipe.deploy.endpoint_name or f"{loaded.recipe.name}-{mode}"


def _identity(ctx: Context) -> dict[str, Any]:
    return {"name": endpoint_name(ctx.loaded, ctx.mode), "type": ENDPOINT_TYPE}


def _container(ctx: Context) -> dict[str, Any]:
    d = ctx.loaded.recipe.deploy
    return {
        "image": ctx.image,
        "args": "",
        "disk": d.container_disk_gb,
        "ports": [],
        "env": dict(sorted(ctx.env.items())),
        "registry": d.registry_auth_id or None,
    }


def _compute(ctx: Context) -> dict[str, Any]:
    d = ctx.loaded.recipe.deploy
    return {"gpu": {"pools": d.gpu_ids.split(","), "count": d.gpu_count, **cuda_constraint(ctx.loaded)}}


def _scaling(ctx: Context) -> dict[str, Any]:
    d = ctx.loaded.recipe.deploy
    workers: dict[str, Any] = {"min": d.workers_min, "max": d.workers_max}
    if d.scaler_type == "QUEUE_DELAY":
        scaling: dict[str, Any] = {"type": "QUEUE_DELAY", "queueDelay": d.scaler_value}
        workers["idleTimeout"] = d.idle_timeout
    else:
        # RunPod refuses an idle timeout for a queue endpoint scaling on request count.
        scaling = {"type": "REQUEST_COUNT", "requestCount": d.scaler_value}
    return {
        "workers": workers,
        "scaling": scaling,
        "flashboot": FLASHBOOT[d.flashboot],
        "timeout": d.execution_timeout_ms,
    }


def _placement(ctx: Context) -> dict[str, Any]:
    recipe = ctx.loaded.recipe
    volume = ctx.mode == "volume"
    where = recipe.deploy.locations or (recipe.volume.datacenter if volume else None) or ""
    return {
        "dataCenterIds": [p.strip() for p in where.split(",") if p.strip()],
        "networkVolumes": [recipe.volume.id] if volume and recipe.volume.id else [],
    }


# The endpoint body, part by part; `deploy` manages exactly the keys these produce.
ENDPOINT_PARTS: tuple[Callable[[Context], dict[str, Any]], ...] = (
    _identity,
    _container,
    _compute,
    _scaling,
    _placement,
)


def cuda_constraint(loaded: LoadedRecipe) -> dict[str, Any]:
    """`allowedCudaVersions` when the recipe lists them, else `minCudaVersion`: the recipe's, else the
    base image's CUDA (a host driver runs its own CUDA version and every older runtime)."""
    d = loaded.recipe.deploy
    if d.allowed_cuda_versions:
        return {"allowedCudaVersions": list(d.allowed_cuda_versions)}
    floor = d.min_cuda_version or limits.cuda_of_image(loaded.recipe.image.base)
    return {"minCudaVersion": floor} if floor else {}


def image_warnings(target: Target) -> list[str]:
    host = target.image.split("/", 1)[0].split(":", 1)[0] if "/" in target.image else ""
    if host in _LOCAL_REGISTRIES:
        return [f"image {target.image} is on a local registry RunPod cannot pull from; set image.repository"]
    return []


def secret_reference(name: str) -> str:
    """RunPod resolves this on the worker; the value itself never leaves RunPod."""
    return "{{ RUNPOD_SECRET_" + name + " }}"


def _env_name(loaded: LoadedRecipe, section: str, key: str) -> str:
    """Where `deploy.<section>.<key>` is, for the messages; raises when `key` cannot name a variable."""
    where = f"{loaded.path}: deploy.{section}.{key}"
    if not _ENV_NAME_RE.match(key):
        raise RecipeError(f"{where}: not an environment variable name")
    return where


def _environment(loaded: LoadedRecipe, artifact_id: str, mode: Mode) -> dict[str, str]:
    recipe = loaded.recipe
    d = recipe.deploy
    artifact_uri = None
    # Only an S3 store means anything on a RunPod worker; a local directory is this machine's.
    if mode == "volume" and recipe.store.is_s3:
        artifact_uri = f"{loaded.store_uri()}/{recipe.name}/{artifact_id}"
    env = naming.worker_env(loaded, artifact_id, mode, artifact_uri)
    planted = set(secret_values())
    for key, value in d.env.items():
        where = _env_name(loaded, "env", key)
        if key in env:
            raise RecipeError(f"{where}: set by the packager itself ({key}={env[key][:40]})")
        if key in SECRET_ENV_VARS or value in planted:
            raise RecipeError(f"{where}: holds a credential; name a RunPod secret in deploy.secrets instead")
        env[key] = value
    for key, secret in d.secrets.items():
        where = _env_name(loaded, "secrets", key)
        if key in env:
            raise RecipeError(f"{where}: already set in deploy.env or by the packager")
        if not _SECRET_NAME_RE.match(secret):
            raise RecipeError(f"{where}: not a RunPod secret name: {secret[:20]!r}")
        env[key] = secret_reference(secret)
    return env
