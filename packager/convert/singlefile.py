"""Single-file checkpoints → diffusers tensors: full original SD checkpoints (as civitai-style models
ship), and FLUX.1 / SD3 transformers alone (BFL's and SAI's files, ComfyUI's fp8 e4m3fn ones).

The key mapping is diffusers' own: the same `checkpoint_mapping_fn` that `from_single_file` uses
for each model class, and for CLIP text encoders the same branches as diffusers'
`create_diffusers_clip_model_from_ldm`. What we do differently is everything around it:

- the checkpoint is read by packager/tensor_reader.py (safetensors, or `torch.load(weights_only=
  True)`), never by diffusers' loader, so no unrestricted unpickling can happen (diffusers' own
  `load_state_dict` also passes weights_only=True, but it is not ours to rely on);
- configs come from the local config folder only (no hub access at convert time), and models are
  instantiated on the meta device just to learn the names and shapes they expect;
- no model is materialised: the converted tensors are views of the mapped checkpoint wherever the
  mapping allows, and stream through the same writer as any other weights. The FLUX.1 and SD3
  mappings copy as they go, so they run on stand-ins (row_mapping.py) and every tensor stays a view;
  the UNet/VAE/CLIP mappings run on the tensors themselves (they reshape, which row stand-ins
  cannot follow; what they return is renamed tensors and slices, views too).

A converted component that lacks a weight its config expects, or has one of the wrong shape, is an
error (the checkpoint does not match the config), never a silently random-initialised layer.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact_format.vocab import DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS
from packager.convert import row_mapping
from packager.convert.tensor_reader import TensorSet, load_checkpoint_state
from packager.errors import ConvertError

if TYPE_CHECKING:
    import torch


# What ComfyUI's "scaled fp8" files add: a `scaled_fp8` marker and per-layer scale tensors that
# every fp8 weight must be multiplied by.
SCALE_SUFFIXES = (".scale_weight", ".scale_input")


def checkpoint_components(
    checkpoint: Path, config_root: Path, index: dict[str, Any], skipped: set[str]
) -> dict[str, tuple[TensorSet, str]]:
    """Each component whose weights the checkpoint holds: (its tensors, output file name).

    `skipped` are the dropped components and those whose weights the config folder brings (the lock
    took them there because the checkpoint does not carry them: the text encoders and VAE of a
    transformer-only FLUX.1 or SD3 file). Components the checkpoint does not cover otherwise (a
    safety checker, say) are left out too; the caller then finds them without weights.
    """
    state = load_checkpoint_state(checkpoint, checkpoint.name)
    _refuse_scaled_fp8(state, checkpoint.name)
    out: dict[str, tuple[TensorSet, str]] = {}
    try:
        for comp, spec in sorted(index.items()):
            if comp.startswith("_") or comp in skipped or not _is_class_spec(spec):
                continue
            if not (config_root / comp / "config.json").is_file():
                continue  # tokenizer, scheduler, feature extractor: no weights
            library, class_name = spec
            if library == "transformers":
                tensors = _convert_clip(class_name, config_root / comp, state.tensors, comp)
                out_name = TRANSFORMERS_WEIGHTS
            else:
                tensors = _convert_diffusers(class_name, config_root / comp, state.tensors, comp)
                out_name = DIFFUSERS_WEIGHTS
            if tensors is None:
                continue
            converted = TensorSet()
            for name in sorted(tensors):
                converted.add(name, tensors[name], checkpoint.name)
            out[comp] = (converted, out_name)
    except BaseException:
        for tensor_set, _ in out.values():
            tensor_set.close()
        state.close()
        raise
    if not out:
        state.close()
        raise ConvertError(
            f"{checkpoint.name}: no component of the config's pipeline was found in the checkpoint"
        )
    # The converted tensors are views of the checkpoint's maps: keep it open as long as they live.
    next(iter(out.values()))[0].on_close(state.close)
    return out


def _refuse_scaled_fp8(state: TensorSet, label: str) -> None:
    """ComfyUI's "scaled fp8" files need every weight multiplied by its layer's scale: refuse them."""
    scales = sorted(n for n in state.tensors if n.endswith(SCALE_SUFFIXES))
    if scales or "scaled_fp8" in state.tensors:
        state.close()
        kind = scales[0].rpartition(".")[2] if scales else "scale_weight"
        raise ConvertError(
            f"{label}: a scaled fp8 checkpoint (per-layer {kind} tensors) cannot be converted: its "
            "weights mean nothing without the scales; use the bf16 file, or an unscaled float8_e4m3fn one"
        )


def _is_class_spec(spec: Any) -> bool:
    return isinstance(spec, list) and len(spec) == 2 and all(isinstance(s, str) for s in spec)


def _class(module: Any, name: str) -> Any:
    """The class `name` of a library, or None (typed Any: these classes are configured dynamically)."""
    cls = getattr(module, name, None)
    return cls if inspect.isclass(cls) else None


def _convert_diffusers(
    class_name: str, folder: Path, checkpoint: dict[str, torch.Tensor], comp: str
) -> dict[str, torch.Tensor] | None:
    import diffusers
    import torch
    from diffusers.loaders.single_file_model import (
        SINGLE_FILE_LOADABLE_CLASSES,
        _get_single_file_loadable_mapping_class,
        _should_convert_state_dict_to_diffusers,
    )

    cls = _class(diffusers, class_name)
    if cls is None:
        return None
    mapping_class = _get_single_file_loadable_mapping_class(cls)
    if mapping_class is None:
        return None
    config = cls.load_config(str(folder), local_files_only=True)
    with torch.device("meta"):
        model = cls.from_config(config)
    expected: dict[str, Any] = model.state_dict()
    loadable: dict[str, Any] = SINGLE_FILE_LOADABLE_CLASSES
    mapping_fn = loadable[mapping_class]["checkpoint_mapping_fn"]
    if _should_convert_state_dict_to_diffusers(expected, checkpoint):
        rows = mapping_class in row_mapping.ROW_MAPPINGS
        scale = row_mapping.mapping_scale(mapping_class, config) if rows else None
        lazy = None if scale is None else row_mapping.map_rows(mapping_fn, checkpoint, config, scale)
        try:
            # Some mapping functions pop keys: each component gets its own copy of the name table.
            converted = lazy if lazy is not None else mapping_fn(checkpoint=dict(checkpoint), config=config)
        except (KeyError, IndexError, ValueError, RuntimeError) as exc:
            raise ConvertError(
                f"{comp}: the checkpoint does not follow the layout {class_name} expects "
                f"({type(exc).__name__}: {exc}){_family_hint(checkpoint)}"
            ) from None
    else:
        converted = dict(checkpoint)
    if not converted:
        return None
    extra = sorted(set(converted) - set(expected))
    if mapping_class in row_mapping.ROW_MAPPINGS and extra:
        # A transformer file maps to one model whole: a weight the config has no place for means
        # another variant (FLUX.1 dev's guidance embedder under a schnell config), never a leftover.
        raise ConvertError(
            f"{comp}: the checkpoint has {len(extra)} weight(s) that {comp}/config.json ({class_name}) "
            f"has no place for, e.g. {extra[0]}{_family_hint(checkpoint)}"
        )
    return _match(converted, expected, comp, class_name)


def _family_hint(checkpoint: dict[str, torch.Tensor]) -> str:
    """What diffusers' own model-type inference reads the file as, and the repo it would take the
    config from: the likely fix when the config repo does not match the checkpoint."""
    from diffusers.loaders import single_file_utils as sfu

    try:
        model_type = str(sfu.infer_diffusers_model_type(checkpoint))
        if model_type == "v1" and sfu.CHECKPOINT_KEY_NAMES["v1"] not in checkpoint:
            return ""  # diffusers' answer when nothing matched
        repo = sfu.DIFFUSERS_DEFAULT_PIPELINE_PATHS[model_type]["pretrained_model_name_or_path"]
    except (KeyError, IndexError, ValueError, RuntimeError, AttributeError):
        return ""
    return f"; diffusers reads the file as {model_type!r} (config: {repo})"


def _convert_clip(
    class_name: str, folder: Path, checkpoint: dict[str, torch.Tensor], comp: str
) -> dict[str, torch.Tensor] | None:
    """diffusers' `create_diffusers_clip_model_from_ldm` branches, without loading the model."""
    import torch
    import transformers
    from diffusers.loaders import single_file_utils as sfu

    cls = _class(transformers, class_name)
    if cls is None or not class_name.startswith("CLIPText"):
        return None
    config = cls.config_class.from_pretrained(str(folder), local_files_only=True)
    with torch.device("meta"):
        model = cls(config)
    has_wrapper = hasattr(model, "text_model")
    text_model = model.text_model if has_wrapper else model
    position_dim = text_model.embeddings.position_embedding.weight.shape[-1]
    keys: dict[str, str] = sfu.CHECKPOINT_KEY_NAMES  # type: ignore[assignment]

    def width(key: str) -> int:
        return int(checkpoint[keys[key]].shape[-1])

    if sfu.is_clip_model(checkpoint) or (
        sfu.is_clip_sdxl_model(checkpoint) and width("clip_sdxl") == position_dim
    ):
        converted = sfu.convert_ldm_clip_checkpoint(checkpoint)
    elif sfu.is_clip_sd3_model(checkpoint) and width("clip_sd3") == position_dim:
        converted = sfu.convert_ldm_clip_checkpoint(checkpoint, "text_encoders.clip_l.transformer.")
        converted["text_projection.weight"] = torch.eye(position_dim)
    elif sfu.is_open_clip_model(checkpoint):
        converted = sfu.convert_open_clip_checkpoint(model, checkpoint, prefix="cond_stage_model.model.")
    elif sfu.is_open_clip_sdxl_model(checkpoint) and width("open_clip_sdxl") == position_dim:
        converted = sfu.convert_open_clip_checkpoint(
            model, checkpoint, prefix="conditioner.embedders.1.model."
        )
    elif sfu.is_open_clip_sdxl_refiner_model(checkpoint):
        converted = sfu.convert_open_clip_checkpoint(
            model, checkpoint, prefix="conditioner.embedders.0.model."
        )
    elif sfu.is_open_clip_sd3_model(checkpoint) and width("open_clip_sd3") == position_dim:
        converted = sfu.convert_ldm_clip_checkpoint(checkpoint, "text_encoders.clip_g.transformer.")
    else:
        return None
    if not has_wrapper:
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return _match(converted, model.state_dict(), comp, class_name)


def _match(
    converted: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], comp: str, class_name: str
) -> dict[str, torch.Tensor]:
    """Keep exactly the weights the model has; refuse missing ones and wrong shapes."""
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise ConvertError(
            f"{comp}: the checkpoint lacks {len(missing)} weight(s) that {comp}/config.json ({class_name}) "
            f"expects, e.g. {missing[0]} (does the config folder match the checkpoint?)"
        )
    for name, meta in expected.items():
        if tuple(converted[name].shape) != tuple(meta.shape):
            raise ConvertError(
                f"{comp}: {name} is {list(converted[name].shape)} in the checkpoint but "
                f"{list(meta.shape)} in {comp}/config.json (does the config folder match the checkpoint?)"
            )
    return {name: converted[name] for name in expected}
