"""RunPod's REST API v2 (`https://api.runpod.io/v2`): serverless endpoints and templates.

Plain `requests` with bearer auth: the runpod SDK (1.12) speaks only GraphQL for these resources and
costs about 2 s to import. Every request is a `Call` value first, so `deploy --dry-run` prints exactly
what deploy would put on the wire. Every failure becomes one DeployError line: RunPod answers errors
as RFC 9457 problems (`title`, `status`, `detail`, `errors`), but a key can also be refused by
something in front of the API (a 403 HTML page) or be one the API does not know (200 with nulls).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from packager.errors import DeployError
from packager.settings import CONNECT_TIMEOUT, network_timeout, stall_message

Method = Literal["GET", "POST", "PATCH"]
ENDPOINTS = "/v2/serverless"
TEMPLATES = "/v2/templates"
_REJECTED = "RUNPOD_API_KEY was rejected by the RunPod API (401): check the key (Settings → API Keys)"


@dataclass(frozen=True)
class Call:
    """One HTTP request to the API, before it is sent."""

    method: Method
    path: str
    body: dict[str, Any] | None = None

    def to_json(self, base_url: str) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "url": base_url + self.path}
        out["headers"] = {"Authorization": "Bearer $RUNPOD_API_KEY"}
        if self.body is not None:
            out["headers"]["Content-Type"] = "application/json"
            out["body"] = self.body
        return out

    def render(self, base_url: str) -> str:
        """The request as an HTTP message (the key shown as a reference)."""
        lines = [f"{self.method} {base_url}{self.path}", "Authorization: Bearer $RUNPOD_API_KEY"]
        if self.body is not None:
            lines += ["Content-Type: application/json", "", json.dumps(self.body, indent=2)]
        return "\n".join(lines)


class RunPodREST:
    """A session against one base URL with one key; every failure is one DeployError line.

    Each request has CONNECT_TIMEOUT seconds to connect and `timeout` (PACKAGER_TIMEOUT, else 60)
    without an answer: a create or update is answered within seconds, so a proxy holding the
    connection longer is broken."""

    def __init__(self, api_key: str, base_url: str, timeout: float | None = None) -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        self.timeout = network_timeout() if timeout is None else timeout
        self._session = requests.Session()
        self._session.headers.update({"Authorization": f"Bearer {api_key}", "Accept": "application/json"})

    def items(self, call: Call, key: str) -> list[dict[str, Any]]:
        """A list read (`{"endpoints": [...]}`): the array under `key`."""
        status, data = self._exchange(call)
        if status == 404:
            raise DeployError(f"RunPod API: {call.method} {call.path}: {_problem(status, data)}")
        found = data.get(key) if isinstance(data, dict) else None
        if not isinstance(found, list):
            raise DeployError(_no_identity(call, key))
        return [x for x in found if isinstance(x, dict)]

    def one(self, call: Call, *, missing_ok: bool = False) -> dict[str, Any] | None:
        """A single-object answer (GET by id, POST, PATCH): it must carry an `id`. None for a 404
        when `missing_ok` (an endpoint deleted since its id was stored)."""
        status, data = self._exchange(call)
        if status == 404:
            if missing_ok:
                return None
            raise DeployError(f"RunPod API: {call.method} {call.path}: {_problem(status, data)}")
        if not isinstance(data, dict) or not data.get("id"):
            raise DeployError(_no_identity(call, "id"))
        return data

    def graphql(self, call: Call, what: str) -> dict[str, Any]:
        """A GraphQL answer's `data`; its `errors` (RunPod answers them with 200) as one line."""
        status, data = self._exchange(call)
        if status == 404 or not isinstance(data, dict):
            raise DeployError(f"RunPod API: GraphQL {what}: no GraphQL API at {self.base_url}{call.path}")
        errors = data.get("errors")
        if errors:
            first = errors[0] if isinstance(errors, list) and errors else errors
            message = first.get("message") if isinstance(first, dict) else first
            raise DeployError(f"RunPod API: GraphQL {what}: {_one_line(str(message))}")
        found = data.get("data")
        if not isinstance(found, dict):
            raise DeployError(_no_identity(call, "data"))
        return found

    def _exchange(self, call: Call) -> tuple[int, Any]:
        """(status, decoded JSON) of a 2xx or 404; every other answer is one DeployError line."""
        import requests

        url = self.base_url + call.path
        try:
            answer = self._session.request(
                call.method, url, json=call.body, timeout=(CONNECT_TIMEOUT, self.timeout)
            )
        except requests.Timeout as exc:
            connecting = isinstance(exc, requests.ConnectTimeout)
            stalled = stall_message(self.base_url, self.timeout, connecting=connecting)
            raise DeployError(f"RunPod API: {stalled}") from None
        except requests.RequestException as exc:
            raise DeployError(f"cannot reach the RunPod API at {url}: {exc.__class__.__name__}") from None
        what = f"{call.method} {call.path}"
        kind = answer.headers.get("Content-Type", "")
        if "html" in kind or answer.text.lstrip()[:1] == "<":
            raise DeployError(_html_refusal(answer.status_code, what, url))
        if answer.status_code == 401:
            raise DeployError(_REJECTED)
        try:
            data = answer.json() if answer.content else None
        except ValueError:
            raise DeployError(
                f"RunPod API: {what} answered {answer.status_code} with something that is not JSON "
                "(is RUNPOD_API_BASE_URL right?)"
            ) from None
        if answer.status_code >= 400 and answer.status_code != 404:
            raise DeployError(f"RunPod API: {what}: {_problem(answer.status_code, data)}")
        return answer.status_code, data


def _no_identity(call: Call, key: str) -> str:
    return (
        f"RunPod API: {call.method} {call.path} answered without `{key}`: RunPod does not know this "
        "RUNPOD_API_KEY's account (is it a user API key with read/write access?)"
    )


def _html_refusal(status: int, what: str, url: str) -> str:
    if status in (401, 403):
        return (
            f"RunPod API: {what} was refused ({status}) by an HTML page, not by the API: a proxy or "
            f"firewall in front of {url.split('/v2/', 1)[0]} blocks it, or the key lacks access"
        )
    return f"RunPod API: {what} answered {status} with an HTML page (is RUNPOD_API_BASE_URL right?)"


def _problem(status: int, data: Any) -> str:
    """An RFC 9457 problem as one line: status, title, detail, then the validation errors."""
    if not isinstance(data, dict):
        return f"{status}"
    head = f"{status} {data.get('title') or ''}".strip()
    detail = str(data.get("detail") or data.get("message") or "")
    errors = [str(e) for e in data.get("errors") or [] if e]
    text = "; ".join(part for part in (detail, *errors) if part)
    return _one_line(f"{head}: {text}" if text else head)


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= 400 else line[:397] + "..."
