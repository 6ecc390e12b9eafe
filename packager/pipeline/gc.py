"""Garbage collection: what no recipe's lock points at any more can go.

Every lock records the artifact id its recipe currently produces; anything else under
build/artifacts, in a recipe's store, or tagged as one of our images is left over from an older
version of some recipe.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from packager.errors import PackagerError
from packager.settings import build_dir
from packager.source.recipe import LoadedRecipe, load_recipe


def referenced(recipes_dir: Path) -> tuple[list[LoadedRecipe], set[str]]:
    """Every recipe under `recipes_dir` and the artifact ids their locks point at."""
    from packager.source.lock import read_lock

    loaded: list[LoadedRecipe] = []
    ids: set[str] = set()
    for path in sorted(recipes_dir.rglob("*.yaml")):
        try:
            recipe = load_recipe(path)
        except PackagerError:
            continue  # a broken recipe protects nothing, but must not stop the collection
        loaded.append(recipe)
        lock = read_lock(recipe)
        if lock and lock.artifact_id:
            ids.add(lock.artifact_id)
    return loaded, ids


def collect(recipes_dir: Path, *, dry_run: bool, images: bool) -> list[tuple[str, str]]:
    from packager.store.stores import open_store

    recipes, keep = referenced(recipes_dir)
    removed: list[tuple[str, str]] = []
    root = build_dir() / "artifacts"
    for folder in sorted(root.glob("*/*")) if root.exists() else []:
        if folder.is_dir() and folder.name not in keep:
            removed.append(("artifact", str(folder)))
            if not dry_run:
                shutil.rmtree(folder)
    seen_stores: set[str] = set()
    for loaded in recipes:
        uri = loaded.store_uri()
        if uri in seen_stores:
            continue
        seen_stores.add(uri)
        try:
            store = open_store(loaded)
            listing = store.list_artifacts()
        except PackagerError:
            continue  # unreachable stores (no credentials here) are left alone
        for name, artifact_id in listing:
            if artifact_id not in keep:
                removed.append(("store", store.artifact_uri(name, artifact_id)))
                if not dry_run:
                    store.delete_artifact(name, artifact_id)
    if images:
        removed += _images(keep, dry_run)
    return removed


def _images(keep: set[str], dry_run: bool) -> list[tuple[str, str]]:
    from packager.image.engine import engine_problem
    from packager.image.render import LABEL_ARTIFACT, LABEL_ROLE

    if engine_problem():
        return []
    import docker

    client = docker.from_env()
    removed = []
    # Worker images before the weights images they are built FROM: a parent goes only once its
    # children have.
    images = client.images.list(filters={"label": LABEL_ARTIFACT})
    for image in sorted(images, key=lambda i: (i.labels or {}).get(LABEL_ROLE) == "weights"):
        artifact_id = (image.labels or {}).get(LABEL_ARTIFACT)
        if artifact_id and artifact_id not in keep:
            removed.append(("image", ", ".join(image.tags) or image.short_id))
            if not dry_run:
                client.images.remove(image.id, force=True)
    return removed
