"""A single-file checkpoint (on disk or behind a URL) plus the diffusers config it follows.

The weights come from one file in the original layout; the pipeline's configs, tokenizers and
scheduler come from `source.config`, a hub repo or a local folder, and so do the weights of the
components the file does not carry (the text encoders and VAE of a transformer-only FLUX.1 or SD3
file), locked and fetched like a hub source's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact_format.manifest import sha256_file
from packager.errors import FetchError, RecipeError
from packager.source import hub
from packager.source.checkpoint_parts import checkpoint_parts
from packager.source.hub_repo import HubRepo
from packager.source.inputs import Fetched, Pinned, Stats, stat_of, verify_local_file
from packager.source.local_folder import LocalFolder
from packager.source.recipe_sections import HUB_REPO_RE
from packager.source.s3_download import S3Access
from packager.source.select import is_weight_file

if TYPE_CHECKING:
    from packager.source.lock import Lock
    from packager.source.recipe import LoadedRecipe

# Stat-cache key of a single-file checkpoint (never a repo-relative path: those have no `<`).
CHECKPOINT_KEY = "<checkpoint>"
# What a config folder is recorded as: its path is this machine's business, its files are locked.
LOCAL_CONFIG = "(local folder)"

Config = HubRepo | LocalFolder


def config_input(loaded: LoadedRecipe) -> Config:
    """`source.config`: a local folder when one exists there, else a hub repo id (configs only)."""
    value = loaded.recipe.source.config
    if value is None:
        raise RecipeError(f"{loaded.path}: source.config: a single-file checkpoint needs `config`")
    drop = tuple(loaded.recipe.components.drop)
    local = loaded.resolve(value)
    if local.is_dir():
        return LocalFolder(local.resolve(), drop, weights=False)
    if re.match(HUB_REPO_RE, value) and not value.startswith((".", "/", "~")):
        return HubRepo(value, "main", None, drop, weights=False, label="config ")
    raise FetchError(f"source.config: {value!r} is neither a local folder nor a hub repo id")


def checkpoint_input(loaded: LoadedRecipe) -> CheckpointFile | CheckpointUrl:
    source = loaded.recipe.source
    config = config_input(loaded)
    if source.file is not None:
        path = loaded.resolve(source.file)
        if not path.is_file():
            raise FetchError(f"source.file: {path} is not a file")
        return CheckpointFile(config=config, path=path.resolve())
    assert source.url is not None
    s3 = S3Access(source.endpoint_url, source.profile)
    return CheckpointUrl(
        config=config, url=source.url, sha256=source.sha256, token_env=source.token_env, s3=s3
    )


def recorded_checkpoint(source: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if source.get("kind") == "url":
        out["source.url"] = source.get("url")
    config = source.get("config") or {}
    out["source.config"] = config.get("repo") if config.get("kind") == "hub" else LOCAL_CONFIG
    return out


@dataclass(frozen=True)
class _SingleFile:
    config: Config

    def declared_config(self) -> dict[str, Any]:
        ref = self.config.repo if isinstance(self.config, HubRepo) else LOCAL_CONFIG
        return {"source.config": ref}

    def pin_config(self, checkpoint: Path, previous: Lock | None, *, quiet: bool) -> tuple[Pinned, Stats]:
        """The config's files: its configs and tokenizers, and the weights of every component the
        checkpoint does not carry (checkpoint_parts.py)."""
        config = replace(self.config, weights=checkpoint_parts(checkpoint))
        if isinstance(config, LocalFolder):
            files, stats = config.hash_files(previous)
            return Pinned({"kind": "path"}, files, stats), dict(stats)
        return config.resolve(previous, quiet=quiet), {}

    def config_drift(self, lock: Lock) -> tuple[list[str], Stats]:
        if isinstance(self.config, HubRepo):
            return self.config.drift_of(lock.source["config"]), dict(lock.stat_cache)
        # The components whose weights were locked from the config still are (a changed checkpoint
        # is drift of its own, and re-locking selects again).
        locked = frozenset(rel.partition("/")[0] for rel in lock.files if is_weight_file(rel))
        return replace(self.config, weights=lambda comp, _spec: comp in locked).source_drift(lock)

    def config_root(self, lock: Lock) -> Path | None:
        if isinstance(self.config, HubRepo):
            return self.config.cached_root(lock.source["config"])
        return self.config.root

    def fetch_config(self, lock: Lock, *, quiet: bool) -> tuple[Path, int]:
        if isinstance(self.config, HubRepo):
            return self.config.fetch_files(lock.source["config"], lock.files, quiet=quiet)
        self.config.verify(lock)
        return self.config.root, 0


@dataclass(frozen=True)
class CheckpointFile(_SingleFile):
    """`source.file`: a checkpoint on this machine, hashed once and then trusted by its stat."""

    path: Path
    kind: str = "file"

    def declared(self) -> dict[str, Any]:
        return self.declared_config()

    def resolve(self, previous: Lock | None, *, quiet: bool) -> Pinned:
        config, stats = self.pin_config(self.path, previous, quiet=quiet)
        stat = stat_of(self.path)
        old = (previous.source.get("checkpoint") or {}) if previous and previous.kind == "file" else {}
        if previous is not None and previous.stat_cache.get(CHECKPOINT_KEY) == stat and old.get("sha256"):
            digest = str(old["sha256"])
        else:
            digest = sha256_file(self.path)
        stats[CHECKPOINT_KEY] = stat
        checkpoint = {"name": self.path.name, "size": stat["size"], "sha256": digest}
        return Pinned(
            {"kind": "file", "checkpoint": checkpoint, "config": config.source}, config.files, stats
        )

    def recipe_drift(self, lock: Lock) -> list[str]:
        return []

    def source_drift(self, lock: Lock) -> tuple[list[str], Stats]:
        reasons, stats = self.config_drift(lock)
        locked = lock.source["checkpoint"]
        stat = stat_of(self.path)
        if self.path.name != locked["name"]:
            reasons.append(f"checkpoint changed: {locked['name']} → {self.path.name}")
        elif lock.stat_cache.get(CHECKPOINT_KEY) != stat:
            if stat["size"] != locked["size"] or sha256_file(self.path) != locked["sha256"]:
                reasons.append(f"checkpoint changed: {self.path.name}")
            else:
                stats[CHECKPOINT_KEY] = stat
        return reasons, stats

    def fetch(self, lock: Lock, *, quiet: bool) -> Fetched:
        root, downloaded = self.fetch_config(lock, quiet=quiet)
        if not self.path.is_file():
            raise FetchError(f"source.file: {self.path} is missing")
        locked: dict[str, Any] = lock.source["checkpoint"]
        verify_local_file(self.path, locked, lock.stat_cache.get(CHECKPOINT_KEY), label=self.path.name)
        return Fetched(root, sorted(lock.files), self.path, downloaded)


@dataclass(frozen=True)
class CheckpointUrl(_SingleFile):
    """`source.url`: a checkpoint downloaded once into the download cache, pinned by its sha256."""

    url: str
    sha256: str | None
    token_env: str | None = None
    s3: S3Access | None = None
    kind: str = "url"

    def declared(self) -> dict[str, Any]:
        return {"source.url": self.url, **self.declared_config()}

    def resolve(self, previous: Lock | None, *, quiet: bool) -> Pinned:
        known = self.sha256
        if known is None and previous is not None and previous.source.get("url") == self.url:
            known = previous.source["checkpoint"]["sha256"]
        path, digest, size = hub.download_url(
            self.url, sha256=known, progress=not quiet, token_env=self.token_env, s3=self.s3
        )
        config, stats = self.pin_config(path, previous, quiet=quiet)
        checkpoint = {"name": path.name, "size": size, "sha256": digest}
        record = {"kind": "url", "url": self.url, "checkpoint": checkpoint, "config": config.source}
        return Pinned(record, config.files, stats)

    def recipe_drift(self, lock: Lock) -> list[str]:
        locked = lock.source.get("checkpoint", {}).get("sha256")
        if lock.kind == "url" and self.sha256 and self.sha256 != locked:
            return [f"recipe changed: source.sha256 {locked!r} → {self.sha256!r}"]
        return []

    def source_drift(self, lock: Lock) -> tuple[list[str], Stats]:
        return self.config_drift(lock)

    def fetch(self, lock: Lock, *, quiet: bool) -> Fetched:
        root, downloaded = self.fetch_config(lock, quiet=quiet)
        checkpoint, now = hub.fetch_locked_url(
            self.url, lock.source["checkpoint"], progress=not quiet, token_env=self.token_env, s3=self.s3
        )
        return Fetched(root, sorted(lock.files), checkpoint, downloaded + now)
