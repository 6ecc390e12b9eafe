"""`packager render`: the Dockerfile and build context for the recipe's artifact, no engine needed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from packager.commands.options import (
    frozen_option,
    image_inputs_options,
    mode_option,
    recipe_argument,
)
from packager.output import emit, json_option

if TYPE_CHECKING:
    from artifact_format.vocab import Mode


@click.command("render")
@recipe_argument
@mode_option
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Context folder (default: build/contexts/<name>/<id>-<mode>/). Replaced whole.",
)
@image_inputs_options
@frozen_option
@json_option
def render_command(
    recipe_file: str,
    mode: str | None,
    out_dir: Path | None,
    base_image: str | None,
    pip_find_links: str | None,
    frozen: bool,
    as_json: bool,
) -> None:
    """Write RECIPE's Dockerfile and build context; no Docker engine needed.

    The weights are hard-linked from the artifact (baked mode), the worker code is copied, and the
    Dockerfile orders layers so that a code change rebuilds only the last ones. Build it yourself
    with `docker build --build-arg BASE_IMAGE=... DIR`, or let `packager build` do it.
    """
    from packager.pipeline.run import ImageOptions, Run
    from packager.pipeline.stages import lock_then_image
    from packager.source.recipe import load_recipe

    loaded = load_recipe(recipe_file)
    chosen = cast("Mode", mode or loaded.recipe.mode)
    options = ImageOptions("render", None, base_image, pip_find_links, out_dir=out_dir, fresh_context=True)
    run = Run(loaded, chosen, frozen=frozen, quiet=as_json, image=options)
    lock_then_image(run)
    result = run.rendered
    assert result is not None  # fresh_context: always rendered
    artifact_id = run.artifact_id
    data = {
        "name": loaded.recipe.name,
        "mode": chosen,
        "artifact_id": artifact_id,
        "tag": result.tag,
        "context_dir": str(result.context_dir),
        "dockerfile": str(result.dockerfile),
        "base_image": result.base_image,
        "layers": list(result.layer_steps),
        "weights_image": result.weights.tag if result.weights else None,
        "hard_linked": result.linked,
        "copied": result.copied,
    }
    text = "\n".join(
        [
            f"rendered {result.dockerfile}",
            f"tag      {result.tag}",
            f"base     {result.base_image}",
            f"weights  {result.linked} hard-linked, {result.copied} copied",
            "layers   " + ", ".join(result.layer_steps),
            *(
                [f"weights  docker build -t {result.weights.tag} {result.weights.context_dir}"]
                if result.weights
                else []
            ),
            f"build    docker build -t {result.tag} {result.context_dir}",
        ]
    )
    emit(data, as_json, text)
