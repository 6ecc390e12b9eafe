"""`packager smoke` and `packager serve`: the recipe's artifact answered by the real worker, locally."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.rig.artifacts import tiny_recipe, tiny_source
from tests.rig.cli import run_packager
from tests.rig.worker import REPO, decode_png, packager_serve, worker_env


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cli")
    source = tiny_source(root / "source")
    extra = "worker:\n  defaults:\n    num_inference_steps: 2\n    width: 64\n    height: 64\n"
    env = worker_env(None, PACKAGER_BUILD_DIR=str(root / "build"))
    return tiny_recipe(root / "recipes", source, extra=extra), env


def test_smoke_answers_one_request_and_saves_the_image(
    recipe: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    path, env = recipe
    out = tmp_path / "images" / "smoke.png"
    proc = run_packager(
        "smoke", str(path), "-o", str(out), "--seed", "21", "--width", "128", "--json", env=env, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["image"] == str(out)
    assert report["seed"] == 21
    assert report["worker_ready_ms"] > 0
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (128, 64)
    assert sorted(p.name for p in out.parent.iterdir()) == ["smoke.png"]


def test_smoke_fails_in_one_line_when_the_worker_refuses_the_request(
    recipe: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    path, env = recipe
    out = tmp_path / "smoke.png"
    proc = run_packager("smoke", str(path), "-o", str(out), "--width", "100", env=env, cwd=REPO)
    assert proc.returncode == 2
    assert "width: must be a multiple of 8 (got 100)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("packager: error: smoke: the worker for tiny")
    assert not out.exists()


def test_serve_answers_runsync_on_the_chosen_port(
    recipe: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    path, env = recipe
    log = tmp_path / "serve.log"
    with packager_serve(path, env, log) as (proc, url):
        body = json.dumps({"input": {"prompt": "a harbour", "seed": 4}}).encode()
        deadline = time.monotonic() + 300
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            req = urllib.request.Request(
                f"{url}/runsync", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    answer = json.loads(resp.read())
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        assert answer is not None, log.read_text()[-3000:]
        assert answer["status"] == "COMPLETED"
        assert decode_png(answer["output"]["image_base64"]).size == (64, 64)
        assert "serving tiny " in log.read_text()
