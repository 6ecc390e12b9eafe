"""render, build: an artifact into a Dockerfile + build context, and into an image (and a registry).

Both ask the lock for the artifact id first: an image that is already up to date is found by its
tag and labels without touching the artifact, and a volume-mode image needs only the manifest,
never the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import click

from packager.commands.options import (
    frozen_option,
    image_inputs_options,
    mode_option,
    recipe_argument,
    value_option,
)
from packager.output import emit, grid, human_bytes, json_option

if TYPE_CHECKING:
    from artifact_format.vocab import Mode


@click.command("build")
@recipe_argument
@mode_option
@click.option(
    "--push/--no-push",
    default=None,
    help="Push every tag to its registry after the build (default: the recipe's `image.push`).",
)
@image_inputs_options
@value_option(
    "--network",
    "NAME",
    "Network for the build's RUN steps (default: the engine's; `host` for a loopback --find-links).",
)
@click.option("--no-cache", is_flag=True, help="Build every layer afresh, even when the image is up to date.")
@click.option("-q", "--quiet", is_flag=True, help="Do not stream the build log.")
@frozen_option
@json_option
def build_command(
    recipe_file: str,
    mode: str | None,
    push: bool | None,
    base_image: str | None,
    pip_find_links: str | None,
    network: str | None,
    no_cache: bool,
    quiet: bool,
    frozen: bool,
    as_json: bool,
) -> None:
    """Build RECIPE's image with the local Docker engine (DOCKER_HOST), and push it when asked.

    Tagged <repository>:<name>-<artifact-id[:12]>-<mode> plus the recipe's `image.tags`. An image
    with that tag whose labels carry the same artifact id and worker code is reused, not rebuilt.
    Registry credentials come from your docker config (`docker login`), never from the recipe.
    """
    from packager.pipeline.run import ImageOptions, Run
    from packager.pipeline.stages import lock_then_image
    from packager.source.recipe import load_recipe

    loaded = load_recipe(recipe_file)
    options = ImageOptions("build", push, base_image, pip_find_links, network, no_cache, quiet_build=quiet)
    run = Run(loaded, cast("Mode", mode or loaded.recipe.mode), frozen=frozen, quiet=as_json, image=options)
    outcome = lock_then_image(run)
    result = run.built
    assert result is not None  # the build policy builds or finds the image, or raises
    if outcome.moved_nothing and not quiet:
        click.echo(f"{result.tag} is up to date: not rebuilt", err=True)
    rows = [(x.step, human_bytes(x.size), x.digest[:19]) for x in result.layers]
    pushed = (
        f"yes ({result.uploaded_layers} layers uploaded, the rest already there)" if result.pushed else "no"
    )
    text = "\n".join(
        [
            f"image    {result.tag}" + ("  (up to date)" if result.skipped else ""),
            f"id       {result.image_id[:19]}",
            f"size     {human_bytes(result.size)}",
            "tags     " + ", ".join(result.tags),
            f"pushed   {pushed}",
            "",
            grid(("layer", "size", "digest"), rows),
        ]
    )
    emit(result.to_json(), as_json, text)
