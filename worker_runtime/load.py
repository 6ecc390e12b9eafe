"""Load the artifact's pipeline, offline, straight onto the device, in the precision it will run in.

The artifact is already in the layout and precision the worker wants (diffusers folders,
safetensors), so loading is: read configs, build each module on the meta device (accelerate's
`low_cpu_mem_usage`), and hand it the memory-mapped tensors. On network storage (storage.py) the
weights were read into memory by readahead's parallel reads and the models are built from those
buffers instead (memload.py), because page faults on a network filesystem are slow. Nothing is
converted on the way unless the device cannot run the artifact's precision: CPUs run fp32, because
fp16 inference on a CPU is tens of times slower than fp32.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifact_format import manifest as mf
from worker_runtime import layerwise
from worker_runtime.readahead import Readahead

PRECISION_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


@dataclass(frozen=True)
class Loaded:
    pipe: Any
    device: str
    precision: str  # what the weights are in memory: fp16, bf16 or fp32
    default_size: tuple[int, int]  # (width, height) when neither the request nor the recipe says


def pick_device(torch: Any, requested: str | None) -> str:
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            from worker_runtime.errors import StartError

            raise StartError(f"WORKER_DEVICE={requested}: CUDA is not available in this process")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def precision_for(manifest: mf.Manifest, device: str) -> str:
    if device == "cpu":
        return "fp32"
    return manifest.precision if manifest.precision in PRECISION_NAMES else "fp32"


def load_pipeline(
    pipeline_class: Any,
    torch: Any,
    model_dir: Path,
    manifest: mf.Manifest,
    device: str,
    reader: Readahead | None = None,
) -> Loaded:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    precision = precision_for(manifest, device)
    dtype = getattr(torch, PRECISION_NAMES[precision])
    if device == "cpu":
        # Flush denormals to zero: x86 handles subnormal floats in microcode, up to ~100x slower,
        # and deep fp32 networks produce them (measured: 1-step 64 px SD 1.5 on this box, 15-30 s
        # with them, 4-5 s without). Inference results do not depend on values below 1e-38.
        torch.set_flush_denormal(True)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "local_files_only": True,
        "use_safetensors": True,
        "low_cpu_mem_usage": True,
    }
    params = inspect.signature(pipeline_class.__init__).parameters
    if "safety_checker" in manifest.dropped and "safety_checker" in params:
        kwargs["safety_checker"] = None
        if "feature_extractor" in params:
            kwargs["feature_extractor"] = None
        if "requires_safety_checker" in params:
            kwargs["requires_safety_checker"] = False
    models, stored = _models_in_memory(torch, model_dir, reader, dtype, device, manifest)
    if models:
        kwargs.update(models)
    elif device == "cuda":
        # Each tensor goes from the mapped file to the GPU once, never through a CPU copy.
        # (diffusers takes a bare device name here; "cuda:N" is moved after loading.)
        kwargs["device_map"] = device
    kwargs.update(layerwise.load_kwargs(manifest, model_dir, torch, device, dtype, stored))
    pipe = pipeline_class.from_pretrained(str(model_dir), **kwargs)
    if device not in ("cpu", "cuda"):
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return Loaded(pipe, device, precision, default_size(pipe))


def _models_in_memory(
    torch: Any, model_dir: Path, reader: Readahead | None, dtype: Any, device: str, manifest: mf.Manifest
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the models built from the reader's in-memory files, the stored tensors of the layerwise-cast
    components), or ({}, {}) to load through memory maps."""
    if reader is None or not reader.keep:
        return {}, {}
    reader.join()
    if reader.error or not reader.buffers:
        return {}, {}  # from_pretrained reads the files itself and names what is wrong
    from worker_runtime import memload

    apart = layerwise.layerwise_components(manifest)
    try:
        stored = {name: memload.component_state(torch, model_dir, reader.buffers, name) for name in apart}
        return memload.load_models(torch, model_dir, reader.buffers, dtype, device, apart), stored
    finally:
        reader.buffers.clear()  # the tensors keep what they use


def default_size(pipe: Any) -> tuple[int, int]:
    """The size the model was trained at: its latent sample size times the VAE's scale factor."""
    scale = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    sample = getattr(pipe, "default_sample_size", None)
    if sample is None:
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    if not isinstance(sample, int) or sample <= 0:
        return (512, 512)
    return (sample * scale, sample * scale)


def warm_up(loaded: Loaded) -> None:
    """One short inference: CUDA kernels, allocator pools and lazily mapped pages, paid before jobs."""
    width, height = loaded.default_size
    loaded.pipe(prompt="warm-up", num_inference_steps=2, width=width, height=height, output_type="pil")
