"""The lock: exactly what a recipe builds from, pinned and hashed (`x.yaml` → `x.lock`, beside it).

A lock records the source (hub commit sha, or the content of local files), every file the pipeline
needs with its size and sha256, and the packing settings that change the output bytes (precision,
dropped components, converter version, ...). All of it is hashed into one `fingerprint`, so a
change in *how* we pack invalidates the lock as surely as a change in *what* we pack, and the
artifact id the lead's code records for a fingerprint can be trusted without converting again.

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
from typing import Any, Literal

from artifact_format.manifest import ManifestError, canonical_json, safe_relpath, sha256_file
from artifact_format.vocab import MODEL_INDEX
from packager.convert.converter import CONVERTER_VERSION
from packager.errors import FetchError, LockError, RecipeError
from packager.settings import secret_values
from packager.source import hub
from packager.source.recipe import HUB_REPO_RE, LoadedRecipe
from packager.source.select import select_files

LOCK_VERSION = 1
# Stat-cache key of a single-file checkpoint (never a repo-relative path: those have no `<`).
CHECKPOINT_KEY = "<checkpoint>"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_LIST_SHOWN = 5


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
        if lock.artifact_id is not None and not _SHA256_RE.match(str(lock.artifact_id)):
            raise LockError("artifact_id is not a sha256")
        return lock

    def to_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record_artifact_id(loaded: LoadedRecipe, lock: Lock, artifact_id: str) -> Lock:
    """Remember which artifact this lock's fingerprint produced, so later runs skip converting."""
    if not _SHA256_RE.match(artifact_id):
        raise LockError(f"not an artifact id: {artifact_id!r}")
    updated = replace(lock, artifact_id=artifact_id)
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
    source = loaded.recipe.source
    if source.kind == "hub":
        assert source.repo is not None
        commit = hub.resolve_commit(source.repo, source.revision)
        files = _hub_files(
            source.repo, commit, variant=source.variant, drop=loaded.recipe.components.drop, quiet=quiet
        )
        lock_source = {
            "kind": "hub",
            "repo": source.repo,
            "revision": source.revision,
            "commit": commit,
            "variant": source.variant,
        }
        lock = _make(loaded, lock_source, files)
    elif source.kind == "path":
        assert source.path is not None
        root = _folder(loaded, source.path, "source.path")
        files, stats = _local_files(root, loaded.recipe.components.drop, True, previous)
        lock = _make(loaded, {"kind": "path"}, files, stats)
    else:
        lock = _single_file_lock(loaded, previous, quiet=quiet)
    if previous is not None and previous.fingerprint == lock.fingerprint:
        lock = replace(lock, artifact_id=previous.artifact_id)
    return lock


def _single_file_lock(loaded: LoadedRecipe, previous: Lock | None, *, quiet: bool) -> Lock:
    source = loaded.recipe.source
    stats: dict[str, dict[str, int]] = {}
    config_kind, config_ref = config_source(loaded)
    if config_kind == "hub":
        commit = hub.resolve_commit(config_ref, "main")
        files = _hub_files(
            config_ref, commit, variant=None, drop=loaded.recipe.components.drop, quiet=quiet, weights=False
        )
        config: dict[str, Any] = {"kind": "hub", "repo": config_ref, "revision": "main", "commit": commit}
    else:
        files, stats = _local_files(Path(config_ref), loaded.recipe.components.drop, False, previous)
        config = {"kind": "path"}
    if source.kind == "file":
        assert source.file is not None
        ckpt = _checkpoint_path(loaded, source.file)
        st = ckpt.stat()
        stat = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        old = (previous.source.get("checkpoint") or {}) if previous and previous.kind == "file" else {}
        if previous is not None and previous.stat_cache.get(CHECKPOINT_KEY) == stat and old.get("sha256"):
            digest = str(old["sha256"])
        else:
            digest = sha256_file(ckpt)
        stats[CHECKPOINT_KEY] = stat
        checkpoint = {"name": ckpt.name, "size": st.st_size, "sha256": digest}
        lock_source: dict[str, Any] = {"kind": "file", "checkpoint": checkpoint, "config": config}
    else:
        assert source.url is not None
        known = source.sha256
        if known is None and previous is not None and previous.source.get("url") == source.url:
            known = previous.source["checkpoint"]["sha256"]
        path, digest, size = hub.download_url(source.url, sha256=known, progress=not quiet)
        checkpoint = {"name": path.name, "size": size, "sha256": digest}
        lock_source = {"kind": "url", "url": source.url, "checkpoint": checkpoint, "config": config}
    return _make(loaded, lock_source, files, stats)


def _hub_files(
    repo: str, commit: str, *, variant: str | None, drop: tuple[str, ...], quiet: bool, weights: bool = True
) -> dict[str, dict[str, Any]]:
    """Select the pipeline's files at `commit`; hash the plain-git ones after downloading them."""
    remote = hub.list_files(repo, commit)
    if MODEL_INDEX not in remote:
        raise FetchError(
            f"hub repo {repo!r} at {commit[:12]} has no {MODEL_INDEX}: not a diffusers pipeline"
            " (for a single checkpoint use `url` + `config`)"
        )
    model_index = _read_model_index(hub.download_one(repo, commit, MODEL_INDEX), f"{repo}/{MODEL_INDEX}")
    selection = select_files(remote, model_index, variant=variant, drop=drop, weights=weights)
    if not quiet:
        from packager.output import note

        for message in selection.notes:
            note(f"{repo}: {message}")
    for rel in selection.files:
        _check_relpath(rel, repo)
    plain = [rel for rel in selection.files if remote[rel].sha256 is None]
    root = hub.download(repo, commit, plain, progress=False) if plain else None
    files: dict[str, dict[str, Any]] = {}
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


def _local_files(
    root: Path, drop: tuple[str, ...], weights: bool, previous: Lock | None
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int]]]:
    selection = select_local(root, drop, weights=weights)
    old_files = previous.files if previous else {}
    old_stats = previous.stat_cache if previous else {}
    files: dict[str, dict[str, Any]] = {}
    stats: dict[str, dict[str, int]] = {}
    for rel in selection:
        st = (root / rel).stat()
        stat = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if old_stats.get(rel) == stat and rel in old_files:
            digest = str(old_files[rel]["sha256"])
        else:
            digest = sha256_file(root / rel)
        files[rel] = {"size": st.st_size, "sha256": digest}
        stats[rel] = stat
    return files, stats


def select_local(root: Path, drop: tuple[str, ...], *, weights: bool = True) -> tuple[str, ...]:
    """The selection (packager.select) applied to a local diffusers folder."""
    listing = list_folder(root)
    if MODEL_INDEX not in listing:
        raise FetchError(f"{root}: no {MODEL_INDEX}: not a diffusers folder")
    model_index = _read_model_index(root / MODEL_INDEX, str(root / MODEL_INDEX))
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


def _read_model_index(path: Path, label: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError(f"{label}: cannot read ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise FetchError(f"{label}: not a JSON object")
    return data


def _check_relpath(rel: str, where: str) -> None:
    try:
        safe_relpath(rel)
    except ManifestError:
        raise FetchError(f"{where}: refusing file name that escapes the target folder: {rel!r}") from None


def _folder(loaded: LoadedRecipe, value: str, field_name: str) -> Path:
    root = loaded.resolve(value)
    if not root.is_dir():
        raise FetchError(f"{field_name}: {root} is not a folder")
    return root.resolve()


def _checkpoint_path(loaded: LoadedRecipe, value: str) -> Path:
    path = loaded.resolve(value)
    if not path.is_file():
        raise FetchError(f"source.file: {path} is not a file")
    return path.resolve()


def config_source(loaded: LoadedRecipe) -> tuple[Literal["hub", "path"], str]:
    """A single-file base config: ("path", folder) when it exists locally, else ("hub", repo id)."""
    value = loaded.recipe.source.config
    if value is None:
        raise RecipeError(f"{loaded.path}: source.config: a single-file checkpoint needs `config`")
    local = loaded.resolve(value)
    if local.is_dir():
        return "path", str(local.resolve())
    if re.match(HUB_REPO_RE, value) and not value.startswith((".", "/", "~")):
        return "hub", value
    raise FetchError(f"source.config: {value!r} is neither a local folder nor a hub repo id")


# ---- drift ----------------------------------------------------------------------------------------


def drift(loaded: LoadedRecipe, lock: Lock) -> list[str]:
    """Why the lock no longer describes the recipe's source ([] when it is fresh).

    Recipe and settings changes are checked first, offline. Then one cheap look at the source: for
    hub sources one API call resolving the revision (none for a full commit sha, none with
    HF_HUB_OFFLINE set); for local files a stat, re-hashing only files whose size or mtime moved.
    """
    return _check(loaded, lock)[0]


def _check(loaded: LoadedRecipe, lock: Lock) -> tuple[list[str], dict[str, dict[str, int]]]:
    """(reasons, refreshed stat cache): files touched but unchanged get their new stat recorded."""
    if lock.version != LOCK_VERSION:
        return [f"lock format {lock.version}, this packager writes {LOCK_VERSION}"], lock.stat_cache
    reasons = []
    if lock.fingerprint != fingerprint_of(lock.name, lock.source, lock.files, lock.settings):
        reasons.append("the lock was edited (its fingerprint does not match its content)")
    if lock.name != loaded.recipe.name:
        reasons.append(f"recipe changed: name {lock.name!r} → {loaded.recipe.name!r}")
    locked_decl, recipe_decl = _declared(lock.source), _declared_by_recipe(loaded)
    for key in sorted(set(locked_decl) | set(recipe_decl)):
        if locked_decl.get(key) != recipe_decl.get(key):
            reasons.append(f"recipe changed: {key} {locked_decl.get(key)!r} → {recipe_decl.get(key)!r}")
    settings = packing_settings(loaded)
    for key in sorted(set(settings) | set(lock.settings)):
        if settings.get(key) != lock.settings.get(key):
            field_name = "components.drop" if key == "drop" else key
            what = "converter version" if key == "converter" else f"recipe changed: {field_name}"
            reasons.append(f"{what} {lock.settings.get(key)!r} → {settings.get(key)!r}")
    reasons += _url_sha_drift(loaded, lock)
    if reasons:
        return reasons, lock.stat_cache

    stats = dict(lock.stat_cache)
    if lock.kind == "hub":
        reasons += _revision_drift(
            str(lock.source["repo"]), str(lock.source["revision"]), str(lock.source["commit"])
        )
    elif lock.kind == "path":
        assert loaded.recipe.source.path is not None
        root = _folder(loaded, loaded.recipe.source.path, "source.path")
        found, stats = _folder_drift(root, lock, loaded.recipe.components.drop, weights=True)
        reasons += found
    else:
        config = lock.source["config"]
        if config["kind"] == "hub":
            reasons += _revision_drift(config["repo"], config["revision"], config["commit"], label="config ")
        else:
            _, ref = config_source(loaded)
            found, stats = _folder_drift(Path(ref), lock, loaded.recipe.components.drop, weights=False)
            reasons += found
        if lock.kind == "file":
            assert loaded.recipe.source.file is not None
            ckpt = _checkpoint_path(loaded, loaded.recipe.source.file)
            locked = lock.source["checkpoint"]
            st = ckpt.stat()
            stat = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            if ckpt.name != locked["name"]:
                reasons.append(f"checkpoint changed: {locked['name']} → {ckpt.name}")
            elif lock.stat_cache.get(CHECKPOINT_KEY) != stat:
                if st.st_size != locked["size"] or sha256_file(ckpt) != locked["sha256"]:
                    reasons.append(f"checkpoint changed: {ckpt.name}")
                else:
                    stats[CHECKPOINT_KEY] = stat
    return reasons, stats


def _declared(source: dict[str, Any]) -> dict[str, Any]:
    """The parts of a lock's source that the recipe states (so a recipe edit shows as drift)."""
    out: dict[str, Any] = {"source.kind": source.get("kind")}
    if source.get("kind") == "hub":
        out.update({f"source.{k}": source.get(k) for k in ("repo", "revision", "variant")})
    if source.get("kind") == "url":
        out["source.url"] = source.get("url")
    if source.get("kind") in ("file", "url"):
        config = source.get("config") or {}
        out["source.config"] = config.get("repo") if config.get("kind") == "hub" else "(local folder)"
    return out


def _declared_by_recipe(loaded: LoadedRecipe) -> dict[str, Any]:
    source = loaded.recipe.source
    out: dict[str, Any] = {"source.kind": source.kind}
    if source.kind == "hub":
        out.update(
            {"source.repo": source.repo, "source.revision": source.revision, "source.variant": source.variant}
        )
    if source.kind == "url":
        out["source.url"] = source.url
    if source.kind in ("file", "url"):
        kind, ref = config_source(loaded)
        out["source.config"] = ref if kind == "hub" else "(local folder)"
    return out


def _url_sha_drift(loaded: LoadedRecipe, lock: Lock) -> list[str]:
    wanted = loaded.recipe.source.sha256
    if lock.kind == "url" and wanted and wanted != lock.source["checkpoint"]["sha256"]:
        return [f"recipe changed: source.sha256 {lock.source['checkpoint']['sha256']!r} → {wanted!r}"]
    return []


def _revision_drift(repo: str, revision: str, commit: str, label: str = "") -> list[str]:
    if hub.is_full_sha(revision):
        return []
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return []  # offline by the user's choice: the locked commit is all we can go by
    now = hub.resolve_commit(repo, revision)
    if now != commit:
        return [f"{label}revision moved: {repo}@{revision} is now {now[:12]}, locked at {commit[:12]}"]
    return []


def _folder_drift(
    root: Path, lock: Lock, drop: tuple[str, ...], *, weights: bool
) -> tuple[list[str], dict[str, dict[str, int]]]:
    stats = dict(lock.stat_cache)
    selected = set(select_local(root, drop, weights=weights))
    locked = set(lock.files)
    changed = []
    for rel in sorted(selected & locked):
        st = (root / rel).stat()
        stat = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if lock.stat_cache.get(rel) == stat:
            continue
        entry = lock.files[rel]
        if st.st_size != entry["size"] or sha256_file(root / rel) != entry["sha256"]:
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


# ---- the entry points for every stage --------------------------------------------------------------

LockStatus = Literal["created", "updated", "unchanged"]


def refresh_lock(loaded: LoadedRecipe, *, quiet: bool) -> tuple[Lock, LockStatus, list[str]]:
    """Lock the recipe if its lock is missing, unreadable or drifted; keep a fresh one.

    Returns (lock, what happened, why it was re-locked). A fresh lock whose local files were only
    touched (same content, new mtime) gets its stat cache refreshed, nothing else.
    """
    try:
        lock = read_lock(loaded)
    except LockError as exc:
        reasons = [str(exc)]
        lock = None
    else:
        reasons = []
    if lock is not None:
        reasons, stats = _check(loaded, lock)
        if not reasons:
            if stats != lock.stat_cache:
                lock = replace(lock, stat_cache=stats)
                write_lock(loaded, lock)
            return lock, "unchanged", []
    fresh = build_lock(loaded, quiet=quiet)
    write_lock(loaded, fresh)
    return fresh, ("created" if lock is None and not reasons else "updated"), reasons


def ensure_lock(loaded: LoadedRecipe, *, frozen: bool, quiet: bool) -> Lock:
    """The recipe's lock, fresh: used as is, written when absent, re-locked (with a warning) on drift.

    With `frozen`, a missing, unreadable or drifted lock is a LockError instead (CI wants the
    committed lock to be the truth), and nothing is written.
    """
    from packager.output import note, warn

    path = loaded.lock_path
    if frozen:
        lock = read_lock(loaded)
        if lock is None:
            raise LockError(f"{path}: no lock (--frozen): run `packager lock {loaded.path}` and commit it")
        reasons = drift(loaded, lock)
        if reasons:
            raise LockError(f"{path} is out of date (--frozen): {'; '.join(reasons)}")
        return lock
    lock, status, reasons = refresh_lock(loaded, quiet=quiet)
    if status == "updated":
        warn(f"{path} was out of date ({'; '.join(reasons)}): re-locked")
    elif status == "created" and not quiet:
        note(f"locked {loaded.recipe.name} → {path}")
    return lock


def check_lock(loaded: LoadedRecipe) -> tuple[Lock | None, list[str]]:
    """For `lock --check`: (the lock, why it drifted); a missing lock is one reason."""
    try:
        lock = read_lock(loaded)
    except LockError as exc:
        return None, [str(exc)]
    if lock is None:
        return None, [f"{loaded.lock_path}: no lock"]
    return lock, drift(loaded, lock)
