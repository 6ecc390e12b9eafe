"""A Hugging Face hub repo at a revision: pinned to a commit, fetched into the normal HF cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact_format.manifest import sha256_file
from artifact_format.vocab import MODEL_INDEX
from packager.errors import FetchError
from packager.source import hub
from packager.source.inputs import Fetched, Files, Pinned, Stats, check_relpath
from packager.source.select import WeightsWanted, select_files

if TYPE_CHECKING:
    from packager.source.lock import Lock


@dataclass(frozen=True)
class HubRepo:
    """`source.repo` (+ revision, variant); also the config repo of a single-file checkpoint, where
    only configs are taken (`weights=False`) and no variant is recorded."""

    repo: str
    revision: str
    variant: str | None
    drop: tuple[str, ...]
    weights: WeightsWanted = True
    label: str = ""
    kind: str = "hub"

    def declared(self) -> dict[str, Any]:
        return {"source.repo": self.repo, "source.revision": self.revision, "source.variant": self.variant}

    def resolve(self, previous: Lock | None, *, quiet: bool) -> Pinned:
        commit = hub.resolve_commit(self.repo, self.revision)
        files = hub_files(
            self.repo, commit, variant=self.variant, drop=self.drop, quiet=quiet, weights=self.weights
        )
        record: dict[str, Any] = {
            "kind": "hub",
            "repo": self.repo,
            "revision": self.revision,
            "commit": commit,
        }
        if self.weights is True:
            record["variant"] = self.variant
        return Pinned(record, files, {})

    def recipe_drift(self, lock: Lock) -> list[str]:
        return []

    def source_drift(self, lock: Lock) -> tuple[list[str], Stats]:
        return self.drift_of(lock.source), dict(lock.stat_cache)

    def drift_of(self, record: dict[str, Any]) -> list[str]:
        """Whether the revision now names another commit than `record` pinned (one API call; none for a
        full sha or with HF_HUB_OFFLINE set: the locked commit is then all there is to go by)."""
        revision, commit = str(record["revision"]), str(record["commit"])
        if hub.is_full_sha(revision):
            return []
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return []
        now = hub.resolve_commit(self.repo, revision)
        if now != commit:
            moved = f"{self.repo}@{revision} is now {now[:12]}, locked at {commit[:12]}"
            return [f"{self.label}revision moved: {moved}"]
        return []

    def fetch(self, lock: Lock, *, quiet: bool) -> Fetched:
        root, downloaded = self.fetch_files(lock.source, lock.files, quiet=quiet)
        return Fetched(root, sorted(lock.files), None, downloaded)

    def config_root(self, lock: Lock) -> Path | None:
        return self.cached_root(lock.source)

    def cached_root(self, record: dict[str, Any]) -> Path | None:
        """The HF cache's snapshot folder of the locked commit, if this machine has one."""
        root = hub.storage_folder(str(record["repo"])) / "snapshots" / str(record["commit"])
        return root if root.is_dir() else None

    def fetch_files(self, record: dict[str, Any], files: Files, *, quiet: bool) -> tuple[Path, int]:
        return fetch_hub(str(record["repo"]), str(record["commit"]), files, quiet=quiet)


def recorded_hub(source: dict[str, Any]) -> dict[str, Any]:
    return {f"source.{k}": source.get(k) for k in ("repo", "revision", "variant")}


def read_model_index(path: Path, label: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError(f"{label}: cannot read ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise FetchError(f"{label}: not a JSON object")
    return data


def hub_files(
    repo: str,
    commit: str,
    *,
    variant: str | None,
    drop: tuple[str, ...],
    quiet: bool,
    weights: WeightsWanted = True,
) -> Files:
    """Select the pipeline's files at `commit`; hash the plain-git ones after downloading them."""
    remote = hub.list_files(repo, commit)
    if MODEL_INDEX not in remote:
        raise FetchError(
            f"hub repo {repo!r} at {commit[:12]} has no {MODEL_INDEX}: not a diffusers pipeline"
            " (for a single checkpoint use `url` + `config`)"
        )
    model_index = read_model_index(hub.download_one(repo, commit, MODEL_INDEX), f"{repo}/{MODEL_INDEX}")
    selection = select_files(remote, model_index, variant=variant, drop=drop, weights=weights)
    if not quiet:
        from packager.output import note

        for message in selection.notes:
            note(f"{repo}: {message}")
    for rel in selection.files:
        check_relpath(rel, f"{repo}: ")
    plain = [rel for rel in selection.files if remote[rel].sha256 is None]
    root = hub.download(repo, commit, plain, progress=False) if plain else None
    files: Files = {}
    for rel in selection.files:
        entry = remote[rel]
        digest = entry.sha256
        if digest is None:
            assert root is not None
            local = root / rel
            if local.stat().st_size != entry.size:
                raise FetchError(
                    f"{repo}/{rel}: downloaded {local.stat().st_size} bytes, the hub lists {entry.size}"
                )
            digest = sha256_file(local)
        files[rel] = {"size": entry.size, "sha256": digest}
    return files


def fetch_hub(repo: str, commit: str, files: Files, *, quiet: bool) -> tuple[Path, int]:
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
