"""validate, lock, fetch, convert, verify: recipe → lock → source files → artifact."""

from __future__ import annotations

import click

from packager.commands.options import recipe_argument
from packager.output import emit, json_option
from packager.recipe import dump_normalised, load_recipe


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


COMMANDS: list[click.Command] = [validate]
