"""validate, convert, verify: the recipe and the artifact it turns into (lock and fetch: source.py)."""

from __future__ import annotations

import click

from packager.commands.options import recipe_argument
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
