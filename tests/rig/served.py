"""The worker's per-job path in this process: the artifact loaded as `handler.py` loads it, and
`jobs.answer` called directly, so a test can send thousands of jobs and count the pipeline calls."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from artifact_format import manifest as mf
from worker_runtime import config, family, jobs, load


def served_in_process(model_dir: Path, worker_config: dict[str, Any], errors: str = "runpod") -> jobs.Served:
    """The artifact at `model_dir` loaded on the CPU, served with `worker_config` (WORKER_CONFIG)."""
    import diffusers
    import torch

    settings = config.read_settings(
        {"MODEL_DIR": str(model_dir), "WORKER_CONFIG": json.dumps(worker_config), "WORKER_ERRORS": errors}
    )
    manifest = mf.load(model_dir)
    loaded = load.load_pipeline(getattr(diffusers, manifest.pipeline), torch, model_dir, manifest, "cpu")
    call = family.describe(loaded.pipe, settings.worker.defaults)
    return jobs.serve(loaded, manifest, mf.artifact_id_of(model_dir), settings, call, torch, 0.0)


@dataclass(frozen=True)
class Call:
    pipeline: str  # the class whose `__call__` ran
    scheduler: str  # the scheduler set on that pipeline while it ran
    kwargs: dict[str, Any]


@contextmanager
def counting_calls(*classes: type) -> Iterator[list[Call]]:
    """Record every `__call__` of these pipeline classes."""
    calls: list[Call] = []
    originals = {cls: cls.__call__ for cls in classes}

    def wrap(cls: type, original: Any) -> Any:
        @functools.wraps(original)
        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(Call(cls.__name__, type(self.scheduler).__name__, dict(kwargs)))
            return original(self, *args, **kwargs)

        return counted

    for cls, original in originals.items():
        cls.__call__ = wrap(cls, original)  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        for cls, original in originals.items():
            cls.__call__ = original  # type: ignore[method-assign]


@contextmanager
def blank_pipelines(*classes: type) -> Iterator[list[Call]]:
    """Record the calls of these pipeline classes and answer them with blank images of the size
    asked (no inference: a test sending thousands of requests cannot afford seconds each)."""
    originals = {cls: cls.__call__ for cls in classes}

    def blank(self: Any, **kwargs: Any) -> Any:
        from PIL import Image

        image = kwargs.get("image")
        size = image.size if image is not None else (kwargs.get("width", 64), kwargs.get("height", 64))
        return SimpleNamespace(images=[Image.new("RGB", size)] * kwargs.get("num_images_per_prompt", 1))

    for cls, original in originals.items():
        cls.__call__ = functools.wraps(original)(blank)  # type: ignore[method-assign]
    try:
        with counting_calls(*classes) as calls:
            yield calls
    finally:
        for cls, original in originals.items():
            cls.__call__ = original  # type: ignore[method-assign]
