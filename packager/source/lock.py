"""The lock: exactly what a recipe builds from, pinned and hashed (`x.yaml` → `x.lock`, beside it).

A lock records the source (hub commit sha, or the content of local files), every file the pipeline
needs with its size and sha256, and the packing settings that change the output bytes (precision,
dropped components, converter version, ...). All of it is hashed into one `fingerprint`, so a
change in *how* we pack invalidates the lock as surely as a change in *what* we pack, and the
artifact id recorded for a fingerprint can be trusted without converting again.

Where sha256s come from:
- hub LFS files: the hub's own `lfs.sha256` (no download needed to lock them);
- hub files kept in plain git (configs, tokenizers: small by the hub's rules): downloaded at lock
  time into the HF cache and hashed there, so fetch then finds them already cached;
- local files: hashed, with a stat cache (size + mtime_ns) so unchanged files are not re-hashed.
  The stat cache and the artifact id are outside the fingerprint: they describe this machine and
  a later stage's output, not the source.

Nothing machine-specific that feeds the artifact is recorded: no absolute paths, no tokens.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from artifact_format.manifest import ManifestError, canonical_json, safe_relpath
from artifact_format.vocab import CONVERTER_VERSION
from packager.errors import LockError
from packager.settings import secret_values
from packager.source.inputs import input_for
from packager.source.lora_inputs import lora_inputs
from packager.source.recipe import LoadedRecipe
from packager.source.recipe_sections import HUB_REPO_RE

LOCK_VERSION = 1
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Locks this process wrote before their files were fetched, with the text they replaced (None: there
# was no lock). A lock pins a source only once its files arrived and matched: a failed fetch puts
# back what was there (see `fetch.fetch`); a later converter failure keeps the pin.
_unfetched: dict[Path, str | None] = {}


@dataclass(frozen=True)
class Lock:
    """A recipe's pinned source. `files` maps repo-relative paths to {"size", "sha256"}."""

    version: int
    name: str
    source: dict[str, Any]
    files: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    fingerprint: str
    artifact_id: str | None = None
    stat_cache: dict[str, dict[str, int]] = field(default_factory=dict)
    # Where `packager publish` put that artifact: {"repo": "org/name", "commit": "<40 hex>"}.
    published: dict[str, str] | None = None

    @property
    def kind(self) -> str:
        return str(self.source["kind"])

    @property
    def commit(self) -> str | None:
        return self.source.get("commit")

    @property
    def total_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.files.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "source": self.source,
            "files": self.files,
            "settings": self.settings,
            "fingerprint": self.fingerprint,
            "artifact_id": self.artifact_id,
            "stat_cache": self.stat_cache,
            "published": self.published,
        }

    @classmethod
    def from_json(cls, data: Any) -> Lock:
        """Parse and check a lock's JSON; LockError names what is wrong."""
        if not isinstance(data, dict):
            raise LockError("not a JSON object")
        try:
            lock = cls(
                version=int(data["version"]),
                name=str(data["name"]),
                source=dict(data["source"]),
                files={str(k): dict(v) for k, v in data["files"].items()},
                settings=dict(data["settings"]),
                fingerprint=str(data["fingerprint"]),
                artifact_id=data.get("artifact_id"),
                stat_cache={str(k): dict(v) for k, v in (data.get("stat_cache") or {}).items()},
                published=_published(data.get("published")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LockError(f"missing or malformed field ({exc.__class__.__name__}: {exc})") from None
        if lock.source.get("kind") not in ("hub", "path", "file", "url"):
            raise LockError(f"unknown source kind {lock.source.get('kind')!r}")
        for rel, entry in lock.files.items():
            try:
                safe_relpath(rel)
            except ManifestError:
                raise LockError(f"unsafe file path {rel!r}") from None
            if not isinstance(entry.get("size"), int) or not _SHA256_RE.match(str(entry.get("sha256"))):
                raise LockError(f"{rel}: needs an integer size and a sha256")
        _check_loras(lock.source.get("loras", []))
        if lock.artifact_id is not None and not _SHA256_RE.match(str(lock.artifact_id)):
            raise LockError("artifact_id is not a sha256")
        return lock

    def to_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"


def _check_loras(records: Any) -> None:
    if not isinstance(records, list):
        raise LockError("source.loras must be a list")
    for i, record in enumerate(records):
        if (
            not isinstance(record, dict)
            or record.get("kind") not in ("hub", "file", "url")
            or not isinstance(record.get("size"), int)
            or not _SHA256_RE.match(str(record.get("sha256")))
            or not isinstance(record.get("scale"), (int, float))
        ):
            raise LockError(f"source.loras[{i}]: needs a kind, an integer size, a sha256 and a scale")


def _published(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or set(value) != {"repo", "commit"}
        or not re.fullmatch(r"[0-9a-f]{40}", str(value["commit"]))
        or not re.fullmatch(HUB_REPO_RE, str(value["repo"]))
    ):
        raise LockError("published must be {repo: org/name, commit: <40-hex sha>}")
    return {"repo": str(value["repo"]), "commit": str(value["commit"])}


def fingerprint_of(name: str, source: dict[str, Any], files: dict[str, Any], settings: dict[str, Any]) -> str:
    """sha256 over everything that decides the artifact (not the artifact id, not the stat cache)."""
    import hashlib

    body = {"version": LOCK_VERSION, "name": name, "source": source, "files": files, "settings": settings}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def packing_settings(loaded: LoadedRecipe) -> dict[str, Any]:
    return {**loaded.recipe.packing_settings(), "converter": CONVERTER_VERSION}


def _make(
    loaded: LoadedRecipe,
    source: dict[str, Any],
    files: dict[str, dict[str, Any]],
    stat_cache: dict[str, dict[str, int]] | None = None,
) -> Lock:
    settings = packing_settings(loaded)
    name = loaded.recipe.name
    return Lock(
        version=LOCK_VERSION,
        name=name,
        source=source,
        files=files,
        settings=settings,
        fingerprint=fingerprint_of(name, source, files, settings),
        stat_cache=stat_cache or {},
    )


# ---- reading and writing ----------------------------------------------------------------------------


def read_lock(loaded: LoadedRecipe) -> Lock | None:
    """The recipe's lock, or None when there is none. A lock that cannot be parsed is a LockError."""
    path = loaded.lock_path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockError(f"{path}: cannot read the lock ({exc.__class__.__name__})") from None
    try:
        return Lock.from_json(json.loads(text))
    except json.JSONDecodeError as exc:
        raise LockError(f"{path}:{exc.lineno}: not valid JSON: delete it and run `packager lock`") from None
    except LockError as exc:
        raise LockError(f"{path}: not a valid lock ({exc}): delete it and run `packager lock`") from None


def write_lock(loaded: LoadedRecipe, lock: Lock) -> None:
    """Write the lock beside the recipe, atomically (temp file + rename), JSON with sorted keys."""
    text = lock.to_text()
    for secret in secret_values():
        if secret in text:
            raise LockError(f"{loaded.lock_path}: refusing to write a lock that contains a secret value")
    path = loaded.lock_path
    if path not in _unfetched:
        try:
            _unfetched[path] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            _unfetched[path] = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def lock_fetched(loaded: LoadedRecipe) -> None:
    """The lock's files were fetched and matched it: the lock stays whatever happens next."""
    _unfetched.pop(loaded.lock_path, None)


def unwrite_lock(loaded: LoadedRecipe) -> None:
    """Put back the lock this process replaced (or remove the one it created) before a fetch failed."""
    path = loaded.lock_path
    if path not in _unfetched:
        return
    before = _unfetched.pop(path)
    if before is None:
        path.unlink(missing_ok=True)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(before)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def record_artifact_id(loaded: LoadedRecipe, lock: Lock, artifact_id: str) -> Lock:
    """Remember which artifact this lock's fingerprint produced, so later runs skip converting."""
    if not _SHA256_RE.match(artifact_id):
        raise LockError(f"not an artifact id: {artifact_id!r}")
    published = lock.published if artifact_id == lock.artifact_id else None
    updated = replace(lock, artifact_id=artifact_id, published=published)
    write_lock(loaded, updated)
    return updated


def record_published(loaded: LoadedRecipe, lock: Lock, repo: str, commit: str) -> Lock:
    """Remember the hub commit that holds the lock's artifact (outside the fingerprint, like the id).

    Allowed under --frozen: it records where the artifact went, not what the recipe builds from.
    """
    updated = replace(lock, published=_published({"repo": repo, "commit": commit}))
    if updated != lock:
        write_lock(loaded, updated)
    return updated


# ---- building -------------------------------------------------------------------------------------


def build_lock(loaded: LoadedRecipe, *, quiet: bool) -> Lock:
    """Resolve and hash the recipe's source now. Network for hub sources; hashing for local ones.

    Hashes of local files whose size and mtime match the previous lock's stat cache are reused;
    the artifact id is carried over when the fingerprint did not change.
    """
    try:
        previous = read_lock(loaded)
    except LockError:
        previous = None
    pinned = input_for(loaded).resolve(previous, quiet=quiet)
    source, stats = dict(pinned.source), dict(pinned.stats)
    loras = [lora.resolve(previous, quiet=quiet) for lora in lora_inputs(loaded)]
    if loras:
        source["loras"] = [lora.source for lora in loras]
        for lora in loras:
            stats.update(lora.stats)
    lock = _make(loaded, source, pinned.files, stats)
    if previous is not None and previous.fingerprint == lock.fingerprint:
        lock = replace(lock, artifact_id=previous.artifact_id, published=previous.published)
    return lock
