"""deploy: the packaged image → a RunPod serverless template and endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import click

from packager.commands.options import mode_option, recipe_argument
from packager.output import emit, grid, json_option, warn

if TYPE_CHECKING:
    from artifact_format.vocab import Mode
    from packager.source.recipe import LoadedRecipe


@click.command()
@recipe_argument
@mode_option
@click.option(
    "--image",
    metavar="TAG",
    default=None,
    help="Image the workers run (default: the tag `packager build` gives this recipe's artifact and mode).",
)
@click.option(
    "--artifact-id",
    metavar="ID",
    default=None,
    help="Artifact to deploy (default: the one the recipe's lock records).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the GraphQL the deploy would send; send nothing (no API key needed).",
)
@json_option
def deploy(
    recipe_file: str,
    mode: str | None,
    image: str | None,
    artifact_id: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Create or update RECIPE's RunPod serverless template and endpoint.

    Settings come from the recipe's `deploy:` section; the API key from RUNPOD_API_KEY. Templates and
    endpoints are found by name and saved only when they differ, so a re-run changes nothing and a
    new image updates the template in place. Secrets go in as RunPod secret references
    (`deploy.secrets`), never as values.
    """
    from packager.deploy import deploy as dep
    from packager.errors import DeployError
    from packager.settings import runpod_api_key
    from packager.source.recipe import load_recipe

    loaded = load_recipe(recipe_file)
    chosen = cast("Mode", mode or loaded.recipe.mode)
    artifact_id = artifact_id or _known_artifact_id(loaded)
    target = dep.plan_target(loaded, mode=chosen, artifact_id=artifact_id, image=image)
    for message in dep.image_warnings(target):
        warn(message)

    if dry_run:
        plan = dep.dry_run(target)
        text = "\n".join(
            [
                "# dry run: nothing sent. First it reads the existing templates and endpoints:",
                plan["reads"],
                f"# then, {plan['note']}:",
                *(r["document"] for r in plan["requests"]),
            ]
        )
        emit(plan, as_json, text)
        return

    api_key = runpod_api_key()
    if not api_key:
        raise DeployError("RUNPOD_API_KEY is not set: export your RunPod API key, or use --dry-run")
    result = dep.deploy(target, api_key)
    data = result.to_json()
    data["url"] = _endpoint_url(result.endpoint.id)
    rows = [
        [kind, o.name, o.id, o.action + (f" ({', '.join(o.changed)})" if o.changed else "")]
        for kind, o in (("template", result.template), ("endpoint", result.endpoint))
    ]
    text = "\n".join(
        [
            grid(["", "name", "id", "action"], rows),
            "",
            f"image  {target.image}",
            f"url    {data['url']}",
            f"{result.mutations} change(s) sent" if result.mutations else "nothing to change",
        ]
    )
    emit(data, as_json, text)


def _known_artifact_id(loaded: LoadedRecipe) -> str:
    from packager.errors import DeployError
    from packager.pipeline.artifact import known_artifact_id

    found = known_artifact_id(loaded)
    if not found:
        raise DeployError(
            "the recipe has no packaged artifact yet: run `packager package RECIPE`, or pass --artifact-id"
        )
    return found


def _endpoint_url(endpoint_id: str) -> str:
    import runpod

    return f"{runpod.endpoint_url_base}/{endpoint_id}/runsync"
