"""Recipe → artifact on local disk: lock, fetch and convert, each only when needed.

The lock records which artifact id its fingerprint produced, so a later run knows the id without
converting again; every downstream stage (upload, seed, image, deploy) keys off that id and asks
for the local artifact only when it really needs the bytes.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact_format import manifest as mf
from packager.convert.artifact import Artifact, artifact_dir, local_artifact
from packager.disk import require_free
from packager.errors import LockError
from packager.output import note
from packager.source.recipe import LoadedRecipe

if TYPE_CHECKING:
    from packager.source.lock import Lock


def known_artifact_id(loaded: LoadedRecipe, *, frozen: bool = False) -> str | None:
    """The artifact id the lock records for the recipe's current settings, without converting.

    None when the lock is missing, stale, or has never been converted. With `frozen`, a missing or
    stale lock is an error instead.
    """
    from packager.source.drift import drift
    from packager.source.lock import read_lock

    lock = read_lock(loaded)
    if lock is None:
        if frozen:
            raise LockError(f"{loaded.lock_path}: no lock (run `packager lock {loaded.path}`)")
        return None
    reasons = drift(loaded, lock)
    if reasons:
        if frozen:
            raise LockError(f"{loaded.lock_path}: lock is out of date: {'; '.join(reasons)}")
        return None
    return lock.artifact_id


def materialise(
    loaded: LoadedRecipe,
    *,
    frozen: bool = False,
    quiet: bool = False,
    lock: Lock | None = None,
    verify: bool = True,
) -> Artifact:
    """The recipe's artifact on local disk, locking, fetching and converting only what is missing."""
    from packager.source.drift import ensure_lock

    lock = lock or ensure_lock(loaded, frozen=frozen, quiet=quiet)
    name = loaded.recipe.name
    if lock.artifact_id and (found := local_artifact(name, lock.artifact_id)):
        return found
    return _convert(loaded, lock, out_dir=None, quiet=quiet, verify=verify)


def convert_to(
    loaded: LoadedRecipe,
    out_dir: Path,
    *,
    frozen: bool = False,
    quiet: bool = False,
    verify: bool = True,
) -> Artifact:
    """`packager convert -o DIR`: convert exactly into DIR, whatever is cached elsewhere."""
    from packager.source.drift import ensure_lock

    lock = ensure_lock(loaded, frozen=frozen, quiet=quiet)
    return _convert(loaded, lock, out_dir=out_dir, quiet=quiet, verify=verify)


def source_info(lock: Lock) -> dict[str, Any]:
    """What the manifest says about the source: portable (no local paths), so ids match anywhere."""
    # The LoRAs are recorded as the manifest's `fused_loras`, each with its own source.
    info = {k: v for k, v in lock.source.items() if k not in ("path", "file", "loras") and v is not None}
    if lock.source.get("kind") in ("path", "file", "url") or not lock.source.get("commit"):
        files = {p: e["sha256"] for p, e in sorted(lock.files.items())}
        info["files_sha256"] = hashlib.sha256(mf.canonical_json(files)).hexdigest()
    return info


def _portable(record: dict[str, Any]) -> dict[str, Any]:
    """A LoRA's lock record as the manifest keeps it: where it came from, not its scale (recorded
    beside it) nor anything of this machine's."""
    return {k: v for k, v in record.items() if k not in ("scale", "path") and v is not None}


def _convert(
    loaded: LoadedRecipe, lock: Lock, *, out_dir: Path | None, quiet: bool, verify: bool
) -> Artifact:
    """Fetch and convert; a failure leaves no folder behind that this call made (an empty
    `build/artifacts/<name>/` would look like an artifact that is on its way)."""
    target_root = out_dir.parent if out_dir else artifact_dir(loaded.recipe.name, "x").parent
    made = []
    folder = target_root
    while not folder.exists():
        made.append(folder)
        folder = folder.parent
    try:
        return _fetch_and_convert(loaded, lock, target_root, out_dir=out_dir, quiet=quiet, verify=verify)
    except BaseException:
        for folder in made:  # deepest first; stops at the first that holds something
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _fetch_and_convert(
    loaded: LoadedRecipe, lock: Lock, target_root: Path, *, out_dir: Path | None, quiet: bool, verify: bool
) -> Artifact:
    from packager.convert.converter import convert
    from packager.convert.lora import LoraSpec
    from packager.convert.settings import ConvertSettings
    from packager.convert.shards import parse_size
    from packager.source.fetch import fetch
    from packager.source.lock import record_artifact_id
    from packager.source.lora_inputs import fetch_loras

    recipe = loaded.recipe
    source_bytes = sum(int(e["size"]) for e in lock.files.values())
    target_root.mkdir(parents=True, exist_ok=True)
    # fp32 → fp16 halves the bytes, but an fp16 source copied as-is (or fp32 kept) does not.
    require_free(target_root, source_bytes, "convert")
    fetched = fetch(loaded, lock, quiet=quiet)
    loras, _ = fetch_loras(loaded, lock, quiet=quiet)
    settings = ConvertSettings(
        precision=recipe.precision,
        fp16_overflow=recipe.fp16_overflow,
        drop=tuple(recipe.components.drop),
        scheduler=recipe.scheduler,
        pipeline=recipe.pipeline,
        precision_overrides=recipe.precision_overrides,
        shard_size=parse_size(recipe.shard_size),
    )
    staging = out_dir or target_root / f".staging-{lock.fingerprint[:16]}"
    if not quiet:
        note(f"converting {recipe.name} to safetensors …")
    manifest = convert(
        fetched.root,
        fetched.files,
        staging,
        name=recipe.name,
        settings=settings,
        source_info=source_info(lock),
        verify=verify,
        checkpoint=fetched.checkpoint,
        progress=not quiet,
        notify=None if quiet else note,
        loras=[LoraSpec(lora.path, lora.sha256, lora.scale, _portable(lora.record)) for lora in loras],
    )
    artifact_id = manifest.artifact_id
    record_artifact_id(loaded, lock, artifact_id)
    if out_dir is not None:
        return Artifact(name=recipe.name, id=artifact_id, dir=out_dir, manifest=manifest)
    final = artifact_dir(recipe.name, artifact_id)
    if final.exists():
        # Same id = same bytes: the copy already in place is as good as the one just made.
        shutil.rmtree(staging)
    else:
        staging.rename(final)
    return Artifact(name=recipe.name, id=artifact_id, dir=final, manifest=manifest)
