"""Free-space checks before long stages: failing in the first second beats failing at 95 %."""

from __future__ import annotations

import shutil
from pathlib import Path

from packager.errors import DiskSpaceError
from packager.output import human_bytes

# Headroom on top of the bytes a stage writes: temp files, filesystem overhead, other writers.
SAFETY_MARGIN_BYTES = 256 * 1024 * 1024


def require_free(path: Path, needed: int, stage: str) -> None:
    """Raise DiskSpaceError (one line) when `path`'s filesystem has less than `needed` + margin free."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + SAFETY_MARGIN_BYTES:
        raise DiskSpaceError(
            f"{stage}: needs about {human_bytes(needed)} on {probe} but only {human_bytes(free)} is free"
        )
