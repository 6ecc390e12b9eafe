"""An endpoint that accepts connections and never answers fails a command in one line, in time.

Every network call but S3's (tests/test_integrity.py) is tried against a silent server: the hub,
a checkpoint URL, the RunPod REST API and a deployed endpoint's job API. Each command runs as a
user runs it, with a small limit (the recipe's `store.timeout`, or PACKAGER_TIMEOUT), and must end
with exit code 2 and a single line naming the endpoint and the limit, well before the 60 s default.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.rig.cli import run_packager
from tests.rig.fixtures_hub import write_recipe

LIMIT_S = 2
# Start-up of the CLI plus one limit, with room for a loaded machine; hub back-off alone is 23 s.
WITHIN_S = 15
API_KEY = "rpa_stalled_endpoint_test_key_0000"


def run_stalled(recipe: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "HF_", "PACKAGER_"))}
    base |= {
        "HOME": str(recipe.parent),
        "HF_HOME": str(recipe.parent / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PACKAGER_BUILD_DIR": str(recipe.parent / "build"),
    }
    start = time.monotonic()
    proc = run_packager(*args, str(recipe), env=base | env, timeout=120)
    return proc, time.monotonic() - start


def assert_stalled_line(proc: subprocess.CompletedProcess[str], elapsed: float, where: str) -> str:
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{where} accepted the connection but sent nothing for {LIMIT_S} s" in lines[0]
    assert elapsed < WITHIN_S, f"took {elapsed:.1f} s"
    return lines[0]


def test_a_silent_hub_fails_lock_after_the_recipes_store_timeout(
    silent_endpoint: str, tmp_path: Path
) -> None:
    recipe = write_recipe(
        tmp_path, f"name: m\nsource: {{repo: org/model}}\nstore: {{uri: ./store, timeout: {LIMIT_S}}}\n"
    )

    proc, elapsed = run_stalled(recipe, "lock", HF_ENDPOINT=silent_endpoint)

    line = assert_stalled_line(proc, elapsed, silent_endpoint)
    assert line.startswith("packager: error: hub repo 'org/model': ")
    assert not recipe.with_suffix(".lock").exists()


def test_a_silent_checkpoint_url_fails_lock_after_packager_timeout(
    silent_endpoint: str, tmp_path: Path
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    url = f"{silent_endpoint}/api/download/models/1"
    recipe = write_recipe(tmp_path, f"name: m\nsource:\n  url: '{url}'\n  config: ./config\n")

    proc, elapsed = run_stalled(recipe, "lock", PACKAGER_TIMEOUT=str(LIMIT_S))

    line = assert_stalled_line(proc, elapsed, silent_endpoint)
    assert url in line
    assert not recipe.with_suffix(".lock").exists()


@pytest.mark.parametrize(
    ("args", "prefix"),
    [([], "RunPod API: "), (["--endpoint-id", "ep123"], "endpoint ep123: "), (["--local", "SILENT"], "")],
    ids=["rest-api", "endpoint-jobs", "local-serve"],
)
def test_a_silent_runpod_api_fails_invoke_in_one_line(
    silent_endpoint: str, tmp_path: Path, args: list[str], prefix: str
) -> None:
    recipe = write_recipe(tmp_path, "name: m\nsource: {path: ./model}\n")

    proc, elapsed = run_stalled(
        recipe,
        "invoke",
        *[silent_endpoint if a == "SILENT" else a for a in args],
        PACKAGER_TIMEOUT=str(LIMIT_S),
        RUNPOD_API_KEY=API_KEY,
        RUNPOD_API_BASE_URL=silent_endpoint,
        RUNPOD_ENDPOINT_BASE_URL=silent_endpoint,
    )

    assert f"packager: error: {prefix}" in assert_stalled_line(proc, elapsed, silent_endpoint)
