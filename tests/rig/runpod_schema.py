"""The request bodies of RunPod's REST API v2 (`https://api.runpod.io/v2`) that deploy sends, as
JSON Schema 2020-12, written from RunPod's published OpenAPI document (`/v2/openapi.json`, "Runpod
REST API" 2.0.0): `CreateEndpointRequest`, `UpdateEndpointRequest`, `CreateTemplateRequest`,
`UpdateTemplateRequest` and the schemas they reference. Field names, types, enums, bounds, required
fields and `unevaluatedProperties: false` are the document's; descriptions are left out.

Rules the document states only in prose (gpu xor cpu, a CUDA set beside a floor, idleTimeout with
request-count scaling) are enforced by the stand-in itself, not here.
"""

from __future__ import annotations

from typing import Any

_CUDA = {"type": "string", "pattern": r"^\d+\.\d+$"}


def _scaling(kind: str, field: str, bound: dict[str, Any]) -> dict[str, Any]:
    """A scaling object: its `type` constant and the one number it takes (both required, nothing else)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", field],
        "properties": {"type": {"type": "string", "enum": [kind]}, field: bound},
    }


DEFS: dict[str, Any] = {
    "BaseContainerConfig": {
        "type": "object",
        "properties": {
            "args": {"type": "string"},
            "disk": {"type": "integer", "minimum": 1},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "image": {"type": "string"},
            "ports": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ContainerConfig": {
        "allOf": [
            {"$ref": "#/$defs/BaseContainerConfig"},
            {"type": "object", "properties": {"registry": {"type": ["string", "null"]}}},
        ]
    },
    "FlashBoot": {"type": "string", "enum": ["OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT"]},
    "EndpointType": {"type": "string", "enum": ["QUEUE", "LOAD_BALANCER"]},
    "QueueDelayScaling": _scaling("QUEUE_DELAY", "queueDelay", {"type": "number", "minimum": 0.5}),
    "RequestCountScaling": _scaling("REQUEST_COUNT", "requestCount", {"type": "integer", "minimum": 1}),
    "EndpointScaling": {
        "oneOf": [{"$ref": "#/$defs/QueueDelayScaling"}, {"$ref": "#/$defs/RequestCountScaling"}]
    },
    "EndpointWorkers": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "min": {"type": "integer", "minimum": 0},
            "max": {"type": "integer", "minimum": 0},
            "idleTimeout": {"type": "integer", "minimum": 1, "maximum": 3600},
        },
    },
    "BaseEndpointGpuConfig": {
        "type": "object",
        "properties": {
            "pools": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "excludedTypes": {
                "type": "array",
                "uniqueItems": True,
                "items": {"type": "string", "pattern": r"^\s*[^-\s]"},
            },
            "count": {"type": "integer", "minimum": 1, "default": 1},
        },
    },
    "CreateEndpointGpuConfig": {
        "allOf": [
            {"$ref": "#/$defs/BaseEndpointGpuConfig"},
            {
                "type": "object",
                "required": ["pools"],
                "properties": {
                    "allowedCudaVersions": {"type": "array", "items": _CUDA},
                    "minCudaVersion": _CUDA,
                },
            },
        ],
        "unevaluatedProperties": False,
    },
    "UpdateEndpointGpuConfig": {
        "allOf": [
            {"$ref": "#/$defs/BaseEndpointGpuConfig"},
            {
                "type": "object",
                "dependentRequired": {"excludedTypes": ["pools"]},
                "properties": {
                    "allowedCudaVersions": {"type": "array", "items": _CUDA},
                    "minCudaVersion": {"type": "string", "pattern": r"^$|^\d+\.\d+$"},
                },
            },
        ],
        "unevaluatedProperties": False,
    },
    "CreateCpuConfig": {
        "type": "object",
        "required": ["id", "vcpuCount"],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "vcpuCount": {"type": "integer", "minimum": 2},
        },
        "unevaluatedProperties": False,
    },
    "PersistentMount": {
        "type": "object",
        "required": ["size", "path"],
        "additionalProperties": False,
        "properties": {"size": {"type": "integer", "minimum": 10}, "path": {"type": "string"}},
    },
    "TemplateMounts": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"persistent": {"$ref": "#/$defs/PersistentMount"}},
    },
    "TemplateCategory": {"type": "string", "enum": ["CPU", "NVIDIA", "AMD"]},
}

_CPU = {
    "type": "array",
    "minItems": 1,
    "uniqueItems": True,
    "items": {"$ref": "#/$defs/CreateCpuConfig"},
}
_STRINGS = {"type": "array", "items": {"type": "string"}}

CREATE_ENDPOINT: dict[str, Any] = {
    "allOf": [
        {"$ref": "#/$defs/ContainerConfig"},
        {"if": {"not": {"required": ["templateId"]}}, "then": {"required": ["image"]}},
        {
            "type": "object",
            "required": ["name", "type", "scaling"],
            "properties": {
                "gpu": {"$ref": "#/$defs/CreateEndpointGpuConfig"},
                "name": {"type": "string", "minLength": 1},
                "scaling": {"$ref": "#/$defs/EndpointScaling"},
                "type": {"$ref": "#/$defs/EndpointType"},
                "cpu": _CPU,
                "dataCenterIds": _STRINGS,
                "flashboot": {"$ref": "#/$defs/FlashBoot"},
                "networkVolumes": _STRINGS,
                "templateId": {"type": "string", "minLength": 1},
                "timeout": {"type": "integer"},
                "workers": {"$ref": "#/$defs/EndpointWorkers"},
            },
        },
    ],
    "unevaluatedProperties": False,
    "if": {"required": ["type"], "properties": {"type": {"const": "LOAD_BALANCER"}}},
    "then": {"properties": {"scaling": {"$ref": "#/$defs/RequestCountScaling"}}},
}

UPDATE_ENDPOINT: dict[str, Any] = {
    "allOf": [
        {"$ref": "#/$defs/ContainerConfig"},
        {
            "type": "object",
            "properties": {
                "cpu": _CPU,
                "dataCenterIds": _STRINGS,
                "flashboot": {"$ref": "#/$defs/FlashBoot"},
                "gpu": {"$ref": "#/$defs/UpdateEndpointGpuConfig"},
                "name": {"type": "string", "minLength": 1},
                "networkVolumes": _STRINGS,
                "scaling": {"$ref": "#/$defs/EndpointScaling"},
                "templateId": {"type": "string"},
                "timeout": {"type": "integer"},
                "workers": {"$ref": "#/$defs/EndpointWorkers"},
            },
        },
    ],
    "unevaluatedProperties": False,
}

_TEMPLATE_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1},
    "allowedCudaVersions": {"type": "array", "items": _CUDA},
    "category": {"$ref": "#/$defs/TemplateCategory"},
    "mounts": {"$ref": "#/$defs/TemplateMounts"},
    "public": {"type": "boolean"},
    "serverless": {"type": "boolean"},
    "startJupyter": {"type": "boolean"},
    "startSsh": {"type": "boolean"},
}

CREATE_TEMPLATE: dict[str, Any] = {
    "allOf": [
        {"$ref": "#/$defs/ContainerConfig"},
        {"type": "object", "required": ["name", "image"], "properties": _TEMPLATE_PROPERTIES},
    ],
    "unevaluatedProperties": False,
}

UPDATE_TEMPLATE: dict[str, Any] = {
    "allOf": [
        {"$ref": "#/$defs/ContainerConfig"},
        {"type": "object", "properties": _TEMPLATE_PROPERTIES},
    ],
    "unevaluatedProperties": False,
}


def schema(body: dict[str, Any]) -> dict[str, Any]:
    """`body` as a standalone 2020-12 schema with the shared definitions."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": DEFS, **body}
