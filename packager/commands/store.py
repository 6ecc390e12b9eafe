"""upload, pull, seed: an artifact into the store, back out of it, and onto a network volume.

Each command first asks the lock which artifact id the recipe makes and whether the target already
holds it (one request); only when it does not is the local artifact built or read. That is what
makes re-running a pipeline step a sub-second no-op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from artifact_format.vocab import short_id
from packager.commands.options import frozen_option, recipe_argument
from packager.errors import StoreError
from packager.output import emit, human_bytes, json_option, progress_enabled


@click.command()
@recipe_argument
@frozen_option
@json_option
def upload(recipe_file: str, frozen: bool, as_json: bool) -> None:
    """Upload RECIPE's artifact to its store (`store.uri`).

    Files already in the store are skipped, the manifest goes last, and an artifact that is already
    complete there costs one request. Credentials come from boto3 (AWS_* variables or a profile).
    """
    from packager.pipeline.run import Run
    from packager.pipeline.stages import ensure_lock, ensure_upload
    from packager.source.recipe import load_recipe
    from packager.store.stores import TransferResult

    loaded = load_recipe(recipe_file)
    run = Run(loaded, loaded.recipe.mode, frozen=frozen, quiet=as_json, progress=progress_enabled(as_json))
    ensure_lock(run)
    outcome = ensure_upload(run)
    name, artifact_id = run.name, run.artifact_id
    result = run.transfer or TransferResult(run.artifact_uri, 0, 0, 0, skipped_whole=outcome.moved_nothing)
    _report("upload", name, artifact_id, result.to_json(), as_json)


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
    _report("pull", name, artifact_id, result.to_json(), as_json)


@click.command()
@recipe_argument
@frozen_option
@json_option
def seed(recipe_file: str, frozen: bool, as_json: bool) -> None:
    """Upload RECIPE's artifact onto its RunPod network volume through RunPod's S3 API.

    The volume is `volume.id` in `volume.datacenter` (or at `volume.endpoint_url`); the artifact goes
    to models/<name>/<artifact-id>/ with `.ready` written last. Keys: RunPod's "S3 API key", from
    the AWS profile `runpod` when it exists, else from boto3's usual chain (AWS_ACCESS_KEY_ID ...).
    """
    from artifact_format import manifest as mf
    from packager.pipeline.run import Run
    from packager.pipeline.stages import ensure_lock, ensure_volume
    from packager.source.recipe import load_recipe
    from packager.store.seed import SeedResult, volume_target

    loaded = load_recipe(recipe_file)
    target = volume_target(loaded)  # no volume.id is an error here, not a skipped stage
    run = Run(loaded, "volume", frozen=frozen, quiet=as_json, progress=progress_enabled(as_json))
    ensure_lock(run)
    ensure_volume(run)
    name, artifact_id = run.name, run.artifact_id
    result = run.seeded or SeedResult(
        target.volume_id,
        target.endpoint_url,
        mf.volume_key_prefix(name, artifact_id),
        str(mf.volume_path(target.mount, name, artifact_id)),
        0,
        0,
        0,
        True,
    )
    data = result.to_json()
    data["uri"] = f"s3://{result.volume_id}/{result.key_prefix.rstrip('/')}"
    _report("seed", name, artifact_id, data, as_json)


def _is_recipe(source: str) -> bool:
    return source.endswith((".yaml", ".yml")) or Path(source).is_file()


def _report(verb: str, name: str, artifact_id: str, data: dict[str, Any], as_json: bool) -> None:
    data = {"name": name, "artifact_id": artifact_id, **data}
    if as_json:
        emit(data, True)
        return
    where = data.get("path_on_volume") or data["uri"]
    short = f"{name}/{short_id(artifact_id)}"
    if data["skipped_whole"]:
        text = f"{short}: already complete at {data['uri']} (nothing sent)"
    else:
        moved = "fetched" if verb == "pull" else "sent"
        text = (
            f"{short} → {where}\n"
            f"files  {data['files_sent']} {moved}, {data['files_skipped']} already there\n"
            f"bytes  {human_bytes(data['bytes_sent'])} {moved}"
        )
    emit(data, False, text)


COMMANDS: list[click.Command] = [upload, pull, seed]
