"""Where a recipe's weights come from: the `Input` protocol and the one place that picks a kind.

Every kind of source (a hub repo, a local diffusers folder, a single-file checkpoint on disk or
behind a URL) is one class that knows how to pin itself for the lock, say whether it has moved
since, and make its files present for the converter. The stages call these methods and never ask
which kind they hold; a new kind (or an extra input such as a LoRA) is one more class here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from artifact_format.manifest import ManifestError, safe_relpath, sha256_file
from packager.errors import FetchError

if TYPE_CHECKING:
    from packager.source.lock import Lock
    from packager.source.recipe import LoadedRecipe

Files = dict[str, dict[str, Any]]
"""Repo-relative path → {"size", "sha256"}: what a lock pins."""
Stats = dict[str, dict[str, int]]
"""Path (or a special key) → {"size", "mtime_ns"}: this machine's stat cache, outside the fingerprint."""


@dataclass(frozen=True)
class Pinned:
    """An input resolved for the lock: its source record, its files and the stat cache."""

    source: dict[str, Any]
    files: Files
    stats: Stats


@dataclass(frozen=True)
class Fetched:
    """The locked files made present and checked: `root/<rel>` for each file (+ a checkpoint)."""

    root: Path
    files: list[str]
    checkpoint: Path | None
    bytes_downloaded: int


class Input(Protocol):
    """One source of weights, as the recipe states it."""

    @property
    def kind(self) -> str:
        """The recipe's word for this kind of source, as the lock records it."""
        ...

    def declared(self) -> dict[str, Any]:
        """The recipe's statement of the source, keyed like `recorded()` of the lock's source."""
        ...

    def resolve(self, previous: Lock | None, *, quiet: bool) -> Pinned:
        """Pin the source now (network for hub sources, hashing for local ones, reusing `previous`'s
        hashes of files whose size and mtime did not move)."""
        ...

    def recipe_drift(self, lock: Lock) -> list[str]:
        """Recipe edits the lock does not reflect beyond `declared()` (offline)."""
        ...

    def source_drift(self, lock: Lock) -> tuple[list[str], Stats]:
        """Whether the source itself moved since `lock`, and the refreshed stat cache."""
        ...

    def fetch(self, lock: Lock, *, quiet: bool) -> Fetched:
        """Make the locked files present locally and check them against the lock."""
        ...

    def config_root(self, lock: Lock) -> Path | None:
        """Where the lock's config files already are on this machine (the HF cache's snapshot, the
        folder itself), without any network; None when they were never downloaded here."""
        ...


def recorded(source: dict[str, Any]) -> dict[str, Any]:
    """The parts of a lock's source record that a recipe states, keyed like `Input.declared()`."""
    from packager.source.checkpoint import recorded_checkpoint
    from packager.source.hub_repo import recorded_hub

    readers = {"hub": recorded_hub, "file": recorded_checkpoint, "url": recorded_checkpoint}
    out: dict[str, Any] = {"source.kind": source.get("kind")}
    reader = readers.get(str(source.get("kind")))
    if reader is not None:
        out.update(reader(source))
    return out


def input_for(loaded: LoadedRecipe) -> Input:
    """The recipe's source as an Input: the one place that looks at which kind the recipe names."""
    from packager.source.checkpoint import checkpoint_input
    from packager.source.hub_repo import HubRepo
    from packager.source.local_folder import LocalFolder, folder_of

    source = loaded.recipe.source
    drop = tuple(loaded.recipe.components.drop)
    if source.path is None:  # every other kind reaches the hub or a URL
        from packager.settings import network_timeout
        from packager.source import timeouts

        timeouts.set_limit(network_timeout(loaded.recipe.store.timeout))
    if source.repo is not None:
        return HubRepo(source.repo, source.revision, source.variant, drop)
    if source.path is not None:
        return LocalFolder(folder_of(loaded, source.path, "source.path"), drop)
    return checkpoint_input(loaded)


def check_relpath(rel: str, where: str) -> None:
    """Refuse a file name that would escape the folder it is written under."""
    try:
        safe_relpath(rel)
    except ManifestError:
        raise FetchError(f"{where}refusing file name that escapes the target folder: {rel!r}") from None


def stat_of(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def verify_local_file(path: Path, entry: dict[str, Any], stat: dict[str, int] | None, *, label: str) -> None:
    """A local file still matches its lock entry (re-hashed only when its stat moved)."""
    st = path.stat()
    if st.st_size != entry["size"]:
        raise FetchError(f"{label}: {st.st_size} bytes, locked at {entry['size']}: run `packager lock`")
    if stat != {"size": st.st_size, "mtime_ns": st.st_mtime_ns} and sha256_file(path) != entry["sha256"]:
        raise FetchError(f"{label}: changed since it was locked: run `packager lock`")
