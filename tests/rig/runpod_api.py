"""A local stand-in for RunPod's REST API v2 (`https://api.runpod.io/v2`), for deploy tests.

It serves the serverless endpoint and template resources the way RunPod's published OpenAPI document
describes them (`tests/rig/runpod_schema.py` holds the request schemas): every create and update body
is validated with jsonschema against them, so an unknown field, a missing required field, a string
where an integer goes or a value outside an enum is refused with 422 and RunPod's RFC 9457 problem
body. On top of the schema it keeps the rules the document states in prose: exactly one of `gpu` or
`cpu` (400), a CUDA set and a floor are mutually exclusive (400), `idleTimeout` is refused for a
queue endpoint scaling on request count and left out of its answers, GPU pools must be serverless
pools, PATCH changes only the fields sent (a `gpu.pools` without `excludedTypes` clears them),
network volumes must exist and a template referenced by `templateId` must be a serverless one (422).
Lists come wrapped (`{"endpoints": [...]}`), as v2 answers them.

Reads answer the way RunPod normalises: pools, data centers and ports come back sorted, env in key
order, and fields a create left out carry RunPod's defaults, so a client that compares what it reads
with what it would send must be tolerant of both.

Auth is `Authorization: Bearer <key>` only; a wrong key is a 401 problem. Two more keys reproduce
failures seen in the wild: `null_key` answers 200 with null lists (an identity RunPod does not know),
`html_key` a 403 HTML page (what an edge proxy serves). Every request is recorded, raw body included.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator

from tests.rig import runpod_graphql
from tests.rig import runpod_schema as rs
from tests.rig.http_server import LoopbackServer, handler_calling

# RunPod's serverless GPU pools (its GPU-types reference and the flash SDK's GpuGroup).
GPU_POOLS = frozenset(
    {
        "AMPERE_16",
        "AMPERE_24",
        "ADA_24",
        "ADA_32_PRO",
        "AMPERE_48",
        "ADA_48_PRO",
        "AMPERE_80",
        "ADA_80_PRO",
        "BLACKWELL_96",
        "HOPPER_141",
        "BLACKWELL_180",
    }
)
# What RunPod fills in when a create leaves a field out (CreateEndpointRequest's defaults; the disk
# size from the document's example answer).
ENDPOINT_DEFAULTS: dict[str, Any] = {
    "args": "",
    "disk": 20,
    "ports": [],
    "env": {},
    "registry": None,
    "dataCenterIds": [],
    "networkVolumes": [],
    "timeout": 300_000,
    "flashboot": "OFF",
}
WORKER_DEFAULTS = {"min": 0, "max": 3, "idleTimeout": 10}
TEMPLATE_DEFAULTS: dict[str, Any] = {
    "args": "",
    "disk": 20,
    "ports": [],
    "env": {},
    "registry": None,
    "mounts": {},
    "serverless": False,
    "public": False,
    "category": "NVIDIA",
    "startSsh": True,
    "startJupyter": True,
    "allowedCudaVersions": [],
}
CONTAINER_KEYS = ("image", "args", "disk", "ports", "env", "registry")
HTML_403 = (
    "<!DOCTYPE html><html><head><title>403 Forbidden</title></head><body><h1>Forbidden</h1></body></html>"
)
_VALIDATORS = {
    name: Draft202012Validator(rs.schema(body))
    for name, body in (
        ("create_endpoint", rs.CREATE_ENDPOINT),
        ("update_endpoint", rs.UPDATE_ENDPOINT),
        ("create_template", rs.CREATE_TEMPLATE),
        ("update_template", rs.UPDATE_TEMPLATE),
    )
}


class Problem(Exception):
    """An RFC 9457 answer: `{"title", "status", "detail", "errors"?}`."""

    TITLES: ClassVar[dict[int, str]] = {
        400: "Bad Request",
        404: "Not Found",
        405: "Method Not Allowed",
        422: "Unprocessable Entity",
    }

    def __init__(self, status: int, detail: str, errors: list[str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"title": self.TITLES.get(self.status, "Error"), "status": self.status}
        out["detail"] = self.detail
        if self.errors:
            out["errors"] = self.errors
        return out


@dataclass
class Recorded:
    """One HTTP request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    body: str
    status: int = 0
    answer: Any = None


@dataclass
class RunPodStandIn(LoopbackServer):
    api_key: str = "rp_standin_key_0123456789"
    null_key: str = "rp_standin_unknown_identity"
    html_key: str = "rp_standin_blocked_at_edge"
    network_volumes: dict[str, str] = field(default_factory=lambda: {"vol123abc": "EU-RO-1"})
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # ----------------------------------------------------------------- lifecycle
    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return handler_calling(self._handle, ("GET", "POST", "PATCH", "DELETE"))

    # ----------------------------------------------------------------- for tests
    def writes(self) -> list[tuple[str, str]]:
        """(method, path) of every request that could change something, accepted or not."""
        return [(r.method, r.path) for r in self.requests if r.method != "GET" and not _graphql_read(r)]

    def bodies(self, method: str, path: str | None = None) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.requests if r.method == method and path in (None, r.path)]

    def raw_traffic(self) -> str:
        """Everything clients sent, for "this value never reached the API" checks."""
        return "\n".join(f"{r.method} {r.path} {json.dumps(r.headers)} {r.body}" for r in self.requests)

    def add_endpoint(self, **fields: Any) -> dict[str, Any]:
        """An endpoint made elsewhere (the console), as RunPod would store it."""
        body = {"type": "QUEUE", "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4}, **fields}
        with self._lock:
            return self._create_endpoint(body)

    # ----------------------------------------------------------------- HTTP
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length).decode("utf-8", "replace") if length else ""
        rec = Recorded(h.command, parts.path, dict(h.headers.items()), body)
        with self._lock:
            self.requests.append(rec)
            status, answer = self._answer(rec)
        rec.status, rec.answer = status, answer
        if isinstance(answer, str):
            data, kind = answer.encode(), "text/html; charset=utf-8"
        elif answer is None:
            data, kind = b"", ""
        else:
            data = json.dumps(answer).encode()
            kind = "application/problem+json" if status >= 400 else "application/json"
        h.send_response(status)
        if kind:
            h.send_header("Content-Type", kind)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _answer(self, rec: Recorded) -> tuple[int, Any]:
        bearer = rec.headers.get("Authorization", "")
        if bearer == f"Bearer {self.html_key}":
            return 403, HTML_403
        if bearer not in (f"Bearer {self.api_key}", f"Bearer {self.null_key}"):
            return 401, {"title": "Unauthorized", "status": 401, "detail": "invalid or missing API key"}
        try:
            if bearer == f"Bearer {self.null_key}":
                return self._unknown_identity(rec)
            return self._route(rec)
        except Problem as p:
            return p.status, p.body()

    def _unknown_identity(self, rec: Recorded) -> tuple[int, Any]:
        if rec.path == "/graphql":
            return 200, {"data": {"myself": None}}
        if rec.method == "GET" and rec.path in ("/v2/serverless", "/v2/templates"):
            return 200, {rec.path.rsplit("/", 1)[1].replace("serverless", "endpoints"): None}
        return 200, None

    def _route(self, rec: Recorded) -> tuple[int, Any]:
        if rec.path == "/graphql" and rec.method == "POST":
            return 200, runpod_graphql.execute(self, self._body(rec))
        found = re.fullmatch(r"/v2/(serverless|templates)(?:/([^/]+))?", rec.path)
        if not found:
            raise Problem(404, f"no route {rec.path}")
        kind, rid = found.groups()
        body = self._body(rec) if rec.method in ("POST", "PATCH") else None
        endpoint = kind == "serverless"
        store = self.endpoints if endpoint else self.templates
        view = self._endpoint_view if endpoint else self._template_view
        if rid is None and rec.method == "GET":
            return 200, {"endpoints" if endpoint else "templates": [view(x) for x in store.values()]}
        if rid is None and rec.method == "POST":
            self._check("create_endpoint" if endpoint else "create_template", body)
            return 201, self._create_endpoint(body) if endpoint else self._create_template(body)
        if rid is not None and rid not in store:
            raise Problem(404, f"{'endpoint' if endpoint else 'template'} {rid} not found")
        if rid is not None and rec.method == "GET":
            return 200, view(store[rid])
        if rid is not None and rec.method == "PATCH":
            self._check("update_endpoint" if endpoint else "update_template", body)
            update = self._update_endpoint if endpoint else self._update_template
            return 200, update(store[rid], body)
        if rid is not None and rec.method == "DELETE":
            del store[rid]
            return 204, None
        raise Problem(405, f"{rec.method} not allowed on {rec.path}")

    @staticmethod
    def _body(rec: Recorded) -> Any:
        if not rec.headers.get("Content-Type", "").startswith("application/json"):
            raise Problem(400, "Content-Type must be application/json")
        try:
            return json.loads(rec.body)
        except ValueError:
            raise Problem(400, "request body is not JSON") from None

    @staticmethod
    def _check(schema: str, body: Any) -> None:
        errors = sorted(_VALIDATORS[schema].iter_errors(body), key=lambda e: e.json_path)
        if errors:
            raise Problem(
                422, "request body failed validation", [f"{e.json_path}: {e.message}" for e in errors]
            )

    # ----------------------------------------------------------------- endpoints
    def _create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        if ("gpu" in body) == ("cpu" in body):
            raise Problem(400, "exactly one of gpu or cpu is required")
        ep: dict[str, Any] = {**ENDPOINT_DEFAULTS}
        if "templateId" in body:
            template = self.templates.get(body["templateId"])
            if template is None:
                raise Problem(404, f"template {body['templateId']} not found")
            if not template["serverless"]:
                raise Problem(422, f"template {body['templateId']} is not a serverless template")
            ep.update({k: template[k] for k in CONTAINER_KEYS})
            if "gpu" in body and "minCudaVersion" not in body["gpu"]:
                body["gpu"].setdefault("allowedCudaVersions", list(template["allowedCudaVersions"]))
        ep.update({k: v for k, v in body.items() if k not in ("templateId", "env")})
        ep["env"] = {**ep["env"], **body.get("env", {})}
        ep["workers"] = {**WORKER_DEFAULTS, **body.get("workers", {})}
        if "gpu" in body:
            ep["gpu"] = {"count": 1, "allowedCudaVersions": [], "minCudaVersion": None, **body["gpu"]}
        ep["id"] = self._new_id(14)
        ep["createdAt"] = "2026-11-25T00:00:00Z"
        self._check_rules(ep, body)
        self.endpoints[ep["id"]] = ep
        return self._endpoint_view(ep)

    def _update_endpoint(self, current: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        if ("gpu" in body and "gpu" not in current) or ("cpu" in body and "cpu" not in current):
            raise Problem(400, "an endpoint's compute family cannot change")
        ep = json.loads(json.dumps(current))
        if "templateId" in body:
            template = self.templates.get(body["templateId"])
            if template is None:
                raise Problem(404, f"template {body['templateId']} not found")
            ep.update({k: template[k] for k in CONTAINER_KEYS if k != "env"})
            ep["env"] = {**template["env"], **body.get("env", {})}
        for key, value in body.items():
            if key == "gpu":
                gpu = {**ep["gpu"], **value}
                if "pools" in value and "excludedTypes" not in value:
                    gpu.pop("excludedTypes", None)
                if gpu.get("minCudaVersion") == "":
                    gpu["minCudaVersion"] = None
                ep["gpu"] = gpu
            elif key == "workers":
                ep["workers"] = {**ep["workers"], **value}
            elif key != "templateId":
                ep[key] = value
        counting = body.get("scaling", {}).get("type") == "REQUEST_COUNT" and ep["type"] == "QUEUE"
        if counting and "idleTimeout" not in body.get("workers", {}):
            ep["workers"].pop("idleTimeout", None)
        self._check_rules(ep, body)
        current.clear()
        current.update(ep)
        return self._endpoint_view(ep)

    def _check_rules(self, ep: dict[str, Any], body: dict[str, Any]) -> None:
        gpu = ep.get("gpu")
        if gpu is not None:
            unknown = [p for p in gpu["pools"] if p not in GPU_POOLS]
            if unknown:
                raise Problem(400, f"gpu.pools: not a serverless GPU pool: {', '.join(unknown)}")
            if gpu["allowedCudaVersions"] and gpu["minCudaVersion"]:
                raise Problem(400, "gpu.allowedCudaVersions and gpu.minCudaVersion are mutually exclusive")
        counting = ep["scaling"]["type"] == "REQUEST_COUNT"
        if counting and ep["type"] == "QUEUE" and "idleTimeout" in body.get("workers", {}):
            raise Problem(
                400, "workers.idleTimeout does not apply to a queue endpoint scaling on requestCount"
            )
        if ep["type"] == "LOAD_BALANCER" and not counting:
            raise Problem(400, "a load-balancing endpoint scales on REQUEST_COUNT")
        if ep["workers"]["max"] < ep["workers"]["min"]:
            raise Problem(400, "workers.max must be at least workers.min")
        for volume in ep["networkVolumes"]:
            if volume not in self.network_volumes:
                raise Problem(400, f"network volume {volume} not found")
            where = self.network_volumes[volume]
            if ep["dataCenterIds"] and where not in ep["dataCenterIds"]:
                raise Problem(400, f"network volume {volume} is in {where}, not in dataCenterIds")

    def _endpoint_view(self, ep: dict[str, Any]) -> dict[str, Any]:
        out = json.loads(json.dumps(ep))
        if out["scaling"]["type"] == "REQUEST_COUNT" and out["type"] == "QUEUE":
            out["workers"].pop("idleTimeout", None)
        out["env"] = dict(sorted(out["env"].items()))
        for key in ("dataCenterIds", "networkVolumes", "ports"):
            out[key] = sorted(out[key])
        if out.get("gpu"):
            out["gpu"]["pools"] = sorted(out["gpu"]["pools"])
        base = f"https://api.runpod.ai/v2/{ep['id']}"
        out["requestUrls"] = {
            "run": f"{base}/run",
            "runSync": f"{base}/runsync",
            "status": f"{base}/status/{{job_id}}",
            "stream": f"{base}/stream/{{job_id}}",
            "cancel": f"{base}/cancel/{{job_id}}",
            "retry": f"{base}/retry/{{job_id}}",
            "purgeQueue": f"{base}/purge-queue",
            "health": f"{base}/health",
        }
        return out

    # ----------------------------------------------------------------- templates
    def _create_template(self, body: dict[str, Any]) -> dict[str, Any]:
        if any(t["name"] == body["name"] for t in self.templates.values()):
            raise Problem(400, f"a template named {body['name']!r} already exists")
        template = {**TEMPLATE_DEFAULTS, **body, "id": self._new_id(10)}
        self.templates[template["id"]] = template
        return self._template_view(template)

    def _update_template(self, current: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        if "name" in body and any(
            t["name"] == body["name"] and t["id"] != current["id"] for t in self.templates.values()
        ):
            raise Problem(400, f"a template named {body['name']!r} already exists")
        current.update(body)
        return self._template_view(current)

    def _template_view(self, template: dict[str, Any]) -> dict[str, Any]:
        out = json.loads(json.dumps(template))
        out["env"] = dict(sorted(out["env"].items()))
        out["ports"] = sorted(out["ports"])
        return out

    def _new_id(self, length: int) -> str:
        digest = hashlib.sha256(f"standin-{next(self._ids)}".encode()).hexdigest()
        return digest[:length]


def _graphql_read(rec: Recorded) -> bool:
    """A GraphQL query (not a mutation): it reads, whatever the HTTP method."""
    if rec.path != "/graphql":
        return False
    try:
        query = json.loads(rec.body).get("query", "")
    except (ValueError, AttributeError):
        return False
    return isinstance(query, str) and query.lstrip().startswith(("query", "{"))
