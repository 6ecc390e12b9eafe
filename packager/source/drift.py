"""Drift: whether a lock still describes its recipe's source, and keeping it so.

Recipe and settings changes are found offline; then the recipe's Input takes one cheap look at its
source (a revision lookup, a stat of local files). `ensure_lock` is what every stage calls.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from packager.errors import LockError
from packager.source.inputs import Stats, input_for, recorded
from packager.source.lock import (
    LOCK_VERSION,
    Lock,
    build_lock,
    fingerprint_of,
    packing_settings,
    read_lock,
    write_lock,
)
from packager.source.lora_inputs import lora_inputs, recorded_loras
from packager.source.recipe import LoadedRecipe


def drift(loaded: LoadedRecipe, lock: Lock) -> list[str]:
    """Why the lock no longer describes the recipe's source ([] when it is fresh).

    Recipe and settings changes are checked first, offline. Then one cheap look at the source: for
    hub sources one API call resolving the revision (none for a full commit sha, none with
    HF_HUB_OFFLINE set); for local files a stat, re-hashing only files whose size or mtime moved.
    """
    return check(loaded, lock)[0]


def check(loaded: LoadedRecipe, lock: Lock) -> tuple[list[str], Stats]:
    """(reasons, refreshed stat cache): files touched but unchanged get their new stat recorded."""
    if lock.version != LOCK_VERSION:
        return [f"lock format {lock.version}, this packager writes {LOCK_VERSION}"], lock.stat_cache
    reasons = []
    if lock.fingerprint != fingerprint_of(lock.name, lock.source, lock.files, lock.settings):
        reasons.append("the lock was edited (its fingerprint does not match its content)")
    if lock.name != loaded.recipe.name:
        reasons.append(f"recipe changed: name {lock.name!r} → {loaded.recipe.name!r}")
    source = input_for(loaded)
    loras = lora_inputs(loaded)
    locked_decl = {**recorded(lock.source), **recorded_loras(lock.source)}
    recipe_decl = {"source.kind": source.kind, **source.declared()}
    for lora in loras:
        recipe_decl.update(lora.declared())
    for key in sorted(set(locked_decl) | set(recipe_decl)):
        if locked_decl.get(key) != recipe_decl.get(key):
            reasons.append(f"recipe changed: {key} {locked_decl.get(key)!r} → {recipe_decl.get(key)!r}")
    settings = packing_settings(loaded)
    for key in sorted(set(settings) | set(lock.settings)):
        if settings.get(key) != lock.settings.get(key):
            field_name = "components.drop" if key == "drop" else key
            what = "converter version" if key == "converter" else f"recipe changed: {field_name}"
            reasons.append(f"{what} {lock.settings.get(key)!r} → {settings.get(key)!r}")
    reasons += source.recipe_drift(lock)
    for lora in loras:
        reasons += lora.recipe_drift(lock)
    if reasons:
        return reasons, lock.stat_cache
    reasons, stats = source.source_drift(lock)
    for lora in loras:
        moved, lora_stats = lora.source_drift(lock)
        reasons += moved
        stats = {**stats, **lora_stats}
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
        reasons, stats = check(loaded, lock)
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
