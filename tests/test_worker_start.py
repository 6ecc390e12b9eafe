"""Worker start-up as an operator meets it: one-line failures for broken artifacts and settings, and
`--test_input` answering one job with the exit code a CI script can trust."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from tests.rig.artifacts import make_artifact, tiny_source
from tests.rig.worker import decode_png, run_test_input

UNET = "unet/diffusion_pytorch_model.safetensors"
SMALL_JOB = {
    "input": {"prompt": "a lantern", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 11}
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("start")
    return make_artifact(tiny_source(root / "source"), root / "artifact")[0]


@pytest.fixture
def artifact(pristine: Path, tmp_path: Path) -> Path:
    """A private copy each test may damage."""
    copy = tmp_path / "artifact"
    shutil.copytree(pristine, copy)
    return copy


def one_line_error(proc_stderr: str) -> str:
    lines = [line for line in proc_stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc_stderr
    assert lines[0].startswith("worker: error: "), lines[0]
    return lines[0]


def test_a_missing_weight_file_stops_the_worker_with_one_line_naming_it(
    artifact: Path, tmp_path: Path
) -> None:
    (artifact / UNET).unlink()
    proc = run_test_input(artifact, SMALL_JOB, tmp_path / "run")
    assert proc.returncode != 0
    line = one_line_error(proc.stderr)
    assert f"{artifact / UNET}: missing" in line
    assert "Starting Serverless Worker" not in proc.stdout


def test_a_truncated_weight_file_stops_the_worker_with_one_line_naming_it(
    artifact: Path, tmp_path: Path
) -> None:
    path = artifact / UNET
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    proc = run_test_input(artifact, SMALL_JOB, tmp_path / "run")
    assert proc.returncode != 0
    line = one_line_error(proc.stderr)
    assert str(path) in line
    assert f"({size})" in line


def test_a_damaged_weight_byte_of_the_right_size_stops_the_start_by_default(
    artifact: Path, tmp_path: Path
) -> None:
    path = artifact / "vae/diffusion_pytorch_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # a weight byte, not the header: only a hash can tell
    path.write_bytes(bytes(data))
    proc = run_test_input(artifact, SMALL_JOB, tmp_path / "run")
    assert proc.returncode != 0
    assert f"{path}: sha256" in one_line_error(proc.stderr)
    assert "Starting Serverless Worker" not in proc.stdout
    # The same damage through the in-memory loader of network storage.
    proc = run_test_input(artifact, SMALL_JOB, tmp_path / "run2", WORKER_LOADER="parallel")
    assert proc.returncode != 0
    assert f"{path}: sha256" in one_line_error(proc.stderr)
    # Turned off, nothing reads the hashes: the damaged float loads and the job is answered.
    proc = run_test_input(artifact, SMALL_JOB, tmp_path / "run3", WORKER_VERIFY_HASHES="0")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_unreadable_weight_file_of_the_right_size_is_named_when_loading_fails(
    artifact: Path, tmp_path: Path
) -> None:
    path = artifact / UNET
    size = path.stat().st_size
    path.write_bytes(b"\0" * size)  # right size, header destroyed: the size check passes
    proc = run_test_input(artifact, SMALL_JOB, tmp_path / "run")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("worker: error: ")
    assert f"{path}: sha256" in last


def test_settings_errors_are_one_line_naming_the_variable(artifact: Path, tmp_path: Path) -> None:
    bad_config = json.dumps({"limits": {"max_step": 5}})
    proc = run_test_input(artifact, SMALL_JOB, tmp_path / "a", WORKER_CONFIG=bad_config)
    assert proc.returncode == 2
    assert "WORKER_CONFIG.limits.max_step: unknown field" in one_line_error(proc.stderr)

    proc = run_test_input(None, SMALL_JOB, tmp_path / "b")
    assert proc.returncode == 2
    assert "MODEL_DIR is not set" in one_line_error(proc.stderr)

    proc = run_test_input(tmp_path / "nowhere", SMALL_JOB, tmp_path / "c")
    assert proc.returncode == 2
    assert f"{tmp_path / 'nowhere'}/manifest.json: no manifest" in one_line_error(proc.stderr)

    proc = run_test_input(artifact, '{"input": {"prompt": ', tmp_path / "d")
    assert proc.returncode == 2
    assert "--test_input: not valid JSON" in one_line_error(proc.stderr)


def test_test_input_answers_one_job_and_exits_zero(artifact: Path, tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    proc = run_test_input(artifact, SMALL_JOB, tmp_path / "run", WORKER_SAVE_DIR=str(saved))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Job local_test completed successfully" in proc.stdout
    ready = [line for line in proc.stderr.splitlines() if line.startswith("worker ready: ")]
    assert len(ready) == 1
    assert "import " in ready[0]
    assert "load " in ready[0]
    assert "total " in ready[0]
    png = (saved / "local_test.png").read_bytes()
    assert decode_png(base64.b64encode(png).decode()).size == (64, 64)
    answer = json.loads((saved / "local_test.json").read_text())
    assert answer["seed"] == 11
    assert answer["$meta"]["model"] == "tiny"
    assert "image_base64" not in answer


def test_test_input_exits_non_zero_when_the_answer_is_an_error(artifact: Path, tmp_path: Path) -> None:
    job = {"input": {"prompt": "a lantern", "width": 100}}
    proc = run_test_input(artifact, job, tmp_path / "run")
    assert proc.returncode == 1
    assert "width: must be a multiple of 8 (got 100)" in proc.stdout
