"""The artifact manifest: the one contract between the packager, the store, volume_sync, the images
and the worker.

Standard library only, because this file ships inside worker images and runs inside volume_sync on
machines that have nothing else installed. Every other module reads and writes manifests through
these functions, never by hand.

The manifest is canonical JSON (sorted keys, compact separators, one trailing newline, no
timestamps) so that the same inputs give the same bytes on any machine; the artifact id is the
sha256 of those exact bytes. That makes the id a content address: it names the weights, configs and
packing settings at once, and anything that changes any of them changes the id.

Schema 2 adds, per component, how its weights are stored and what they run in (`components`: e.g.
a transformer stored in float8_e4m3fn that computes in bfloat16, upcast layer by layer except the
modules its `skip_modules` patterns name) and, reserved for fused LoRAs, `fused_loras`. A manifest
that records neither is written as schema 1, byte for byte what earlier packagers wrote, so the ids
of artifacts that need no schema 2 field do not move; readers take both.
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

SCHEMA_VERSION = 2
# Schema 1 has no per-component precision and no fused LoRAs: every component is stored and run in
# the manifest-wide `precision`.
READABLE_SCHEMAS = (1, 2)
MANIFEST_NAME = "manifest.json"
# Written after the manifest on a network volume, where a directory cannot be renamed into place
# atomically over the S3 API: an artifact on a volume is complete only when this file exists.
READY_MARKER = ".ready"
# Where artifacts live on a RunPod network volume, relative to its mount point.
VOLUME_MODELS_DIR = "models"

_HASH_CHUNK = 8 * 1024 * 1024
# The manifest-wide precision names and the torch dtype each stands for.
PRECISION_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


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
class ComponentPrecision:
    """How one component's weights are stored and what the worker runs them in (torch dtype names).

    `storage` is the dtype of the component's weight tensors in the files (`float8_e4m3fn`,
    `bfloat16`, …; tensors a keep-list holds in float32 show in the file entries' `dtype`);
    `compute` is what it runs in. When they differ the worker loads the stored tensors as they are
    and upcasts layer by layer, leaving the modules matched by `skip_modules` (regular expressions
    over module names, as diffusers' `skip_modules_pattern` takes them) stored in `compute`.
    """

    storage: str
    compute: str
    skip_modules: tuple[str, ...] = ()

    @property
    def layerwise(self) -> bool:
        return self.storage != self.compute

    def to_json(self) -> dict[str, Any]:
        return {"compute": self.compute, "skip_modules": list(self.skip_modules), "storage": self.storage}


@dataclass(frozen=True)
class FusedLora:
    """A LoRA merged into the weights at packaging time: its file's sha256, the scale it was fused
    at, and where it came from (the same shape as the manifest's `source`)."""

    sha256: str
    scale: float
    source: dict[str, Any] = field(default_factory=dict)
    components: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "components": sorted(self.components),
            "scale": self.scale,
            "sha256": self.sha256,
            "source": self.source,
        }


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
    # Schema 2. `precision` stays the pipeline's compute precision (fp16, bf16, fp32).
    components: dict[str, ComponentPrecision] = field(default_factory=dict)
    fused_loras: tuple[FusedLora, ...] = ()

    @property
    def schema(self) -> int:
        return SCHEMA_VERSION if self.components or self.fused_loras else 1

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
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
        if self.schema >= 2:
            out["components"] = {k: v.to_json() for k, v in sorted(self.components.items())}
            out["fused_loras"] = [lora.to_json() for lora in self.fused_loras]
        return out

    def precision_of(self, component: str) -> ComponentPrecision:
        """A component's storage and compute dtypes; schema 1 stores everything in `precision`."""
        if component in self.components:
            return self.components[component]
        dtype = PRECISION_DTYPES.get(self.precision, "float32")
        return ComponentPrecision(storage=dtype, compute=dtype)

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
    if schema not in READABLE_SCHEMAS or isinstance(schema, bool):
        readable = " or ".join(str(v) for v in READABLE_SCHEMAS)
        raise ManifestError(f"manifest schema {schema!r} is not supported (expected {readable})")
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
            components=_components(raw.get("components") or {}) if schema >= 2 else {},
            fused_loras=_fused_loras(raw.get("fused_loras") or []) if schema >= 2 else (),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ManifestError(f"manifest is missing or has a bad field: {exc}") from None


def _components(raw: dict[str, Any]) -> dict[str, ComponentPrecision]:
    return {
        str(name): ComponentPrecision(
            storage=str(entry["storage"]),
            compute=str(entry["compute"]),
            skip_modules=tuple(str(p) for p in entry.get("skip_modules") or ()),
        )
        for name, entry in raw.items()
    }


def _fused_loras(raw: list[Any]) -> tuple[FusedLora, ...]:
    return tuple(
        FusedLora(
            sha256=str(entry["sha256"]),
            scale=float(entry["scale"]),
            source=dict(entry.get("source") or {}),
            components=tuple(str(c) for c in entry.get("components") or ()),
        )
        for entry in raw
    )


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
    write_atomic(Path(artifact_dir) / MANIFEST_NAME, data, mode=0o644)
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Write `path` whole or not at all: a synced temp file beside it, renamed over it."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, target)


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
