"""Deploy: make RunPod's serverless endpoint (and optional template) match the recipe, through REST v2.

The endpoint is found by the id stored after the last deploy (`state`), else by name in the
account's list; then what RunPod holds is compared with what would be sent, field by field and
tolerant of ordering and of what RunPod fills in, and only the fields that differ are sent, in one
PATCH. So an unchanged recipe sends nothing, and a new image is one PATCH of `image` (and `env`,
whose MODEL_DIR names the artifact). What RunPod answers is compared again: a field it did not take
is an error, not a silent re-send on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from packager.deploy import model_cache, state
from packager.deploy.payload import Target
from packager.deploy.runpod_api import ENDPOINTS, TEMPLATES, Call, RunPodREST
from packager.errors import DeployError

Action = Literal["created", "updated", "unchanged"]
# Where an endpoint's jobs go when the answer carries no `requestUrls` (RunPod's job API).
JOB_API = "https://api.runpod.ai/v2"


@dataclass(frozen=True)
class Kind:
    """One managed resource type: where it lives and which recipe setting names it."""

    name: state.Kind
    path: str
    list_key: str
    setting: str


ENDPOINT = Kind("endpoint", ENDPOINTS, "endpoints", "deploy.endpoint_name")
TEMPLATE = Kind("template", TEMPLATES, "templates", "deploy.template_name")


@dataclass(frozen=True)
class Outcome:
    name: str
    id: str
    action: Action
    changed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "action": self.action, "changed": list(self.changed)}


@dataclass
class Deployment:
    target: Target
    endpoint: Outcome | None = None
    template: Outcome | None = None
    url: str = ""
    # "METHOD path" of every request sent, reads included.
    sent: list[str] = field(default_factory=list)
    # With `plan_only`: the writes that would have been sent, in full.
    planned: list[Call] = field(default_factory=list)
    dry_run: bool = False

    # The endpoint's cached models after deploy (`modelReferences`).
    model_references: tuple[str, ...] = ()

    @property
    def writes(self) -> int:
        return sum(1 for s in self.sent if not s.startswith(("GET ", "QUERY ")))

    def to_json(self, base_url: str) -> dict[str, Any]:
        return {
            "image": self.target.image,
            "mode": self.target.mode,
            "artifact_id": self.target.artifact_id,
            "endpoint": self.endpoint.to_json() if self.endpoint else None,
            "template": self.template.to_json() if self.template else None,
            "url": self.url,
            "model_references": list(self.model_references),
            "writes": self.writes,
            "sent": self.sent,
            "dry_run": self.dry_run,
            "requests": [{"when": "would send", **c.to_json(base_url)} for c in self.planned],
        }


def deploy(target: Target, client: RunPodREST, state_file: Path, *, plan_only: bool = False) -> Deployment:
    """Create or update the template (when the recipe names one), then the endpoint.

    With `plan_only` only the reads are sent: the writes deploy would send, exactly, are collected
    in `planned`, and the state file is left alone.

    Raises DeployError (one line) when the API refuses the key or a request, cannot be reached,
    answers in a shape REST v2 does not have, does not apply a field, or when two endpoints share
    the name deploy would manage.
    """
    run = _Run(Deployment(target, dry_run=plan_only), client, state_file)
    out = run.out
    if target.template is not None:
        out.template, _ = run.sync(TEMPLATE, target.template)
    out.endpoint, answer = run.sync(ENDPOINT, target.endpoint)
    run.pin_models(out.endpoint)
    urls = answer.get("requestUrls")
    run_sync = urls.get("runSync") if isinstance(urls, dict) else None
    if isinstance(run_sync, str):
        out.url = run_sync
    elif out.endpoint.id:
        out.url = f"{JOB_API}/{out.endpoint.id}/runsync"
    return out


def offline_plan(target: Target, base_url: str, state_file: Path) -> dict[str, Any]:
    """`--dry-run` without a key: each read deploy starts with, then each create body in full."""
    steps: list[dict[str, Any]] = []
    for kind, body in ((TEMPLATE, target.template), (ENDPOINT, target.endpoint)):
        if body is None:
            continue
        known = state.remembered(state_file, base_url, target.mode, kind.name)
        read = Call("GET", f"{kind.path}/{known}") if known else Call("GET", kind.path)
        steps.append({"when": f"always: find the {kind.name} {body['name']!r}", **read.to_json(base_url)})
        create = Call("POST", kind.path, body)
        steps.append({"when": f"no {kind.name} of that name: create it", **create.to_json(base_url)})
        update = Call("PATCH", f"{kind.path}/{known or '{id}'}", {"...": "only the fields that differ"})
        when = f"the {kind.name} exists: update what differs (with RUNPOD_API_KEY set: the exact PATCH)"
        steps.append({"when": when, **update.to_json(base_url)})
    if target.model_references:
        pin = model_cache.planned_save(sorted(target.model_references))
        when = "cached mode: read the endpoint back (GraphQL), then pin its cached model when it differs"
        steps.append({"when": when, **pin.to_json(base_url)})
    return {
        "dry_run": True,
        "image": target.image,
        "mode": target.mode,
        "artifact_id": target.artifact_id,
        "model_references": list(target.model_references),
        "requests": steps,
    }


@dataclass
class _Run:
    out: Deployment
    client: RunPodREST
    state_file: Path

    def sync(self, kind: Kind, wanted: dict[str, Any]) -> tuple[Outcome, dict[str, Any]]:
        name = str(wanted["name"])
        existing = self.find(kind, name)
        if existing is None:
            call = Call("POST", kind.path, wanted)
            action: Action = "created"
            changed: tuple[str, ...] = ()
        else:
            if kind is ENDPOINT and existing.get("type", wanted["type"]) != wanted["type"]:
                raise DeployError(
                    f"RunPod endpoint {existing['id']} ({name!r}) is a {existing['type']} endpoint and "
                    f"cannot become {wanted['type']}; delete it or set {kind.setting} to another name"
                )
            changed = differences(wanted, existing)
            if not changed:
                self.remember(kind, existing)
                return Outcome(name, str(existing["id"]), "unchanged"), existing
            call = Call("PATCH", f"{kind.path}/{existing['id']}", patch_body(wanted, changed))
            action = "updated"
        if self.out.dry_run:
            self.out.planned.append(call)
            return Outcome(name, str(existing["id"]) if existing else "", action, changed), existing or {}
        self.out.sent.append(f"{call.method} {call.path}")
        answer = self.client.one(call)
        assert answer is not None  # only a read may come back missing
        if existing is not None and answer["id"] != existing["id"]:
            raise DeployError(f"RunPod API: {call.method} {call.path} answered for another id {answer['id']}")
        self.remember(kind, answer)
        missed = differences(wanted, answer)
        if missed:
            raise DeployError(
                f"RunPod {kind.name} {answer['id']} did not take {', '.join(missed)} "
                f"(sent {_brief(wanted, missed)}, answered {_brief(answer, missed)})"
            )
        return Outcome(name, str(answer["id"]), action, changed), answer

    def pin_models(self, endpoint: Outcome) -> None:
        """Make the endpoint's cached models the target's, through GraphQL (REST v2 has no field).
        A new endpoint holds none, so only a cached one is read and written after a create."""
        wanted = sorted(self.out.target.model_references)
        self.out.model_references = tuple(wanted)
        if endpoint.action == "created" and not wanted:
            return
        if not endpoint.id:  # a dry run of a create: the save would follow it
            self.out.planned.append(model_cache.planned_save(wanted))
            return
        self.out.sent.append(f"QUERY {model_cache.GRAPHQL} myself.endpoints")
        current = model_cache.held(self.client, endpoint.id)
        if model_cache.references_of(current) == wanted:
            return
        call = model_cache.save_call(current, wanted)
        if self.out.dry_run:
            self.out.planned.append(call)
            return
        self.out.sent.append(f"MUTATION {model_cache.GRAPHQL} saveEndpoint")
        model_cache.pin(self.client, current, wanted)

    def find(self, kind: Kind, name: str) -> dict[str, Any] | None:
        """The stored id's object when it still exists; else the one object of that name, if any."""
        known = state.remembered(self.state_file, self.client.base_url, self.out.target.mode, kind.name)
        if known:
            call = Call("GET", f"{kind.path}/{known}")
            self.out.sent.append(f"{call.method} {call.path}")
            found = self.client.one(call, missing_ok=True)
            if found is not None:
                return found
        call = Call("GET", kind.path)
        self.out.sent.append(f"{call.method} {call.path}")
        named = [x for x in self.client.items(call, kind.list_key) if x.get("name") == name]
        if len(named) > 1:
            ids = ", ".join(str(x.get("id")) for x in named)
            raise DeployError(
                f"{len(named)} RunPod {kind.name}s are named {name!r} ({ids}); delete the extra ones or "
                f"set {kind.setting} to a unique name"
            )
        return named[0] if named else None

    def remember(self, kind: Kind, obj: dict[str, Any]) -> None:
        if self.out.dry_run:
            return
        mode = self.out.target.mode
        name = str(obj.get("name") or "")
        state.remember(self.state_file, self.client.base_url, mode, kind.name, id=str(obj["id"]), name=name)


def differences(wanted: dict[str, Any], existing: dict[str, Any]) -> tuple[str, ...]:
    """The top-level fields of `wanted` that RunPod holds differently, in `wanted`'s order."""
    return tuple(
        k
        for k in wanted
        if k != "type" and _normal(k, wanted[k], wanted) != _normal(k, existing.get(k), wanted)
    )


def patch_body(wanted: dict[str, Any], changed: tuple[str, ...]) -> dict[str, Any]:
    """The PATCH for `changed`. A `gpu` goes whole: sending `pools` replaces the pool selection
    (clearing exclusions we do not manage), and the CUDA constraint not in use is cleared
    explicitly, since setting one does not clear the other."""
    body = {k: wanted[k] for k in changed}
    if "gpu" in body:
        gpu = dict(body["gpu"])
        gpu.setdefault("allowedCudaVersions", [])
        gpu.setdefault("minCudaVersion", "")
        body["gpu"] = gpu
    return body


# What an absent field means to RunPod, per key; lists whose order RunPod does not keep or use.
_EMPTY: dict[str, Any] = {
    "args": "",
    "registry": "",
    "env": {},
    "ports": [],
    "dataCenterIds": [],
    "networkVolumes": [],
}
_UNORDERED = ("ports", "dataCenterIds", "networkVolumes")


def _normal(key: str, value: Any, wanted: dict[str, Any]) -> Any:
    """A value as RunPod means it: absent as its empty value, unordered lists as sets, numbers as
    numbers, and `workers` only in the keys we send (RunPod omits `idleTimeout` where it does not apply)."""
    if value is None or value == "":
        value = _EMPTY.get(key, value)
    if key == "gpu" and isinstance(value, dict):
        return (
            frozenset(value.get("pools") or ()),
            value.get("count", 1),
            frozenset(value.get("allowedCudaVersions") or ()),
            value.get("minCudaVersion") or "",
            frozenset(value.get("excludedTypes") or ()),
        )
    if key in _UNORDERED and isinstance(value, list):
        return frozenset(value)
    if key == "workers" and isinstance(value, dict):
        return {k: value.get(k) for k in wanted["workers"]}
    if key == "scaling" and isinstance(value, dict):
        return {k: float(v) if isinstance(v, (int, float)) else v for k, v in value.items()}
    return value


def _brief(obj: dict[str, Any], keys: tuple[str, ...]) -> str:
    text = ", ".join(f"{k}={obj.get(k)!r}" for k in keys)
    return text if len(text) <= 200 else text[:197] + "..."
