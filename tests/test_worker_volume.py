"""Volume mode: a worker whose network volume does not hold the artifact yet pulls it from the store
(the local S3 server), then serves; without a store to pull from it stops with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifact_format import manifest as mf
from tests.rig.artifacts import make_artifact, tiny_source
from tests.rig.fixtures_s3 import S3Env
from tests.rig.worker import decode_png, run_test_input, start_worker


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("volume")
    return make_artifact(tiny_source(root / "source"), root / "artifact")


def upload_artifact(s3: S3Env, artifact_dir: Path, artifact_id: str) -> str:
    """Put the artifact in the store the way the packager does: files first, manifest last."""
    prefix = f"store/tiny/{artifact_id}"
    manifest = mf.load(artifact_dir)
    for entry in manifest.files:
        s3.client.upload_file(str(artifact_dir / entry.path), s3.bucket, f"{prefix}/{entry.path}")
    s3.client.upload_file(str(artifact_dir / mf.MANIFEST_NAME), s3.bucket, f"{prefix}/{mf.MANIFEST_NAME}")
    return s3.uri(prefix)


def test_an_empty_volume_is_filled_from_the_store_and_then_served(
    s3: S3Env, tiny: tuple[Path, str], volume_mount: Path, tmp_path: Path
) -> None:
    artifact_dir, artifact_id = tiny
    uri = upload_artifact(s3, artifact_dir, artifact_id)
    model_dir = mf.volume_path(volume_mount, "tiny", artifact_id)

    worker = start_worker(
        model_dir,
        tmp_path / "logs",
        VOLUME_MOUNT=str(volume_mount),
        ARTIFACT_URI=uri,
        PULL_TIMEOUT_S="120",
        **s3.env,
    )
    try:
        job = worker.runsync({"prompt": "a boat", "width": 64, "height": 64, "num_inference_steps": 2})
        assert job["status"] == "COMPLETED", job
        assert decode_png(job["output"]["image_base64"]).size == (64, 64)
        assert job["output"]["$meta"]["artifact_id"] == artifact_id
    finally:
        worker.stop()
    assert (model_dir / mf.READY_MARKER).is_file()
    assert mf.check(model_dir, full_hash=True).name == "tiny"
    downloads = [r for r in s3.traffic.select(bucket=s3.bucket, op="GetObject")]
    assert len(downloads) >= len(mf.load(artifact_dir).files)
    assert "pulled in " in worker.log()


def test_a_volume_without_the_artifact_and_no_store_to_pull_from_is_one_line(
    tiny: tuple[Path, str], volume_mount: Path, tmp_path: Path
) -> None:
    _, artifact_id = tiny
    model_dir = mf.volume_path(volume_mount, "tiny", artifact_id)
    proc = run_test_input(
        model_dir, {"input": {"prompt": "x"}}, tmp_path / "run", VOLUME_MOUNT=str(volume_mount)
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == (
        f"worker: error: {model_dir}: artifact not on the volume (no .ready) and ARTIFACT_URI is not set, "
        "so it cannot be pulled"
    )


def test_a_store_that_lacks_the_artifact_fails_the_pull_in_one_line(
    s3: S3Env, tiny: tuple[Path, str], volume_mount: Path, tmp_path: Path
) -> None:
    _, artifact_id = tiny
    uri = s3.uri(f"store/tiny/{artifact_id}")  # nothing uploaded there
    proc = run_test_input(
        mf.volume_path(volume_mount, "tiny", artifact_id),
        {"input": {"prompt": "x"}},
        tmp_path / "run",
        VOLUME_MOUNT=str(volume_mount),
        ARTIFACT_URI=uri,
        PULL_TIMEOUT_S="30",
        **s3.env,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"worker: error: pull {uri}: ")
