"""A local stand-in for RunPod's serverless job API (`https://api.runpod.ai/v2/<endpoint id>/...`).

The routes the runpod SDK's `Endpoint` uses: `POST /run` (queue a job: `{"id", "status": "IN_QUEUE"}`),
`GET /status/<job>` and `POST /runsync` (wait for it). A job runs on a thread through the test's
`handler(input) -> output`; as on RunPod, an output holding `error` makes the job FAILED with that
error, and a handler that raises fails it too. Jobs pass IN_QUEUE → IN_PROGRESS → final, and
`run_s` keeps a job IN_PROGRESS that long so deadlines can be tested. Auth is RunPod's
`Authorization: Bearer <key>` (HTTP 401 otherwise); an endpoint id it does not know is HTTP 404.
Its URL plus `/v2` goes in RUNPOD_ENDPOINT_BASE_URL.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.rig.http_server import LoopbackServer, handler_calling

_ROUTE = re.compile(r"^/v2/(?P<endpoint>[^/]+)/(?P<action>run|runsync|status)(?:/(?P<job>[^/]+))?$")
Handler = Callable[[Any], Any]


@dataclass
class ServerlessStandIn(LoopbackServer):
    handler: Handler
    endpoints: Container[str]
    api_key: str = "rp_standin_key_0123456789"
    run_s: float = 0.0
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (method, path, Authorization header) of every request, in order.
    requests: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """What RUNPOD_ENDPOINT_BASE_URL is set to."""
        return f"{self.url}/v2"

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return handler_calling(self._handle, ("GET", "POST"))

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append((h.command, h.path, h.headers.get("Authorization", "")))
        status, answer = self._answer(h.command, h.path, h.headers.get("Authorization", ""), body)
        data = json.dumps(answer).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _answer(self, method: str, path: str, auth: str, body: bytes) -> tuple[int, Any]:
        if auth != f"Bearer {self.api_key}":
            return 401, {"error": "Unauthorized"}
        route = _ROUTE.match(path.split("?")[0])
        if route is None or route["endpoint"] not in self.endpoints:
            return 404, {"error": f"no route {path}"}
        action = route["action"]
        if action == "status":
            if method != "GET" or route["job"] is None:
                return 405, {"error": "GET /status/<job id>"}
            job = self.jobs.get(route["job"])
            return (200, self._view(job)) if job else (404, {"error": f"job {route['job']} not found"})
        if method != "POST" or route["job"] is not None:
            return 405, {"error": f"POST /{action}"}
        try:
            payload = json.loads(body or b"null")
            job_input = payload["input"]
        except (ValueError, KeyError, TypeError):
            return 400, {"error": "body must be JSON with an `input`"}
        job = self._queue(job_input)
        if action == "runsync":
            job["done"].wait()
            return 200, self._view(job)
        return 200, {"id": job["id"], "status": "IN_QUEUE"}

    def _queue(self, job_input: Any) -> dict[str, Any]:
        job: dict[str, Any] = {
            "id": f"job-{next(self._ids)}",
            "status": "IN_QUEUE",
            "input": job_input,
            "done": threading.Event(),
        }
        with self._lock:
            self.jobs[job["id"]] = job
        threading.Thread(target=self._work, args=(job,), daemon=True).start()
        return job

    def _work(self, job: dict[str, Any]) -> None:
        job["status"] = "IN_PROGRESS"
        started = time.monotonic()
        try:
            output = self.handler(job["input"])
        except Exception as exc:
            output = {"error": f"{type(exc).__name__}: {exc}"}
        time.sleep(max(0.0, self.run_s - (time.monotonic() - started)))
        job["executionTime"] = int((time.monotonic() - started) * 1000)
        if isinstance(output, dict) and "error" in output:
            job["error"], job["status"] = str(output["error"]), "FAILED"
        else:
            job["output"], job["status"] = output, "COMPLETED"
        job["done"].set()

    @staticmethod
    def _view(job: dict[str, Any]) -> dict[str, Any]:
        keys = ("id", "status", "output", "error", "executionTime")
        return {k: job[k] for k in keys if k in job} | {"delayTime": 1}
