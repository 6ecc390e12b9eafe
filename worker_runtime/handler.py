"""The RunPod worker: load the artifact once at start, then answer jobs with images.

The runpod worker-template shape: the model is loaded at module level, `handler(job)` is small,
and `runpod.serverless.start` runs it. Loading, request checks and encoding live beside it.

Run:
    MODEL_DIR=build/artifacts/<name>/<id> python -m worker_runtime                   # on RunPod
    MODEL_DIR=... python -m worker_runtime --test_input '{"input": {"prompt": "a fox"}}'
    MODEL_DIR=... python -m worker_runtime --rp_serve_api --rp_api_port 8000        # local API
On a long-running pod the same image serves HTTP with the SDK's API server:
    python -m worker_runtime --rp_serve_api --rp_api_host 0.0.0.0 --rp_api_port 8000
and takes `POST /runsync {"input": {...}}` (the SDK's local API routes are POST-only, and a job
sent to `/run` runs when its `POST /status/<id>` is first asked for).

Environment: MODEL_DIR, ARTIFACT_URI, VOLUME_MOUNT, PULL_TIMEOUT_S, WORKER_CONFIG (see config.py),
WORKER_VERIFY_HASHES=0 to skip the sha256 check of every weight byte at start, WORKER_DEVICE to
force cpu/cuda, WORKER_LOADER=auto|parallel|mmap (storage.py), WORKER_SAVE_DIR to also write the
PNGs to a folder (local runs), BUCKET_* for `output: "s3"`,
WORKER_ERRORS=diffusers-api to answer docker-diffusers-api requests' failures as COMPLETED jobs
carrying `$error` (jobs.py).

Start order, for the cold start: check the artifact (stat only) → start reading the weights into
the page cache (or memory, on network storage) in threads that also hash them → import torch, the
pipeline class and runpod meanwhile → wait for the hashes → load → warm up if asked → one
`worker ready: ...` line on stderr with the timings.
"""

from __future__ import annotations

import sys
import time
from typing import Any, NoReturn

from artifact_format.vocab import short_id
from worker_runtime import artifact, clock, config, family, imports, jobs, load
from worker_runtime.errors import StartError

PROCESS_START = clock.process_start()


def _log(message: str) -> None:
    print(f"worker: {message}", file=sys.stderr, flush=True)


def _fail(message: str) -> NoReturn:
    _log(f"error: {message}")
    sys.exit(2)


try:
    SETTINGS = config.read_settings()
    ARTIFACT = artifact.locate(SETTINGS)
    READAHEAD = artifact.start_reading(ARTIFACT, SETTINGS)

    mark = time.perf_counter()
    imports.go_offline()
    torch = imports.import_torch()
    imports.start_cuda_init(torch, SETTINGS.device)
    pipeline_class = imports.import_pipeline_class(ARTIFACT.manifest.pipeline)
    runpod = imports.import_runpod()
    IMPORT_S = time.perf_counter() - mark

    mark = time.perf_counter()
    if READAHEAD is not None:
        READAHEAD.check()
    device = load.pick_device(torch, SETTINGS.device)
    try:
        LOADED = load.load_pipeline(pipeline_class, torch, ARTIFACT.dir, ARTIFACT.manifest, device, READAHEAD)
    except Exception as exc:
        raise StartError(artifact.explain_load_failure(ARTIFACT, exc)) from None
    LOAD_S = time.perf_counter() - mark

    CALL = family.describe(LOADED.pipe, SETTINGS.worker.defaults)

    mark = time.perf_counter()
    if SETTINGS.worker.warmup:
        load.warm_up(LOADED)
    WARMUP_S = time.perf_counter() - mark
except StartError as exc:
    _fail(str(exc))

READY_S = clock.since_start(PROCESS_START)
print(
    f"worker ready: import {IMPORT_S:.2f} s, load {LOAD_S:.2f} s, warmup {WARMUP_S:.2f} s, "
    f"total {READY_S:.2f} s ({ARTIFACT.manifest.name} {short_id(ARTIFACT.artifact_id)}, {LOADED.device} "
    f"{LOADED.precision}"
    + (f", pulled in {ARTIFACT.pulled_s:.1f} s" if ARTIFACT.pulled_s else "")
    + (f", readahead {READAHEAD.bytes_read / 1e6:.0f} MB" if READAHEAD else "")
    + ")",
    file=sys.stderr,
    flush=True,
)

SERVED = jobs.serve(LOADED, ARTIFACT.manifest, ARTIFACT.artifact_id, SETTINGS, CALL, torch, READY_S)


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """One job: check the input, generate, encode. Bad input fails the job, never the worker."""
    return jobs.answer(SERVED, job)


def main() -> None:
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
