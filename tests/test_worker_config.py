"""The worker reads exactly what the packager writes: WORKER_CONFIG from a recipe's `worker` section,
and the environment `packager.naming.worker_env` gives an image."""

from __future__ import annotations

from pathlib import Path

import pytest

from packager.image.naming import worker_config, worker_env
from packager.source.recipe import load_recipe
from worker_runtime.config import Defaults, Limits, parse_worker_config, read_settings
from worker_runtime.errors import StartError
from worker_runtime.readahead import Readahead

RECIPE = """\
name: cfg
source:
  path: ./model
worker:
  warmup: true
  defaults:
    num_inference_steps: 30
    guidance_scale: 5
    width: 768
    negative_prompt: blurry
  limits:
    max_steps: 60
    max_images: 2
    max_pixels: 589824
"""


def test_worker_config_written_by_the_packager_is_read_by_the_worker(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(RECIPE)
    loaded = load_recipe(path)
    parsed = parse_worker_config(worker_config(loaded))
    assert parsed.warmup is True
    assert parsed.verify_hashes is True
    assert parsed.defaults == Defaults(
        num_inference_steps=30,
        guidance_scale=5.0,
        width=768,
        height=None,
        negative_prompt="blurry",
    )
    assert parsed.limits == Limits(
        max_steps=60, max_width=1024, max_height=1024, max_images=2, max_pixels=589824
    )

    settings = read_settings(worker_env(loaded, "a" * 64, "volume", artifact_uri="s3://b/cfg/" + "a" * 64))
    assert settings.model_dir == Path("/runpod-volume/models/cfg/" + "a" * 64)
    assert settings.volume_mount == Path("/runpod-volume")
    assert settings.artifact_uri == "s3://b/cfg/" + "a" * 64
    assert settings.worker == parsed


def test_an_unset_worker_config_gives_the_recipe_defaults(tmp_path: Path) -> None:
    path = tmp_path / "bare.yaml"
    path.write_text("name: bare\nsource:\n  path: ./model\n")
    assert parse_worker_config(worker_config(load_recipe(path))) == parse_worker_config(None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "WORKER_CONFIG: not valid JSON"),
        ("[]", "WORKER_CONFIG: must be a JSON object (got list)"),
        ('{"warmup": "yes"}', "WORKER_CONFIG.warmup: wrong type str"),
        ('{"limits": {"max_steps": 0}}', "WORKER_CONFIG.limits.max_steps: must be at least 1 (got 0)"),
        ('{"limits": {"max_steps": true}}', "WORKER_CONFIG.limits.max_steps: wrong type bool"),
        ('{"defaults": {"sampler": "x"}}', "WORKER_CONFIG.defaults.sampler: unknown field"),
    ],
)
def test_a_bad_worker_config_is_one_line_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(StartError) as err:
        parse_worker_config(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_readahead_reads_every_byte_of_the_weight_files(tmp_path: Path) -> None:
    sizes = {"a.safetensors": 3 * 1024 * 1024 + 7, "b.safetensors": 1, "c.safetensors": 0}
    paths = []
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
        paths.append(tmp_path / name)
    ra = Readahead(paths).start()
    assert ra.join(timeout=30)
    assert ra.error is None
    assert ra.bytes_read == sum(sizes.values())

    missing = Readahead([tmp_path / "gone.safetensors"]).start()
    assert missing.join(timeout=30)
    assert missing.error is not None
    assert "gone.safetensors" in missing.error
