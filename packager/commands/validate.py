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
    from packager.errors import LockError
    from packager.source.lock import read_lock

    try:
        lock = read_lock(loaded)
    except LockError:
        lock = None  # validate checks the recipe; `lock` names what is wrong with its lock
    if lock is not None:
        from packager.pipeline.precision import precision_line

        line = precision_line(loaded, lock)
        if line is not None:
            click.echo(f"# {line} (for {loaded.lock_path.name})")
    click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
