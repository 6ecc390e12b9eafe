"""Deploy: the recipe's `deploy:` section → a RunPod serverless template and endpoint.

Both are looked up by name first and saved only when something differs, so a re-run on the same
image sends no mutation, and a new image updates the template in place (same id): the endpoint keeps
pointing at it and RunPod rolls its workers onto the new image. `saveEndpoint` replaces the whole
endpoint, so an update always sends every field, never a partial patch.

Secrets never pass through here as values: `deploy.secrets` maps an environment variable to the name
of a RunPod secret, and the template carries `{{ RUNPOD_SECRET_<name> }}`, which RunPod resolves on
the worker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from artifact_format import manifest as mf
from artifact_format.vocab import Mode
from packager.deploy import runpod_api
from packager.errors import DeployError, RecipeError
from packager.image import naming
from packager.settings import SECRET_ENV_VARS, secret_values
from packager.source.recipe import LoadedRecipe

Action = Literal["created", "updated", "unchanged"]

# CUDA versions RunPod hosts advertise (the endpoint's "allowed CUDA versions" choices). A worker
# needs a host driver at least as new as its image's CUDA runtime, so an image built on cudaX.Y
# may run on X.Y and anything newer.
RUNPOD_CUDA_VERSIONS = (
    "11.8",
    "12.0",
    "12.1",
    "12.2",
    "12.3",
    "12.4",
    "12.5",
    "12.6",
    "12.7",
    "12.8",
    "12.9",
)
# RunPod's documented range for a job's execution timeout.
MIN_EXECUTION_TIMEOUT_MS = 5_000
MAX_EXECUTION_TIMEOUT_MS = 7 * 24 * 3600 * 1000
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# Where images must live for RunPod to pull them: not on this machine.
_LOCAL_REGISTRIES = ("localhost", "127.0.0.1", "0.0.0.0")

# Template fields compared against what RunPod has (the rest of SaveTemplateInput we leave alone).
TEMPLATE_KEYS = (
    "name",
    "imageName",
    "dockerArgs",
    "containerDiskInGb",
    "volumeInGb",
    "volumeMountPath",
    "ports",
    "env",
    "isServerless",
    "containerRegistryAuthId",
)
ENDPOINT_KEYS = (
    "name",
    "templateId",
    "gpuIds",
    "gpuCount",
    "networkVolumeId",
    "locations",
    "idleTimeout",
    "scalerType",
    "scalerValue",
    "workersMin",
    "workersMax",
    "executionTimeoutMs",
    "allowedCudaVersions",
    "flashBootType",
)


@dataclass(frozen=True)
class Target:
    """What the recipe asks RunPod to run: the inputs of `saveTemplate` and `saveEndpoint`."""

    mode: Mode
    artifact_id: str
    image: str
    template: dict[str, Any]
    # Without `templateId`: that is only known once the template exists.
    endpoint: dict[str, Any]

    @property
    def template_name(self) -> str:
        return str(self.template["name"])

    @property
    def endpoint_name(self) -> str:
        return str(self.endpoint["name"])


@dataclass(frozen=True)
class Outcome:
    name: str
    id: str
    action: Action
    changed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Deployment:
    target: Target
    template: Outcome
    endpoint: Outcome
    mutations: int

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.target.image,
            "mode": self.target.mode,
            "artifact_id": self.target.artifact_id,
            "template": _outcome_json(self.template),
            "endpoint": _outcome_json(self.endpoint),
            "mutations": self.mutations,
            "dry_run": False,
        }


def plan_target(loaded: LoadedRecipe, *, mode: Mode, artifact_id: str, image: str | None = None) -> Target:
    """The template and endpoint the recipe describes, checked; sends nothing.

    Raises RecipeError when the `deploy:` (or `volume:`) section cannot be deployed as written:
    volume mode without `volume.id`, an env var that holds or looks like a credential, a bad secret
    name, an execution timeout outside RunPod's range.
    """
    recipe = loaded.recipe
    d = recipe.deploy
    if not mf.is_artifact_id(artifact_id):
        raise DeployError(f"not an artifact id: {artifact_id!r} (64 hex digits)")
    image = image or naming.image_tag(recipe.image.repository, recipe.name, artifact_id, mode)
    if mode == "volume" and not recipe.volume.id:
        raise RecipeError(f"{loaded.path}: volume.id: volume mode needs the RunPod network volume id")
    if not MIN_EXECUTION_TIMEOUT_MS <= d.execution_timeout_ms <= MAX_EXECUTION_TIMEOUT_MS:
        raise RecipeError(
            f"{loaded.path}: deploy.execution_timeout_ms: RunPod accepts 5000 to {MAX_EXECUTION_TIMEOUT_MS} "
            f"(got {d.execution_timeout_ms})"
        )

    endpoint_name = d.endpoint_name or f"{recipe.name}-{mode}"
    template_name = d.template_name or f"{endpoint_name}-template"
    env = _environment(loaded, artifact_id, mode)

    template: dict[str, Any] = {
        "name": template_name,
        "imageName": image,
        "dockerArgs": "",
        "containerDiskInGb": d.container_disk_gb,
        # Serverless templates carry no pod volume; the network volume is the endpoint's.
        "volumeInGb": 0,
        "volumeMountPath": recipe.volume.mount,
        "ports": "",
        "env": [{"key": k, "value": v} for k, v in sorted(env.items())],
        "isServerless": True,
        "isPublic": False,
        "containerRegistryAuthId": d.registry_auth_id or "",
    }
    locations = d.locations or (recipe.volume.datacenter if mode == "volume" else None) or ""
    endpoint: dict[str, Any] = {
        "name": endpoint_name,
        "gpuIds": d.gpu_ids,
        "gpuCount": d.gpu_count,
        "workersMin": d.workers_min,
        "workersMax": d.workers_max,
        "idleTimeout": d.idle_timeout,
        "scalerType": d.scaler_type,
        "scalerValue": d.scaler_value,
        "flashBootType": runpod_api.Enum("FLASHBOOT" if d.flashboot else "OFF"),
        "executionTimeoutMs": d.execution_timeout_ms,
        "networkVolumeId": recipe.volume.id if mode == "volume" else "",
        "locations": locations,
    }
    cuda = allowed_cuda_versions(loaded)
    if cuda:
        endpoint["allowedCudaVersions"] = ",".join(cuda)
    return Target(mode=mode, artifact_id=artifact_id, image=image, template=template, endpoint=endpoint)


def allowed_cuda_versions(loaded: LoadedRecipe) -> tuple[str, ...]:
    """The recipe's list, else every RunPod host CUDA version at least the base image's (`cudaX.Y`)."""
    declared = loaded.recipe.deploy.allowed_cuda_versions
    if declared:
        return tuple(declared)
    found = re.search(r"cuda[-_:]?(\d+)\.(\d+)", loaded.recipe.image.base)
    if not found:
        return ()
    floor = (int(found.group(1)), int(found.group(2)))
    return tuple(v for v in RUNPOD_CUDA_VERSIONS if tuple(int(p) for p in v.split(".")) >= floor)


def image_warnings(target: Target) -> list[str]:
    host = target.image.split("/", 1)[0].split(":", 1)[0] if "/" in target.image else ""
    if host in _LOCAL_REGISTRIES:
        return [f"image {target.image} is on a local registry RunPod cannot pull from; set image.repository"]
    return []


def deploy(target: Target, api_key: str) -> Deployment:
    """Create or update the template, then the endpoint; send a mutation only for what changed.

    Raises DeployError (one line) when the API refuses the key, answers with a GraphQL error, cannot
    be reached, or when two endpoints/templates share the name we would manage.
    """
    state = runpod_api.run(runpod_api.STATE_QUERY, api_key).get("myself")
    if not isinstance(state, dict):
        raise DeployError("the RunPod API answered without `myself` (is the key a user API key?)")
    mutations = 0

    existing = _one_named(state.get("podTemplates") or [], target.template_name, "template")
    template, sent = _save(
        "saveTemplate", target.template, existing, TEMPLATE_KEYS, runpod_api.TEMPLATE_FIELDS, api_key
    )
    mutations += sent

    wanted = {**target.endpoint, "templateId": template.id}
    existing = _one_named(state.get("endpoints") or [], target.endpoint_name, "endpoint")
    endpoint, sent = _save(
        "saveEndpoint", wanted, existing, ENDPOINT_KEYS, runpod_api.ENDPOINT_FIELDS, api_key
    )
    mutations += sent
    return Deployment(target=target, template=template, endpoint=endpoint, mutations=mutations)


def dry_run(target: Target) -> dict[str, Any]:
    """What `deploy` would send, for `--dry-run`: the read, then each save as a full document."""
    placeholder = f"<id of template {target.template_name}>"
    endpoint = {**target.endpoint, "templateId": placeholder}
    return {
        "dry_run": True,
        "image": target.image,
        "mode": target.mode,
        "artifact_id": target.artifact_id,
        "reads": runpod_api.STATE_QUERY,
        "note": "each save is sent only when the template/endpoint of that name is missing or differs",
        "requests": [
            {
                "mutation": "saveTemplate",
                "input": target.template,
                "document": runpod_api.mutation("saveTemplate", target.template, runpod_api.TEMPLATE_FIELDS),
            },
            {
                "mutation": "saveEndpoint",
                "input": endpoint,
                "document": runpod_api.mutation("saveEndpoint", endpoint, runpod_api.ENDPOINT_FIELDS),
            },
        ],
    }


def differences(wanted: dict[str, Any], existing: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, ...]:
    """The fields whose values RunPod holds differently (None and "" count as the same)."""
    return tuple(k for k in keys if _normal(k, wanted.get(k)) != _normal(k, existing.get(k)))


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
        where = f"{loaded.path}: deploy.env.{key}"
        if not _ENV_NAME_RE.match(key):
            raise RecipeError(f"{where}: not an environment variable name")
        if key in env:
            raise RecipeError(f"{where}: set by the packager itself ({key}={env[key][:40]})")
        if key in SECRET_ENV_VARS or value in planted:
            raise RecipeError(f"{where}: holds a credential; name a RunPod secret in deploy.secrets instead")
        env[key] = value
    for key, secret in d.secrets.items():
        where = f"{loaded.path}: deploy.secrets.{key}"
        if not _ENV_NAME_RE.match(key):
            raise RecipeError(f"{where}: not an environment variable name")
        if key in env:
            raise RecipeError(f"{where}: already set in deploy.env or by the packager")
        if not _SECRET_NAME_RE.match(secret):
            raise RecipeError(f"{where}: not a RunPod secret name: {secret[:20]!r}")
        env[key] = secret_reference(secret)
    return env


def secret_reference(name: str) -> str:
    """RunPod resolves this on the worker; the value itself never leaves RunPod."""
    return "{{ RUNPOD_SECRET_" + name + " }}"


def _one_named(items: list[Any], name: str, kind: str) -> dict[str, Any] | None:
    found = [i for i in items if isinstance(i, dict) and i.get("name") == name]
    if len(found) > 1:
        ids = ", ".join(str(i.get("id")) for i in found)
        raise DeployError(
            f"{len(found)} RunPod {kind}s are named {name!r} ({ids}); delete the extra ones or "
            f"set deploy.{kind}_name to a unique name"
        )
    return found[0] if found else None


def _save(
    mutation: str,
    wanted: dict[str, Any],
    existing: dict[str, Any] | None,
    keys: tuple[str, ...],
    selection: str,
    api_key: str,
) -> tuple[Outcome, int]:
    name = str(wanted["name"])
    if existing is not None:
        changed = differences(wanted, existing, keys)
        if not changed:
            return Outcome(name=name, id=str(existing["id"]), action="unchanged"), 0
        fields = {"id": existing["id"], **wanted}
    else:
        changed, fields = (), wanted
    saved = runpod_api.run(runpod_api.mutation(mutation, fields, selection), api_key).get(mutation)
    if not isinstance(saved, dict) or not saved.get("id"):
        raise DeployError(f"RunPod API: {mutation} answered without an id")
    if existing is not None and saved["id"] != existing["id"]:
        raise DeployError(
            f"RunPod API: {mutation} of {name!r} returned a new id {saved['id']} (expected {existing['id']})"
        )
    action: Action = "updated" if existing is not None else "created"
    return Outcome(name=name, id=str(saved["id"]), action=action, changed=changed), 1


def _normal(key: str, value: Any) -> Any:
    if value is None:
        value = ""
    if key == "env":
        return tuple(sorted((str(e.get("key")), str(e.get("value"))) for e in value or []))
    if key == "flashBootType":
        return str(value) or "OFF"
    if key == "allowedCudaVersions":
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return tuple(sorted(v.strip() for v in items if str(v).strip()))
    if isinstance(value, str):
        return str(value)
    return value


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "name": outcome.name,
        "id": outcome.id,
        "action": outcome.action,
        "changed": list(outcome.changed),
    }
