"""The recipe's LoRAs as inputs: a file in a hub repo, a local file, or one behind a URL.

Each is pinned in the lock like the source itself (its sha256 and size, a hub file's commit too)
under `source.loras[i]`, with the `scale` it is fused at, so both enter the lock's fingerprint: a
new LoRA file or another scale is another artifact. Fetching makes the file present and checks
every byte against the lock; the converter fuses it (packager/convert/lora.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact_format.manifest import sha256_file
from packager.errors import FetchError
from packager.source import hub
from packager.source.hub_repo import HubRepo
from packager.source.inputs import Fetched, Pinned, Stats, stat_of, verify_local_file
from packager.source.s3_download import S3Access

if TYPE_CHECKING:
    from packager.source.lock import Lock
    from packager.source.recipe import LoadedRecipe
    from packager.source.recipe_sections import Lora


@dataclass(frozen=True)
class FetchedLora:
    """A locked LoRA file present on this machine and checked, with what the manifest records."""

    path: Path
    sha256: str
    scale: float
    record: dict[str, Any]


def lora_inputs(loaded: LoadedRecipe) -> list[LoraHub | LoraFile | LoraUrl]:
    """One input per `loras` entry, in the recipe's order."""
    out: list[LoraHub | LoraFile | LoraUrl] = []
    for i, lora in enumerate(loaded.recipe.loras):
        out.append(_input(loaded, i, lora))
    return out


def _input(loaded: LoadedRecipe, i: int, lora: Lora) -> LoraHub | LoraFile | LoraUrl:
    if lora.repo is not None:
        assert lora.file is not None
        return LoraHub(i, lora.scale, lora.sha256, lora.repo, lora.revision, lora.file)
    if lora.path is not None:
        path = loaded.resolve(lora.path)
        if not path.is_file():
            raise FetchError(f"loras[{i}].path: {path} is not a file")
        return LoraFile(i, lora.scale, lora.sha256, path.resolve())
    assert lora.url is not None
    return LoraUrl(
        i, lora.scale, lora.sha256, lora.url, lora.token_env, S3Access(lora.endpoint_url, lora.profile)
    )


def recorded_loras(source: dict[str, Any]) -> dict[str, Any]:
    """What the recipe states of each locked LoRA, keyed like the inputs' `declared()`."""
    out: dict[str, Any] = {}
    for i, record in enumerate(source.get("loras") or ()):
        where = f"loras[{i}]"
        out[f"{where}.kind"] = record.get("kind")
        out[f"{where}.scale"] = record.get("scale")
        for key in _DECLARED.get(str(record.get("kind")), ()):
            out[f"{where}.{key}"] = record.get(key)
    return out


# The fields of a lock record that the recipe states, by kind (a local file by its name only: its
# folder is this machine's business).
_DECLARED = {"hub": ("repo", "revision", "file"), "file": ("name",), "url": ("url",)}


def fetch_loras(loaded: LoadedRecipe, lock: Lock, *, quiet: bool) -> tuple[list[FetchedLora], int]:
    """Every locked LoRA present and checked; also the bytes downloaded to get them."""
    out: list[FetchedLora] = []
    downloaded = 0
    for lora in lora_inputs(loaded):
        fetched = lora.fetch(lock, quiet=quiet)
        record = lora.locked(lock)
        assert fetched.checkpoint is not None
        downloaded += fetched.bytes_downloaded
        out.append(FetchedLora(fetched.checkpoint, str(record["sha256"]), lora.scale, record))
    return out, downloaded


@dataclass(frozen=True)
class _Lora:
    index: int
    scale: float
    sha256: str | None  # the recipe's, when it states one

    @property
    def where(self) -> str:
        return f"loras[{self.index}]"

    @property
    def stat_key(self) -> str:
        """Its key in the lock's stat cache (never a repo-relative path: those have no `<`)."""
        return f"<lora:{self.index}>"

    def declared_common(self, kind: str) -> dict[str, Any]:
        return {f"{self.where}.kind": kind, f"{self.where}.scale": self.scale}

    def locked(self, lock: Lock) -> dict[str, Any]:
        records = lock.source.get("loras") or []
        if self.index >= len(records):
            raise FetchError(f"{self.where}: not in the lock: run `packager lock`")
        return dict(records[self.index])

    def previous(self, lock: Lock | None, kind: str) -> dict[str, Any]:
        """This LoRA's record in an earlier lock, when it was of the same kind."""
        records = (lock.source.get("loras") or []) if lock is not None else []
        record = dict(records[self.index]) if self.index < len(records) else {}
        return record if record.get("kind") == kind else {}

    def check_sha(self, digest: str, label: str) -> None:
        if self.sha256 and digest != self.sha256:
            raise FetchError(f"{self.where}: {label} has sha256 {digest}, the recipe says {self.sha256}")

    def recipe_drift(self, lock: Lock) -> list[str]:
        records = lock.source.get("loras") or []
        locked = records[self.index].get("sha256") if self.index < len(records) else None
        if self.sha256 and self.sha256 != locked:
            return [f"recipe changed: {self.where}.sha256 {locked!r} → {self.sha256!r}"]
        return []

    def pinned(self, record: dict[str, Any], stats: Stats | None = None) -> Pinned:
        return Pinned({**record, "scale": self.scale}, {}, stats or {})


@dataclass(frozen=True)
class LoraHub(_Lora):
    """`repo` + `file`: one file of a hub repo, pinned to the commit its revision names."""

    repo: str
    revision: str
    file: str
    kind: str = "hub"

    def declared(self) -> dict[str, Any]:
        w = self.where
        common = self.declared_common("hub")
        return {**common, f"{w}.repo": self.repo, f"{w}.revision": self.revision, f"{w}.file": self.file}

    def resolve(self, previous: Lock | None, *, quiet: bool) -> Pinned:
        commit = hub.resolve_commit(self.repo, self.revision)
        entry = hub.list_files(self.repo, commit).get(self.file)
        if entry is None:
            raise FetchError(
                f"{self.where}: hub repo {self.repo!r} at {commit[:12]} has no file {self.file!r}"
            )
        digest = entry.sha256 or sha256_file(hub.download_one(self.repo, commit, self.file))
        self.check_sha(digest, f"{self.repo}/{self.file}")
        record = {"kind": "hub", "repo": self.repo, "revision": self.revision, "commit": commit}
        return self.pinned({**record, "file": self.file, "size": entry.size, "sha256": digest})

    def source_drift(self, lock: Lock) -> tuple[list[str], Stats]:
        hub_repo = HubRepo(self.repo, self.revision, None, (), label=f"{self.where}: ")
        return hub_repo.drift_of(self.locked(lock)), {}

    def fetch(self, lock: Lock, *, quiet: bool) -> Fetched:
        record = self.locked(lock)
        path = hub.download_one(self.repo, str(record["commit"]), self.file)
        label = f"{self.repo}/{self.file}"
        size = path.stat().st_size
        if size != record["size"]:
            raise FetchError(f"{self.where}: {label} is {size} bytes, the lock says {record['size']}")
        if sha256_file(path) != record["sha256"]:
            raise FetchError(f"{self.where}: {label} does not match the sha256 in the lock")
        return Fetched(path.parent, [], path, 0)


@dataclass(frozen=True)
class LoraFile(_Lora):
    """`path`: a LoRA file on this machine, hashed once and then trusted by its stat."""

    path: Path
    kind: str = "file"

    def declared(self) -> dict[str, Any]:
        return {**self.declared_common("file"), f"{self.where}.name": self.path.name}

    def resolve(self, previous: Lock | None, *, quiet: bool) -> Pinned:
        stat = stat_of(self.path)
        old = self.previous(previous, "file")
        cached = previous is not None and previous.stat_cache.get(self.stat_key) == stat
        same = old.get("name") == self.path.name and old.get("sha256")
        digest = str(old["sha256"]) if cached and same else sha256_file(self.path)
        self.check_sha(digest, self.path.name)
        record = {"kind": "file", "name": self.path.name, "size": stat["size"], "sha256": digest}
        return self.pinned(record, {self.stat_key: stat})

    def source_drift(self, lock: Lock) -> tuple[list[str], Stats]:
        locked = self.locked(lock)
        stat = stat_of(self.path)
        moved = lock.stat_cache.get(self.stat_key) != stat
        if moved and (stat["size"] != locked["size"] or sha256_file(self.path) != locked["sha256"]):
            return [f"{self.where} changed: {self.path.name}"], {}
        return [], {self.stat_key: stat}

    def fetch(self, lock: Lock, *, quiet: bool) -> Fetched:
        record = self.locked(lock)
        if not self.path.is_file():
            raise FetchError(f"{self.where}.path: {self.path} is missing")
        label = f"{self.where}: {self.path.name}"
        verify_local_file(self.path, record, lock.stat_cache.get(self.stat_key), label=label)
        return Fetched(self.path.parent, [], self.path, 0)


@dataclass(frozen=True)
class LoraUrl(_Lora):
    """`url` (https or s3://): a LoRA downloaded once into the download cache, pinned by its sha256."""

    url: str
    token_env: str | None
    s3: S3Access
    kind: str = "url"

    def declared(self) -> dict[str, Any]:
        return {**self.declared_common("url"), f"{self.where}.url": self.url}

    def resolve(self, previous: Lock | None, *, quiet: bool) -> Pinned:
        old = self.previous(previous, "url")
        known = self.sha256 or (old.get("sha256") if old.get("url") == self.url else None)
        path, digest, size = hub.download_url(
            self.url, sha256=known, progress=not quiet, token_env=self.token_env, s3=self.s3
        )
        record = {"kind": "url", "url": self.url, "name": path.name, "size": size, "sha256": digest}
        return self.pinned(record)

    def source_drift(self, lock: Lock) -> tuple[list[str], Stats]:
        return [], {}

    def fetch(self, lock: Lock, *, quiet: bool) -> Fetched:
        record = self.locked(lock)
        path, downloaded = hub.fetch_locked_url(
            self.url, record, progress=not quiet, token_env=self.token_env, s3=self.s3
        )
        return Fetched(path.parent, [], path, downloaded)
