"""The imports the worker cannot avoid (torch, one diffusers pipeline class, runpod), made cheap.

Each function imports one thing and returns it, so handler.py can time them separately.

- Hub access is switched off before huggingface_hub, diffusers or transformers are imported
  (they read these variables once, at import): a worker must never wait on the network.
- On a GPU, CUDA's context is created on a thread while the Python imports run.
- Only the pipeline class the manifest names is imported (diffusers' lazy module then loads just
  that pipeline's modules), never `DiffusionPipeline`'s auto-resolution.
- runpod's debugger module asks py-cpuinfo for the CPU's brand name when it is imported, and
  py-cpuinfo answers by starting a second Python interpreter: about 1.3 s of every cold start
  (measured on runpod 1.12). The name is only shown in `--rp_debugger` output, so we answer it from
  /proc/cpuinfo for the duration of the import and put py-cpuinfo back afterwards.
- `torch._dynamo` (the torch.compile front end, over a second) is replaced by a stand-in that loads
  it on first real use (shims.py) before diffusers and transformers import it; transformers'
  distributed machinery (with sympy), peft, scipy's stats/integrate/optimize and diffusers' DiT
  package are kept out too (trim.py). WORKER_TRIM_IMPORTS=0 keeps the plain imports (to compare,
  or to rule the shims out).
"""

from __future__ import annotations

import os
import threading
from types import ModuleType
from typing import Any

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
}
# Worker logs are read by people after an incident: no progress bars, no advisories about optional
# packages. Set only when unset, so a debugging session can turn them back on.
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def go_offline() -> None:
    os.environ.update(OFFLINE_ENV)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


_OFF = {"0", "false", "no", "off"}


def trimming() -> bool:
    """WORKER_TRIM_IMPORTS (on unless 0/false/no/off)."""
    return os.environ.get("WORKER_TRIM_IMPORTS", "1").strip().lower() not in _OFF


def import_torch() -> ModuleType:
    import torch

    if trimming():
        from worker_runtime import shims

        shims.install_lazy_dynamo()
    return torch


def start_cuda_init(torch: Any, device: str | None) -> threading.Thread | None:
    """Create the CUDA context on a thread while the main thread goes on importing diffusers.

    Context creation is driver work that runs without the GIL (hundreds of ms to seconds on a
    fresh GPU), so it overlaps with the imports instead of delaying the first `.to("cuda")`.
    torch serialises its lazy init with a lock: the loader simply waits if it gets there first.
    """
    if device == "cpu" or not torch.cuda.is_available():
        return None
    thread = threading.Thread(target=torch.cuda.init, name="cuda-init", daemon=True)
    thread.start()
    return thread


def import_pipeline_class(name: str) -> Any:
    """The diffusers pipeline class called `name` (the manifest's `pipeline`)."""
    if trimming():
        from worker_runtime import trim

        trim.hide_peft()
        trim.hide_distributed()
        trim.defer_scipy_stats()
        trim.detection_losses_without_scipy()
        trim.defer_diffusers_transformers()
    import diffusers

    cls = getattr(diffusers, name, None) if name.isidentifier() else None
    if cls is None or not isinstance(cls, type) or not hasattr(cls, "from_pretrained"):
        from worker_runtime.errors import StartError

        raise StartError(
            f"manifest pipeline {name!r} is not a pipeline class of diffusers {diffusers.__version__}"
        )
    return cls


def import_runpod() -> ModuleType:
    try:
        import cpuinfo
    except ImportError:
        cpuinfo = None
    original = getattr(cpuinfo, "get_cpu_info", None)
    if cpuinfo is not None:
        cpuinfo.get_cpu_info = _cpu_brand
    try:
        import runpod
        import runpod.serverless
    finally:
        if cpuinfo is not None:
            cpuinfo.get_cpu_info = original
    module: ModuleType = runpod
    return module


def _cpu_brand() -> dict[str, str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return {"brand_raw": line.split(":", 1)[1].strip()}
    except OSError:
        pass
    return {"brand_raw": "unknown"}
