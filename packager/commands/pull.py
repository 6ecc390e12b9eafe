"""`packager pull`: an artifact from a store into a folder, every file verified."""

from __future__ import annotations

from pathlib import Path

import click

from packager.commands.transfer_report import report
from packager.errors import StoreError
from packager.output import json_option, progress_enabled


@click.command()
@click.argument("source", metavar="RECIPE|URI")
@click.argument("dest", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@json_option
def pull(source: str, dest: Path, as_json: bool) -> None:
    """Download an artifact into DIR, verifying every file's sha256 against the manifest.

    RECIPE|URI is a recipe (its store and the artifact id its lock records) or the artifact's prefix
    in a store: s3://bucket/prefix/<name>/<artifact-id> or a local directory of that shape. DIR
    becomes the artifact directory itself. Files are staged beside it and renamed into place when
    all of them check out; a pull that stops part way resumes from the files already verified.
    """
    from packager.store.stores import open_store, open_store_uri, split_artifact_uri

    if _is_recipe(source):
        from packager.pipeline.artifact import known_artifact_id
        from packager.source.recipe import load_recipe

        loaded = load_recipe(source)
        artifact_id = known_artifact_id(loaded)
        if artifact_id is None:
            raise StoreError(
                f"{source}: its lock records no artifact id for the current settings; run "
                f"`packager upload {source}` first (or pull by URI)"
            )
        store = open_store(loaded)
        name = loaded.recipe.name
    else:
        store_uri, name, artifact_id = split_artifact_uri(source)
        store = open_store_uri(store_uri)
    result = store.download(name, artifact_id, dest, progress=progress_enabled(as_json))
    report("pull", name, artifact_id, result.to_json(), as_json)


def _is_recipe(source: str) -> bool:
    return source.endswith((".yaml", ".yml")) or Path(source).is_file()
