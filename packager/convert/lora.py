"""LoRAs fused into the weights while converting: W + scale·(alpha/r)·B·A, one weight at a time.

The key formats are read by diffusers itself: the pipeline class's `lora_state_dict` turns kohya /
A1111 keys (`lora_unet_…`, `lora_te_…`, lora_down/lora_up/alpha, LoCon convolutions included) into
diffusers names, and diffusers' own tables (`state_dict_utils`) take diffusers' older spellings to
PEFT's (`<module>.lora_A/lora_B`). What we add is the rest of `load_lora_weights` + `fuse_lora`
without a model: every pair is matched to a weight of the component it names, its shape checked,
and the product added while that weight streams through the writer (the converter's tensor
transform), so memory stays at one weight and the worker loads plain weights.

Alpha is the LoRA's own: a kohya `alpha` tensor of the module, a PEFT `<module>.alpha` tensor, or
the `lora_alpha` (and `alpha_pattern`) of diffusers' `lora_adapter_metadata`; else alpha = r.

Nothing is silently skipped: a key that names no component or no weight of it, a shape that does
not fit, an A without its B, and the formats this fusion does not compute (LoHa `hada_`, LoKr
`lokr_`, DoRA `dora_scale` / `lora_magnitude_vector`) are each one ConvertError naming the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact_format import manifest as mf
from packager.convert.tensor_reader import load_checkpoint_state
from packager.errors import ConvertError

if TYPE_CHECKING:
    import torch

    from packager.convert.jobs import ComponentWeights
    from packager.convert.settings import TensorTransform

# Key markers of the LyCORIS / DoRA variants, by the name users know them by.
REFUSED = (("hada_", "LoHa"), ("lokr_", "LoKr"), ("dora_scale", "DoRA"), ("lora_magnitude_vector", "DoRA"))
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_PAIR_RE = re.compile(r"(?P<module>.+)\.lora_(?P<role>[AB])\.weight")
_METADATA_KEY = "lora_adapter_metadata"


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA to fuse: its file, what the lock pinned it to, the scale, its portable source record."""

    path: Path
    sha256: str
    scale: float
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pair:
    """One module's A (down) and B (up), as the LoRA file names them."""

    key: str  # the file's own key of A (or B), for messages
    alpha: float | None = None
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None


@dataclass(frozen=True)
class Delta:
    key: str
    label: str
    down: torch.Tensor
    up: torch.Tensor
    factor: float  # scale · alpha / r


def plan_fusion(
    specs: list[LoraSpec],
    components: list[ComponentWeights],
    pipeline: str,
    index: dict[str, Any],
    config_root: Path,
) -> tuple[dict[str, TensorTransform], tuple[mf.FusedLora, ...]]:
    """The tensor transform of each component folder a LoRA touches, and the manifest's records.

    Raises ConvertError (one line naming the file and the key) for anything that cannot be fused.
    """
    by_comp = {c.folder.split("/")[0]: c for c in components}
    deltas: dict[str, dict[str, list[Delta]]] = {}
    fused = []
    for spec in specs:
        label = spec.path.name
        pairs = read_pairs(spec.path, label, pipeline, index, config_root)
        touched = set()
        for (comp, module), pair in sorted(pairs.items()):
            weights = by_comp.get(comp)
            if weights is None:
                raise ConvertError(
                    f"{label}: LoRA key {pair.key} is for {comp}, which the artifact does not have"
                )
            name = _weight_name(weights, module)
            if name is None:
                raise ConvertError(f"{label}: LoRA key {pair.key} maps to no module of {comp} ({module})")
            delta = _delta(label, pair, spec.scale, weights.tensors.tensors[name], f"{comp} {name}")
            deltas.setdefault(weights.folder, {}).setdefault(name, []).append(delta)
            touched.add(comp)
        if not touched:
            raise ConvertError(f"{label}: the LoRA has no weights to fuse")
        fused.append(mf.FusedLora(spec.sha256, spec.scale, dict(spec.source), tuple(sorted(touched))))
    return {folder: _fuser(table) for folder, table in deltas.items()}, tuple(fused)


def read_pairs(
    path: Path, label: str, pipeline: str, index: dict[str, Any], config_root: Path
) -> dict[tuple[str, str], Pair]:
    """(component, module) → its A, B (copied out of the file) and alpha, whatever the key format."""
    state = load_checkpoint_state(path, label)
    try:
        tensors = dict(state.tensors)
        _refuse_variants(tensors, label)
        converted = _diffusers_keys(tensors, label, pipeline, config_root)
        return _pairs(tensors, converted, label, index, _metadata(path))
    finally:
        state.close()


def _refuse_variants(tensors: dict[str, torch.Tensor], label: str) -> None:
    for key in sorted(tensors):
        for marker, name in REFUSED:
            if marker in key:
                raise ConvertError(
                    f"{label}: a {name} file (key {key}); only LoRA and LoCon can be fused, "
                    "convert it to a plain LoRA first"
                )


def _diffusers_keys(
    tensors: dict[str, torch.Tensor], label: str, pipeline: str, config_root: Path
) -> dict[str, torch.Tensor]:
    """The LoRA's tensors under diffusers names (`<component>.<module>…`), read by the pipeline's
    own `lora_state_dict`, as `load_lora_weights` reads them."""
    import diffusers
    from diffusers.loaders.lora_pipeline import StableDiffusionXLLoraLoaderMixin

    cls = getattr(diffusers, pipeline, None)
    reader = getattr(cls, "lora_state_dict", None)
    if reader is None:
        raise ConvertError(f"{label}: diffusers has no LoRA loader for {pipeline}")
    kwargs: dict[str, Any] = {}
    unet_config = config_root / "unet" / "config.json"
    if isinstance(cls, type) and issubclass(cls, StableDiffusionXLLoraLoaderMixin) and unet_config.is_file():
        # As SDXL's `load_lora_weights` does: kohya's sgm block numbers follow the UNet's layout.
        from diffusers.configuration_utils import FrozenDict

        frozen: Any = FrozenDict  # untyped in diffusers
        kwargs["unet_config"] = frozen(json.loads(unet_config.read_text(encoding="utf-8")))
    try:
        out = reader(dict(tensors), **kwargs)
    except (ValueError, KeyError, RuntimeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"{label}: diffusers cannot read this LoRA's keys ({first})") from None
    state = out[0] if isinstance(out, tuple) else out
    return dict(state)


def _pairs(
    original: dict[str, torch.Tensor],
    converted: dict[str, torch.Tensor],
    label: str,
    index: dict[str, Any],
    metadata: dict[str, Any],
) -> dict[tuple[str, str], Pair]:
    from diffusers.utils import state_dict_utils as sdu

    convert_state_dict: Any = sdu.convert_state_dict  # untyped in diffusers
    text_names = {**sdu.DIFFUSERS_OLD_TO_PEFT, **sdu.DIFFUSERS_TO_PEFT}

    key_of = {id(t): k for k, t in original.items()}
    pairs: dict[tuple[str, str], Pair] = {}
    alphas: dict[tuple[str, str], float] = {}
    for key, tensor in converted.items():
        own = key_of.get(id(tensor), key)
        comp, _, rest = key.partition(".")
        spec = index.get(comp)
        if not rest or comp.startswith("_") or not isinstance(spec, list):
            raise ConvertError(f"{label}: LoRA key {own} names no component of the pipeline")
        if rest.endswith(".alpha"):
            alphas[(comp, rest.removesuffix(".alpha"))] = float(tensor.item())
            continue
        mapping = text_names if spec[0] == "transformers" else sdu.UNET_TO_DIFFUSERS
        peft_key = next(iter(convert_state_dict({rest: tensor}, mapping)))
        match = _PAIR_RE.fullmatch(peft_key)
        if match is None:
            raise ConvertError(
                f"{label}: LoRA key {own} is not a LoRA weight (lora_A/lora_B or lora_down/lora_up)"
            )
        pair = pairs.setdefault((comp, match["module"]), Pair(own))
        # A copy: the file's map is closed once the pairs are read (LoRAs are small).
        setattr(pair, "down" if match["role"] == "A" else "up", tensor.clone())
        if (
            own.startswith(KOHYA_PREFIXES)
            and (alpha := original.get(own.split(".")[0] + ".alpha")) is not None
        ):
            pair.alpha = float(alpha.item())
    for (comp, module), pair in pairs.items():
        if pair.down is None or pair.up is None:
            raise ConvertError(
                f"{label}: LoRA key {pair.key} has no matching {'A' if pair.down is None else 'B'}"
            )
        if pair.alpha is None:
            pair.alpha = alphas.get((comp, module), _metadata_alpha(metadata, comp, module))
    return pairs


def _metadata(path: Path) -> dict[str, Any]:
    """diffusers' `lora_adapter_metadata` (the LoraConfig a PEFT LoRA was saved with), when present."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        raw = (fh.metadata() or {}).get(_METADATA_KEY)
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        raise ConvertError(f"{path.name}: its {_METADATA_KEY} is not valid JSON") from None
    return data if isinstance(data, dict) else {}


def _metadata_alpha(metadata: dict[str, Any], comp: str, module: str) -> float | None:
    """PEFT's rule: an `alpha_pattern` entry whose pattern ends the module's name, else `lora_alpha`."""
    patterns = metadata.get(f"{comp}.alpha_pattern") or {}
    for pattern, alpha in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
            return float(alpha)
    alpha = metadata.get(f"{comp}.lora_alpha")
    return float(alpha) if alpha is not None else None


def _weight_name(weights: ComponentWeights, module: str) -> str | None:
    """The component's weight the module owns. transformers 5 saves CLIP text encoders without
    the `text_model.` wrapper that kohya names (and older files keep): either spelling matches."""
    names = weights.tensors.tensors
    bare = module.removeprefix("text_model.")
    for candidate in (module, bare, f"text_model.{bare}"):
        if f"{candidate}.weight" in names:
            return f"{candidate}.weight"
    return None


def _delta(label: str, pair: Pair, scale: float, weight: torch.Tensor, where: str) -> Delta:
    """Check that B·A fits the weight; the factor it is added with."""
    assert pair.down is not None
    assert pair.up is not None
    down, up = pair.down, pair.up
    rank = down.shape[0] if down.ndim else 0
    out_w = weight.shape[0] if weight.ndim else 0
    in_w = weight.numel() // out_w if out_w else 0
    fits = (
        weight.ndim in (2, 4)
        and down.ndim in (2, 4)
        and up.ndim == down.ndim
        and up.shape[1] == rank
        and up[0].numel() == rank  # B is [out, r] or [out, r, 1, 1]
        and up.shape[0] == out_w
        and down.numel() // max(rank, 1) == in_w
    )
    if not fits:
        raise ConvertError(
            f"{label}: LoRA key {pair.key} is {list(up.shape)} x {list(down.shape)}, which does not fit "
            f"{where} {list(weight.shape)}"
        )
    alpha = pair.alpha if pair.alpha is not None else float(rank)
    return Delta(pair.key, label, down, up, scale * alpha / rank)


def _fuser(table: dict[str, list[Delta]]) -> TensorTransform:
    """W + Σ factor·B·A in float32 (or the weight's wider dtype), for the weights in `table`."""

    def fuse(name: str, weight: torch.Tensor) -> torch.Tensor:
        import torch

        deltas = table.get(name)
        if not deltas:
            return weight
        dtype = torch.promote_types(weight.dtype, torch.float32)
        fused = weight.to(dtype, copy=True)
        flat = fused.view(fused.shape[0], -1)
        for d in deltas:
            up = d.up.to(dtype).reshape(d.up.shape[0], -1)
            down = d.down.to(dtype).reshape(d.down.shape[0], -1)
            flat.addmm_(up, down, alpha=d.factor)
        return fused

    return fuse
