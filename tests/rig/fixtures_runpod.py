"""pytest fixtures: runpod (see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.runpod_api import RunPodStandIn


@pytest.fixture
def runpod_api() -> Iterator[RunPodStandIn]:
    """A fresh RunPod REST v2 stand-in on 127.0.0.1 (its URL goes in RUNPOD_API_BASE_URL)."""
    with RunPodStandIn() as api:
        yield api


@pytest.fixture
def volume_mount(tmp_path: Path) -> Path:
    """An empty folder standing for a worker's network volume mount (`/runpod-volume` on RunPod)."""
    path = tmp_path / "runpod-volume"
    path.mkdir()
    return path
