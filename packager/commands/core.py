"""validate, convert, verify: the recipe and the artifact it turns into (lock and fetch: source.py)."""

from __future__ import annotations

from pathlib import Path

import click

from artifact_format import manifest as mf
from packager.commands.options import frozen_option, recipe_argument
from packager.output import emit, json_option
from packager.source.recipe import dump_normalised, load_recipe


@click.command()
@recipe_argument
@json_option
def validate(recipe_file: str, as_json: bool) -> None:
    """Check RECIPE and print it with every default filled in."""
    loaded = load_recipe(recipe_file)
    data = dump_normalised(loaded)
    if as_json:
        emit(data, True)
        return
    import yaml

    click.echo(f"# {recipe_file}: valid")
    click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


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


@click.command()
@click.argument("artifact_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@json_option
def verify(artifact_dir: Path, as_json: bool) -> None:
    """Check every file of the artifact in DIR against its manifest (sizes and sha256)."""
    from packager.convert.verify import verify_artifact

    manifest = verify_artifact(artifact_dir, full=True)
    emit(
        {
            "dir": str(artifact_dir),
            "artifact_id": mf.artifact_id_of(artifact_dir),
            "files": len(manifest.files),
            "bytes": manifest.total_bytes,
            "ok": True,
        },
        as_json,
    )


COMMANDS = [validate, convert, verify]
