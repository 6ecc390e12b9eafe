"""deploy: the packaged image → a RunPod serverless endpoint (REST API v2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import click

from packager.commands.options import mode_option, recipe_argument, value_option
from packager.output import emit, grid, json_option, warn

if TYPE_CHECKING:
    from artifact_format.vocab import Mode
    from packager.source.recipe import LoadedRecipe


@click.command()
@recipe_argument
@mode_option
@value_option(
    "--image",
    "TAG",
    "Image the workers run (default: the tag `packager build` gives this recipe's artifact and mode).",
)
@value_option("--artifact-id", "ID", "Artifact to deploy (default: the one the recipe's lock records).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the exact HTTP writes deploy would send (secrets as references) and send none; with "
    "RUNPOD_API_KEY set it reads the endpoint to know them, without one it shows the create.",
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
    """Create or update RECIPE's RunPod serverless endpoint through RunPod's REST API v2.

    Settings come from the recipe's `deploy:` section; the API key from RUNPOD_API_KEY. The endpoint
    is found by the id stored after the last deploy (RECIPE.deploy.json), else by name; only the
    fields that differ are sent, in one PATCH, so a re-run sends nothing and a new image is one
    request. Secrets go in as RunPod secret references (`deploy.secrets`), never as values.
    """
    from packager.deploy.deploy import deploy as run_deploy
    from packager.deploy.deploy import offline_plan
    from packager.deploy.payload import image_warnings, plan_target
    from packager.deploy.runpod_api import RunPodREST
    from packager.deploy.state import state_path
    from packager.errors import DeployError
    from packager.settings import runpod_api_base_url, runpod_api_key
    from packager.source.recipe import load_recipe

    loaded = load_recipe(recipe_file)
    chosen = cast("Mode", mode or loaded.recipe.mode)
    artifact_id = artifact_id or _known_artifact_id(loaded)
    target = plan_target(loaded, mode=chosen, artifact_id=artifact_id, image=image)
    for message in image_warnings(target):
        warn(message)
    base_url = runpod_api_base_url()
    state_file = state_path(loaded.path)

    api_key = runpod_api_key()
    if dry_run and not api_key:
        plan = offline_plan(target, base_url, state_file)
        emit(plan, as_json, _render_plan(plan["requests"]))
        return
    if not api_key:
        raise DeployError("RUNPOD_API_KEY is not set: export your RunPod API key, or use --dry-run")
    result = run_deploy(target, RunPodREST(api_key, base_url), state_file, plan_only=dry_run)
    data = result.to_json(base_url)
    if dry_run:
        emit(data, as_json, _render_plan(data["requests"], result.sent))
        return
    rows = [
        [kind, o.name, o.id, o.action + (f" ({', '.join(o.changed)})" if o.changed else "")]
        for kind, o in (("template", result.template), ("endpoint", result.endpoint))
        if o is not None
    ]
    text = "\n".join(
        [
            grid(["", "name", "id", "action"], rows),
            "",
            f"image  {target.image}",
            f"url    {result.url}",
            *(f"model  {ref} (cached)" for ref in result.model_references),
            f"{result.writes} change(s) sent" if result.writes else "nothing to change",
        ]
    )
    emit(data, as_json, text)


def _render_plan(requests: list[dict[str, Any]], sent: list[str] | None = None) -> str:
    """Each request as an HTTP message, preceded by when it is sent (and the reads made, if any)."""
    import json

    if sent is None:
        parts = ["# dry run: nothing sent"]
    else:
        parts = ["# dry run: read " + ", ".join(sent) + "; nothing written"]
        if not requests:
            parts.append("# nothing to change: deploy would send no write")
    for step in requests:
        parts.append(f"\n# {step['when']}")
        parts.append(f"{step['method']} {step['url']}")
        parts.extend(f"{k}: {v}" for k, v in step["headers"].items())
        if "body" in step:
            parts.append("\n" + json.dumps(step["body"], indent=2))
    return "\n".join(parts)


def _known_artifact_id(loaded: LoadedRecipe) -> str:
    from packager.errors import DeployError
    from packager.pipeline.artifact import known_artifact_id

    found = known_artifact_id(loaded)
    if not found:
        raise DeployError(
            "the recipe has no packaged artifact yet: run `packager package RECIPE`, or pass --artifact-id"
        )
    return found


COMMANDS: list[click.Command] = [deploy]
