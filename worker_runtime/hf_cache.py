"""Find the artifact RunPod's cached-models feature put on the host, in the Hugging Face cache layout.

A cached-mode endpoint names a hub repo pinned to a commit; RunPod downloads that commit onto the
host's local disk before the worker starts and exposes it as a standard HF cache:
`$HF_HUB_CACHE/models--{org}--{name}/snapshots/{commit}/`, whose entries are symlinks into `blobs/`.
The image carries MODEL_REPO and MODEL_COMMIT; this module turns them into that folder.

The folder is RunPod's, not ours: nothing here writes into it (no `.ready` marker, no pull). It is
an artifact like any other once found: `artifact.locate` checks it against its manifest (stat
follows the symlinks) and the worker loads it in place.

Standard library only, like the rest of the start path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from artifact_format import manifest as mf
from worker_runtime.config import Settings
from worker_runtime.errors import StartError

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def repo_folder(repo_id: str) -> str:
    """The cache folder name huggingface_hub gives a model repo: `models--org--name`."""
    return "models--" + repo_id.replace("/", "--")


def snapshot_dir(cache: Path, repo_id: str, commit: str) -> Path:
    return cache / repo_folder(repo_id) / "snapshots" / commit


def find(settings: Settings) -> Path | None:
    """The cached snapshot to serve, or None when this is not a cached-mode start.

    None also when the commit is missing but ARTIFACT_URI is set and a writable volume is
    mounted: the caller then pulls it there, as volume mode does. Otherwise a missing commit is a
    StartError naming the repo, the commit and the folder looked in.
    """
    if settings.model_dir is not None or not (settings.model_repo or settings.model_commit):
        return None
    repo, commit = settings.model_repo, settings.model_commit
    if not repo or not _REPO_RE.match(repo):
        raise StartError(f"MODEL_REPO={repo or ''}: expected a hub repo id org/name (set with MODEL_COMMIT)")
    if not commit or not _COMMIT_RE.match(commit):
        raise StartError(
            f"MODEL_COMMIT={commit or ''}: expected the 40-hex commit of {repo} (a branch would not pin it)"
        )
    folder = snapshot_dir(settings.hf_hub_cache, repo, commit)
    if (folder / mf.MANIFEST_NAME).is_file():
        return folder
    if settings.artifact_uri and _writable_dir(settings.volume_mount):
        return None
    raise StartError(
        f"{repo}@{commit}: not in the Hugging Face cache (looked in {folder}); is the endpoint's cached "
        "model set to this repo and commit?"
    )


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)
