"""Run `python -m worker_runtime` the way a user does: as a process, through the runpod SDK's flags.

`start_worker` serves the SDK's local API (`--rp_serve_api`) on a free 127.0.0.1 port and waits
until it answers; `run_test_input` answers one job through `--test_input` and exits. The worker
takes seconds to import torch and diffusers, so tests share one started worker where they can.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0
# Variables from the developer's shell that would change what the worker does.
_SCRUB_PREFIXES = (
    "RUNPOD_",
    "BUCKET_",
    "WORKER_",
    "MODEL_DIR",
    "MODEL_REPO",
    "MODEL_COMMIT",
    "ARTIFACT_URI",
    "VOLUME_MOUNT",
    "PULL_TIMEOUT",
)


def worker_env(model_dir: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["RUNPOD_LOG_LEVEL"] = "INFO"
    if model_dir is not None:
        env["MODEL_DIR"] = str(model_dir)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body: Any, timeout: float = 120.0) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def runsync(self, job_input: Any, timeout: float = 120.0) -> dict[str, Any]:
        """POST /runsync and return the job as RunPod reports it ({id, status, output|error})."""
        status, body = self.post("/runsync", {"input": job_input}, timeout)
        assert status == 200, f"/runsync answered HTTP {status}: {body}"
        return dict(body)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def packager_serve(
    recipe: Path, env: dict[str, str], log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`packager serve RECIPE` on a free port, its output in `log`: yields (process, URL), stops it after."""
    port = free_port()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "packager", "serve", str(recipe), "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def start_worker(model_dir: Path | None, log_dir: Path, **env: str) -> Worker:
    """Start the worker's local API and return once it answers; raise with its log if it dies."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{port}.log"
    cmd = [sys.executable, "-m", "worker_runtime", "--rp_serve_api", "--rp_api_host", "127.0.0.1"]
    cmd += ["--rp_api_port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=log_dir, env=worker_env(model_dir, **env), stdout=log, stderr=subprocess.STDOUT
        )
    worker = Worker(proc, port, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"worker exited with {proc.returncode} before serving:\n{worker.log()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(worker.url + "/openapi.json", timeout=2) as resp:
                if resp.status == 200:
                    return worker
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    worker.stop()
    raise RuntimeError(f"worker did not serve within {START_TIMEOUT_S:.0f}s:\n{worker.log()[-3000:]}")


def run_test_input(
    model_dir: Path | None, job: Any, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m worker_runtime --test_input JSON`: one job, then exit (stdout and stderr kept)."""
    cwd.mkdir(parents=True, exist_ok=True)
    arg = job if isinstance(job, str) else json.dumps(job)
    return subprocess.run(
        [sys.executable, "-m", "worker_runtime", "--test_input", arg],
        cwd=cwd,
        env=worker_env(model_dir, **env),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )


def decode_png(data: str) -> Any:
    """A base64 PNG from the worker as a PIL image (checks it really is a PNG)."""
    from PIL import Image

    raw = base64.b64decode(data, validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def draw(pipe: Any, prompt: str, seed: int) -> Any:
    """What a tiny pipeline draws in 2 steps at 64x64 from a seeded CPU generator, as numpy images."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        prompt, num_inference_steps=2, height=64, width=64, generator=generator, output_type="np"
    ).images
