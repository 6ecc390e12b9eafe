"""Checkpoints and LoRAs from `s3://` URLs, against the moto S3 rig: pinned by sha256, resumable,
each failure one line."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from packager.errors import FetchError
from packager.source import lock as lk
from packager.source import s3_download, url_download
from packager.source.drift import refresh_lock
from packager.source.lora_inputs import fetch_loras
from packager.source.recipe import load_recipe
from tests.rig import layouts as L
from tests.rig.cli import run_packager
from tests.rig.fixtures_hub import write_recipe
from tests.rig.fixtures_s3 import S3Env

DATA = bytes(range(256)) * 8192  # 2 MiB
DATA_SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF_HOME, so the download cache starts empty."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    return home


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_lora_from_s3_with_the_recipes_endpoint_is_locked_and_fetched(
    s3: S3Env, hf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.client.put_object(Bucket=s3.bucket, Key="loras/style.safetensors", Body=DATA)
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only the recipe says where the bucket is
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    body = (
        "name: s3lora\nsource:\n  path: ./model\nloras:\n"
        f"  - url: s3://{s3.bucket}/loras/style.safetensors\n"
        f"    endpoint_url: {s3.endpoint_url}\n    scale: 0.5\n"
    )
    loaded = load_recipe(write_recipe(tmp_path, body))
    lock, status, _ = refresh_lock(loaded, quiet=True)
    assert status == "created"
    assert lock.source["loras"] == [
        {
            "kind": "url",
            "url": f"s3://{s3.bucket}/loras/style.safetensors",
            "name": "style.safetensors",
            "size": len(DATA),
            "sha256": DATA_SHA,
            "scale": 0.5,
        }
    ]
    assert "endpoint" not in loaded.lock_path.read_text()
    fetched, downloaded = fetch_loras(loaded, lock, quiet=True)
    assert fetched[0].path == hf_home / "packager-downloads" / DATA_SHA / "style.safetensors"
    assert (fetched[0].path.read_bytes(), downloaded) == (DATA, 0)  # the lock's download is the cache's

    s3.client.put_object(Bucket=s3.bucket, Key="loras/style.safetensors", Body=DATA[::-1])
    shutil.rmtree(hf_home / "packager-downloads")
    with pytest.raises(
        FetchError,
        match=rf"^s3://{s3.bucket}/loras/style.safetensors: sha256 is \w+, not the expected {DATA_SHA}",
    ):
        fetch_loras(loaded, lock, quiet=True)
    assert not (hf_home / "packager-downloads" / DATA_SHA).exists()


def test_an_interrupted_s3_download_resumes_with_a_ranged_get(s3: S3Env, tmp_path: Path) -> None:
    s3.client.put_object(Bucket=s3.bucket, Key="big/model.safetensors", Body=DATA)
    url = f"s3://{s3.bucket}/big/model.safetensors"
    partial, _ = url_download.partial_of(tmp_path, url)
    partial.write_bytes(DATA[:1_000_000])
    seen: list[dict[str, Any]] = []
    client = s3_download._client(url, s3_download.S3Access())
    real_get = client.get_object

    def get_object(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return real_get(**kwargs)

    client.get_object = get_object
    original = s3_download._client
    try:
        s3_download._client = lambda *_: client  # type: ignore[assignment]
        path, digest, size = s3_download.download(
            url, tmp_path, sha256=DATA_SHA, access=s3_download.S3Access(), progress=False
        )
    finally:
        s3_download._client = original  # type: ignore[assignment]
    assert (path.read_bytes(), digest, size) == (DATA, DATA_SHA, len(DATA))
    assert [k.get("Range") for k in seen] == ["bytes=1000000-"]
    assert not partial.exists()


def test_a_checkpoint_from_s3_pins_its_sha256_and_a_wrong_one_is_one_line(
    s3: S3Env, hub_layouts: Any, hf_home: Path, tmp_path: Path
) -> None:
    ckpt = hub_layouts[L.SD_ORIGINAL].folder / L.SINGLE_FILE_SAFETENSORS
    s3.client.upload_file(str(ckpt), s3.bucket, "ckpt/tiny.safetensors")
    shutil.copytree(hub_layouts[L.SD_CONFIG].folder, tmp_path / "config")
    body = f"name: s3ckpt\nsource:\n  url: s3://{s3.bucket}/ckpt/tiny.safetensors\n  config: ./config\n"
    lock = lk.build_lock(load_recipe(write_recipe(tmp_path, body)), quiet=True)
    assert lock.source["checkpoint"] == {
        "name": "tiny.safetensors",
        "size": ckpt.stat().st_size,
        "sha256": sha256(ckpt),
    }

    wrong = write_recipe(
        tmp_path / "wrong", body.replace("./config", "../config") + f'  sha256: "{"1" * 64}"\n'
    )
    env = s3.subprocess_env(HF_HOME=str(tmp_path / "other-hf-home"), HF_HUB_OFFLINE="1")
    result = run_packager("lock", str(wrong), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"packager: error: s3://{s3.bucket}/ckpt/tiny.safetensors: sha256 is {sha256(ckpt)}, "
        f"not the expected {'1' * 64} (the recipe's sha256 or the lock)"
    ]
    assert not (tmp_path / "wrong" / "model.lock").exists()

    missing = write_recipe(
        tmp_path / "missing", body.replace("ckpt/tiny", "ckpt/nothing").replace("./config", "../config")
    )
    result = run_packager("lock", str(missing), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"packager: error: s3://{s3.bucket}/ckpt/nothing.safetensors: "
        "no such object (check the bucket and the key)"
    ]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "  url: s3://bucket\n  config: x/y\n",
            "source: no object key in 's3://bucket' (s3://bucket/path/to/file)",
        ),
        (
            "  url: s3://bucket/a.ckpt\n  config: x/y\n  token_env: T\n",
            "source: `token_env` applies to https URLs; s3:// URLs use boto3's credential chain",
        ),
        (
            "  url: https://example.com/a.ckpt\n  config: x/y\n  profile: dev\n",
            "source: `endpoint_url` and `profile` apply to s3:// URLs only",
        ),
    ],
)
def test_validate_names_a_bad_s3_source_in_one_line(tmp_path: Path, source: str, message: str) -> None:
    rec = write_recipe(tmp_path, f"name: bad\nsource:\n{source}")
    result = run_packager("validate", str(rec))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"packager: error: {rec}:3: {message}"]
