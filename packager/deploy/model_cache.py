"""The endpoint's cached model (RunPod's "cached models"), pinned through GraphQL `saveEndpoint`.

REST v2 has no field for an endpoint's model references, so this one setting goes where RunPod's own
CLI (runpodctl) sends it: `modelReferences: [String]` on GraphQL's `saveEndpoint`. That mutation is a
full replace (a field left out goes back to RunPod's default), so the endpoint's current settings are
read first and sent back whole with only `modelReferences` changed, and the answer is checked.

A cached-mode endpoint is pinned to `https://huggingface.co/<repo>:<commit>`, the commit `packager
publish` made, never a branch; a baked or volume endpoint holds an empty list, so an endpoint that
changes mode under one name stops asking hosts to cache a model its image does not read. Nothing is
written when RunPod already holds the wanted list.
"""

from __future__ import annotations

from typing import Any

from packager.deploy.runpod_api import Call, RunPodREST
from packager.errors import DeployError

GRAPHQL = "/graphql"
# EndpointInput's settings, as runpodctl round-trips them; `modelReferences` is the one deploy changes.
ROUND_TRIP = (
    "name",
    "templateId",
    "gpuIds",
    "gpuCount",
    "instanceIds",
    "workersMin",
    "workersMax",
    "locations",
    "networkVolumeId",
    "networkVolumeIds",
    "idleTimeout",
    "scalerType",
    "scalerValue",
    "executionTimeoutMs",
    "minCudaVersion",
    "flashBootType",
)
_FIELDS = (f"{k} {{ networkVolumeId }}" if k == "networkVolumeIds" else k for k in ROUND_TRIP)
_SELECTION = " ".join(["id", *_FIELDS, "modelReferences"])
READ_QUERY = f"query Endpoints {{ myself {{ endpoints {{ {_SELECTION} }} }} }}"
SAVE_MUTATION = (
    f"mutation SaveEndpoint($input: EndpointInput!) {{ saveEndpoint(input: $input) {{ {_SELECTION} }} }}"
)


def read_call() -> Call:
    return Call("POST", GRAPHQL, {"query": READ_QUERY})


def save_call(current: dict[str, Any], references: list[str]) -> Call:
    """`saveEndpoint` with every setting RunPod holds sent back as it is, and `references`."""
    fields = {k: current[k] for k in ROUND_TRIP if k in current}
    if isinstance(fields.get("networkVolumeIds"), list):
        fields["networkVolumeIds"] = [
            {"networkVolumeId": v["networkVolumeId"] if isinstance(v, dict) else v}
            for v in fields["networkVolumeIds"]
        ]
    body = {
        "query": SAVE_MUTATION,
        "variables": {"input": {"id": current["id"], **fields, "modelReferences": references}},
    }
    return Call("POST", GRAPHQL, body)


def planned_save(references: list[str]) -> Call:
    """The save as a plan shows it before the endpoint's settings are known."""
    fields = {"id": "{id}", "...": "every setting in ROUND_TRIP, as read back", "modelReferences": references}
    return Call("POST", GRAPHQL, {"query": SAVE_MUTATION, "variables": {"input": fields}})


def held(client: RunPodREST, endpoint_id: str) -> dict[str, Any]:
    """The endpoint as GraphQL shows it (its settings and `modelReferences`)."""
    data = client.graphql(read_call(), "myself.endpoints")
    endpoints = (data.get("myself") or {}).get("endpoints")
    if not isinstance(endpoints, list):
        raise DeployError("RunPod API: GraphQL myself.endpoints answered without a list of endpoints")
    for endpoint in endpoints:
        if isinstance(endpoint, dict) and endpoint.get("id") == endpoint_id:
            return endpoint
    raise DeployError(f"RunPod API: GraphQL does not list endpoint {endpoint_id}, which REST v2 returned")


def references_of(endpoint: dict[str, Any]) -> list[str]:
    refs = endpoint.get("modelReferences") or []
    return sorted(str(r) for r in refs) if isinstance(refs, list) else []


def pin(client: RunPodREST, current: dict[str, Any], references: list[str]) -> dict[str, Any]:
    """Send the save and check that RunPod holds `references` afterwards."""
    data = client.graphql(save_call(current, references), "saveEndpoint")
    answer = data.get("saveEndpoint")
    if not isinstance(answer, dict) or answer.get("id") != current["id"]:
        raise DeployError(
            f"RunPod API: GraphQL saveEndpoint answered for another endpoint than {current['id']}"
        )
    if references_of(answer) != sorted(references):
        raise DeployError(
            f"RunPod endpoint {current['id']} did not take modelReferences "
            f"(sent {references}, answered {answer.get('modelReferences')})"
        )
    return answer
