"""`packager fetch`: the locked files made present on local disk and checked against the lock."""

from __future__ import annotations

from typing import Any

import click

from packager.commands.lock import source_line
from packager.commands.options import frozen_option, recipe_argument
from packager.output import emit, human_bytes, json_option, progress_enabled
from packager.source.recipe import load_recipe


@click.command()
@recipe_argument
@frozen_option
@json_option
def fetch(recipe_file: str, frozen: bool, as_json: bool) -> None:
    """Download exactly the files RECIPE's pipeline needs, into the Hugging Face cache.

    Locks first when there is no lock (or re-locks on drift, unless --frozen). Only the component
    folders model_index.json names are fetched, in one weight format: never root checkpoints,
    onnx/flax exports or dropped components. Files already in the cache are not downloaded again.
    """
    from packager.source.drift import ensure_lock
    from packager.source.fetch import fetch as fetch_files

    loaded = load_recipe(recipe_file)
    current = ensure_lock(loaded, frozen=frozen, quiet=as_json)
    result = fetch_files(loaded, current, quiet=not progress_enabled(as_json))
    data: dict[str, Any] = {
        "name": current.name,
        "source": source_line(current.source),
        "root": str(result.root),
        "files": result.files,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "bytes_downloaded": result.bytes_downloaded,
        "bytes_total": current.total_bytes + int((current.source.get("checkpoint") or {}).get("size", 0)),
    }
    if as_json:
        emit(data, True)
        return
    shown = dict(data)
    shown["files"] = len(result.files)
    shown["bytes_downloaded"] = human_bytes(result.bytes_downloaded)
    shown["bytes_total"] = human_bytes(data["bytes_total"])
    emit(shown, False)
