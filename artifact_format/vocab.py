"""The project's shared vocabulary: placement modes, precisions, weight-file names, short ids, sizes.

Defined once here, in the standard-library leaf package, so the packager, volume_sync and the worker
agree on every word without importing one another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, get_args

# Where a worker finds the weights: baked into its image, on a RunPod network volume, or in the
# hub cache RunPod's cached models fill on the host's local disk.
Mode = Literal["baked", "volume", "cached"]
MODES: tuple[str, ...] = get_args(Mode)

# What a pipeline computes in (the manifest's `precision`).
Precision = Literal["fp16", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# What a recipe asks for: a compute precision, `auto` (decided from the pipeline's classes) or `fp8`
# (the denoiser stored in float8_e4m3fn, computing as `auto`).
RecipePrecision = Literal["auto", "fp16", "bf16", "fp32", "fp8"]
RECIPE_PRECISIONS: tuple[str, ...] = get_args(RecipePrecision)

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"

# The weight-file names diffusers and transformers write: `model.safetensors`, `model.fp16.safetensors`,
# `model-00001-of-00002.safetensors`, `model.fp16-00001-of-00002.safetensors`, and the legacy variant
# spellings `model-00001-of-00002.fp16.safetensors` / `model.fp16.safetensors.index.json`.
_STEM = r"(?P<stem>diffusion_pytorch_model|pytorch_model|model)"
_SHARD = r"-\d{5}-of-\d{5}"
WEIGHTS_RE = re.compile(
    rf"^{_STEM}(?:\.(?P<variant>[A-Za-z0-9_]+))?(?P<shard>{_SHARD})?(?:\.(?P<legacy>[A-Za-z0-9_]+))?"
    r"\.(?P<fmt>safetensors|bin)$"
)
# `model.safetensors.index.json`, `model.safetensors.index.fp16.json`, legacy
# `model.fp16.safetensors.index.json`.
INDEX_RE = re.compile(
    rf"^{_STEM}(?:\.(?P<legacy>[A-Za-z0-9_]+))?\.(?P<fmt>safetensors|bin)\.index"
    r"(?:\.(?P<variant>[A-Za-z0-9_]+))?\.json$"
)

# The packing rules' version, recorded in every manifest (`packing.converter`). Bumped whenever the
# converter's output bytes can change for the same input: it is hashed into the lock's fingerprint,
# so a new converter invalidates old locks as surely as a new source does.
CONVERTER_VERSION = "2"

ARTIFACT_ID_LEN = 64
# Artifact ids are shortened to this many hex digits in tags, folder names and messages: 48 bits, so
# two artifacts of one recipe colliding is not a practical concern.
SHORT_ID_LEN = 12

# A weight file at least this large gets a COPY (so an image layer) of its own: a registry pushes and
# a host pulls layers in parallel and caches them one by one, so one layer per big weight file lets
# two artifacts that share a VAE share its layer, and keeps a layer small enough to retry. Smaller
# files (configs, tokenizers) go together in one layer: a layer per 1 KB json would only add round
# trips. `packager plan` counts layers by the same rule.
OWN_LAYER_BYTES = 64 * 1024 * 1024


# Weight files are packed to at most this many tensor bytes each (recipe `shard_size`): one image
# layer a file, and registries refuse layers over 10 GB (GHCR).
DEFAULT_SHARD_SIZE = "5GB"
# Units as written: decimal for GB/MB/KB (what registries and disks quote), binary for GiB/MiB/KiB.
_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes of a size such as `5GB` (10^9), `2GiB` (2^30), `500MB`, `64KiB`, or a plain integer.

    Raises ValueError saying what a size looks like.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 1:
            raise ValueError(f"must be positive (got {text})")
        return text
    found = _SIZE_RE.match(str(text))
    if not found:
        raise ValueError(f"not a size (got {text!r}); write e.g. 5GB (10^9 bytes), 4GiB (2^30), 500MB")
    value = float(found.group(1)) * _SIZE_UNITS[found.group(2).upper()]
    if value < 1:
        raise ValueError(f"must be at least one byte (got {text!r})")
    return int(value)


def check_precision_overrides(overrides: Mapping[str, object]) -> None:
    """`precision_overrides` values: a component's precision (fp8 too), or fnmatch patterns of
    tensor names mapped to a compute precision. Raises ValueError naming the entry."""
    for comp, value in overrides.items():
        if isinstance(value, str):
            if value not in ("fp16", "bf16", "fp32", "fp8"):
                raise ValueError(f"{comp}: must be one of fp16, bf16, fp32, fp8 (got {value!r})")
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"{comp}: a precision or a mapping of tensor-name patterns (got {value!r})")
        for pattern, precision in value.items():
            if precision not in PRECISIONS:
                raise ValueError(f"{comp}.{pattern}: must be one of fp16, bf16, fp32 (got {precision!r})")


def short_id(artifact_id: str) -> str:
    """The artifact id as people see it: the first SHORT_ID_LEN hex digits."""
    return artifact_id[:SHORT_ID_LEN]
