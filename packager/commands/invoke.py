"""invoke: send RECIPE's endpoint (or `packager serve`) a job, save what it draws, say where the time went."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from packager.commands.options import mode_option, recipe_argument, shown_option, value_option
from packager.output import emit, json_option

if TYPE_CHECKING:
    from artifact_format.vocab import Mode
    from packager.deploy.invoke import Answer, Transport
    from packager.source.recipe import LoadedRecipe

DEFAULT_PROMPT = "a photo of a lighthouse on a cliff at dawn"


@click.command()
@recipe_argument
@click.option(
    "--prompt", default=None, help=f"What to draw (default: {DEFAULT_PROMPT!r} unless --input has one)."
)
@value_option(
    "--input",
    "JSON",
    'The job\'s input as a JSON object, either shape: \'{"prompt": "...", "seed": 1}\' or '
    'docker-diffusers-api\'s \'{"modelInputs": {...}, "callInputs": {...}}\'.',
    dest="input_json",
)
@shown_option("--runs", click.IntRange(1, 1000), 1, "Jobs to send, one after another.")
@value_option("--endpoint-id", "ID", "Endpoint to call (default: the one `deploy` named for RECIPE).")
@value_option(
    "--local", "URL", "Call `packager serve` at URL instead (e.g. http://127.0.0.1:8000).", dest="local_url"
)
@mode_option
@shown_option(
    "--timeout",
    click.FloatRange(1, 86400),
    600,
    "Seconds to wait for each job (a cold endpoint pulls its image first).",
    dest="timeout_s",
)
@value_option(
    "--output-dir",
    "DIRECTORY",
    "Where images and videos go (default: build/invoke/).",
    value_type=click.Path(file_okay=False, path_type=Path),
)
@json_option
def invoke(
    recipe_file: str,
    prompt: str | None,
    input_json: str | None,
    runs: int,
    endpoint_id: str | None,
    local_url: str | None,
    mode: str | None,
    timeout_s: float,
    output_dir: Path | None,
    as_json: bool,
) -> None:
    """Send RECIPE's deployed endpoint a job and print docker-diffusers-api's timing line.

    \b
    Request took 19.9s (inference: 4.8s, init: 3.1s)
    `init` appears only when the job met a cold worker (its first job). With --runs N the jobs go one
    after another and p50/p95 latency and the cold runs are reported. Remote calls go through the
    runpod SDK with RUNPOD_API_KEY; --local calls `packager serve`. A failed job prints its error and
    exits 1; so does a job with no answer within --timeout.
    """
    from packager.deploy import invoke as client
    from packager.errors import InvokeError
    from packager.settings import build_dir
    from packager.source.recipe import load_recipe

    loaded = load_recipe(recipe_file)
    job_input = _job_input(input_json, prompt)
    transport = _transport(loaded, local_url, endpoint_id, cast("Mode", mode or loaded.recipe.mode))
    folder = output_dir or build_dir() / "invoke"
    answers: list[Answer] = []
    saved: list[Path] = []
    for run in range(1, runs + 1):
        answer = client.invoke(transport, job_input, timeout_s=timeout_s)
        if answer.status != "COMPLETED":
            raise InvokeError(f"job {answer.job_id} {answer.status}: {answer.error}")
        files = client.save_outputs(answer.output, folder, f"{loaded.recipe.name}-{answer.job_id}")
        saved += files
        answers.append(answer)
        if not as_json:
            click.echo(
                (f"[{run}/{runs}] " if runs > 1 else "")
                + answer.line()
                + (" cold" if runs > 1 and answer.cold else "")
            )
            for path in files:
                click.echo(f"saved {path}")
    report: dict[str, Any] = {
        "where": transport.where,
        "jobs": [a.to_json() for a in answers],
        "saved": [str(p) for p in saved],
        **client.summary(answers),
    }
    if as_json:
        emit(report, True)
    elif runs > 1:
        cold = ", ".join(map(str, report["cold_runs"])) or "none"
        click.echo(
            f"{runs} runs: p50 {report['p50_s']:.1f}s, p95 {report['p95_s']:.1f}s; "
            f"cold worker on run(s) {cold}"
        )


def _job_input(input_json: str | None, prompt: str | None) -> dict[str, Any]:
    from packager.errors import InvokeError

    try:
        job = {} if input_json is None else json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise InvokeError(f"--input: not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(job, dict):
        raise InvokeError(f"--input: must be a JSON object (got {type(job).__name__})")
    target = job["modelInputs"] if isinstance(job.get("modelInputs"), dict) else job
    if prompt is not None:
        target["prompt"] = prompt
    elif "prompt" not in target:
        target["prompt"] = DEFAULT_PROMPT
    return job


def _transport(loaded: LoadedRecipe, local_url: str | None, endpoint_id: str | None, mode: Mode) -> Transport:
    from packager.deploy import invoke as client
    from packager.errors import DeployError
    from packager.settings import runpod_api_key

    if local_url is not None:
        if endpoint_id is not None:
            raise DeployError("--local and --endpoint-id: pick one")
        return client.LocalServer(local_url)
    api_key = runpod_api_key()
    if not api_key:
        raise DeployError("RUNPOD_API_KEY is not set: export your RunPod API key, or use --local URL")
    if endpoint_id is None:
        from packager.deploy.payload import endpoint_name

        endpoint_id = client.endpoint_id_named(endpoint_name(loaded, mode), api_key)
    return client.RemoteEndpoint(endpoint_id, api_key)
