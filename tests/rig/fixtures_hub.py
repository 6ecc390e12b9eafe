"""pytest fixtures: a local Hugging Face hub serving every fixture layout (see tests/conftest.py).

- `hub_layouts` (session): the fixture repos on disk (tests/rig/layouts.py), built once and cached
  under build/test-cache/ keyed by the rig's sources and library versions, so later sessions start
  in milliseconds.
- `local_hub` (session): the server (tests/rig/localhub.py) with every layout published.
- `hub` (per test): the same server, with this process pointed at it: HF_ENDPOINT, a fresh empty
  HF_HOME / HF_HUB_CACHE, telemetry off, no HF_TOKEN; request counters reset.
- `hub_env` (per test): the environment for running `packager` in a subprocess, like a user.

huggingface_hub reads HF_ENDPOINT and the cache paths into `huggingface_hub.constants` when it is
first imported, so for in-process calls we patch those constants as well as the environment;
subprocesses simply get the environment.

Tests that change a repo (move a branch) work on `hub.fork_repo(...)` copies so that other tests
keep seeing the published layouts.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.layouts import RepoLayout, build_layouts, layouts_key, publish
from tests.rig.localhub import DEFAULT_TOKEN, LocalHub

REPO_ROOT = Path(__file__).resolve().parents[2]
HUB_TOKEN = DEFAULT_TOKEN
# Variables a user's shell may carry that would send the tests somewhere else.
_CLEARED = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "XDG_CACHE_HOME",
    "HF_TOKEN_PATH",
)


@pytest.fixture(scope="session")
def hub_layouts() -> dict[str, RepoLayout]:
    cache = Path(os.environ.get("PACKAGER_TEST_CACHE", REPO_ROOT / "build" / "test-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    current = cache / f"hub-layouts-{layouts_key()}"
    for stale in cache.glob("hub-layouts-*"):
        if stale != current and not stale.name.startswith(f"{current.name}.tmp"):
            shutil.rmtree(stale, ignore_errors=True)  # built by older rig sources or libraries
    return build_layouts(current)


@pytest.fixture(scope="session")
def local_hub(
    hub_layouts: dict[str, RepoLayout], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalHub]:
    with LocalHub(tmp_path_factory.mktemp("localhub-blobs")) as server:
        publish(server, hub_layouts)
        yield server


def hub_environment(hub_url: str, hf_home: Path) -> dict[str, str]:
    """os.environ minus anything hub-related a user may have set, pointed at `hub_url`."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(
        HF_ENDPOINT=hub_url,
        HF_HOME=str(hf_home),
        HF_HUB_CACHE=str(hf_home / "hub"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        # The rig serves uploads through git LFS only; huggingface_hub's own switch keeps it off Xet.
        HF_HUB_DISABLE_XET="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


@pytest.fixture
def hub(local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """The local hub, with this process's huggingface_hub pointed at it and an empty cache."""
    from huggingface_hub import constants

    hf_home = tmp_path / "hf-home"
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    for key, value in hub_environment(local_hub.url, hf_home).items():
        if key.startswith("HF_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "ENDPOINT", local_hub.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", local_hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    local_hub.reset_stats()
    return local_hub


@pytest.fixture
def hub_env(hub: LocalHub, tmp_path: Path) -> dict[str, str]:
    """Environment for `packager` subprocesses: the same hub and HF cache as the `hub` fixture."""
    return hub_environment(hub.url, tmp_path / "hf-home")


def write_recipe(folder: Path, body: str, name: str = "model") -> Path:
    """A recipe file `<folder>/<name>.yaml` (its lock will be `<name>.lock` beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(body)
    return path
