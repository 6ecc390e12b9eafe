"""How a component's tensors are split into weight files: sizes, greedy packing, the shard index.

Registries refuse huge layers (GHCR: 10 GB) and an image gets one layer per weight file, so a
component is packed into files of at most `shard_size` tensor bytes, the way `save_pretrained`
shards: tensors in sorted-name order, a new file when the next tensor would not fit, a tensor
bigger than the limit alone in its own file. The names and the `*.safetensors.index.json` are the
ones `from_pretrained` reads, so the artifact stays a plain diffusers folder. Same tensors and
limit in, same files out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from artifact_format import vocab
from packager.errors import ConvertError

DEFAULT_SHARD_SIZE = vocab.DEFAULT_SHARD_SIZE
_SUFFIX = ".safetensors"


def parse_size(text: str | int) -> int:
    """vocab.parse_size, failing as the recipe field it reads."""
    try:
        return vocab.parse_size(text)
    except ValueError as exc:
        raise ConvertError(f"shard_size: {exc}") from None


@dataclass(frozen=True)
class Shard:
    """One output weight file of a component and the tensors it holds."""

    name: str  # file name inside the component folder
    tensors: tuple[str, ...]
    nbytes: int


def pack(sizes: Mapping[str, int], limit: int) -> list[list[str]]:
    """Greedy packing in sorted-name order: a new group when the next tensor would overflow it."""
    groups: list[list[str]] = []
    current: list[str] = []
    used = 0
    for name in sorted(sizes):
        size = sizes[name]
        if current and used + size > limit:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current or not groups:
        groups.append(current)
    return groups


def plan_shards(file_name: str, sizes: Mapping[str, int], limit: int) -> list[Shard]:
    """The files of one component: `file_name` itself when it fits, else numbered shards.

    `file_name` is the single-file name (`model.safetensors`, `diffusion_pytorch_model.safetensors`);
    shards are `<stem>-00001-of-0000N.safetensors` as `save_pretrained` names them.
    """
    groups = pack(sizes, limit)
    if len(groups) == 1:
        return [Shard(file_name, tuple(groups[0]), sum(sizes[n] for n in groups[0]))]
    stem = file_name.removesuffix(_SUFFIX)
    total = len(groups)
    return [
        Shard(f"{stem}-{i:05d}-of-{total:05d}{_SUFFIX}", tuple(g), sum(sizes[n] for n in g))
        for i, g in enumerate(groups, start=1)
    ]


def index_name(file_name: str) -> str:
    """`model.safetensors` → `model.safetensors.index.json`."""
    return f"{file_name}.index.json"


def index_bytes(shards: Iterable[Shard]) -> bytes:
    """The shard index `from_pretrained` reads: total tensor bytes and tensor → file."""
    shards = list(shards)
    weight_map = {name: s.name for s in shards for name in s.tensors}
    data = {
        "metadata": {"total_size": sum(s.nbytes for s in shards)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
