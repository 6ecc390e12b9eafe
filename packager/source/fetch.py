"""Locked source → the exact files on local disk, verified against the lock.

Hub files go into the normal Hugging Face cache through `snapshot_download` with the lock's exact
file list as `allow_patterns`, pinned to the locked commit: files a user already has are not
downloaded again, and nothing the pipeline does not need (root checkpoints, onnx, flax, the other
weight format) is ever requested. Local `path` sources are used where they are. Single-file
checkpoints come from the recipe's file, or from a `url` cached under `$HF_HOME/packager-downloads/`.

Verification: sizes of every file, always (cheap); sha256 of every file downloaded by this run and
of local files whose size or mtime moved since they were locked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifact_format.manifest import ManifestError, safe_relpath, sha256_file
from packager.errors import FetchError
from packager.source import hub
from packager.source.lock import CHECKPOINT_KEY, Lock, config_source
from packager.source.recipe import LoadedRecipe


@dataclass
class FetchResult:
    """Where the fetched files are.

    `root` holds `files` at their repo-relative paths: the HF cache snapshot for hub sources, the
    folder itself for `path` sources, the config folder for single-file sources (whose weights are
    `checkpoint`). `root` may hold other files too (an earlier fetch of other files of the same
    commit); only `files` belong to this recipe.
    """

    root: Path
    files: list[str]
    checkpoint: Path | None
    bytes_downloaded: int


def fetch(loaded: LoadedRecipe, lock: Lock, *, quiet: bool) -> FetchResult:
    """Make the lock's files present locally and check them.

    Raises HubError (hub unreachable, gated, ...) or FetchError (a file is unsafe, missing, or does
    not match the lock).
    """
    for rel in lock.files:
        _check_relpath(rel)
    if lock.kind == "hub":
        root, downloaded = _fetch_hub(
            str(lock.source["repo"]), str(lock.source["commit"]), lock.files, quiet=quiet
        )
        return FetchResult(root, sorted(lock.files), None, downloaded)
    if lock.kind == "path":
        assert loaded.recipe.source.path is not None
        root = loaded.resolve(loaded.recipe.source.path).resolve()
        _verify_local(root, lock.files, lock.stat_cache)
        return FetchResult(root, sorted(lock.files), None, 0)
    return _fetch_single_file(loaded, lock, quiet=quiet)


def _fetch_single_file(loaded: LoadedRecipe, lock: Lock, *, quiet: bool) -> FetchResult:
    config = lock.source["config"]
    downloaded = 0
    if config["kind"] == "hub":
        root, downloaded = _fetch_hub(str(config["repo"]), str(config["commit"]), lock.files, quiet=quiet)
    else:
        _, ref = config_source(loaded)
        root = Path(ref)
        _verify_local(root, lock.files, lock.stat_cache)
    locked: dict[str, Any] = lock.source["checkpoint"]
    if lock.kind == "file":
        assert loaded.recipe.source.file is not None
        checkpoint = loaded.resolve(loaded.recipe.source.file).resolve()
        if not checkpoint.is_file():
            raise FetchError(f"source.file: {checkpoint} is missing")
        _verify_local_file(checkpoint, locked, lock.stat_cache.get(CHECKPOINT_KEY), label=checkpoint.name)
    else:
        url = str(lock.source["url"])
        cached = hub.downloads_dir() / str(locked["sha256"]) / str(locked["name"])
        was_cached = cached.is_file()
        checkpoint, _, size = hub.download_url(url, sha256=str(locked["sha256"]), progress=not quiet)
        if size != locked["size"]:
            raise FetchError(f"{url}: {size} bytes, the lock says {locked['size']}")
        if not was_cached:
            downloaded += size
    return FetchResult(root, sorted(lock.files), checkpoint, downloaded)


def _fetch_hub(repo: str, commit: str, files: dict[str, dict[str, Any]], *, quiet: bool) -> tuple[Path, int]:
    """snapshot_download of exactly `files`; returns (snapshot folder, bytes downloaded now)."""
    before = hub.cached_blobs(repo)
    root = hub.download(repo, commit, files, progress=not quiet)
    storage = hub.storage_folder(repo).resolve()
    new_blobs = hub.cached_blobs(repo) - before
    downloaded = 0
    for rel, entry in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            raise FetchError(f"{repo}/{rel}: not in the cache after download")
        real = path.resolve()
        if not real.is_relative_to(storage):
            raise FetchError(f"{repo}/{rel}: resolves outside the cache folder ({real})")
        size = real.stat().st_size
        if size != entry["size"]:
            raise FetchError(f"{repo}/{rel}: {size} bytes in the cache, the lock says {entry['size']}")
        if real.name in new_blobs:
            downloaded += size
            digest = sha256_file(real)
            if digest != entry["sha256"]:
                # Remove the bad blob and its link so a retry downloads it again.
                real.unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                raise FetchError(
                    f"{repo}/{rel}: sha256 {digest[:12]}… does not match the lock ({entry['sha256'][:12]}…)"
                )
    return root, downloaded


def _verify_local(
    root: Path, files: dict[str, dict[str, Any]], stat_cache: dict[str, dict[str, int]]
) -> None:
    for rel, entry in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            raise FetchError(f"{root}: {rel} is missing (it was there when locked): run `packager lock`")
        _verify_local_file(path, entry, stat_cache.get(rel), label=rel)


def _verify_local_file(path: Path, entry: dict[str, Any], stat: dict[str, int] | None, *, label: str) -> None:
    st = path.stat()
    if st.st_size != entry["size"]:
        raise FetchError(f"{label}: {st.st_size} bytes, locked at {entry['size']}: run `packager lock`")
    if stat != {"size": st.st_size, "mtime_ns": st.st_mtime_ns} and sha256_file(path) != entry["sha256"]:
        raise FetchError(f"{label}: changed since it was locked: run `packager lock`")


def _check_relpath(rel: str) -> None:
    try:
        safe_relpath(rel)
    except ManifestError:
        raise FetchError(f"refusing file name that escapes the target folder: {rel!r}") from None
