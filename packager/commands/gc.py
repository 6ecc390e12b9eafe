"""`packager gc`: artifacts (and images) that no lock points at any more, removed."""

from __future__ import annotations

from pathlib import Path

import click

from packager.output import emit, json_option


@click.command()
@click.option(
    "--recipes",
    "recipes_dir",
    default="recipes",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the recipes (and their locks) live.",
)
@click.option("--dry-run", is_flag=True, help="List what would be removed, remove nothing.")
@click.option(
    "--images/--no-images", default=True, help="Also remove local images of unreferenced artifacts."
)
@json_option
def gc(recipes_dir: Path, dry_run: bool, images: bool, as_json: bool) -> None:
    """Remove artifacts, store prefixes and local images that no recipe's lock points at."""
    from packager.pipeline.gc import collect

    removed = collect(recipes_dir, dry_run=dry_run, images=images)
    verb = "would remove" if dry_run else "removed"
    text = "\n".join(f"{verb} {kind}: {what}" for kind, what in removed) or "nothing to remove"
    emit({"dry_run": dry_run, "removed": [{"kind": k, "what": w} for k, w in removed]}, as_json, text)
