"""`packager convert`: the recipe's weights into a verified, content-addressed artifact."""

from __future__ import annotations

from pathlib import Path

import click

from packager.commands.options import frozen_option, recipe_argument
from packager.output import emit, json_option
from packager.source.recipe import load_recipe


@click.command()
@recipe_argument
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the artifact exactly here (default: build/artifacts/<name>/<artifact-id>/).",
)
@click.option("--verify/--no-verify", default=True, help="Reload every tensor and compare (default: on).")
@frozen_option
@json_option
def convert(recipe_file: str, output: Path | None, verify: bool, frozen: bool, as_json: bool) -> None:
    """Convert RECIPE's weights into a verified, content-addressed artifact."""
    from packager.pipeline.artifact import convert_to, materialise

    loaded = load_recipe(recipe_file)
    if output is None:
        artifact = materialise(loaded, frozen=frozen, quiet=as_json, verify=verify)
    else:
        artifact = convert_to(loaded, output, frozen=frozen, quiet=as_json, verify=verify)
    emit(
        {
            "name": artifact.name,
            "artifact_id": artifact.id,
            "dir": str(artifact.dir),
            "files": len(artifact.manifest.files),
            "bytes": artifact.manifest.total_bytes,
            "precision": artifact.manifest.precision,
        },
        as_json,
    )
