"""Check every artifact on a network volume against its manifest, hashing every byte.

Workers check sizes at start (cheap); this is the slow, complete check to run from a pod after a
seed, or when a worker reports weights it cannot load.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from artifact_format import manifest as mf
from volume_sync.pull import is_ready


@dataclass(frozen=True)
class Finding:
    name: str
    artifact_id: str
    status: str  # "ok", "failed" or "incomplete"
    detail: str = ""


def artifact_dirs(mount: str | os.PathLike[str], name: str | None = None) -> Iterator[tuple[str, Path]]:
    """(name, dir) of every artifact directory on the volume, complete or not, sorted."""
    models = Path(mount) / mf.VOLUME_MODELS_DIR
    if not models.is_dir():
        return
    for model in sorted(models.iterdir()):
        if not model.is_dir() or model.name.startswith(".") or (name is not None and model.name != name):
            continue
        for path in sorted(model.iterdir()):
            if path.is_dir() and mf.is_artifact_id(path.name):
                yield model.name, path


def verify_volume(mount: str | os.PathLike[str]) -> list[Finding]:
    """One finding per artifact directory; an artifact without `.ready` is reported, not checked."""
    findings = []
    for name, path in artifact_dirs(mount):
        if not is_ready(path):
            findings.append(Finding(name, path.name, "incomplete", f"no {mf.READY_MARKER}"))
            continue
        try:
            if mf.artifact_id_of(path) != path.name:
                raise mf.ManifestError(f"{path / mf.MANIFEST_NAME}: does not hash to the directory's id")
            manifest = mf.check(path, full_hash=True)
            if manifest.name != name:
                raise mf.ManifestError(f"{path}: the manifest names model {manifest.name!r}")
        except (mf.ManifestError, OSError) as exc:
            findings.append(Finding(name, path.name, "failed", str(exc)))
            continue
        findings.append(Finding(name, path.name, "ok", f"{len(manifest.files)} files"))
    return findings
