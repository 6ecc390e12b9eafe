"""RunPod's GraphQL API (`/graphql`) in the stand-in: the part that holds an endpoint's cached models.

REST v2 has no field for `modelReferences`; RunPod's CLI sets it through `saveEndpoint`, a full
replace. The schema below is the subset of RunPod's that this touches (types as runpodctl reads and
writes them), executed by graphql-core, so an unknown field, a wrong type or a missing `name` is a
GraphQL error as RunPod would give. It works on the REST stand-in's endpoint store, mapped field by
field; a setting left out of `saveEndpoint` goes back to RunPod's default, as a full replace does, so
a client that does not send every setting back changes the endpoint and the next REST read shows it.
"""

from __future__ import annotations

import re
from typing import Any

from graphql import build_schema, graphql_sync

SDL = """
type Query { myself: User }
type Mutation { saveEndpoint(input: EndpointInput!): Endpoint }
type User { id: String, endpoints: [Endpoint] }
type NetworkVolumeRef { networkVolumeId: String, dataCenterId: String }
input NetworkVolumeIdInput { networkVolumeId: String! }
type Endpoint {
  id: String!, name: String, templateId: String, gpuIds: String, gpuCount: Int, instanceIds: [String],
  workersMin: Int, workersMax: Int, locations: String, networkVolumeId: String,
  networkVolumeIds: [NetworkVolumeRef], idleTimeout: Int, scalerType: String, scalerValue: Float,
  executionTimeoutMs: Int, minCudaVersion: String, flashBootType: String, modelReferences: [String]
}
input EndpointInput {
  id: String, name: String!, templateId: String, gpuIds: String, gpuCount: Int, instanceIds: [String],
  workersMin: Int, workersMax: Int, locations: String, networkVolumeId: String,
  networkVolumeIds: [NetworkVolumeIdInput], idleTimeout: Int, scalerType: String, scalerValue: Float,
  executionTimeoutMs: Int, minCudaVersion: String, flashBootType: String, modelReferences: [String]
}
"""
SCHEMA = build_schema(SDL)
# A hub model and a ref, as the console and runpodctl write them.
MODEL_REFERENCE_RE = re.compile(r"^https://huggingface\.co/[A-Za-z0-9][\w.-]*/[\w.-]+:[\w./-]+$")
# What a setting left out of saveEndpoint becomes.
RESET: dict[str, Any] = {
    "workersMin": 0,
    "workersMax": 3,
    "idleTimeout": 10,
    "scalerType": "QUEUE_DELAY",
    "scalerValue": 4,
    "executionTimeoutMs": 300_000,
    "flashBootType": "OFF",
    "locations": "",
    "networkVolumeIds": [],
    "minCudaVersion": "",
    "gpuCount": 1,
    "modelReferences": [],
}


class GraphQLError(Exception):
    pass


def execute(standin: Any, body: Any) -> dict[str, Any]:
    """The JSON answer to one GraphQL request (errors in `errors`, as GraphQL answers with 200)."""
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return {"errors": [{"message": "Must provide query string."}]}

    def save_endpoint(_info: Any, input: dict[str, Any]) -> dict[str, Any]:
        return view(standin, _save(standin, input))

    root = {
        "myself": lambda _info: {
            "id": "user-standin",
            "endpoints": [view(standin, e) for e in standin.endpoints.values()],
        },
        "saveEndpoint": save_endpoint,
    }
    result = graphql_sync(SCHEMA, body["query"], root_value=root, variable_values=body.get("variables"))
    out: dict[str, Any] = {"data": result.data}
    if result.errors:
        out["errors"] = [{"message": e.message} for e in result.errors]
    return out


def view(standin: Any, ep: dict[str, Any]) -> dict[str, Any]:
    """A REST v2 endpoint as GraphQL shows it."""
    gpu = ep.get("gpu") or {}
    scaling = ep["scaling"]
    volumes = list(ep["networkVolumes"])
    return {
        "id": ep["id"],
        "name": ep["name"],
        "templateId": "",
        "gpuIds": ",".join(gpu.get("pools", [])),
        "gpuCount": gpu.get("count", 1),
        "instanceIds": [],
        "workersMin": ep["workers"]["min"],
        "workersMax": ep["workers"]["max"],
        "locations": ",".join(ep["dataCenterIds"]),
        "networkVolumeId": volumes[0] if volumes else "",
        "networkVolumeIds": [
            {"networkVolumeId": v, "dataCenterId": standin.network_volumes.get(v)} for v in volumes
        ],
        "idleTimeout": ep["workers"].get("idleTimeout"),
        "scalerType": scaling["type"],
        "scalerValue": scaling.get("queueDelay", scaling.get("requestCount")),
        "executionTimeoutMs": ep["timeout"],
        "minCudaVersion": gpu.get("minCudaVersion") or "",
        "flashBootType": ep["flashboot"],
        "modelReferences": list(ep.get("modelReferences", [])),
    }


def _save(standin: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Apply a saveEndpoint input to the endpoint it names: every setting it leaves out is reset."""
    ep = standin.endpoints.get(given.get("id"))
    if ep is None:
        raise GraphQLError(f"endpoint {given.get('id')} not found")
    new = {**RESET, **{k: v for k, v in given.items() if v is not None}}
    refs = new["modelReferences"]
    bad = [r for r in refs if not MODEL_REFERENCE_RE.match(r)]
    if bad:
        raise GraphQLError(f"modelReferences: not a Hugging Face model reference: {bad[0]}")
    if "gpuIds" not in new:
        raise GraphQLError("gpuIds is required for a GPU endpoint")
    counting = new["scalerType"] == "REQUEST_COUNT"
    workers = {"min": new["workersMin"], "max": new["workersMax"]}
    if not counting:
        workers["idleTimeout"] = new["idleTimeout"]
    scaling_key = "requestCount" if counting else "queueDelay"
    value = new["scalerValue"]
    gpu = {**ep["gpu"], "pools": new["gpuIds"].split(","), "count": new["gpuCount"]}
    gpu["minCudaVersion"] = new["minCudaVersion"] or None
    volumes = [v["networkVolumeId"] for v in new["networkVolumeIds"]]
    if new.get("networkVolumeId") and new["networkVolumeId"] not in volumes:
        volumes.append(new["networkVolumeId"])
    ep.update(
        {
            "name": new["name"],
            "gpu": gpu,
            "workers": workers,
            "scaling": {"type": new["scalerType"], scaling_key: int(value) if counting else value},
            "timeout": new["executionTimeoutMs"],
            "flashboot": new["flashBootType"],
            "dataCenterIds": [x for x in new["locations"].split(",") if x],
            "networkVolumes": volumes,
            "modelReferences": list(refs),
        }
    )
    return dict(ep)
