"""serve, smoke: run the worker that ships in the images on the recipe's artifact, locally.

Both start `python -m worker_runtime` exactly as an image does (same module, same environment from
`packager.naming.worker_env`), with MODEL_DIR pointed at the local artifact instead of the path
inside an image. The runpod SDK's local API quirks apply to `serve`: every route is POST, and a job
sent to `/run` only runs when its `/status/<id>` is first asked for; `/runsync` is the simple one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from artifact_format.vocab import short_id
from packager.commands.options import frozen_option, recipe_argument
from packager.output import note
from packager.source.recipe import LoadedRecipe, load_recipe

if TYPE_CHECKING:
    from packager.convert.artifact import Artifact


def worker_env(loaded: LoadedRecipe, *, frozen: bool, quiet: bool) -> tuple[dict[str, str], Artifact]:
    from packager.image.naming import worker_env
    from packager.pipeline.artifact import materialise

    artifact = materialise(loaded, frozen=frozen, quiet=quiet)
    env = {**os.environ, **worker_env(loaded, artifact.id, "baked")}
    env["MODEL_DIR"] = str(artifact.dir.resolve())
    # The worker runs from any directory: make sure it imports this checkout's worker_runtime.
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env, artifact


@click.command()
@recipe_argument
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to serve on."
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0 to accept other machines, as on a pod).",
)
@frozen_option
def serve(recipe_file: str, port: int, host: str, frozen: bool) -> None:
    """Serve RECIPE's artifact through the runpod SDK's local API until interrupted.

    \b
    Try:  curl -s -X POST http://127.0.0.1:8000/runsync -H 'Content-Type: application/json' \\
            -d '{"input": {"prompt": "a lighthouse at dawn"}}'
    """
    loaded = load_recipe(recipe_file)
    env, artifact = worker_env(loaded, frozen=frozen, quiet=False)
    note(
        f"serving {artifact.name} {short_id(artifact.id)} on http://{host}:{port} once loaded "
        f'(POST /runsync with {{"input": {{...}}}}; API docs at /)'
    )
    cmd = [sys.executable, "-m", "worker_runtime", "--rp_serve_api", "--rp_api_host", host]
    cmd += ["--rp_api_port", str(port)]
    # The worker takes this process's place: signals, exit code and logs are the worker's own.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)
