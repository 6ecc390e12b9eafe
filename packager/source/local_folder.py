"""A diffusers folder on this machine: pinned by hashing its files, with a stat cache so that
unchanged files are never hashed twice."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact_format.manifest import sha256_file
from artifact_format.vocab import MODEL_INDEX
from packager.errors import FetchError
from packager.source.hub_repo import read_model_index
from packager.source.inputs import Fetched, Files, Pinned, Stats, stat_of, verify_local_file
from packager.source.select import WeightsWanted, select_files

if TYPE_CHECKING:
    from packager.source.lock import Lock
    from packager.source.recipe import LoadedRecipe

# Drift messages list at most this many file names per kind of change.
_LIST_SHOWN = 5


@dataclass(frozen=True)
class LocalFolder:
    """`source.path`; also the local config folder of a single-file checkpoint (`weights=False`)."""

    root: Path
    drop: tuple[str, ...]
    weights: WeightsWanted = True
    kind: str = "path"

    def declared(self) -> dict[str, Any]:
        return {}

    def resolve(self, previous: Lock | None, *, quiet: bool) -> Pinned:
        files, stats = self.hash_files(previous)
        return Pinned({"kind": "path"}, files, stats)

    def hash_files(self, previous: Lock | None) -> tuple[Files, Stats]:
        """The selected files' sizes and sha256s, reusing `previous`'s where the stat did not move."""
        old_files = previous.files if previous else {}
        old_stats = previous.stat_cache if previous else {}
        files: Files = {}
        stats: Stats = {}
        for rel in select_local(self.root, self.drop, weights=self.weights):
            stat = stat_of(self.root / rel)
            if old_stats.get(rel) == stat and rel in old_files:
                digest = str(old_files[rel]["sha256"])
            else:
                digest = sha256_file(self.root / rel)
            files[rel] = {"size": stat["size"], "sha256": digest}
            stats[rel] = stat
        return files, stats

    def recipe_drift(self, lock: Lock) -> list[str]:
        return []

    def source_drift(self, lock: Lock) -> tuple[list[str], Stats]:
        """Files changed, added or removed; files only touched get their new stat recorded."""
        stats = dict(lock.stat_cache)
        selected = set(select_local(self.root, self.drop, weights=self.weights))
        locked = set(lock.files)
        changed = []
        for rel in sorted(selected & locked):
            stat = stat_of(self.root / rel)
            if lock.stat_cache.get(rel) == stat:
                continue
            entry = lock.files[rel]
            if stat["size"] != entry["size"] or sha256_file(self.root / rel) != entry["sha256"]:
                changed.append(rel)
            else:
                stats[rel] = stat
        reasons = []
        for label, names in (
            ("changed", changed),
            ("added", sorted(selected - locked)),
            ("removed", sorted(locked - selected)),
        ):
            if names:
                shown = ", ".join(names[:_LIST_SHOWN]) + (
                    f" (+{len(names) - _LIST_SHOWN} more)" if len(names) > _LIST_SHOWN else ""
                )
                reasons.append(f"files {label}: {shown}")
        return reasons, stats

    def fetch(self, lock: Lock, *, quiet: bool) -> Fetched:
        self.verify(lock)
        return Fetched(self.root, sorted(lock.files), None, 0)

    def config_root(self, lock: Lock) -> Path | None:
        return self.root

    def verify(self, lock: Lock) -> None:
        for rel, entry in sorted(lock.files.items()):
            path = self.root / rel
            if not path.is_file():
                raise FetchError(
                    f"{self.root}: {rel} is missing (it was there when locked): run `packager lock`"
                )
            verify_local_file(path, entry, lock.stat_cache.get(rel), label=rel)


def folder_of(loaded: LoadedRecipe, value: str, field_name: str) -> Path:
    root = loaded.resolve(value)
    if not root.is_dir():
        raise FetchError(f"{field_name}: {root} is not a folder")
    return root.resolve()


def select_local(root: Path, drop: tuple[str, ...], *, weights: WeightsWanted = True) -> tuple[str, ...]:
    """The selection (packager.source.select) applied to a local diffusers folder."""
    listing = list_folder(root)
    if MODEL_INDEX not in listing:
        raise FetchError(f"{root}: no {MODEL_INDEX}: not a diffusers folder")
    model_index = read_model_index(root / MODEL_INDEX, str(root / MODEL_INDEX))
    return select_files(listing, model_index, drop=drop, weights=weights).files


def list_folder(root: Path) -> list[str]:
    """Files under `root` as `/`-separated relative paths (hidden folders like .cache/.git skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for name in sorted(filenames):
            if (base / name).is_file():
                out.append((base / name).relative_to(root).as_posix())
    return out
