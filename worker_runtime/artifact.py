"""Find the artifact this worker serves, pull it onto the network volume when it is missing, check it.

Baked images set MODEL_DIR to the artifact inside the image. Volume-mode endpoints set MODEL_DIR to
`<mount>/models/<name>/<id>` and ARTIFACT_URI to the artifact's prefix in the store: the first
worker to start on an empty volume pulls it (volume_sync takes a lock on the volume so that
concurrent workers download it once) and the others wait for its `.ready` marker. Cached-mode
images set MODEL_REPO and MODEL_COMMIT instead, and the artifact is RunPod's copy in the HF cache
(worker_runtime/hf_cache.py).

Everything here is stdlib plus the manifest module, and runs before torch is imported: a broken
artifact is reported in milliseconds, not after seconds of imports. The sha256 of every weight
byte is checked by the threads that read the weights while torch imports (`start_reading`), and
the worker waits for that verdict before it loads.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from artifact_format import manifest as mf
from worker_runtime import hf_cache, readahead, storage
from worker_runtime.config import Settings
from worker_runtime.errors import StartError


@dataclass(frozen=True)
class Located:
    dir: Path
    manifest: mf.Manifest
    artifact_id: str
    pulled_s: float  # seconds spent pulling onto the volume (0 when it was there)


def is_under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def model_dir_of(settings: Settings) -> Path:
    """MODEL_DIR, or the volume path that ARTIFACT_URI names when MODEL_DIR is unset."""
    if settings.model_dir is not None:
        return settings.model_dir
    if settings.artifact_uri:
        parts = settings.artifact_uri.rstrip("/").split("/")
        if len(parts) >= 2 and mf.is_artifact_id(parts[-1]):
            return mf.volume_path(settings.volume_mount, parts[-2], parts[-1])
        raise StartError(
            f"ARTIFACT_URI={settings.artifact_uri}: expected the artifact's store prefix ending in "
            "<name>/<artifact-id>"
        )
    raise StartError("MODEL_DIR is not set (the artifact directory; see worker_runtime/handler.py)")


def locate(settings: Settings) -> Located:
    """The checked artifact: manifest parsed, every file present at its size (hashes: start_reading).

    Raises StartError with one line naming the directory or the first bad file.
    """
    cached = hf_cache.find(settings)  # RunPod's cached model: read in place, never written
    model_dir = cached or model_dir_of(settings)
    on_volume = cached is None and is_under(model_dir, settings.volume_mount)
    pulled_s = 0.0
    if on_volume and not (model_dir / mf.READY_MARKER).is_file():
        if not settings.artifact_uri:
            raise StartError(
                f"{model_dir}: artifact not on the volume (no {mf.READY_MARKER}) and ARTIFACT_URI is "
                "not set, so it cannot be pulled"
            )
        pulled_s = _pull(settings, model_dir)
    try:
        manifest = mf.check(model_dir)
    except mf.ManifestError as exc:
        raise StartError(str(exc)) from None
    return Located(model_dir, manifest, mf.artifact_id_of(model_dir), pulled_s)


def start_reading(located: Located, settings: Settings) -> readahead.Readahead | None:
    """Start the threads that read (and, by default, hash) the weight files while imports run.

    On a network filesystem the files are read into memory for the loader (storage.py); elsewhere
    into the page cache. None when neither reading ahead nor hashing is wanted.
    """
    weights = {located.dir / f.path: f.sha256 for f in located.manifest.weight_files}
    keep = storage.choose(located.dir) == "parallel"
    if not (settings.readahead or settings.verify_hashes or keep):
        return None
    expected = weights if settings.verify_hashes else None
    return readahead.start(sorted(weights), expected, keep=keep)


def _pull(settings: Settings, model_dir: Path) -> float:
    assert settings.artifact_uri is not None
    started = time.perf_counter()
    print(
        f"worker: {model_dir} is not on the volume yet; pulling {settings.artifact_uri} "
        f"(timeout {settings.pull_timeout_s:g}s)",
        file=sys.stderr,
        flush=True,
    )
    try:
        # Imported here: boto3 costs a few hundred ms and baked images never need it.
        from volume_sync.pull import PullError, pull
    except ImportError as exc:
        raise StartError(f"volume_sync is not installed in this image ({exc}); cannot pull") from None
    try:
        got = pull(settings.artifact_uri, settings.volume_mount, timeout_s=settings.pull_timeout_s)
    except PullError as exc:
        raise StartError(f"pull {settings.artifact_uri}: {exc}") from None
    if got.resolve() != model_dir.resolve():
        raise StartError(
            f"ARTIFACT_URI={settings.artifact_uri} was pulled to {got}, not MODEL_DIR={model_dir}: "
            "the two name different artifacts"
        )
    return time.perf_counter() - started


def explain_load_failure(located: Located, exc: BaseException) -> str:
    """One line for a load that failed although every file had its size: name the damaged file.

    Only this path pays for hashing every file; a healthy start never does.
    """
    try:
        mf.check(located.dir, located.manifest, full_hash=True)
    except mf.ManifestError as bad:
        return str(bad)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{located.dir}: loading {located.manifest.pipeline} failed: {type(exc).__name__}: {first[:300]}"
