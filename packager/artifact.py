"""Recipe → artifact on local disk: lock, fetch and convert, each only when needed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packager.recipe import LoadedRecipe
from packager.settings import build_dir
from worker_runtime.manifest import Manifest


@dataclass(frozen=True)
class Artifact:
    name: str
    id: str
    dir: Path
    manifest: Manifest


def artifact_dir(name: str, artifact_id: str) -> Path:
    """Default local home of an artifact: build/artifacts/<name>/<artifact-id>/."""
    return build_dir() / "artifacts" / name / artifact_id


def known_artifact_id(loaded: LoadedRecipe, *, frozen: bool = False) -> str | None:
    """The artifact id the lock records for the recipe's current settings, without converting.

    None when the lock is missing, stale, or has never been converted.
    """
    raise NotImplementedError("lands with the lock")


def ensure_artifact(loaded: LoadedRecipe, *, frozen: bool = False, quiet: bool = False) -> Artifact:
    """The recipe's artifact on local disk, locking, fetching and converting only what is missing."""
    raise NotImplementedError("lands with lock/fetch/convert")
