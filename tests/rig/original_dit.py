"""FLUX.1 and SD3 transformers in their original single-file layouts (BFL's and SAI's key names).

Each function is the exact inverse of diffusers' own single-file mapping
(`convert_flux_transformer_checkpoint_to_diffusers`, `convert_sd3_transformer_checkpoint_to_diffusers`
in diffusers.loaders.single_file_utils): renames, the fused q/k/v (and FLUX.1's fused single-block
q/k/v/mlp) projections joined again, and the final layer's scale/shift halves swapped back. So a file
written from a tiny diffusers transformer converts back to exactly its tensors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# diffusers name → original name, for tensors that are only renamed (`{i}` is the block index).
_FLUX_RENAMES = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
    "transformer_blocks.{i}.norm1.linear": "double_blocks.{i}.img_mod.lin",
    "transformer_blocks.{i}.norm1_context.linear": "double_blocks.{i}.txt_mod.lin",
    "transformer_blocks.{i}.attn.norm_q": "double_blocks.{i}.img_attn.norm.query_norm",
    "transformer_blocks.{i}.attn.norm_k": "double_blocks.{i}.img_attn.norm.key_norm",
    "transformer_blocks.{i}.attn.norm_added_q": "double_blocks.{i}.txt_attn.norm.query_norm",
    "transformer_blocks.{i}.attn.norm_added_k": "double_blocks.{i}.txt_attn.norm.key_norm",
    "transformer_blocks.{i}.ff.net.0.proj": "double_blocks.{i}.img_mlp.0",
    "transformer_blocks.{i}.ff.net.2": "double_blocks.{i}.img_mlp.2",
    "transformer_blocks.{i}.ff_context.net.0.proj": "double_blocks.{i}.txt_mlp.0",
    "transformer_blocks.{i}.ff_context.net.2": "double_blocks.{i}.txt_mlp.2",
    "transformer_blocks.{i}.attn.to_out.0": "double_blocks.{i}.img_attn.proj",
    "transformer_blocks.{i}.attn.to_add_out": "double_blocks.{i}.txt_attn.proj",
    "single_transformer_blocks.{i}.norm.linear": "single_blocks.{i}.modulation.lin",
    "single_transformer_blocks.{i}.attn.norm_q": "single_blocks.{i}.norm.query_norm",
    "single_transformer_blocks.{i}.attn.norm_k": "single_blocks.{i}.norm.key_norm",
    "single_transformer_blocks.{i}.proj_out": "single_blocks.{i}.linear2",
}
# The joint blocks' image and text q/k/v, which both originals store fused along dim 0.
_JOINT_QKV = ["transformer_blocks.{i}.attn.to_" + p for p in "qkv"]
_ADDED_QKV = [f"transformer_blocks.{{i}}.attn.add_{p}_proj" for p in "qkv"]
# original name ← the diffusers tensors joined along dim 0, in this order.
_FLUX_FUSED = {
    "double_blocks.{i}.img_attn.qkv": _JOINT_QKV,
    "double_blocks.{i}.txt_attn.qkv": _ADDED_QKV,
    "single_blocks.{i}.linear1": [
        *("single_transformer_blocks.{i}.attn.to_" + p for p in "qkv"),
        "single_transformer_blocks.{i}.proj_mlp",
    ],
}

_SD3_RENAMES = {
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
    "transformer_blocks.{i}.attn.to_out.0": "joint_blocks.{i}.x_block.attn.proj",
    "transformer_blocks.{i}.attn.to_add_out": "joint_blocks.{i}.context_block.attn.proj",
    "transformer_blocks.{i}.norm1.linear": "joint_blocks.{i}.x_block.adaLN_modulation.1",
    "transformer_blocks.{i}.ff.net.0.proj": "joint_blocks.{i}.x_block.mlp.fc1",
    "transformer_blocks.{i}.ff.net.2": "joint_blocks.{i}.x_block.mlp.fc2",
    "transformer_blocks.{i}.ff_context.net.0.proj": "joint_blocks.{i}.context_block.mlp.fc1",
    "transformer_blocks.{i}.ff_context.net.2": "joint_blocks.{i}.context_block.mlp.fc2",
}
_SD3_FUSED = {
    "joint_blocks.{i}.x_block.attn.qkv": _JOINT_QKV,
    "joint_blocks.{i}.context_block.attn.qkv": _ADDED_QKV,
}


def _swap_halves(tensor: Any) -> Any:
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _blocks(state: dict[str, Any], prefix: str) -> list[int]:
    found = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))}
    return sorted(found)


def _invert(
    state: dict[str, Any], renames: dict[str, str], fused: dict[str, list[str]], blocks: dict[str, list[int]]
) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    left = dict(state)

    def indices(template: str) -> list[int | None]:
        if "{i}" not in template:
            return [None]
        return list(blocks[template.partition("{i}")[0]])

    for new, old in renames.items():
        for i in indices(new):
            src, dst = new.format(i=i), old.format(i=i)
            for suffix in (".weight", ".bias"):
                if src + suffix in left:
                    # BFL's RMSNorm scales are named `scale`, not `weight`.
                    out_suffix = ".scale" if dst.endswith("_norm") else suffix
                    out[dst + out_suffix] = left.pop(src + suffix)
    for old, parts in fused.items():
        for i in indices(parts[0]):
            for suffix in (".weight", ".bias"):
                names = [p.format(i=i) + suffix for p in parts]
                if all(n in left for n in names):
                    out[old.format(i=i) + suffix] = torch.cat([left.pop(n) for n in names], dim=0)
    return {**out, **{"__left__": left}} if left else out


def flux_original(state: dict[str, Any]) -> dict[str, Any]:
    """A diffusers FluxTransformer2DModel state dict under BFL's names (`flux1-dev.safetensors`)."""
    blocks = {
        "transformer_blocks.": _blocks(state, "transformer_blocks."),
        "single_transformer_blocks.": _blocks(state, "single_transformer_blocks."),
    }
    out = _invert(state, _FLUX_RENAMES, _FLUX_FUSED, blocks)
    left = out.pop("__left__", {})
    for suffix in (".weight", ".bias"):
        out["final_layer.adaLN_modulation.1" + suffix] = _swap_halves(left.pop("norm_out.linear" + suffix))
    assert not left, f"unmapped: {sorted(left)[:5]}"
    return out


def sd3_original(state: dict[str, Any]) -> dict[str, Any]:
    """A diffusers SD3Transformer2DModel state dict under SAI's names, each with the
    `model.diffusion_model.` prefix the SD 3.5 single files carry."""
    blocks = {"transformer_blocks.": _blocks(state, "transformer_blocks.")}
    last = blocks["transformer_blocks."][-1]
    left = dict(state)
    out = {"pos_embed": left.pop("pos_embed.pos_embed")}
    context = f"transformer_blocks.{last}.norm1_context.linear"
    renames = dict(_SD3_RENAMES)
    renames["transformer_blocks.{i}.norm1_context.linear"] = (
        "joint_blocks.{i}.context_block.adaLN_modulation.1"
    )
    for suffix in (".weight", ".bias"):
        # The last block's context modulation is stored swapped (diffusers swaps it back).
        out[f"joint_blocks.{last}.context_block.adaLN_modulation.1{suffix}"] = _swap_halves(
            left.pop(context + suffix)
        )
        out["final_layer.adaLN_modulation.1" + suffix] = _swap_halves(left.pop("norm_out.linear" + suffix))
    mapped = _invert(left, renames, _SD3_FUSED, blocks)
    rest = mapped.pop("__left__", {})
    assert not rest, f"unmapped: {sorted(rest)[:5]}"
    out.update(mapped)
    return {f"model.diffusion_model.{k}": v for k, v in out.items()}


def write_original_transformer(diffusers_folder: Path, out: Path, *, family: str, fp8: bool = False) -> Path:
    """The tiny pipeline's transformer (`diffusers_folder/transformer`, shards and all) as one
    original-layout file; `fp8` stores its 2-D weights as float8_e4m3fn, as ComfyUI fp8 files do."""
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from safetensors.torch import save_file

    cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
    state = cls.from_pretrained(diffusers_folder / "transformer").state_dict()
    original = (flux_original if family == "flux" else sd3_original)(state)
    if fp8:
        original = {k: v.to(torch.float8_e4m3fn) if v.dim() == 2 else v for k, v in original.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in original.items()}, str(out))
    return out
