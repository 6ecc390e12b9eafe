"""Run diffusers' single-file key mapping of a DiT transformer on stand-ins instead of the weights.

diffusers' mappings of the FLUX.1 and SD3 transformers (`convert_flux_transformer_checkpoint_to_
diffusers`, `convert_sd3_transformer_checkpoint_to_diffusers`) only rename tensors and cut or rejoin
them along their first dimension (`chunk`, `split`, `cat`). Run on the checkpoint itself they would
still cost memory: every q/k/v chunk is copied (`torch.cat([q])`), which for FLUX.1's single blocks
is half of each block, so the mapping would hold several GB of a 24 GB transformer at once; and the
FLUX.1 mapping splits the fused single-block projection at FLUX.1's width (3072, fixed in the
function), so it refuses any other width.

So the mapping runs on stand-ins: each checkpoint tensor of n rows becomes a 1-D int64 tensor of
n × `scale` numbers, its row r written as the run `(first_row + r) * scale + 0 … scale-1`, where
`scale` stretches the model to the width the mapping assumes. What the mapping returns under each
name is read back as the source rows it took, checked to be whole runs of one source tensor, and
turned into that tensor (all rows in order), a view of a slice of its rows (no bytes read), or a gather
of reordered rows (the final layer's shift/scale swap, one small tensor). A stand-in that does not
read back cleanly means the mapping did more than move rows: then None is returned, and the caller
runs the mapping on the real tensors.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The width convert_flux_transformer_checkpoint_to_diffusers splits `single_blocks.N.linear1` at
# (FLUX.1's 24 heads of 128): other widths are mapped at this one through the stand-ins' scale.
FLUX_MAPPING_WIDTH = 3072
# Mapping classes whose diffusers mapping only renames tensors and moves rows along dim 0.
ROW_MAPPINGS = frozenset({"FluxTransformer2DModel", "SD3Transformer2DModel"})


def mapping_scale(mapping_class: str, config: dict[str, Any]) -> int | None:
    """How much to stretch the stand-ins for `mapping_class`'s mapping; None when no scale fits."""
    if mapping_class != "FluxTransformer2DModel":
        return 1
    width = int(config.get("num_attention_heads", 24)) * int(config.get("attention_head_dim", 128))
    if width <= 0 or FLUX_MAPPING_WIDTH % width:
        return None
    return FLUX_MAPPING_WIDTH // width


def map_rows(
    mapping_fn: Callable[..., dict[str, Any]],
    checkpoint: dict[str, torch.Tensor],
    config: dict[str, Any],
    scale: int,
) -> dict[str, torch.Tensor] | None:
    """`mapping_fn(checkpoint, config)`'s result, built from views of `checkpoint`'s tensors, or None
    when the mapping did something the stand-ins cannot follow (the caller then maps the tensors)."""
    import torch

    names = sorted(checkpoint)
    starts: list[int] = []
    stand_ins: dict[str, torch.Tensor] = {}
    first = 0
    for name in names:
        rows = _rows(checkpoint[name])
        starts.append(first)
        stand_ins[name] = torch.arange(first * scale, (first + rows) * scale, dtype=torch.int64)
        first += rows
    try:
        mapped = mapping_fn(checkpoint=stand_ins, config=config)
    except (KeyError, IndexError, ValueError, RuntimeError, TypeError):
        return None
    out: dict[str, torch.Tensor] = {}
    for name, stand_in in mapped.items():
        tensor = _read_back(stand_in, scale, starts, names, checkpoint)
        if tensor is None:
            return None
        out[name] = tensor
    return out


def _rows(tensor: torch.Tensor) -> int:
    return int(tensor.shape[0]) if tensor.dim() else 1


def _read_back(
    stand_in: Any, scale: int, starts: list[int], names: list[str], checkpoint: dict[str, torch.Tensor]
) -> torch.Tensor | None:
    """The source rows `stand_in` stands for, as a tensor of the checkpoint's, or None."""
    import torch

    if not isinstance(stand_in, torch.Tensor) or stand_in.dtype != torch.int64 or stand_in.dim() != 1:
        return None
    if stand_in.numel() == 0 or stand_in.numel() % scale:
        return None
    runs = stand_in.view(-1, scale)
    rows = runs[:, 0] // scale
    if not torch.equal(runs, rows[:, None] * scale + torch.arange(scale)):
        return None  # not whole rows: the mapping cut inside a row
    which = bisect.bisect_right(starts, int(rows[0])) - 1
    src = checkpoint[names[which]]
    local = rows - starts[which]
    count = _rows(src)
    if int(local.min()) < 0 or int(local.max()) >= count:
        return None  # rows of two source tensors joined
    if local.numel() == count and torch.equal(local, torch.arange(count)):
        return src
    if src.dim() == 0:
        return None
    start = int(local[0])
    if torch.equal(local, torch.arange(start, start + local.numel())):
        return src.narrow(0, start, local.numel())
    return src.index_select(0, local)
