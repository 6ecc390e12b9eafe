"""LoRA files for the tiny SD pipeline, built offline from its module shapes (random A and B).

`kohya_lora` writes kohya / A1111 keys (`lora_unet_…` / `lora_te_…`, lora_down / lora_up / alpha),
LoCon convolutions included; `peft_lora` writes diffusers' PEFT keys (`unet.…lora_A.weight`). The
modules are the ones real LoRAs train: attention projections, feed-forward, proj_in, a resnet
conv (LoCon), and the CLIP text encoder's attention and MLP.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

UNET_MODULES = (
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q",
    "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj",
    "mid_block.attentions.0.proj_in",
)
LOCON_MODULES = ("down_blocks.0.resnets.0.conv1", "up_blocks.1.resnets.0.conv2")
TEXT_MODULES = (
    "encoder.layers.0.self_attn.q_proj",
    "encoder.layers.0.self_attn.k_proj",
    "encoder.layers.0.self_attn.v_proj",
    "encoder.layers.0.self_attn.out_proj",
    "encoder.layers.1.mlp.fc1",
)


def module_shapes(folder: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """component → module → its weight's shape, read from the pipeline folder's safetensors."""
    from safetensors import safe_open

    out: dict[str, dict[str, tuple[int, ...]]] = {}
    for comp, name in (
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ):
        with safe_open(str(folder / comp / name), framework="pt") as fh:
            names = fh.keys()
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in names}
        out[comp] = {
            k.removesuffix(".weight").removeprefix("text_model."): v
            for k, v in shapes.items()
            if k.endswith(".weight")
        }
    return out


def _pair(shape: tuple[int, ...], rank: int, gen: Any) -> tuple[Any, Any]:
    import torch

    if len(shape) == 4:
        down = torch.randn(rank, shape[1], shape[2], shape[3], generator=gen) * 0.1
        up = torch.randn(shape[0], rank, 1, 1, generator=gen) * 0.1
    else:
        down = torch.randn(rank, shape[1], generator=gen) * 0.1
        up = torch.randn(shape[0], rank, generator=gen) * 0.1
    return down, up


def kohya_lora(
    folder: Path,
    *,
    rank: int = 4,
    seed: int = 0,
    text: bool = True,
    locon: bool = True,
    varied_alpha: bool = False,
) -> dict[str, Any]:
    """kohya keys for the pipeline at `folder`, with one alpha for every module (as trainers write
    them), or with `varied_alpha` a different one by module and none for the second module."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    shapes = module_shapes(folder)
    out: dict[str, Any] = {}
    modules = [("unet", m) for m in UNET_MODULES + (LOCON_MODULES if locon else ())]
    modules += [("text_encoder", m) for m in TEXT_MODULES] if text else []
    for i, (comp, module) in enumerate(modules):
        prefix = "lora_unet_" if comp == "unet" else "lora_te_text_model_"
        name = prefix + module.replace(".", "_")
        down, up = _pair(shapes[comp][module], rank, gen)
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = up
        if not varied_alpha:
            out[f"{name}.alpha"] = torch.tensor(2.0)
        elif i != 1:  # alpha = rank when absent
            out[f"{name}.alpha"] = torch.tensor(float(1 + i % 4))
    return out


def peft_lora(folder: Path, *, rank: int = 2, seed: int = 1) -> dict[str, Any]:
    """diffusers / PEFT keys (`unet.<module>.lora_A.weight`), as `save_lora_weights` writes them."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    shapes = module_shapes(folder)
    out: dict[str, Any] = {}
    for comp, modules in (("unet", UNET_MODULES), ("text_encoder", TEXT_MODULES)):
        for module in modules:
            down, up = _pair(shapes[comp][module], rank, gen)
            key = f"{comp}.text_model.{module}" if comp == "text_encoder" else f"{comp}.{module}"
            out[f"{key}.lora_A.weight"] = down
            out[f"{key}.lora_B.weight"] = up
    return out


def save_lora(tensors: Mapping[str, Any], path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path
