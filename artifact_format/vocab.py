"""The project's shared vocabulary: placement modes, precisions, weight-file names, short ids, sizes.

Defined once here, in the standard-library leaf package, so the packager, volume_sync and the worker
agree on every word without importing one another.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

Mode = Literal["baked", "volume"]
MODES: tuple[str, ...] = get_args(Mode)

Precision = Literal["fp16", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

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
CONVERTER_VERSION = "1"

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


def short_id(artifact_id: str) -> str:
    """The artifact id as people see it: the first SHORT_ID_LEN hex digits."""
    return artifact_id[:SHORT_ID_LEN]
