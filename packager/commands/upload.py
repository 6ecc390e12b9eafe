"""upload, pull, seed: an artifact into the store, back out of it, and onto a network volume.

Each command first asks the lock which artifact id the recipe makes and whether the target already
holds it (one request); only when it does not is the local artifact built or read. That is what
makes re-running a pipeline step a sub-second no-op.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from packager.commands.options import frozen_option, recipe_argument
from packager.commands.transfer_report import report
from packager.output import json_option, progress_enabled

if TYPE_CHECKING:
    from packager.pipeline.run import Run


@click.command()
@recipe_argument
@frozen_option
@click.option(
    "--verify-remote",
    is_flag=True,
    help="Download and hash every stored file first; bad ones (and the manifest) are deleted and sent again.",
)
@json_option
def upload(recipe_file: str, frozen: bool, verify_remote: bool, as_json: bool) -> None:
    """Upload RECIPE's artifact to its store (`store.uri`).

    Every file is hashed before it is sent and must match the manifest. Files already in the store
    are skipped, the manifest goes last, and an artifact that is already complete there costs one
    request (`--verify-remote` reads it all back instead). Credentials come from boto3's chain.
    """
    from packager.pipeline.run import Run
    from packager.pipeline.stages import ensure_lock, ensure_upload
    from packager.source.recipe import load_recipe
    from packager.store.transfer import TransferResult

    loaded = load_recipe(recipe_file)
    run = Run(loaded, loaded.recipe.mode, frozen=frozen, quiet=as_json, progress=progress_enabled(as_json))
    ensure_lock(run)
    if verify_remote:
        _verify_remote(run)
    outcome = ensure_upload(run)
    name, artifact_id = run.name, run.artifact_id
    result = run.transfer or TransferResult(run.artifact_uri, 0, 0, 0, skipped_whole=outcome.moved_nothing)
    report("upload", name, artifact_id, result.to_json(), as_json)


def _verify_remote(run: Run) -> None:
    """Hash what the store holds for the artifact; what is bad is deleted there, to be sent again."""
    known = run.lock.artifact_id if run.lock is not None else None
    artifact_id = known or run.artifact_bytes().id
    # Without a stored manifest the artifact is uncommitted: check what objects are there against
    # the local one, which is about to be uploaded anyway.
    manifest = run.store.read_manifest(run.name, artifact_id) or run.artifact_bytes().manifest
    bad = run.store.verify_remote(run.name, artifact_id, manifest, progress=run.shows_progress)
    for path in bad:
        click.echo(f"store copy of {path} is missing or corrupt: sending it again", err=True)
