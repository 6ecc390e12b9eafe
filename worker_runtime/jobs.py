"""One job in, one answer out: check the input, generate, encode; every failure one line.

`answer` is what `handler.handler` runs for each job, given everything the worker loaded at start
(`Served`). It never raises: the runpod SDK turns an exception escaping a handler into an answer
carrying the Python traceback, the host name and server paths, so each failure here becomes one
line instead. Which shape a failure takes is `WORKER_ERRORS`' choice (config.py): RunPod's
FAILED job (`{"error": "..."}`, the default) or, for docker-diffusers-api clients, a COMPLETED
job whose output is `{"$error": {"code", "message"}}` (their `test.py` reads failures there).
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifact_format import manifest as mf
from worker_runtime import encode, generate, requests, tasks
from worker_runtime.config import Settings
from worker_runtime.errors import RequestError
from worker_runtime.family import CallSpec
from worker_runtime.load import Loaded

# docker-diffusers-api's codes for a refused request and a failed inference.
INVALID_INPUTS = "INVALID_INPUTS"
INFERENCE_ERROR = "APP_INFERENCE_ERROR"
UPLOAD_ERROR = "APP_UPLOAD_ERROR"
# A failure's message is cut to this, after its first line: exceptions from deep inside a library
# can carry whole tensors or configs in their text.
MAX_MESSAGE_CHARS = 300
# Absolute paths in an exception's text say where the server keeps its files: shown by name only.
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][\w.@+~-]+)+[/\\]([\w.@+~-]+)")


@dataclass
class Served:
    """What the worker loaded at start and every job uses."""

    loaded: Loaded
    serving: requests.Serving
    schedulers: generate.Schedulers
    variants: tasks.Variants
    torch: Any
    meta: dict[str, Any]
    ready_s: float  # process start → ready, reported as `init` on the first job
    errors: str = "runpod"  # WORKER_ERRORS: "runpod" or "diffusers-api"
    bucket_name: str | None = None
    save_dir: Path | None = None
    first_job: bool = field(default=True)


def serve(
    loaded: Loaded,
    manifest: mf.Manifest,
    artifact_id: str,
    settings: Settings,
    call: CallSpec,
    torch: Any,
    ready_s: float,
) -> Served:
    """Everything a job needs, from what the worker loaded and read at start."""
    schedulers = generate.Schedulers(loaded.pipe)
    variants = tasks.Variants(loaded.pipe, call)
    serving = requests.Serving(
        call=call,
        limits=settings.worker.limits,
        default_size=loaded.default_size,
        pipeline=manifest.pipeline,
        model_ids=frozenset({manifest.name} | {v for k, v in manifest.source.items() if k == "repo" and v}),
        precision=manifest.precision,
        has_safety_checker=getattr(loaded.pipe, "safety_checker", None) is not None,
        can_upload=settings.bucket_configured,
        schedulers=schedulers.names,
        variants=variants.spec,
    )
    meta = {
        "model": manifest.name,
        "artifact_id": artifact_id,
        "pipeline": manifest.pipeline,
        "precision": loaded.precision,
        "device": loaded.device,
    }
    return Served(
        loaded,
        serving,
        schedulers,
        variants,
        torch,
        meta,
        ready_s,
        errors=settings.errors,
        bucket_name=settings.bucket_name,
        save_dir=settings.save_dir,
    )


def one_line(text: str) -> str:
    """The first line of `text`, absolute paths reduced to their last part, cut to a bound."""
    lines = text.strip().splitlines()
    first = _PATH.sub(r"\1", lines[0] if lines else "")
    return first if len(first) <= MAX_MESSAGE_CHARS else first[: MAX_MESSAGE_CHARS - 3] + "..."


def answer(served: Served, job: Any) -> dict[str, Any]:
    """The job's output, or its failure in the shape WORKER_ERRORS asks for. Never raises."""
    raw = job.get("input") if isinstance(job, dict) else None
    diffusers_api = isinstance(raw, dict) and ("modelInputs" in raw or "callInputs" in raw)
    try:
        return _run(served, job, raw)
    except RequestError as exc:
        return _failure(served, diffusers_api, INVALID_INPUTS, one_line(str(exc)))
    except generate.OutOfMemory as exc:
        failed = _failure(served, diffusers_api, INFERENCE_ERROR, one_line(str(exc)))
        return {**failed, "refresh_worker": True}
    except encode.UploadFailed as exc:
        message = f"output: upload to S3 failed: {one_line(str(exc))}"
        return _failure(served, diffusers_api, UPLOAD_ERROR, message)
    except Exception as exc:
        traceback.print_exc()  # the worker's log keeps the whole story; the client gets one line
        message = f"inference failed: {type(exc).__name__}: {one_line(str(exc))}"
        return _failure(served, diffusers_api, INFERENCE_ERROR, message)


def _failure(served: Served, diffusers_api: bool, code: str, message: str) -> dict[str, Any]:
    if diffusers_api and served.errors == "diffusers-api":
        return {"$error": {"code": code, "message": message}}
    return {"error": message}


def _run(served: Served, job: dict[str, Any], raw: Any) -> dict[str, Any]:
    gen = requests.parse(raw, served.serving)
    call = served.variants.spec(gen.task) or served.serving.call
    pipe = served.variants.pipe(gen.task)
    result = generate.run(served.loaded, gen, served.schedulers, served.torch, call, pipe)
    pngs = [encode.png_bytes(image) for image in result.images]
    mp4s = [encode.mp4_bytes(frames, result.fps or 1) for frames in result.videos or ()]
    job_id = str(job.get("id") or "job")
    if gen.output == "s3":
        out = encode.upload(pngs, job_id, served.bucket_name, mp4s)
    else:
        out = encode.as_base64(pngs, mp4s)
    timings = {"inference": round(result.inference_ms, 1)}
    if served.first_job:
        timings["init"] = round(served.ready_s * 1000, 1)
        served.first_job = False
    out["seed"] = result.seed
    if result.videos is not None:
        out["num_frames"], out["fps"] = len(result.videos[0]), result.fps
    if result.nsfw is not None:
        out["nsfw_content_detected"] = result.nsfw
    out["$timings"] = timings
    out["$meta"] = {**served.meta, "pipeline": type(pipe).__name__, "scheduler": result.scheduler}
    if gen.request_id is not None:
        out["$meta"]["startRequestId"] = gen.request_id
    if served.save_dir is not None:
        encode.save(pngs, out, served.save_dir, job_id, mp4s)
    return out
