"""`packager smoke`: one request through the packaged worker, its image saved."""

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
from packager.commands.serve import worker_env
from packager.errors import WorkerError
from packager.output import emit, json_option
from packager.source.recipe import load_recipe

if TYPE_CHECKING:
    pass


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
    env, artifact = worker_env(loaded, frozen=frozen, quiet=as_json)
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
