"""RunPod's GraphQL API, spoken through the runpod SDK's own helper.

`runpod.api.graphql.run_graphql_query` takes a finished query string (no variables), so every value
goes into the document as a GraphQL literal. The SDK's `create_template`/`create_endpoint` build
those strings by pasting values between quotes unescaped, cannot update an existing object, and
leave out fields we need (execution timeout, registry auth on endpoints); so we write the documents
here, escape every value, and keep only the transport (URL from `RUNPOD_API_BASE_URL`, bearer
auth, error handling) to the SDK.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from packager.errors import DeployError

_NAME_RE = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")

# The fields we read back and compare; the same names the mutations set.
TEMPLATE_FIELDS = (
    "id name imageName dockerArgs containerDiskInGb volumeInGb volumeMountPath ports "
    "env { key value } isServerless containerRegistryAuthId"
)
ENDPOINT_FIELDS = (
    "id name templateId gpuIds gpuCount networkVolumeId locations idleTimeout scalerType scalerValue "
    "workersMin workersMax executionTimeoutMs allowedCudaVersions flashBootType"
)
STATE_QUERY = (
    f"query {{ myself {{ podTemplates {{ {TEMPLATE_FIELDS} }} endpoints {{ {ENDPOINT_FIELDS} }} }} }}"
)


class Enum(str):
    """A GraphQL enum value (`FLASHBOOT`): written bare, where a string would be quoted and refused."""


def literal(value: Any) -> str:
    """`value` as a GraphQL input literal.

    JSON string escapes (\\", \\\\, \\n, \\uXXXX) are exactly GraphQL's, so json.dumps quotes strings
    safely: an env value full of quotes and braces (the worker's JSON config) cannot end the string
    or inject fields.
    """
    if isinstance(value, Enum):
        if not _NAME_RE.match(value):
            raise ValueError(f"not a GraphQL enum value: {value!r}")
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        parts = []
        for key, item in value.items():
            if not _NAME_RE.match(key):
                raise ValueError(f"not a GraphQL field name: {key!r}")
            parts.append(f"{key}: {literal(item)}")
        return "{" + ", ".join(parts) + "}"
    raise TypeError(f"no GraphQL literal for {type(value).__name__}")


def mutation(field: str, fields: Mapping[str, Any], selection: str) -> str:
    """`mutation { field(input: {...}) { selection } }`."""
    return f"mutation {{ {field}(input: {literal(fields)}) {{ {selection} }} }}"


def run(query: str, api_key: str) -> dict[str, Any]:
    """Send one document through the SDK and return its `data`; any failure is one DeployError line.

    The SDK is imported here, not at module level: it costs about 2 s, which `--dry-run`, `--help`
    and every other command should not pay.
    """
    import requests
    from runpod import error as rp_error
    from runpod.api.graphql import run_graphql_query

    try:
        answer = run_graphql_query(query, api_key=api_key)
    except rp_error.AuthenticationError:
        raise DeployError(_REJECTED) from None
    except rp_error.QueryError as exc:
        message = _one_line(exc.message or "query failed")
        if "unauthorized" in message.lower():
            raise DeployError(_REJECTED) from None
        raise DeployError(f"RunPod API: {message}") from None
    except requests.exceptions.JSONDecodeError:
        raise DeployError(
            "the RunPod API answered with something that is not JSON (is RUNPOD_API_BASE_URL right?)"
        ) from None
    except requests.RequestException as exc:
        request = getattr(exc, "request", None)
        where = f" at {request.url}" if request is not None and request.url else ""
        raise DeployError(f"cannot reach the RunPod API{where}: {exc.__class__.__name__}") from None
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict):
        raise DeployError("the RunPod API answered without `data`")
    return data


_REJECTED = "RUNPOD_API_KEY was rejected by the RunPod API: check the key (Settings → API Keys)"


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= 300 else line[:297] + "..."
