"""Which source files become which output weight file: weights grouped by component folder, the
format and variant picked, tensors that alias each other stored once where the class ties them."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from artifact_format.vocab import (
    DIFFUSERS_WEIGHTS,
    INDEX_RE,
    TRANSFORMERS_WEIGHTS,
    WEIGHTS_RE,
)
from packager.convert.tensor_reader import TensorSet, read_shard_index
from packager.errors import ConvertError

_OUT_NAME = {
    "diffusion_pytorch_model": DIFFUSERS_WEIGHTS,
    "pytorch_model": TRANSFORMERS_WEIGHTS,
    "model": TRANSFORMERS_WEIGHTS,
}


# Weight formats we never copy into an artifact: anything else with these suffixes is a mistake
# upstream (a root checkpoint, an ONNX export) and would bloat the image by gigabytes.
_FOREIGN_WEIGHTS = (
    ".ckpt",
    ".pt",
    ".pth",
    ".bin",
    ".safetensors",
    ".onnx",
    ".onnx_data",
    ".msgpack",
    ".h5",
    ".pb",
    ".gguf",
    ".tflite",
    ".mlmodel",
)


def same(tensors: TensorSet) -> TensorSet:
    return tensors


def classify(rels: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Split files into weights (grouped by folder) and files copied as they are."""
    groups: dict[str, list[str]] = {}
    plain: list[str] = []
    for rel in rels:
        folder, _, base = rel.rpartition("/")
        if WEIGHTS_RE.match(base) or INDEX_RE.match(base):
            if not folder:
                raise ConvertError(f"{rel}: weights at the top of the repo belong to no component")
            groups.setdefault(folder, []).append(rel)
        elif base.lower().endswith(_FOREIGN_WEIGHTS):
            raise ConvertError(
                f"{rel}: not a diffusers component's weights; single-file checkpoints are converted "
                "with `source.file`, other formats are not supported"
            )
        else:
            plain.append(rel)
    return groups, plain


def pick_weights(folder: str, rels: list[str], src_root: Path) -> tuple[str, list[str]]:
    """The one weight set of a folder (safetensors over .bin) and its output path."""
    sets: dict[tuple[str, str | None, str], dict[str, list[str]]] = {}
    for rel in rels:
        base = rel.rpartition("/")[2]
        m = WEIGHTS_RE.match(base) or INDEX_RE.match(base)
        assert m is not None
        key = (m["stem"], m["variant"] or m["legacy"], m["fmt"])
        kind = "index" if base.endswith(".json") else "weights"
        sets.setdefault(key, {"index": [], "weights": []})[kind].append(rel)
    variants = sorted({(k[0], k[1] or "") for k in sets})
    if len(variants) > 1:
        shown = ", ".join(f"{s}{'.' + v if v else ''}" for s, v in variants)
        raise ConvertError(f"{folder}: several weight sets ({shown}); select one variant")
    fmts = {k[2]: k for k in sets}
    key = fmts.get("safetensors") or fmts["bin"]
    chosen = sets[key]
    weights = sorted(chosen["weights"])
    if chosen["index"]:
        index_rel = chosen["index"][0]
        weight_map = read_shard_index(src_root / index_rel, index_rel)
        needed = sorted({f"{folder}/{shard}" for shard in weight_map.values()})
        absent = [r for r in needed if r not in weights]
        if absent:
            raise ConvertError(f"{index_rel}: shard {absent[0]} is not among the files to convert")
        weights = needed
    if not weights:
        raise ConvertError(f"{folder}: a shard index but no weight files")
    return f"{folder}/{_OUT_NAME[key[0]]}", weights


def dedupe_aliases(tensors: TensorSet, component: Any) -> list[str]:
    """Names to write: every tensor, less the tie targets its class re-ties on load."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, t in tensors.tensors.items():
        if t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        groups.setdefault(key, []).append(name)
    shared = [sorted(g) for g in groups.values() if len(g) > 1]
    if not shared:
        return sorted(tensors.tensors)
    tied = _tied_targets(component)
    drop: set[str] = set()
    for group in shared:
        targets = [n for n in group if tied(n)]
        if len(targets) < len(group):
            drop.update(targets)
    return sorted(n for n in tensors.tensors if n not in drop)


def _tied_targets(component: Any) -> Callable[[str], bool]:
    """Which names the component's class ties to another on load (transformers' `_tied_weights_keys`)."""
    if not (
        isinstance(component, list) and len(component) == 2 and all(isinstance(c, str) for c in component)
    ):
        return lambda _name: False
    library, class_name = component
    cls = None
    try:
        if library == "transformers":
            import transformers

            cls = getattr(transformers, class_name, None)
        else:
            import diffusers

            cls = getattr(diffusers, class_name, None)
    except ImportError:
        cls = None
    keys = getattr(cls, "_tied_weights_keys", None) or []
    patterns = list(keys.keys()) if isinstance(keys, dict) else list(keys)
    return lambda name: any(name == p or re.fullmatch(p, name) for p in patterns)
