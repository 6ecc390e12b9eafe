"""Send jobs to a worker and time them, the way docker-diffusers-api's `test.py` does.

Two transports speak the same job protocol (submit, then ask for the status until it is final):
- a deployed endpoint, through the runpod SDK's `Endpoint.run` and its client's `status/<job>`
  route (`RUNPOD_ENDPOINT_BASE_URL` moves it, as the SDK documents);
- `packager serve`'s local API, which the runpod SDK serves POST-only and without the
  `/v2/<endpoint id>` prefix, and which runs a job sent to `/run` when its status is first asked for.

The worker reports `$timings` in milliseconds: `inference` on every job, `init` (the worker's start)
only on its first, so a run that carries `init` is one that met a cold worker.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from packager.errors import DeployError, InvokeError
from packager.settings import CONNECT_TIMEOUT, network_timeout, stall_message

_T = TypeVar("_T")

# What RunPod reports for a job that will not change any more (the SDK's `is_completed`).
FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"})
# How often the status is asked for: RunPod's own clients poll about once a second.
POLL_INTERVAL_S = 1.0
# A status request may take at most this long (PACKAGER_TIMEOUT shortens it) before it counts as
# unanswered; the local API runs the job inside the first status request, so that one is bounded by
# the job's deadline instead.
REQUEST_TIMEOUT_S = 30.0
# A file's first bytes → the extension it is saved under.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF8", ".gif"),
    (b"RIFF", ".webp"),
    (b"\x1aE\xdf\xa3", ".webm"),
)


class Transport(Protocol):
    """Where jobs go: `submit` returns the job id, `status` the job as RunPod reports it."""

    where: str

    def submit(self, job_input: dict[str, Any]) -> str: ...

    def status(self, job_id: str, timeout_s: float) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Answer:
    """One job's outcome: its final status, output or error, and where its seconds went."""

    job_id: str
    status: str
    seconds: float
    output: Any = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def cold(self) -> bool:
        """The job met a worker that had just started: only a worker's first job reports `init`."""
        return "init" in self.timings

    def line(self) -> str:
        """docker-diffusers-api's line: `Request took 19.9s (inference: 4.8s, init: 3.1s)`."""
        parts = [
            f"{name}: {self.timings[name] / 1000:.1f}s"
            for name in ("inference", "init")
            if name in self.timings
        ]
        return f"Request took {self.seconds:.1f}s" + (f" ({', '.join(parts)})" if parts else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "timings_ms": self.timings,
            "cold": self.cold,
        }


class RemoteEndpoint:
    """A deployed endpoint, through the runpod SDK (its session, retries and bearer auth)."""

    def __init__(self, endpoint_id: str, api_key: str) -> None:
        import runpod

        self.endpoint_id = endpoint_id
        self.where = f"endpoint {endpoint_id}"
        self._endpoint = runpod.Endpoint(endpoint_id, api_key=api_key)
        self._timeout = network_timeout()

    def submit(self, job_input: dict[str, Any]) -> str:
        # The SDK's own client, as `Endpoint.run` uses it, with our time limits instead of its 10 s.
        path = f"{self.endpoint_id}/run"
        limits = (CONNECT_TIMEOUT, self._timeout)
        answer = self._call(lambda: self._endpoint.rp_client.post(path, {"input": job_input}, timeout=limits))
        job_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(job_id, str):
            raise InvokeError(f"{self.where} answered /run without a job id: {json.dumps(answer)[:200]}")
        return job_id

    def status(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        path = f"{self.endpoint_id}/status/{job_id}"
        limits = (CONNECT_TIMEOUT, max(1, math.ceil(min(timeout_s, REQUEST_TIMEOUT_S, self._timeout))))
        return self._call(lambda: dict(self._endpoint.rp_client.get(path, timeout=limits)))

    def _call(self, send: Callable[[], _T]) -> _T:
        import requests
        import runpod

        try:
            return send()
        except requests.Timeout as exc:
            where = str(runpod.endpoint_url_base).rstrip("/")
            connecting = isinstance(exc, requests.ConnectTimeout)
            raise InvokeError(
                f"{self.where}: {stall_message(where, self._timeout, connecting=connecting)}"
            ) from None
        except RuntimeError as exc:  # the SDK's answer to HTTP 401
            if "401" in str(exc):
                raise InvokeError(
                    "RUNPOD_API_KEY was rejected by the endpoint: check the key (Settings → API Keys)"
                ) from None
            raise
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            raise InvokeError(f"{self.where} answered HTTP {code}: {_body_line(exc.response)}") from None
        except requests.RequestException as exc:
            raise InvokeError(f"cannot reach {self.where}: {exc.__class__.__name__}") from None


class LocalServer:
    """`packager serve`'s API: POST `/run`, POST `/status/<job>` (which runs the job), no prefix."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.where = self.url
        self._timeout = network_timeout()

    def submit(self, job_input: dict[str, Any]) -> str:
        answer = self._post("/run", {"input": job_input}, None)
        job_id = answer.get("id")
        if not isinstance(job_id, str):
            raise InvokeError(f"{self.url}/run answered without a job id: {json.dumps(answer)[:200]}")
        return job_id

    def status(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        return self._post(f"/status/{job_id}", None, timeout_s)

    def _post(self, path: str, body: Any, timeout_s: float | None) -> dict[str, Any]:
        """POST to the local API; `timeout_s` None: an ordinary request, bounded like any other;
        otherwise a status request, which may run the job and counts as unanswered after it."""
        import requests

        read = self._timeout if timeout_s is None else max(1.0, timeout_s)
        try:
            resp = requests.post(self.url + path, json=body, timeout=(CONNECT_TIMEOUT, read))
        except requests.Timeout as exc:
            if timeout_s is None or isinstance(exc, requests.ConnectTimeout):
                connecting = isinstance(exc, requests.ConnectTimeout)
                raise InvokeError(
                    f"{self.url}{path}: {stall_message(self.url, read, connecting=connecting)}"
                ) from None
            return {"status": "IN_PROGRESS"}
        except requests.RequestException as exc:
            raise InvokeError(
                f"cannot reach {self.url}{path}: {exc.__class__.__name__} (is `packager serve` running?)"
            ) from None
        if resp.status_code != 200:
            raise InvokeError(f"{self.url}{path} answered HTTP {resp.status_code}: {_body_line(resp)}")
        try:
            answer = resp.json()
        except ValueError:
            raise InvokeError(f"{self.url}{path} answered something that is not JSON") from None
        if not isinstance(answer, dict):
            raise InvokeError(f"{self.url}{path} answered {type(answer).__name__}, not a JSON object")
        return answer


def endpoint_id_named(name: str, api_key: str) -> str:
    """The id of the endpoint `packager deploy` created under `name` (endpoints are found by name)."""
    from packager.deploy.runpod_api import ENDPOINTS, Call, RunPodREST
    from packager.settings import runpod_api_base_url

    listed = RunPodREST(api_key, runpod_api_base_url()).items(Call("GET", ENDPOINTS), "endpoints")
    found = [e for e in listed if e.get("name") == name]
    if not found:
        raise DeployError(
            f"no RunPod endpoint named {name!r}: run `packager deploy RECIPE`, or pass --endpoint-id"
        )
    if len(found) > 1:
        raise DeployError(f"{len(found)} RunPod endpoints are named {name!r}: pass --endpoint-id")
    return str(found[0]["id"])


def invoke(
    transport: Transport,
    job_input: dict[str, Any],
    *,
    timeout_s: float,
    poll_s: float = POLL_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Answer:
    """Submit one job and ask for its status until it is final or `timeout_s` has passed.

    Returns the final job (COMPLETED or not: the caller decides what a failure means). Raises
    InvokeError when the deadline passes, naming how long it waited and the last status seen.
    """
    started = clock()
    deadline = started + timeout_s
    job_id = transport.submit(job_input)
    last = "IN_QUEUE"
    while True:
        left = deadline - clock()
        if left <= 0:
            raise InvokeError(
                f"job {job_id} on {transport.where}: no answer after {clock() - started:.0f}s "
                f"(last status {last}); raise --timeout, or check the endpoint's workers"
            )
        job = transport.status(job_id, left)
        last = str(job.get("status") or last)
        if last in FINAL_STATUSES:
            return _answer(job_id, job, clock() - started)
        time.sleep(min(poll_s, max(0.0, deadline - clock())))


def _answer(job_id: str, job: dict[str, Any], seconds: float) -> Answer:
    output = job.get("output")
    status = str(job["status"])
    error = job.get("error")
    timings: dict[str, float] = {}
    if isinstance(output, dict):
        # docker-diffusers-api's clients read a failure from `$error` in a COMPLETED job.
        wrapped = output.get("$error")
        if wrapped is not None:
            status, error = "FAILED", _error_text(wrapped)
        raw = output.get("$timings")
        if isinstance(raw, dict):
            timings = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float))}
    if status != "COMPLETED" and error is None:
        error = f"the job ended {status}"
    return Answer(job_id, status, seconds, output, _error_text(error) if error is not None else None, timings)


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        text = f"{code}: {message}" if code and message else str(message or code or json.dumps(error))
    else:
        text = str(error)
    return " ".join(text.split())[:500]


def save_outputs(output: Any, folder: Path, stem: str) -> list[Path]:
    """Write every base64 file in the output (`image_base64`, `images_base64`, any `*_base64`).

    The extension comes from the file's own first bytes (PNG, JPEG, GIF, WebP, MP4, WebM), so a
    video answer is saved as a video. Each file is written to a temporary name and renamed.
    """
    if not isinstance(output, dict):
        return []
    blobs: list[bytes] = []
    for key in sorted(output):
        if not key.endswith("_base64"):
            continue
        values = output[key] if isinstance(output[key], list) else [output[key]]
        for value in values:
            try:
                blobs.append(base64.b64decode(str(value), validate=True))
            except (binascii.Error, ValueError):
                raise InvokeError(f"the answer's {key} is not base64") from None
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(blobs):
        name = f"{stem}{'' if len(blobs) == 1 else f'-{i}'}{_extension(data)}"
        target = folder / name
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
        paths.append(target)
    return paths


def _extension(data: bytes) -> str:
    if data[4:8] == b"ftyp":
        return ".mp4"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return ".bin"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile by linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(answers: Sequence[Answer]) -> dict[str, Any]:
    """p50/p95 of the request latency over the runs, and which runs (1-based) met a cold worker."""
    seconds = [a.seconds for a in answers]
    return {
        "runs": len(answers),
        "p50_s": round(percentile(seconds, 50), 3),
        "p95_s": round(percentile(seconds, 95), 3),
        "cold_runs": [i + 1 for i, a in enumerate(answers) if a.cold],
    }


def _body_line(resp: Any) -> str:
    text = getattr(resp, "text", "") or ""
    return " ".join(text.split())[:200] or "(empty body)"
