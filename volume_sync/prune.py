"""Remove older artifacts of a model from a network volume, keeping the newest few.

"Newest" is by `.ready` time: when the artifact became usable on this volume. An artifact that a
worker is pulling right now (its lock is held) or that the caller protects (the one deployed) is
never removed, and neither is one without `.ready`, which may be a seed still arriving over S3.
Removal takes `.ready` away first, so a worker starting meanwhile sees the artifact as absent
rather than as half gone.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from artifact_format import manifest as mf
from volume_sync.lock import is_held
from volume_sync.pull import DEFAULT_LOCK_STALE_S, is_ready, lock_path
from volume_sync.verify import artifact_dirs


@dataclass(frozen=True)
class Decision:
    name: str
    artifact_id: str
    action: str  # "keep", "remove", "protected", "locked"


def plan_prune(
    mount: str | os.PathLike[str],
    keep: int,
    *,
    name: str | None = None,
    protect: tuple[str, ...] = (),
    lock_stale_s: float = DEFAULT_LOCK_STALE_S,
) -> list[Decision]:
    """What `prune` would do with every complete artifact, newest first per model."""
    by_model: dict[str, list[tuple[float, Path]]] = defaultdict(list)
    for model, path in artifact_dirs(mount, name):
        if is_ready(path):
            by_model[model].append(((path / mf.READY_MARKER).stat().st_mtime, path))
    decisions = []
    for model in sorted(by_model):
        ranked = sorted(by_model[model], key=lambda item: (-item[0], item[1].name))
        for rank, (_, path) in enumerate(ranked):
            artifact_id = path.name
            if rank < keep:
                action = "keep"
            elif any(artifact_id.startswith(p) for p in protect):
                action = "protected"
            elif is_held(lock_path(mount, model, artifact_id), lock_stale_s):
                action = "locked"
            else:
                action = "remove"
            decisions.append(Decision(model, artifact_id, action))
    return decisions


def stale_staging(
    mount: str | os.PathLike[str], name: str | None = None, lock_stale_s: float = DEFAULT_LOCK_STALE_S
) -> list[tuple[str, Path]]:
    """(model, folder) of what failed pulls and prunes left on the volume: `.<id>.partial` staging
    that no live pull holds the lock of, and `.<id>.deleting<pid>` folders of an interrupted prune."""
    models = Path(mount) / mf.VOLUME_MODELS_DIR
    found = []
    for model in sorted(models.iterdir()) if models.is_dir() else []:
        if not model.is_dir() or model.name.startswith(".") or name not in (None, model.name):
            continue
        for path in sorted(model.glob(".*")):
            artifact_id = path.name[1:].split(".", 1)[0]
            if not (path.is_dir() and mf.is_artifact_id(artifact_id)):
                continue
            staging = path.name == f".{artifact_id}.partial"
            if staging and is_held(lock_path(mount, model.name, artifact_id), lock_stale_s):
                continue
            if staging or path.name.startswith(f".{artifact_id}.deleting"):
                found.append((model.name, path))
    return found


def remove_artifact(mount: str | os.PathLike[str], name: str, artifact_id: str) -> None:
    """Un-ready the artifact, move it aside (one rename), then delete it."""
    path = mf.volume_path(mount, name, artifact_id)
    (path / mf.READY_MARKER).unlink(missing_ok=True)
    doomed = path.with_name(f".{artifact_id}.deleting{os.getpid()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed)
