"""Build the pipeline's models from weight files already read into memory (network storage).

readahead.py `keep` reads every weight file into a buffer with large parallel reads; here each
safetensors file becomes tensors that are views of its buffer (no copy: the header gives each
tensor's dtype, shape and byte range), every model is built with its parameters on the meta device
(accelerate's `init_empty_weights`, buffers computed as usual) and filled with
`load_state_dict(assign=True)`. What `from_pretrained` would do on the way is done here too:
floating tensors cast to the load dtype except those of the class's `_keep_in_fp32_modules`,
transformers' tied weights re-tied, the models moved to the device (pinned memory and
asynchronous copies on CUDA), `eval()`. The pipeline is then assembled by the pipeline class's
`from_pretrained` with these models passed in, so tokenizers, schedulers and configs load as usual.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker_runtime.errors import StartError

ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def tensors_from_buffer(torch: Any, buf: bytearray, where: Path) -> dict[str, Any]:
    """The tensors of one safetensors file held in `buf`, as views of it where alignment allows."""
    if len(buf) < 8:
        raise StartError(f"{where}: not a safetensors file (shorter than its header length)")
    length = int.from_bytes(buf[:8], "little")
    try:
        header = json.loads(bytes(buf[8 : 8 + length]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StartError(f"{where}: not a safetensors file (header is not JSON)") from None
    base = 8 + length
    out: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = getattr(torch, ST_DTYPES[info["dtype"]])
        start, end = (base + int(x) for x in info["data_offsets"])
        if end > len(buf) or start > end:
            raise StartError(f"{where}: tensor {name} lies outside the file")
        item = torch.empty((), dtype=dtype).element_size()
        if end == start:
            tensor = torch.empty(0, dtype=dtype)
        elif start % item:
            # Unaligned for its dtype (an odd-sized tensor before it): one copy of this tensor.
            tensor = torch.frombuffer(bytearray(buf[start:end]), dtype=dtype)
        else:
            tensor = torch.frombuffer(buf, dtype=dtype, count=(end - start) // item, offset=start)
        out[name] = tensor.reshape(info["shape"])
    return out


def _no_init_weights() -> Any:
    """transformers' own switch for skipping weight initialisation (what from_pretrained uses)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


def _keep_fp32(model: Any, name: str) -> bool:
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    if isinstance(keep, str):
        keep = [keep]
    return any(part in name for part in keep)


def build_model(
    torch: Any, library: str, class_name: str, folder: Path, state: dict[str, Any], dtype: Any, device: str
) -> Any:
    """One model of `library.class_name` configured from `folder` and filled with `state`."""
    from accelerate import init_empty_weights

    cls = getattr(importlib.import_module(library), class_name)
    with init_empty_weights(include_buffers=False):
        if library == "transformers":
            config = cls.config_class.from_pretrained(folder, local_files_only=True)
            with _no_init_weights():  # random init of weights about to be replaced: seconds wasted
                model = cls._from_config(config, dtype=dtype)
        else:
            model = cls.from_config(cls.load_config(folder, local_files_only=True))
    pin = device.startswith("cuda")
    ready: dict[str, Any] = {}
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.dtype != dtype and not _keep_fp32(model, name):
            tensor = tensor.to(dtype)
        elif tensor.is_floating_point() and _keep_fp32(model, name):
            tensor = tensor.to(torch.float32)
        if pin:
            tensor = tensor.pin_memory().to(device, non_blocking=True)
        ready[name] = tensor
    result = model.load_state_dict(ready, strict=False, assign=True)
    if result.unexpected_keys:
        raise StartError(f"{folder}: weights not in {class_name}: {', '.join(result.unexpected_keys[:5])}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    # Buffers computed at construction (non-persistent ones such as position ids) follow the weights.
    model.to(device)
    empty = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if empty:
        raise StartError(f"{folder}: no weights for {class_name} parameters {', '.join(empty[:5])}")
    if library == "transformers":
        model.config.dtype = dtype
    if pin:
        torch.cuda.synchronize()
    return model.eval()


def load_models(
    torch: Any, model_dir: Path, buffers: Mapping[Path, bytearray], dtype: Any, device: str
) -> dict[str, Any]:
    """{component name: model} for every diffusers/transformers component whose weights are in memory."""
    index = json.loads((model_dir / "model_index.json").read_text())
    models: dict[str, Any] = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2:
            continue
        library, class_name = spec
        if library not in ("diffusers", "transformers") or not class_name:
            continue
        folder = model_dir / name
        files = sorted(p for p in buffers if p.parent == folder and p.suffix == ".safetensors")
        if not files:
            continue
        state: dict[str, Any] = {}
        for path in files:
            state.update(tensors_from_buffer(torch, buffers[path], path))
        models[name] = build_model(torch, library, class_name, folder, state, dtype, device)
    return models
