"""Which files of a diffusers repo (or local folder) the pipeline needs: the fetch plan.

Hub repos carry far more than one pipeline: root checkpoints of the same weights (`*.ckpt`,
`*-emaonly.safetensors`), onnx/openvino/flax exports, `.bin` next to `.safetensors`, fp16 variants,
READMEs and sample images. Downloading only what `model_index.json` names, in one format, is
most of the time saved on a cold fetch. The rules, per component folder named in model_index.json:

- configs and tokenizer files (`*.json`, `*.txt`, `*.model`) are always taken;
- one weight set: the recipe's `variant` when the component has it, else the plain files
  (diffusers itself falls back per component the same way, so a repo whose safety checker has no
  fp16 file still loads); a component with *only* variant weights and no variant asked is an error
  that names the variant to set;
- within that set, safetensors over `.bin`; a single file over shards of the same format;
- weight files are the names diffusers and transformers write (`diffusion_pytorch_model*`,
  `model*`, `pytorch_model*`), so `openvino_model.bin`, `*.onnx`, `*.msgpack` never match;
- dropped components, folders model_index.json does not name (`onnx/`, `vae_1_0/`), and every
  root file but model_index.json are skipped.

Pure functions of a file list and model_index.json: the same selection runs on a hub listing
(lock) and on a local folder (`path` sources).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from artifact_format.vocab import INDEX_RE, MODEL_INDEX, WEIGHTS_RE
from packager.errors import FetchError

# Files of a component that are not weights but are needed to load it.
CONFIG_SUFFIXES = (".json", ".txt", ".model")
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

WeightsWanted = bool | Callable[[str, Any], bool]
"""Whose weights to select: all (True), none (False), or the components a predicate of (component,
its model_index.json entry) names (the config of a single-file checkpoint: what the file lacks)."""


@dataclass(frozen=True)
class Selection:
    """The files to fetch (sorted repo-relative paths) and what the selection decided on the way."""

    files: tuple[str, ...]
    components: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Weight:
    path: str
    fmt: str  # "safetensors" | "bin"
    variant: str | None
    sharded: bool
    index: bool


def components_of(model_index: Mapping[str, Any], drop: Iterable[str] = ()) -> list[str]:
    """Component folders model_index.json names (`[library, class]` with a class), minus `drop`."""
    dropped = set(drop)
    names = []
    for key, value in model_index.items():
        if key.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        if value[1] is None or key in dropped:
            continue
        if not _COMPONENT_RE.match(key) or key in (".", ".."):
            raise FetchError(f"{MODEL_INDEX}: unsafe component name {key!r}")
        names.append(key)
    return sorted(names)


def select_files(
    files: Iterable[str],
    model_index: Mapping[str, Any],
    *,
    variant: str | None = None,
    drop: Iterable[str] = (),
    weights: WeightsWanted = True,
) -> Selection:
    """The files a diffusers pipeline needs out of `files` (repo-relative, `/`-separated).

    `weights=False` selects configs and tokenizers only; a predicate selects the weights of the
    components it accepts (the config of a single-file checkpoint). Raises FetchError when a
    named component has no folder, or no usable weights.
    """
    by_folder: dict[str, list[str]] = {}
    for path in files:
        folder, sep, name = path.partition("/")
        if sep and "/" not in name:  # only direct children: nested folders are not loaded
            by_folder.setdefault(folder, []).append(name)
    if MODEL_INDEX not in set(files):
        raise FetchError(f"no {MODEL_INDEX}: not a diffusers pipeline (for a single checkpoint use `file`)")

    selected = [MODEL_INDEX]
    notes: list[str] = []
    components = components_of(model_index, drop)
    for component in components:
        names = by_folder.get(component)
        if not names:
            raise FetchError(
                f"{MODEL_INDEX} names component {component!r} but there is no {component}/ folder"
                f" (drop it with components.drop: [{component}])"
            )
        configs = [n for n in names if n.endswith(CONFIG_SUFFIXES) and not INDEX_RE.match(n)]
        selected += [f"{component}/{n}" for n in configs]
        if weights(component, model_index[component]) if callable(weights) else weights:
            chosen, note = _weights_of(component, names, variant)
            selected += chosen
            if note:
                notes.append(note)
    return Selection(tuple(sorted(set(selected))), tuple(components), tuple(notes))


def is_weight_file(rel: str) -> bool:
    """A component's weight file or shard index (by the names diffusers and transformers write)."""
    name = rel.rpartition("/")[2]
    return bool(WEIGHTS_RE.match(name) or INDEX_RE.match(name))


def _weights_of(component: str, names: list[str], variant: str | None) -> tuple[list[str], str | None]:
    found = [w for n in names if (w := _parse_weight(f"{component}/{n}", n)) is not None]
    if not found:
        return [], None  # schedulers, tokenizers, feature extractors carry no weights
    variants = {w.variant for w in found}
    note = None
    if variant is not None and variant in variants:
        pick = variant
    elif None in variants:
        pick = None
        if variant is not None:
            note = f"{component}: no {variant!r} variant weights, using the plain ones"
    else:
        have = ", ".join(sorted(v for v in variants if v))
        raise FetchError(f"{component}/ has only variant weights ({have}): set source.variant to one of them")
    candidates = [w for w in found if w.variant == pick]
    fmt = "safetensors" if any(w.fmt == "safetensors" for w in candidates) else "bin"
    candidates = [w for w in candidates if w.fmt == fmt]
    singles = [w for w in candidates if not w.sharded and not w.index]
    if singles:
        return [singles[0].path], note
    return sorted(w.path for w in candidates), note


def _parse_weight(path: str, name: str) -> _Weight | None:
    if m := WEIGHTS_RE.match(name):
        if m["variant"] and m["legacy"]:
            return None
        return _Weight(path, m["fmt"], m["variant"] or m["legacy"], bool(m["shard"]), False)
    if m := INDEX_RE.match(name):
        if m["variant"] and m["legacy"]:
            return None
        return _Weight(path, m["fmt"], m["variant"] or m["legacy"], True, True)
    return None
