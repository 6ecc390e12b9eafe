"""The worker on a GPU: the artifact loads straight onto CUDA in its own precision (fp32, fp16, bf16),
through memory maps and through the parallel in-memory loader, and answers (runs where CUDA exists)."""

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


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_source(tmp_path_factory.mktemp("gpu") / "source")


def artifact_at(source: Path, root: Path, precision: str) -> tuple[Path, str]:
    return make_artifact(source, root / precision, precision=precision)


@pytest.mark.parametrize("loader", ["mmap", "parallel"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_the_worker_serves_from_the_gpu(
    cuda: None, source: Path, tmp_path: Path, precision: str, loader: str
) -> None:
    artifact_dir, artifact_id = artifact_at(source, tmp_path, precision)
    worker = start_worker(artifact_dir, tmp_path / "logs", WORKER_LOADER=loader)
    try:
        ask = {"prompt": "a lighthouse", "width": 128, "height": 64, "num_inference_steps": 2, "seed": 5}
        job = worker.runsync(ask)
        assert job["status"] == "COMPLETED", job
        out = job["output"]
        assert out["$meta"]["device"] == "cuda"
        assert out["$meta"]["artifact_id"] == artifact_id
        assert out["$meta"]["precision"] == precision
        assert decode_png(out["image_base64"]).size == (128, 64)
        again = worker.runsync(ask)["output"]
        assert again["image_base64"] == out["image_base64"]
        # Image-to-image and inpainting from the same weights on the GPU, at the init image's size.
        init = out["image_base64"]
        for extra in ({"init_image": init, "strength": 0.5}, {"init_image": init, "mask_image": init}):
            job = worker.runsync({"prompt": "a lighthouse", "num_inference_steps": 2, "seed": 5, **extra})
            assert job["status"] == "COMPLETED", job
            assert decode_png(job["output"]["image_base64"]).size == (128, 64)
    finally:
        worker.stop()
    assert f"cuda {precision}" in Path(worker.log_path).read_text()


def test_the_in_memory_loader_gives_from_pretrained_state_dicts_on_cuda(
    cuda: None, source: Path, tmp_path: Path
) -> None:
    from tests.test_worker_loader import assert_same_models, load_both

    for precision in ("fp16", "bf16"):
        mapped, in_memory = load_both(artifact_at(source, tmp_path, precision)[0], device="cuda")
        assert_same_models(mapped.pipe, in_memory.pipe)
