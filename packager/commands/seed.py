"""`packager seed`: the artifact onto the recipe's RunPod network volume through RunPod's S3 API."""

from __future__ import annotations

import click

from packager.commands.options import frozen_option, recipe_argument
from packager.commands.transfer_report import report
from packager.output import json_option, progress_enabled


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
    report("seed", name, artifact_id, data, as_json)
