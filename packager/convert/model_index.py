"""model_index.json for the artifact: dropped components, pipeline and scheduler overrides, and the
classes it names, each checked against the installed diffusers/transformers before any weight is
written (a class the worker cannot import would otherwise fail only when a worker starts)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from artifact_format.vocab import (
    MODEL_INDEX,
)
from packager.convert.settings import ConvertSettings
from packager.errors import ConvertError


@dataclass
class PipelinePlan:
    pipeline: str
    index_bytes: bytes | None  # rewritten model_index.json, None to copy it unchanged
    scheduler_record: dict[str, Any]


def plan_pipeline(index: dict[str, Any], settings: ConvertSettings) -> PipelinePlan:
    """Apply drops and overrides to model_index.json; check them against diffusers when needed."""
    components = {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)}
    for comp in settings.drop:
        if comp not in components:
            raise ConvertError(
                f"components.drop: {comp!r} is not a component of this pipeline "
                f"(components: {', '.join(sorted(components))})"
            )
    pipeline = settings.pipeline or str(index.get("_class_name", ""))
    if not pipeline:
        raise ConvertError(f"{MODEL_INDEX}: no _class_name (not a diffusers pipeline)")
    new_index = dict(index)
    for comp in settings.drop:
        new_index[comp] = [None, None]
    if "safety_checker" in settings.drop and "requires_safety_checker" in new_index:
        new_index["requires_safety_checker"] = False
    new_index["_class_name"] = pipeline
    source_scheduler = index.get("scheduler")
    source_class = (
        source_scheduler[1] if isinstance(source_scheduler, list) and len(source_scheduler) == 2 else None
    )
    record: dict[str, Any] = {"class": source_class, "overridden": False}
    # Costs a diffusers import (seconds), worth it: a bad class or drop would otherwise surface
    # only when a worker fails to load the model.
    _check_pipeline_components(pipeline, new_index, settings)
    check_component_classes(new_index, skip={"scheduler"} if settings.scheduler else set())
    if settings.scheduler:
        if source_class is None:
            raise ConvertError("scheduler: this pipeline has no scheduler component to replace")
        new_index["scheduler"] = ["diffusers", settings.scheduler]
        record = {"class": settings.scheduler, "overridden": True, "source_class": source_class}
    changed = new_index != index
    return PipelinePlan(
        pipeline=pipeline,
        index_bytes=(json.dumps(new_index, indent=2, sort_keys=True) + "\n").encode() if changed else None,
        scheduler_record=record,
    )


def _check_pipeline_components(pipeline: str, index: dict[str, Any], settings: ConvertSettings) -> None:
    """Refuse a pipeline class diffusers does not have, or drops it cannot load without."""
    import diffusers

    cls = getattr(diffusers, pipeline, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise ConvertError(f"pipeline: {pipeline!r} is not a diffusers pipeline class")
    expected, _optional = cls._get_signature_keys(cls)
    optional = set(getattr(cls, "_optional_components", []) or [])
    required = set(expected) - optional
    for comp in settings.drop:
        if comp in required:
            raise ConvertError(
                f"components.drop: {pipeline} cannot run without {comp!r} "
                f"(optional components: {', '.join(sorted(optional)) or 'none'})"
            )
    present = {k for k, v in index.items() if isinstance(v, list) and v != [None, None]}
    missing = sorted(required - present - set(settings.drop))
    if missing and settings.pipeline:
        raise ConvertError(f"pipeline: {pipeline} needs components this model lacks: {', '.join(missing)}")


def check_component_classes(index: dict[str, Any], skip: Collection[str] = ()) -> None:
    """Every `component: [library, class]` of model_index.json names a class that exists where the
    worker's diffusers looks for it: a diffusers pipeline module (`stable_diffusion`), else an
    importable library (`diffusers`, `transformers`)."""
    from diffusers import pipelines

    for comp, value in sorted(index.items()):
        if comp.startswith("_") or comp in skip or not isinstance(value, list) or value == [None, None]:
            continue
        if len(value) != 2 or not all(isinstance(v, str) for v in value):
            raise ConvertError(
                f"{MODEL_INDEX}: {comp}: expected [library, class], got {json.dumps(value)[:80]}"
            )
        library, class_name = value
        top = "diffusers" if hasattr(pipelines, library) else library.split(".")[0]
        try:
            module = getattr(pipelines, library) if top == "diffusers" and library != "diffusers" else None
            module = module or importlib.import_module(library)
        except ImportError:
            raise ConvertError(f"{MODEL_INDEX}: {comp}: library {library!r} is not installed") from None
        # dir() of diffusers' and transformers' lazy modules lists every public name without
        # importing each model's module (seconds, and warnings about optional backends).
        if class_name not in dir(module):
            version = getattr(importlib.import_module(top), "__version__", "")
            raise ConvertError(
                f"{MODEL_INDEX}: {comp}: class {library}.{class_name} does not exist in the installed "
                f"{top} {version}".rstrip()
            )


def scheduler_override(src_config: dict[str, Any], class_name: str) -> bytes:
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ConvertError(f"scheduler: {class_name!r} is not a diffusers scheduler class")
    try:
        scheduler = cls.from_config(src_config)
    except Exception as exc:  # diffusers raises plain ValueError/TypeError for incompatible configs
        raise ConvertError(
            f"scheduler: {class_name} cannot be built from the source config ({exc})"
        ) from None
    return str(scheduler.to_json_string()).encode()
