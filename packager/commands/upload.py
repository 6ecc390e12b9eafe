"""upload, pull, seed: an artifact into the store, back out of it, and onto a network volume.

Each command first asks the lock which artifact id the recipe makes and whether the target already
holds it (one request); only when it does not is the local artifact built or read. That is what
makes re-running a pipeline step a sub-second no-op.
"""

from __future__ import annotations

import click

from packager.commands.options import frozen_option, recipe_argument
from packager.commands.transfer_report import report
from packager.output import json_option, progress_enabled


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
    from packager.store.transfer import TransferResult

    loaded = load_recipe(recipe_file)
    run = Run(loaded, loaded.recipe.mode, frozen=frozen, quiet=as_json, progress=progress_enabled(as_json))
    ensure_lock(run)
    outcome = ensure_upload(run)
    name, artifact_id = run.name, run.artifact_id
    result = run.transfer or TransferResult(run.artifact_uri, 0, 0, 0, skipped_whole=outcome.moved_nothing)
    report("upload", name, artifact_id, result.to_json(), as_json)
