"""A local stand-in for RunPod's GraphQL API (`https://api.runpod.io/graphql`), for deploy tests.

It serves the part of RunPod's schema that `packager deploy` touches, written down below as SDL from
RunPod's GraphQL docs and the official clients (runpod-python 1.12's mutations, runpodctl's inputs).
graphql-core validates every request against it, so an unknown field, a missing required field, a
string where an Int goes or a quoted enum is refused the way a GraphQL server refuses it. On top of
the types it keeps the rules RunPod documents: template names are unique, a serverless template has
`volumeInGb: 0`, an endpoint's template must exist and be serverless, its network volume must exist
(and sit in one of its locations), and `saveEndpoint` with an `id` replaces the whole endpoint, so a
field left out falls back to its default.

Auth is what RunPod accepts: `Authorization: Bearer <key>` (what the SDK sends) or `?api_key=<key>`
(what RunPod's docs use); anything else is HTTP 401. Every request is recorded, raw body included,
so a test can assert what reached the API, and what never did.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from graphql import GraphQLError, OperationDefinitionNode, build_schema, graphql_sync, parse

SDL = """
schema { query: Query mutation: Mutation }

type Query { myself: User }

type Mutation {
  saveTemplate(input: SaveTemplateInput): PodTemplate
  saveEndpoint(input: EndpointInput!): Endpoint
  updateEndpointTemplate(input: UpdateEndpointTemplateInput): Endpoint
}

type User {
  id: String
  podTemplates: [PodTemplate]
  endpoints: [Endpoint]
  networkVolumes: [NetworkVolume]
}

type NetworkVolume { id: String name: String size: Int dataCenterId: String }

type EnvironmentVariable { key: String value: String }
input EnvironmentVariableInput { key: String! value: String! }

type PodTemplate {
  id: String
  name: String
  imageName: String
  dockerArgs: String
  containerDiskInGb: Int
  volumeInGb: Int
  volumeMountPath: String
  ports: String
  env: [EnvironmentVariable]
  isServerless: Boolean
  isPublic: Boolean
  startSsh: Boolean
  startJupyter: Boolean
  readme: String
  containerRegistryAuthId: String
  boundEndpointId: String
}

input SaveTemplateInput {
  id: String
  name: String!
  imageName: String!
  dockerArgs: String!
  containerDiskInGb: Int!
  volumeInGb: Int!
  volumeMountPath: String
  ports: String
  env: [EnvironmentVariableInput]!
  isServerless: Boolean
  isPublic: Boolean
  startSsh: Boolean
  startJupyter: Boolean
  readme: String
  containerRegistryAuthId: String
}

enum FlashBootType { FLASHBOOT OFF }

type Endpoint {
  id: String
  name: String
  templateId: String
  template: PodTemplate
  gpuIds: String
  gpuCount: Int
  networkVolumeId: String
  locations: String
  idleTimeout: Int
  scalerType: String
  scalerValue: Int
  workersMin: Int
  workersMax: Int
  executionTimeoutMs: Int
  allowedCudaVersions: String
  flashBootType: FlashBootType
  type: String
  userId: String
}

input EndpointInput {
  id: String
  name: String!
  templateId: String!
  gpuIds: String!
  gpuCount: Int
  networkVolumeId: String
  locations: String
  idleTimeout: Int
  scalerType: String
  scalerValue: Int
  workersMin: Int
  workersMax: Int
  executionTimeoutMs: Int
  allowedCudaVersions: String
  flashBootType: FlashBootType
  type: String
}

input UpdateEndpointTemplateInput { endpointId: String! templateId: String! }
"""

GPU_POOLS = {"AMPERE_16", "AMPERE_24", "ADA_24", "AMPERE_48", "ADA_48_PRO", "AMPERE_80", "ADA_80_PRO"}
# What RunPod fills in for an endpoint field the input leaves out (saveEndpoint is a full replace).
ENDPOINT_DEFAULTS: dict[str, Any] = {
    "gpuCount": 1,
    "networkVolumeId": None,
    "locations": None,
    "idleTimeout": 5,
    "scalerType": "QUEUE_DELAY",
    "scalerValue": 4,
    "workersMin": 0,
    "workersMax": 3,
    "executionTimeoutMs": 600_000,
    "allowedCudaVersions": None,
    "flashBootType": "OFF",
    "type": "QB",
}
TEMPLATE_DEFAULTS: dict[str, Any] = {
    "volumeMountPath": "/workspace",
    "ports": "",
    "isServerless": False,
    "isPublic": False,
    "startSsh": False,
    "startJupyter": False,
    "readme": "",
    "containerRegistryAuthId": None,
}


@dataclass
class Recorded:
    """One HTTP request as it arrived."""

    method: str
    path: str
    params: dict[str, list[str]]
    headers: dict[str, str]
    body: str
    status: int = 0
    kind: str | None = None  # "query" or "mutation"
    fields: tuple[str, ...] = ()  # root fields asked for
    errors: tuple[str, ...] = ()


@dataclass
class RunPodStandIn:
    api_key: str = "rp_standin_key_0123456789"
    network_volumes: dict[str, str] = field(default_factory=lambda: {"vol123abc": "EU-RO-1"})
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.schema = build_schema(SDL)
        mutations = self.schema.mutation_type
        assert mutations is not None
        assert self.schema.query_type is not None
        self.schema.query_type.fields["myself"].resolve = self._myself
        mutations.fields["saveTemplate"].resolve = self._save_template
        mutations.fields["saveEndpoint"].resolve = self._save_endpoint
        mutations.fields["updateEndpointTemplate"].resolve = self._update_endpoint_template
        self._server: ThreadingHTTPServer | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> RunPodStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                standin._handle(self)

            def do_GET(self) -> None:
                standin._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> RunPodStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- for tests
    def mutations(self) -> list[str]:
        """Root fields of every mutation that reached the API (accepted or not)."""
        return [f for r in self.requests if r.kind == "mutation" for f in r.fields]

    def raw_traffic(self) -> str:
        """Everything clients sent, for "this value never reached the API" checks."""
        return "\n".join(
            f"{r.method} {r.path} {json.dumps(r.params)} {json.dumps(r.headers)} {r.body}"
            for r in self.requests
        )

    def add_template(self, **fields: Any) -> dict[str, Any]:
        with self._lock:
            return self._store_template({**TEMPLATE_DEFAULTS, "env": [], "dockerArgs": "", **fields})

    def add_endpoint(self, **fields: Any) -> dict[str, Any]:
        with self._lock:
            ep = {**ENDPOINT_DEFAULTS, **fields, "id": fields.get("id") or self._new_id(14)}
            self.endpoints[ep["id"]] = ep
            return ep

    # ----------------------------------------------------------------- HTTP
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length).decode("utf-8", "replace") if length else ""
        rec = Recorded(h.command, parts.path, parse_qs(parts.query), dict(h.headers.items()), body)
        with self._lock:
            self.requests.append(rec)
        status, answer = self._answer(rec)
        rec.status = status
        rec.errors = tuple(e.get("message", "") for e in answer.get("errors", []))
        data = json.dumps(answer).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _answer(self, rec: Recorded) -> tuple[int, dict[str, Any]]:
        if rec.path != "/graphql":
            return 404, {"errors": [{"message": f"no route {rec.path}"}]}
        if rec.method != "POST":
            return 405, {"errors": [{"message": "POST only"}]}
        bearer = rec.headers.get("Authorization", "")
        keys = rec.params.get("api_key", [])
        if bearer != f"Bearer {self.api_key}" and keys != [self.api_key]:
            return 401, {"errors": [{"message": "Unauthorized"}]}
        if not rec.headers.get("Content-Type", "").startswith("application/json"):
            return 415, {"errors": [{"message": "Content-Type must be application/json"}]}
        try:
            payload = json.loads(rec.body)
            query = payload["query"]
            variables = payload.get("variables")
        except (ValueError, KeyError, TypeError):
            return 400, {"errors": [{"message": "body must be JSON with a `query`"}]}
        try:
            document = parse(query)
            ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
            rec.kind = ops[0].operation.value if ops else None
            rec.fields = tuple(
                s.name.value for op in ops for s in op.selection_set.selections if hasattr(s, "name")
            )
        except GraphQLError:
            pass
        with self._lock:
            result = graphql_sync(self.schema, query, variable_values=variables)
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = [{"message": e.message} for e in result.errors]
            if result.data is None:  # refused before running: parse or validation error
                return 400, answer
        return 200, answer

    # ----------------------------------------------------------------- resolvers
    def _myself(self, _root: Any, _info: Any) -> dict[str, Any]:
        return {
            "id": "user_standin",
            "podTemplates": [dict(t) for t in self.templates.values()],
            "endpoints": [self._endpoint_view(e) for e in self.endpoints.values()],
            "networkVolumes": [
                {"id": k, "name": k, "size": 50, "dataCenterId": dc} for k, dc in self.network_volumes.items()
            ],
        }

    def _save_template(self, _root: Any, _info: Any, input: dict[str, Any]) -> dict[str, Any]:
        if not input["name"].strip():
            raise GraphQLError("Template name is required")
        if not input["imageName"].strip():
            raise GraphQLError("imageName is required")
        clash = [
            t for t in self.templates.values() if t["name"] == input["name"] and t["id"] != input.get("id")
        ]
        if clash:
            raise GraphQLError("Template name must be unique")
        if input.get("id") and input["id"] not in self.templates:
            raise GraphQLError(f"Template {input['id']} not found")
        if input.get("isServerless") and input["volumeInGb"] != 0:
            raise GraphQLError("Serverless templates cannot have a volume disk (volumeInGb must be 0)")
        keys = [e["key"] for e in input["env"] if e is not None]
        if len(keys) != len(set(keys)):
            raise GraphQLError("Duplicate environment variable keys")
        env = [{"key": e["key"], "value": e["value"]} for e in input["env"] if e is not None]
        return self._store_template({**TEMPLATE_DEFAULTS, **input, "env": env})

    def _store_template(self, template: dict[str, Any]) -> dict[str, Any]:
        template["id"] = template.get("id") or self._new_id(10)
        self.templates[template["id"]] = template
        return dict(template)

    def _save_endpoint(self, _root: Any, _info: Any, input: dict[str, Any]) -> dict[str, Any]:
        if input.get("id") and input["id"] not in self.endpoints:
            raise GraphQLError(f"Endpoint {input['id']} not found")
        template = self.templates.get(input["templateId"])
        if template is None:
            raise GraphQLError(f"Template {input['templateId']} not found")
        if not template.get("isServerless"):
            raise GraphQLError("Endpoints need a serverless template (isServerless: true)")
        pools = [p for p in input["gpuIds"].split(",") if p and not p.startswith("-")]
        if not pools or any(p not in GPU_POOLS for p in pools):
            raise GraphQLError(f"Invalid gpuIds: {input['gpuIds']}")
        ep = {**ENDPOINT_DEFAULTS, **input}
        if ep["workersMax"] < ep["workersMin"]:
            raise GraphQLError("workersMax must be greater than or equal to workersMin")
        if ep["scalerType"] not in ("QUEUE_DELAY", "REQUEST_COUNT"):
            raise GraphQLError(f"Invalid scalerType: {ep['scalerType']}")
        if not 5_000 <= ep["executionTimeoutMs"] <= 7 * 24 * 3600 * 1000:
            raise GraphQLError("executionTimeoutMs must be between 5 seconds and 7 days")
        volume = ep["networkVolumeId"]
        if volume:
            if volume not in self.network_volumes:
                raise GraphQLError(f"Network volume {volume} not found")
            dc = self.network_volumes[volume]
            if ep["locations"] and dc not in ep["locations"].split(","):
                raise GraphQLError(f"Network volume {volume} is in {dc}, not in locations {ep['locations']}")
        ep["id"] = input.get("id") or self._new_id(14)
        self.endpoints[ep["id"]] = ep
        return self._endpoint_view(ep)

    def _update_endpoint_template(self, _root: Any, _info: Any, input: dict[str, Any]) -> dict[str, Any]:
        ep = self.endpoints.get(input["endpointId"])
        if ep is None or input["templateId"] not in self.templates:
            raise GraphQLError("Endpoint or template not found")
        ep["templateId"] = input["templateId"]
        return self._endpoint_view(ep)

    def _endpoint_view(self, ep: dict[str, Any]) -> dict[str, Any]:
        return {**ep, "template": self.templates.get(ep["templateId"]), "userId": "user_standin"}

    def _new_id(self, length: int) -> str:
        digest = hashlib.sha256(f"standin-{next(self._ids)}".encode()).hexdigest()
        return digest[:length]
