"""Components stored in one dtype and run in another (schema-2 manifests): fp8 denoisers.

An fp8 artifact stores a denoiser's Linear and Conv layers in float8_e4m3fn and its norms and
embeddings in the compute dtype. Loading it through `from_pretrained(dtype=bf16)` would upcast every
tensor at load time and hold the bf16 bytes (about twice the fp8 ones) for good. Instead the
component is built on the meta device and handed the stored tensors as they are (`assign=True`: no
copy, no cast), then diffusers' layerwise casting upcasts each layer's weights to the compute dtype
just for its forward (`diffusers.hooks.apply_layerwise_casting`), skipping the modules the manifest
names, which are already stored in the compute dtype (or in fp32, where the class keeps them so).
On a CPU the compute dtype is float32.

Components whose compute dtype differs from the pipeline's (a recipe's `precision_overrides`) are
loaded in theirs through diffusers' per-component `dtype` mapping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from artifact_format import manifest as mf
from artifact_format.vocab import MODEL_INDEX


def layerwise_components(manifest: mf.Manifest) -> frozenset[str]:
    """The components stored in one dtype and run in another (built here, not by from_pretrained)."""
    return frozenset(name for name, precision in manifest.components.items() if precision.layerwise)


def load_kwargs(
    manifest: mf.Manifest,
    model_dir: Path,
    torch: Any,
    device: str,
    dtype: Any,
    states: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Extra `from_pretrained` keyword arguments for the components the manifest stores apart:
    each layerwise-cast component, already loaded, and a per-component `dtype` where needed.
    `states` holds the stored tensors of layerwise components already read into memory."""
    out: dict[str, Any] = {}
    by_component: dict[str, Any] = {}
    for name, precision in sorted(manifest.components.items()):
        if precision.layerwise:
            compute = dtype if device == "cpu" else getattr(torch, precision.compute)
            state = (states or {}).get(name)
            out[name] = load_layerwise(model_dir, name, precision, torch, device, compute, state)
        elif device != "cpu" and getattr(torch, precision.compute) != dtype:
            by_component[name] = getattr(torch, precision.compute)
    if by_component:
        out["dtype"] = {"default": dtype, **by_component}
    return out


def load_layerwise(
    model_dir: Path,
    component: str,
    precision: mf.ComponentPrecision,
    torch: Any,
    device: str,
    compute: Any,
    state: dict[str, Any] | None = None,
) -> Any:
    """The component with its stored tensors as they are, upcast layer by layer to `compute`;
    `state`: those tensors already in memory (else they are memory-mapped from the files)."""
    import diffusers
    from accelerate import init_empty_weights
    from diffusers.hooks.layerwise_casting import apply_layerwise_casting
    from safetensors.torch import load_file

    folder = model_dir / component
    _library, class_name = json.loads((model_dir / MODEL_INDEX).read_text())[component]
    cls = getattr(diffusers, class_name)
    with init_empty_weights():
        model = cls.from_config(cls.load_config(folder))
    if state is None:
        state = {}
        for path in sorted(folder.glob("*.safetensors")):
            state.update(load_file(path, device=device))
    elif device != "cpu":
        state = {name: tensor.to(device) for name, tensor in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    storage = getattr(torch, precision.storage)
    for tensor in [*model.parameters(), *model.buffers()]:
        # What is stored in fp32 is the class's keep-list (Wan's norms and time embedder): it stays
        # fp32 as `from_pretrained` keeps it. The rest (norms, embeddings) is stored in the compute
        # dtype of a GPU and widened on a CPU, which computes in fp32.
        if tensor.is_floating_point() and tensor.dtype not in (storage, compute, torch.float32):
            tensor.data = tensor.data.to(compute)
    # A tuple, even empty: None would make diffusers cast the whole model as one module.
    apply_layerwise_casting(
        model,
        storage_dtype=storage,
        compute_dtype=compute,
        skip_modules_pattern=tuple(precision.skip_modules),
        non_blocking=device != "cpu",
    )
    return model.eval()
