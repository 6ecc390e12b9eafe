"""Read checkpoint tensors lazily and safely: safetensors, zip `.bin`, legacy pickles, shard sets.

Every tensor handed out is backed by the source file's memory map wherever the format allows it
(safetensors, zip `.bin`), so "opening" a 3 GB checkpoint costs a header parse, and the bytes are
only read when the converter casts them. Only legacy (pre-zip) pickles are loaded whole: their
storages are not laid out for mapping.

Security: a pickle can run any code it names, so nothing here unpickles beyond
`torch.load(weights_only=True)`; a checkpoint that needs anything else is refused, with the global
it asked for, instead of being loaded.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.errors import ConvertError

if TYPE_CHECKING:
    import torch

SAFETENSORS_SUFFIX = ".safetensors"
# What torch's weights-only unpickler names when it refuses a global, e.g.
# "Unsupported global: GLOBAL posix.system was not an allowed global by default".
_REFUSED_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


@dataclass
class TensorSet:
    """Named tensors from one or more files, and which file each came from (for error messages)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)

    def add(self, name: str, tensor: torch.Tensor, origin: str) -> None:
        if name in self.tensors:
            raise ConvertError(f"{origin}: tensor {name!r} is also in {self.origin[name]} (shards overlap)")
        self.tensors[name] = tensor
        self.origin[name] = origin

    def on_close(self, callback: Callable[[], object]) -> None:
        """Run `callback` when the set is closed (e.g. close the file its tensors are views of)."""
        self._stack.callback(callback)

    def close(self) -> None:
        self.tensors.clear()
        self._stack.close()

    def __enter__(self) -> TensorSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tensors(paths: list[Path], labels: Mapping[Path, str] | None = None) -> TensorSet:
    """All tensors of `paths` (one file or the shards of one checkpoint) in one lazily-read set."""
    labels = labels or {}
    out = TensorSet()
    try:
        for path in paths:
            label = labels.get(path, str(path))
            if path.name.endswith(SAFETENSORS_SUFFIX):
                _add_safetensors(out, path, label)
            else:
                for name, tensor in _flatten_state_dict(load_pickle(path, label), label):
                    out.add(name, tensor, label)
    except BaseException:
        out.close()
        raise
    return out


def read_shard_index(path: Path, label: str) -> dict[str, str]:
    """`weight_map` of a `*.index.json`: tensor name → shard file name (in the same folder)."""
    try:
        data = json.loads(path.read_bytes())
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConvertError(f"{label}: not a shard index ({exc})") from None
    for shard in weight_map.values():
        if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            raise ConvertError(f"{label}: shard index names an unsafe file {shard!r}")
    return {str(k): v for k, v in weight_map.items()}


def _add_safetensors(out: TensorSet, path: Path, label: str) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        handle = out._stack.enter_context(safe_open(str(path), framework="pt"))
        names = handle.keys()
        for name in names:
            # get_tensor maps the file: no bytes are read until the tensor is used.
            out.add(name, handle.get_tensor(name), label)
    except (SafetensorError, OSError) as exc:
        raise ConvertError(f"{label}: not a readable safetensors file ({exc})") from None


def load_pickle(path: Path, label: str) -> Any:
    """`torch.load(weights_only=True)`, memory-mapped for zip checkpoints; refuses anything else.

    Raises ConvertError naming the global the pickle asked for when it needs more than tensors and
    plain containers: such a file could run code, so it is never loaded.
    """
    import torch

    is_zip = zipfile.is_zipfile(path)
    try:
        # mmap needs the zip format (torch >= 1.6 default); legacy pickles are read whole.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        raise ConvertError(
            f"{label}: refused to unpickle: {_refusal(str(exc))}; only tensors and plain containers may be "
            "loaded (weights-only), so re-save it as safetensors with a tool you trust"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"{label}: not a readable PyTorch checkpoint ({first})") from None


def _refusal(message: str) -> str:
    """The reason in torch's long weights-only error, in a few words."""
    found = _REFUSED_GLOBAL_RE.search(message)
    if found:
        return f"it needs {found.group(1)}"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("WeightsUnpickler error:"):
            detail = line.removeprefix("WeightsUnpickler error:").strip() or (
                lines[i + 1] if i + 1 < len(lines) else ""
            )
            return f"it is not a plain tensor pickle ({detail})"
    return "it is not a plain tensor pickle"


def _flatten_state_dict(obj: Any, label: str) -> Iterator[tuple[str, torch.Tensor]]:
    import torch

    if not isinstance(obj, Mapping):
        raise ConvertError(f"{label}: holds a {type(obj).__name__}, not a state dict of tensors")
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ConvertError(f"{label}: entry {name!r} is a {type(value).__name__}, not a tensor")
        yield str(name), value


def load_checkpoint_state(path: Path, label: str) -> TensorSet:
    """A single-file checkpoint's tensors, unwrapped from `state_dict` nesting, non-tensors skipped.

    Original-layout `.ckpt` files carry training leftovers (`global_step`, `epoch`) next to the
    weights; those are plain values that weights-only loading accepts and we ignore.
    """
    import torch

    if path.name.endswith(SAFETENSORS_SUFFIX):
        return open_tensors([path], {path: label})
    obj = load_pickle(path, label)
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{label}: holds a {type(obj).__name__}, not a state dict of tensors")
    out = TensorSet()
    for name, value in obj.items():
        if isinstance(value, torch.Tensor):
            out.add(str(name), value, label)
    if not out.tensors:
        raise ConvertError(f"{label}: no tensors found in the checkpoint")
    return out
