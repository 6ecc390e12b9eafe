"""Which dtype each tensor of each component is stored in: the precision decision, in one place.

The rule is the loader's own: a tensor gets exactly the dtype that loading the source with that
component's class and `from_pretrained(torch_dtype=X)` would give it, so what the worker loads is
what a plain diffusers user would run. That means reading each class's declarations instead of
keeping a table:

- transformers: `_keep_in_fp32_modules` stays fp32 when loading in fp16 only, and
  `_keep_in_fp32_modules_strict` in fp16 and bf16 (both collected from the instantiated model, which
  merges its sub-models' lists); a parameter the model creates in another dtype keeps that dtype.
  The patterns are matched with transformers' own `build_glob_alternation`.
- diffusers: `_keep_in_fp32_modules` at any reduced dtype, matched on a whole dotted name part the
  way `load_model_dict_into_meta` does.

`precision: auto` picks bf16 for pipelines with a transformer denoiser or a T5 encoder (both are
trained in bf16 and overflow in fp16) and fp16 for UNet pipelines. `precision: fp8` stores the
denoiser's Linear and Conv parameters as float8_e4m3fn and everything else as `auto` would; the
worker upcasts layer by layer with diffusers' `apply_layerwise_casting`, given the skip patterns
computed here (the modules that hold no fp8 weights).

Recipes refine it with `precision_overrides`: a component's dtype, or fnmatch patterns of tensor
names within one (`{"*norm*": "fp32"}`); a pattern wins over the class lists, which win over the
component's dtype.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact_format import manifest as mf
from artifact_format.vocab import RECIPE_PRECISIONS as PRECISIONS
from artifact_format.vocab import Precision as ComputePrecision
from artifact_format.vocab import check_precision_overrides
from packager.errors import ConvertError

if TYPE_CHECKING:
    import torch

FP8_STORAGE = "float8_e4m3fn"
# The component names diffusers pipelines give their denoiser (Wan 2.2 has two).
DENOISERS = ("transformer", "transformer_2", "unet")
# Classes known to overflow in fp16 (NaN / black images), which diffusers does not declare: T5
# encoders (trained in bf16, activations past 65504 in the feed-forward) and the Flux / SD3
# transformers (their attention and modulation outputs exceed fp16 at real resolutions).
_FP16_RISK_MODEL_TYPES = ("t5", "umt5", "mt5")
_FP16_RISK_CLASSES = ("FluxTransformer2DModel", "SD3Transformer2DModel")
_T5_CLASS_RE = re.compile(r"^(UM|M)?T5")
# Layer types whose weights go to fp8: the ones diffusers' layerwise casting stores in the storage
# dtype, less nn.Embedding (embeddings stay in the compute dtype).
_FP8_LAYERS = (
    "Linear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
)

Override = str | Mapping[str, str]


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a concrete precision name (`fp16` → torch.float16)."""
    import torch

    table = {
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
        "fp32": torch.float32,
        "fp8": torch.float8_e4m3fn,
    }
    try:
        return table[precision]
    except KeyError:
        raise ConvertError(f"precision: must be one of {', '.join(PRECISIONS)} (got {precision!r})") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ComponentPrecision:
    """The dtype rules of one component, and what the manifest records about them."""

    component: str
    class_name: str
    compute: str  # fp16 / bf16 / fp32: what the component runs in
    storage: str  # the compute precision, or fp8 for a denoiser stored in float8_e4m3fn
    # tensor name → dtype where it differs from `compute` (class keep-lists, fp8, overrides)
    exact: Mapping[str, torch.dtype] = field(default_factory=dict)
    patterns: tuple[tuple[str, str], ...] = ()  # recipe fnmatch overrides, first match wins
    name_rule: Any = None  # name → dtype | None for tensors the model does not declare
    skip_modules_pattern: tuple[str, ...] = ()
    kept_fp32: tuple[str, ...] = ()  # the class's keep-list entries in force at `compute`

    def dtype_for(self, name: str, source: torch.dtype) -> torch.dtype:
        """The dtype `name` is stored in; non-floating tensors keep their own."""
        if not source.is_floating_point:
            return source
        for pattern, precision in self.patterns:
            if fnmatch.fnmatchcase(name, pattern):
                return torch_dtype(precision)
        found = self.exact.get(name)
        if found is not None:
            return found
        if self.name_rule is not None:
            ruled: torch.dtype | None = self.name_rule(name)
            if ruled is not None:
                return ruled
        return torch_dtype(self.compute)

    def record(self) -> mf.ComponentPrecision:
        """The manifest's entry: storage and compute dtype, and for fp8 the modules the worker's
        layerwise casting must skip (they hold no fp8 weights)."""
        compute = dtype_name(torch_dtype(self.compute))
        if self.storage != "fp8":
            return mf.ComponentPrecision(storage=compute, compute=compute)
        return mf.ComponentPrecision(FP8_STORAGE, compute, tuple(self.skip_modules_pattern))


@dataclass(frozen=True)
class PrecisionPlan:
    requested: str
    resolved: str  # what `auto` (or the compute side of fp8) came to: fp16 / bf16 / fp32
    components: Mapping[str, ComponentPrecision]
    warnings: tuple[str, ...] = ()

    def for_component(self, component: str) -> ComponentPrecision:
        found = self.components.get(component)
        if found is None:
            return ComponentPrecision(component, "", self.resolved, self.resolved)
        return found

    def summary(self) -> str:
        """One line for `lock` / `convert` / `validate`: what each component is stored in."""
        parts = []
        for comp, cp in sorted(self.components.items()):
            shown = "fp8" if cp.storage == "fp8" else cp.compute
            parts.append(f"{comp}={shown}")
        head = f"precision: {self.requested}"
        if self.requested != self.resolved:
            head += f" → {self.resolved}"
        kept = [
            f"{comp} ({cp.class_name}) keeps {', '.join(cp.kept_fp32)} in fp32"
            for comp, cp in sorted(self.components.items())
            if cp.kept_fp32
        ]
        return head + (f" ({'; '.join([', '.join(parts), *kept])})" if parts else "")

    def record(self) -> dict[str, mf.ComponentPrecision]:
        return {comp: cp.record() for comp, cp in sorted(self.components.items())}


def check_overrides(overrides: Mapping[str, Override]) -> None:
    """Refuse override values that are not precisions (the recipe validates the same way)."""
    try:
        check_precision_overrides(overrides)
    except ValueError as exc:
        raise ConvertError(f"precision_overrides: {exc}") from None


def component_classes(index: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """model_index.json's components that name a (library, class)."""
    out = {}
    for comp, spec in index.items():
        if comp.startswith("_") or not isinstance(spec, list) or len(spec) != 2:
            continue
        if all(isinstance(s, str) for s in spec):
            out[comp] = (spec[0], spec[1])
    return out


def resolve_auto(index: Mapping[str, Any]) -> ComputePrecision:
    """bf16 for a transformer denoiser or a T5 text encoder, fp16 otherwise (UNet pipelines).

    Decided from model_index.json alone, so `lock` can say it before any config is fetched.
    """
    for comp, (library, class_name) in component_classes(index).items():
        if library == "diffusers" and comp in DENOISERS and comp != "unet":
            return "bf16"
        if library == "transformers" and _T5_CLASS_RE.search(class_name):
            return "bf16"
    return "fp16"


def plan_precision(
    index: Mapping[str, Any],
    config_root: Path,
    precision: str,
    overrides: Mapping[str, Override] | None = None,
    dropped: frozenset[str] | set[str] = frozenset(),
) -> PrecisionPlan:
    """Every weighted component's dtype rules for `precision` (auto / fp16 / bf16 / fp32 / fp8).

    Args:
        index: model_index.json.
        config_root: folder holding `<component>/config.json`.
        precision: the recipe's precision.
        overrides: the recipe's `precision_overrides`.
        dropped: components left out of the artifact.

    Raises:
        ConvertError: an unknown precision, an override naming no component, fp8 on a component that
            is not the denoiser, or a denoiser class diffusers does not have.
    """
    overrides = dict(overrides or {})
    check_overrides(overrides)
    torch_dtype(precision if precision != "auto" else "fp16")  # refuses unknown names
    classes = {c: v for c, v in component_classes(index).items() if c not in dropped}
    weighted = {c: v for c, v in classes.items() if (config_root / c / "config.json").is_file()}
    for comp in overrides:
        if comp not in weighted:
            raise ConvertError(
                f"precision_overrides: {comp!r} is not a component with weights "
                f"(components: {', '.join(sorted(weighted)) or 'none'})"
            )
    resolved: str = resolve_auto(index) if precision in ("auto", "fp8") else precision
    if precision == "fp8" and not any(c in weighted for c in DENOISERS):
        raise ConvertError("precision: fp8 stores a denoiser in fp8, and this pipeline has none")
    components: dict[str, ComponentPrecision] = {}
    warnings: list[str] = []
    for comp, (library, class_name) in sorted(weighted.items()):
        value = overrides.get(comp)
        compute, storage = _component_precision(comp, precision, resolved, value, index)
        patterns = tuple(value.items()) if value is not None and not isinstance(value, str) else ()
        explicit_fp16 = (precision == "fp16" and value is None) or value == "fp16"
        risk = _fp16_risk(config_root, comp, library, class_name) if explicit_fp16 else ""
        if risk:
            warnings.append(f"warning: {comp} ({class_name}) in fp16: {risk}; use precision: auto or bf16")
        folder = config_root / comp
        if library == "transformers":
            cp = _transformers_rules(comp, class_name, folder, compute, patterns)
        elif library == "diffusers":
            cp = _diffusers_rules(comp, class_name, folder, compute, storage, patterns)
        else:
            cp = ComponentPrecision(comp, class_name, compute, compute, patterns=patterns)
        components[comp] = cp
    return PrecisionPlan(precision, resolved, components, tuple(warnings))


def _component_precision(
    comp: str, precision: str, resolved: str, value: Override | None, index: Mapping[str, Any]
) -> tuple[str, str]:
    """(compute, storage) of one component: the recipe's precision, or its override."""
    storage = "fp8" if precision == "fp8" and comp in DENOISERS else resolved
    if value == "fp8":
        if comp not in DENOISERS:
            raise ConvertError(
                f"precision_overrides.{comp}: fp8 applies to the denoiser only ({', '.join(DENOISERS)})"
            )
        return resolve_auto(index), "fp8"
    if isinstance(value, str):
        return value, value
    return resolved, storage


def _model_type(config_root: Path, comp: str, class_name: str) -> str:
    path = config_root / comp / "config.json"
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError):
        config = {}
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if isinstance(model_type, str):
        return model_type
    return "t5" if "T5" in class_name else ""


def _fp16_risk(config_root: Path, comp: str, library: str, class_name: str) -> str:
    if library == "transformers" and _model_type(config_root, comp, class_name) in _FP16_RISK_MODEL_TYPES:
        return "T5 encoders overflow fp16 (NaN embeddings, black images)"
    if library == "diffusers" and class_name in _FP16_RISK_CLASSES:
        return "this transformer's activations overflow fp16 (NaN latents, black images)"
    return ""


def _library_class(library: str, class_name: str, comp: str) -> Any:
    import inspect

    if library == "transformers":
        import transformers as lib
    else:
        import diffusers as lib  # type: ignore[no-redef]
    cls = getattr(lib, class_name, None)
    if not inspect.isclass(cls):
        raise ConvertError(f"{comp}: {library} has no class {class_name!r} (model_index.json)")
    return cls


def _diffusers_rules(
    comp: str,
    class_name: str,
    folder: Path,
    compute: str,
    storage: str,
    patterns: tuple[tuple[str, str], ...],
) -> ComponentPrecision:
    """diffusers keeps `_keep_in_fp32_modules` in fp32 at any reduced dtype (whole name parts)."""
    import torch

    cls = _library_class("diffusers", class_name, comp)
    keep = list(getattr(cls, "_keep_in_fp32_modules", None) or [])
    reduced = compute != "fp32"

    def name_rule(name: str) -> torch.dtype | None:
        parts = name.split(".")
        if reduced and any(m in parts for m in keep):
            return torch.float32
        return None

    exact: dict[str, torch.dtype] = {}
    skip: tuple[str, ...] = ()
    if storage == "fp8":
        exact, skip = _fp8_layers(cls, folder, keep, patterns, comp)
    rule = name_rule if keep and reduced else None
    kept = tuple(keep) if reduced else ()
    return ComponentPrecision(comp, class_name, compute, storage, exact, patterns, rule, skip, kept)


def _fp8_layers(
    cls: Any, folder: Path, keep: list[str], patterns: tuple[tuple[str, str], ...], comp: str
) -> tuple[dict[str, torch.dtype], tuple[str, ...]]:
    """fp8 for the parameters of every Linear / Conv layer; the skip patterns for the rest.

    The hook casts whole modules, so a layer is fp8 only when all its parameters are: one kept in
    fp32 by the class or named by a recipe pattern leaves the layer in its compute dtype, skipped.
    """
    import torch

    config = cls.load_config(str(folder), local_files_only=True)
    with torch.device("meta"):
        model = cls.from_config(config)
    exact: dict[str, torch.dtype] = {}
    skipped: set[str] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding):
            skipped.add(mod_name)
            continue
        if not any(isinstance(module, getattr(torch.nn, layer)) for layer in _FP8_LAYERS):
            continue
        params = [f"{mod_name}.{p}" for p, _ in module.named_parameters(recurse=False)]
        held = any(any(fnmatch.fnmatchcase(n, p) for p, _ in patterns) for n in params) or any(
            m in mod_name.split(".") for m in keep
        )
        if held:
            skipped.add(mod_name)
            continue
        for n in params:
            exact[n] = torch.float8_e4m3fn
    if not exact:
        raise ConvertError(f"{comp}: precision fp8 found no Linear or Conv layer in {cls.__name__}")
    return exact, _skip_patterns(skipped)


def _skip_patterns(modules: set[str]) -> tuple[str, ...]:
    """Anchored regexes for module names, block indices generalised (`blocks\\.\\d+\\.x`)."""
    out = set()
    for name in modules:
        parts = [r"\d+" if p.isdigit() else re.escape(p) for p in name.split(".")]
        out.add("^" + r"\.".join(parts) + "$")
    return tuple(sorted(out))


def _transformers_rules(
    comp: str, class_name: str, folder: Path, compute: str, patterns: tuple[tuple[str, str], ...]
) -> ComponentPrecision:
    """transformers' dtype plan for `compute`, from the model instantiated on the meta device."""
    import torch

    cls = _library_class("transformers", class_name, comp)
    dtype = torch_dtype(compute)
    config = cls.config_class.from_pretrained(str(folder), local_files_only=True)
    # As from_pretrained builds it: the dtype given to the config and as the default, so a
    # parameter the model creates in another dtype on purpose shows up as such.
    with torch.device("meta"):
        model = cls._from_config(config, dtype=dtype)
    plan: dict[str, torch.dtype] = model._get_dtype_plan(dtype)
    exact: dict[str, torch.dtype] = {}
    matcher = None
    if plan:
        from transformers.core_model_loading import build_glob_alternation

        matcher, by_group, _ = build_glob_alternation(list(plan))
    for name, tensor in model.state_dict().items():
        if matcher is not None and (found := matcher.search(name)) is not None:
            exact[name] = plan[by_group[str(found.lastgroup)]]
        elif tensor.is_floating_point() and tensor.dtype != dtype:
            exact[name] = tensor.dtype

    def name_rule(name: str) -> torch.dtype | None:
        if matcher is not None and (found := matcher.search(name)) is not None:
            return plan[by_group[str(found.lastgroup)]]
        return None

    kept = tuple(sorted(p for p, d in plan.items() if d == torch.float32 and dtype != torch.float32))
    return ComponentPrecision(comp, class_name, compute, compute, exact, patterns, name_rule, kept_fp32=kept)
