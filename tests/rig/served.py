"""The worker's per-job path in this process: the artifact loaded as `handler.py` loads it, and
`jobs.answer` called directly, so a test can send thousands of jobs and count the pipeline calls."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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


@contextmanager
def counting_calls(*classes: type) -> Iterator[list[str]]:
    """Count every `__call__` of these pipeline classes (the list gets each call's class name)."""
    calls: list[str] = []
    originals = {cls: cls.__call__ for cls in classes}

    def wrap(cls: type, original: Any) -> Any:
        @functools.wraps(original)
        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(cls.__name__)
            return original(self, *args, **kwargs)

        return counted

    for cls, original in originals.items():
        cls.__call__ = wrap(cls, original)  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        for cls, original in originals.items():
            cls.__call__ = original  # type: ignore[method-assign]
