"""An artifact on local disk: a converted diffusers folder with its manifest, named by its id.

Every later stage (store, volume, image) takes one of these; where it lives by default is here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from artifact_format import manifest as mf
from packager.settings import build_dir


@dataclass(frozen=True)
class Artifact:
    name: str
    id: str
    dir: Path
    manifest: mf.Manifest


def artifact_dir(name: str, artifact_id: str) -> Path:
    """Default local home of an artifact: build/artifacts/<name>/<artifact-id>/."""
    return build_dir() / "artifacts" / name / artifact_id


def local_artifact(name: str, artifact_id: str) -> Artifact | None:
    """The artifact if it is complete on local disk (manifest present, every file the right size)."""
    folder = artifact_dir(name, artifact_id)
    if not (folder / mf.MANIFEST_NAME).exists():
        return None
    try:
        manifest = mf.check(folder)
    except mf.ManifestError:
        return None
    return Artifact(name=name, id=artifact_id, dir=folder, manifest=manifest)
