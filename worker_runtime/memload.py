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
import re
from collections.abc import Callable, Mapping
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


def _fp32_rule(torch: Any, model: Any, library: str, dtype: Any) -> Callable[[str], bool]:
    """Which tensor names `from_pretrained` keeps in fp32 at `dtype`, by the library's own rules.

    transformers: the model's dtype plan (`_keep_in_fp32_modules` at fp16 only,
    `_keep_in_fp32_modules_strict` at fp16 and bf16; glob patterns searched in the name).
    diffusers: `_keep_in_fp32_modules` at any dtype, matched on whole dotted name parts.
    """
    if library == "transformers":
        plan_of = getattr(model, "_get_dtype_plan", None)
        plan = plan_of(dtype) if callable(plan_of) else {}
        globs = [re.compile(p.replace("*", ".*")) for p, d in plan.items() if d == torch.float32]
        return lambda name: any(g.search(name) for g in globs)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    parts = {keep} if isinstance(keep, str) else set(keep)
    return lambda name: not parts.isdisjoint(name.split("."))


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
    keep_fp32 = _fp32_rule(torch, model, library, dtype)
    made_by_model = model.state_dict()
    ready: dict[str, Any] = {}
    for name, tensor in state.items():
        if tensor.is_floating_point():
            made = made_by_model.get(name)
            target = dtype
            if keep_fp32(name):
                target = torch.float32
            elif library == "transformers" and made is not None and made.is_floating_point():
                target = made.dtype  # transformers: a tensor the model creates in its own dtype keeps it
            tensor = tensor.to(target)
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


def component_state(
    torch: Any, model_dir: Path, buffers: Mapping[Path, bytearray], name: str
) -> dict[str, Any]:
    """The tensors of component `name` as they are stored (views of the in-memory files)."""
    folder = model_dir / name
    state: dict[str, Any] = {}
    for path in sorted(p for p in buffers if p.parent == folder and p.suffix == ".safetensors"):
        state.update(tensors_from_buffer(torch, buffers[path], path))
    return state


def load_models(
    torch: Any,
    model_dir: Path,
    buffers: Mapping[Path, bytearray],
    dtype: Any,
    device: str,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """{component name: model} for every diffusers/transformers component whose weights are in memory,
    except those in `skip` (stored in another dtype than they run in: layerwise.py builds them)."""
    index = json.loads((model_dir / "model_index.json").read_text())
    models: dict[str, Any] = {}
    for name, spec in index.items():
        if name.startswith("_") or name in skip or not isinstance(spec, list) or len(spec) != 2:
            continue
        library, class_name = spec
        if library not in ("diffusers", "transformers") or not class_name:
            continue
        state = component_state(torch, model_dir, buffers, name)
        if state:
            models[name] = build_model(torch, library, class_name, model_dir / name, state, dtype, device)
    return models
