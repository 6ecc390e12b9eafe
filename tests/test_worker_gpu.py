"""The worker on a GPU: the artifact loads straight onto CUDA and answers (runs where CUDA exists)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rig.artifacts import make_artifact, tiny_source
from tests.rig.worker import decode_png, start_worker

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.fail("needs CUDA: `make test-gpu` runs this tier on a machine with an NVIDIA GPU")


def test_the_worker_serves_from_the_gpu(cuda: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("gpu")
    artifact_dir, artifact_id = make_artifact(tiny_source(root / "source"), root / "artifact")
    worker = start_worker(artifact_dir, root / "logs")
    try:
        ask = {"prompt": "a lighthouse", "width": 128, "height": 64, "num_inference_steps": 2, "seed": 5}
        job = worker.runsync(ask)
        assert job["status"] == "COMPLETED", job
        out = job["output"]
        assert out["$meta"]["device"] == "cuda"
        assert out["$meta"]["artifact_id"] == artifact_id
        assert decode_png(out["image_base64"]).size == (128, 64)
        again = worker.runsync(ask)["output"]
        assert again["image_base64"] == out["image_base64"]
    finally:
        worker.stop()
    assert "cuda fp32" in Path(worker.log_path).read_text()
