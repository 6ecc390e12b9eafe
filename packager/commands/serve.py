"""serve, smoke: run the worker that ships in the images on the recipe's artifact, locally.

Both start `python -m worker_runtime` exactly as an image does (same module, same environment from
`packager.naming.worker_env`), with MODEL_DIR pointed at the local artifact instead of the path
inside an image. The runpod SDK's local API quirks apply to `serve`: every route is POST, and a job
sent to `/run` only runs when its `/status/<id>` is first asked for; `/runsync` is the simple one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from artifact_format.vocab import short_id
from packager.commands.options import frozen_option, recipe_argument
from packager.errors import WorkerError
from packager.output import emit, json_option, note
from packager.source.recipe import LoadedRecipe, load_recipe

if TYPE_CHECKING:
    from packager.convert.artifact import Artifact


def _worker_env(loaded: LoadedRecipe, *, frozen: bool, quiet: bool) -> tuple[dict[str, str], Artifact]:
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
    env, artifact = _worker_env(loaded, frozen=frozen, quiet=False)
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


@click.command()
@recipe_argument
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("build/smoke.png"),
    show_default=True,
    help="Where to write the image.",
)
@click.option(
    "--prompt", default="a photo of a lighthouse on a cliff at dawn", show_default=True, help="What to draw."
)
@click.option(
    "--steps", type=int, default=None, help="Inference steps (default: the recipe's worker default)."
)
@click.option("--width", type=int, default=None, help="Image width (default: the recipe's or the model's).")
@click.option("--height", type=int, default=None, help="Image height (default: the recipe's or the model's).")
@click.option("--seed", type=int, default=None, help="Seed (default: random; the one used is printed).")
@frozen_option
@json_option
def smoke(
    recipe_file: str,
    output: Path,
    prompt: str,
    steps: int | None,
    width: int | None,
    height: int | None,
    seed: int | None,
    frozen: bool,
    as_json: bool,
) -> None:
    """Answer one request with RECIPE's worker (`--test_input`) and save the image."""
    loaded = load_recipe(recipe_file)
    env, artifact = _worker_env(loaded, frozen=frozen, quiet=as_json)
    job_input: dict[str, Any] = {"prompt": prompt}
    for key, value in (("num_inference_steps", steps), ("width", width), ("height", height), ("seed", seed)):
        if value is not None:
            job_input[key] = value
    output.parent.mkdir(parents=True, exist_ok=True)
    save_dir = output.parent / f".smoke-{os.getpid()}"
    env["WORKER_SAVE_DIR"] = str(save_dir.resolve())
    cmd = [sys.executable, "-m", "worker_runtime", "--rp_log_level", "WARN"]
    cmd += ["--test_input", json.dumps({"id": "smoke", "input": job_input})]
    started = time.perf_counter()
    try:
        # Worker output goes to stderr: stdout stays clean for --json.
        proc = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr, check=False)
        if proc.returncode != 0:
            raise WorkerError(
                f"smoke: the worker for {artifact.name} {short_id(artifact.id)} failed "
                f"(exit {proc.returncode}); its error is the line above"
            )
        produced = save_dir / "smoke.png"
        if not produced.is_file():
            raise WorkerError(f"smoke: the worker answered but wrote no image to {save_dir}")
        answer = json.loads((save_dir / "smoke.json").read_text())
        os.replace(produced, output)
    finally:
        shutil.rmtree(save_dir, ignore_errors=True)
    emit(
        {
            "image": str(output),
            "seed": answer.get("seed"),
            "artifact_id": artifact.id,
            "scheduler": answer.get("$meta", {}).get("scheduler"),
            "inference_ms": answer.get("$timings", {}).get("inference"),
            "worker_ready_ms": answer.get("$timings", {}).get("init"),
            "seconds": round(time.perf_counter() - started, 2),
        },
        as_json,
    )


COMMANDS: list[click.Command] = [serve, smoke]
