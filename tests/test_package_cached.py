"""Cached mode end to end on the CLI: `package --mode cached` publishes, records the commit in the lock,
renders the slim image with MODEL_REPO/MODEL_COMMIT, and a re-run costs one store HEAD and one hub
ref lookup; `packager publish` on its own, under --frozen, sends nothing more."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.rig.fixtures_hub import HUB_TOKEN
from tests.rig.fixtures_s3 import S3Env
from tests.rig.localhub import LocalHub
from tests.test_package import package

ROOT = Path(__file__).resolve().parents[1]
REPO = "publisher/tiny-cached"


def cached_recipe(folder: Path, source: Path, s3: S3Env, extra: str = "") -> Path:
    recipe = folder / "tiny.yaml"
    recipe.write_text(
        f"name: tiny\nsource: {{path: {source}}}\n"
        f"store: {{uri: 's3://{s3.bucket}/models'}}\n"
        "components: {drop: [safety_checker, feature_extractor]}\n"
        f"mode: cached\npublish: {{repo: {REPO}, token_env: HUB_WRITE_TOKEN}}\n" + extra
    )
    return recipe


def _env(s3: S3Env, hub_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    hub_vars = {k: v for k, v in hub_env.items() if k.startswith("HF_")}
    return s3.subprocess_env(
        PACKAGER_BUILD_DIR=str(tmp_path / "build"), HUB_WRITE_TOKEN=HUB_TOKEN, **hub_vars
    )


def packager(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "packager", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cached_package_publishes_then_a_rerun_is_one_head_and_one_ref_lookup(
    s3: S3Env, hub: LocalHub, hub_env: dict[str, str], tiny_build: tuple[Path, Path], tmp_path: Path
) -> None:
    source, _ = tiny_build
    recipe = cached_recipe(tmp_path, source, s3)
    env = _env(s3, hub_env, tmp_path)

    first, _ = package(recipe, env)
    stages = {s["name"]: s["status"] for s in first["stages"]}
    assert stages["publish"] == "done"
    assert first["mode"] == "cached"
    commit = hub.repos[REPO].tags[f"artifact-{first['artifact_id'][:12]}"]
    assert first["published"] == {"repo": REPO, "commit": commit}
    lock_text = recipe.with_suffix(".lock").read_text()
    assert json.loads(lock_text)["published"] == {"repo": REPO, "commit": commit}
    dockerfile = (Path(first["context_dir"]) / "Dockerfile").read_text()
    assert f"MODEL_REPO='{REPO}'" in dockerfile
    assert f"MODEL_COMMIT='{commit}'" in dockerfile
    assert "MODEL_DIR" not in dockerfile
    assert "COPY weights" not in dockerfile
    for text in (lock_text, dockerfile, json.dumps(first)):
        assert HUB_TOKEN not in text

    hub.reset_stats()
    s3.traffic.reset()
    received = hub.bytes_received(REPO)
    second, imported = package(recipe, env)
    assert second["moved_nothing"], second["stages"]
    assert imported == []
    assert [(m, p.split("?")[0]) for m, p, _ in hub.requests()] == [("GET", f"/api/models/{REPO}/refs")]
    assert hub.bytes_received(REPO) == received
    assert s3.traffic.count() <= 1

    again = packager(env, "publish", str(recipe), "--frozen", "--json")
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["status"] == "skipped"
    assert out["commit"] == commit
    assert out["bytes_sent"] == 0
    assert out["model_reference"] == f"https://huggingface.co/{REPO}:{commit}"
    assert HUB_TOKEN not in again.stdout + again.stderr


def test_publish_without_its_token_or_section_is_one_line(
    s3: S3Env, hub_env: dict[str, str], tiny_build: tuple[Path, Path], tmp_path: Path
) -> None:
    source, _ = tiny_build
    recipe = cached_recipe(tmp_path, source, s3)
    env = _env(s3, hub_env, tmp_path)
    del env["HUB_WRITE_TOKEN"]
    no_token = packager(env, "publish", str(recipe))
    assert no_token.returncode == 2
    assert no_token.stderr.strip().splitlines() == [
        f"packager: error: HUB_WRITE_TOKEN is not set: publishing to {REPO} needs a hub token with write"
        " access in it"
    ]
    recipe.write_text(
        recipe.read_text().replace(f"publish: {{repo: {REPO}, token_env: HUB_WRITE_TOKEN}}\n", "")
    )
    no_section = packager(env, "validate", str(recipe))
    assert no_section.returncode == 2
    lines = no_section.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "mode: cached needs a `publish: {repo: org/name}` section" in lines[0]
