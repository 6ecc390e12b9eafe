"""The artifact manifest: the one contract between the packager, the store, volume_sync, the images
and the worker.

Standard library only, because this file ships inside worker images and runs inside volume_sync on
machines that have nothing else installed. Every other module reads and writes manifests through
these functions, never by hand.

The manifest is canonical JSON (sorted keys, compact separators, one trailing newline, no
timestamps) so that the same inputs give the same bytes on any machine; the artifact id is the
sha256 of those exact bytes. That makes the id a content address: it names the weights, configs and
packing settings at once, and anything that changes any of them changes the id.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifact_format.vocab import ARTIFACT_ID_LEN

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Written after the manifest on a network volume, where a directory cannot be renamed into place
# atomically over the S3 API: an artifact on a volume is complete only when this file exists.
READY_MARKER = ".ready"
# Where artifacts live on a RunPod network volume, relative to its mount point.
VOLUME_MODELS_DIR = "models"

_HASH_CHUNK = 8 * 1024 * 1024


class ManifestError(Exception):
    """An artifact does not match its manifest, or the manifest itself is unreadable."""


@dataclass(frozen=True)
class FileEntry:
    """One file of the artifact. `tensors` and `dtype` are set for weight files only."""

    path: str
    size: int
    sha256: str
    tensors: int | None = None
    dtype: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "sha256": self.sha256, "size": self.size}
        if self.tensors is not None:
            out["tensors"] = self.tensors
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out


@dataclass(frozen=True)
class Manifest:
    """What an artifact is: where it came from, how it was packed, and every file in it."""

    name: str
    source: dict[str, Any]
    precision: str
    pipeline: str
    files: tuple[FileEntry, ...]
    scheduler: dict[str, Any] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    packing: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "name": self.name,
            "source": self.source,
            "precision": self.precision,
            "pipeline": self.pipeline,
            "scheduler": self.scheduler,
            "dropped": sorted(self.dropped),
            "packing": self.packing,
            "files": [f.to_json() for f in sorted(self.files, key=lambda f: f.path)],
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def artifact_id(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def weight_files(self) -> tuple[FileEntry, ...]:
        return tuple(f for f in self.files if f.tensors is not None)

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, one trailing newline: the bytes the artifact id hashes."""
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def parse(data: bytes) -> Manifest:
    """Read manifest bytes; raise ManifestError with the reason when they are not a manifest."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ManifestError("manifest is not a JSON object")
    schema = raw.get("schema")
    if schema != SCHEMA_VERSION:
        raise ManifestError(f"manifest schema {schema!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        files = tuple(
            FileEntry(
                path=_safe_relpath(f["path"]),
                size=int(f["size"]),
                sha256=str(f["sha256"]),
                tensors=f.get("tensors"),
                dtype=f.get("dtype"),
            )
            for f in raw["files"]
        )
        return Manifest(
            name=str(raw["name"]),
            source=dict(raw["source"]),
            precision=str(raw["precision"]),
            pipeline=str(raw["pipeline"]),
            files=files,
            scheduler=dict(raw.get("scheduler") or {}),
            dropped=tuple(raw.get("dropped") or ()),
            packing=dict(raw.get("packing") or {}),
            schema=int(schema),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"manifest is missing or has a bad field: {exc}") from None


def load(artifact_dir: str | os.PathLike[str]) -> Manifest:
    path = Path(artifact_dir) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (the artifact is missing or incomplete)") from None
    return parse(data)


def artifact_id_of(artifact_dir: str | os.PathLike[str]) -> str:
    """The id of an artifact on disk: the sha256 of its manifest's bytes as stored."""
    return hashlib.sha256((Path(artifact_dir) / MANIFEST_NAME).read_bytes()).hexdigest()


def write(manifest: Manifest, artifact_dir: str | os.PathLike[str]) -> str:
    """Write manifest.json atomically (temp file + rename) and return the artifact id."""
    data = manifest.to_bytes()
    target = Path(artifact_dir) / MANIFEST_NAME
    tmp = target.with_name(f".{MANIFEST_NAME}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check(
    artifact_dir: str | os.PathLike[str], manifest: Manifest | None = None, *, full_hash: bool = False
) -> Manifest:
    """Check every file is present with its size (and sha256 when `full_hash`).

    Size checks cost one stat a file, cheap enough for every worker start; a full hash reads every
    byte and is for `verify` commands. Raises ManifestError naming the first bad file.
    """
    root = Path(artifact_dir)
    manifest = manifest or load(root)
    for entry in manifest.files:
        path = root / entry.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ManifestError(f"{path}: missing (listed in the manifest)") from None
        if size != entry.size:
            raise ManifestError(f"{path}: size {size} does not match the manifest ({entry.size})")
        if full_hash:
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise ManifestError(f"{path}: sha256 {digest[:16]}… does not match the manifest")
    return manifest


def is_artifact_id(value: str) -> bool:
    return len(value) == ARTIFACT_ID_LEN and all(c in "0123456789abcdef" for c in value)


def volume_path(mount: str | os.PathLike[str], name: str, artifact_id: str) -> Path:
    """Where an artifact lives on a mounted network volume."""
    return Path(mount) / VOLUME_MODELS_DIR / name / artifact_id


def volume_key_prefix(name: str, artifact_id: str) -> str:
    """The same place as an S3 key prefix on RunPod's volume API (no leading slash)."""
    return f"{VOLUME_MODELS_DIR}/{name}/{artifact_id}/"


def _safe_relpath(path: str) -> str:
    """Refuse paths that would escape the artifact directory: the manifest may come from a store."""
    norm = posixpath.normpath(path)
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or norm != path
        or norm == ".."
        or norm.startswith("../")
    ):
        raise ManifestError(f"manifest lists an unsafe path: {path!r}")
    return path


def safe_relpath(path: str) -> str:
    """Public form of the path check, for code that joins store keys onto local directories."""
    return _safe_relpath(path)


def entries(manifest: Manifest) -> Iterable[FileEntry]:
    """The files to transfer, manifest excluded, largest first (better packing for parallel copies)."""
    return sorted(manifest.files, key=lambda f: (-f.size, f.path))
