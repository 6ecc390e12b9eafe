"""The worker's readers and loaders: hashes checked while reading, the parallel in-memory loader
giving exactly the state dicts `from_pretrained` gives, and the choice between them by filesystem."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.rig.artifacts import make_artifact, tiny_source
from worker_runtime import readahead, storage
from worker_runtime.errors import StartError


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_source(tmp_path_factory.mktemp("loader") / "source")


@pytest.fixture(scope="module")
def artifacts(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny pipeline packaged at each precision the worker serves."""
    root = tmp_path_factory.mktemp("artifacts")
    return {p: make_artifact(source, root / p, precision=p)[0] for p in ("fp32", "fp16", "bf16")}


def weights(artifact: Path) -> dict[Path, str]:
    from artifact_format import manifest as mf

    return {artifact / f.path: f.sha256 for f in mf.load(artifact).weight_files}


def load_both(artifact: Path, device: str = "cpu") -> tuple[Any, Any]:
    """(from_pretrained through memory maps, built from parallel in-memory reads)."""
    from artifact_format import manifest as mf
    from worker_runtime import imports, load

    torch = imports.import_torch()
    manifest = mf.load(artifact)
    cls = imports.import_pipeline_class(manifest.pipeline)
    mapped = load.load_pipeline(cls, torch, artifact, manifest, device)
    reader = readahead.start(sorted(weights(artifact)), weights(artifact), keep=True)
    reader.check()
    assert reader.buffers, "the reader kept no buffers"
    in_memory = load.load_pipeline(cls, torch, artifact, manifest, device, reader)
    assert not reader.buffers  # handed over to the models
    return mapped, in_memory


def assert_same_models(mapped: Any, in_memory: Any) -> None:
    import torch

    names = [n for n, c in mapped.components.items() if isinstance(c, torch.nn.Module)]
    assert names, "no models in the pipeline"
    for name in names:
        a, b = mapped.components[name], in_memory.components[name]
        assert type(a) is type(b), name
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, f"{name}.{key}"
            assert sa[key].device == sb[key].device, f"{name}.{key}"
            assert torch.equal(sa[key], sb[key]), f"{name}.{key}"
        buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
        assert buffers_a.keys() == buffers_b.keys(), name
        for key in buffers_a:
            assert torch.equal(buffers_a[key], buffers_b[key]), f"{name} buffer {key}"
        assert not b.training, name


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_the_in_memory_loader_gives_from_pretrained_state_dicts_and_images(
    artifacts: dict[str, Path], precision: str
) -> None:
    import torch

    mapped, in_memory = load_both(artifacts[precision])
    assert_same_models(mapped.pipe, in_memory.pipe)

    def image(loaded: Any) -> Any:
        g = torch.Generator("cpu").manual_seed(4)
        return loaded.pipe(
            prompt="a fox", num_inference_steps=2, width=64, height=64, generator=g, output_type="pt"
        ).images

    assert torch.equal(image(mapped), image(in_memory))


def test_tensors_from_a_buffer_are_views_with_the_files_dtypes_and_shapes(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from worker_runtime.memload import tensors_from_buffer

    tensors = {
        "a": torch.arange(3, dtype=torch.float16),  # 6 bytes: the next tensor starts unaligned
        "b": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "c": torch.tensor([True, False]),
        "d": torch.arange(4, dtype=torch.bfloat16),
        "e": torch.zeros(0, dtype=torch.int64),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    buf = bytearray(path.read_bytes())
    got = tensors_from_buffer(torch, buf, path)
    want = load_file(str(path))
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key
    with pytest.raises(StartError, match="not a safetensors file"):
        tensors_from_buffer(torch, bytearray(b"\x05\0\0\0\0\0\0\0{bad}"), path)


def test_hashes_are_checked_while_reading_and_a_changed_byte_stops_the_start(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    for keep in (False, True):
        copy = tmp_path / f"copy{keep}"
        shutil.copytree(artifacts["fp16"], copy)
        expected = weights(copy)
        reader = readahead.start(sorted(expected), expected, threads=2, keep=keep)
        reader.check()
        assert reader.bytes_read == sum(p.stat().st_size for p in expected)
        if keep:
            assert all(bytes(reader.buffers[p]) == p.read_bytes() for p in expected)
        victim = max(expected, key=lambda p: p.stat().st_size)
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
        assert hashlib.sha256(data).hexdigest() != expected[victim]
        with pytest.raises(StartError, match=rf"^{victim}: sha256 [0-9a-f]{{16}}… does not match"):
            readahead.start(sorted(expected), expected, keep=keep).check()


def test_mapped_hashing_covers_empty_files_and_many_chunks(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(readahead, "HASH_CHUNK", 64 * 1024)
    sizes = {"empty": 0, "one": 1, "chunks": 3 * 64 * 1024 + 5}
    files: dict[Path, str] = {}
    for name, size in sizes.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(os.urandom(size))
        files[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    reader = readahead.start(sorted(files), files, threads=2)
    reader.check()
    assert reader.bytes_read == sum(sizes.values())
    wrong = {path: ("0" * 64 if path.name == "chunks.safetensors" else want) for path, want in files.items()}
    with pytest.raises(StartError, match=r"chunks\.safetensors: sha256"):
        readahead.start(sorted(wrong), wrong).check()


def test_a_file_that_cannot_be_read_fails_the_hash_check(tmp_path: Path) -> None:
    missing = tmp_path / "gone.safetensors"
    with pytest.raises(StartError, match=f"{missing}: could not be read"):
        readahead.start([missing], {missing: "0" * 64}).check()


def test_the_loader_is_chosen_by_filesystem_type_not_path(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("WORKER_LOADER", raising=False)
    assert storage.choose(tmp_path) == "mmap"  # a local disk, whatever the path
    assert storage.choose(tmp_path, "parallel") == "parallel"
    monkeypatch.setenv("WORKER_LOADER", "parallel")
    assert storage.choose(tmp_path) == "parallel"
    with pytest.raises(StartError, match="WORKER_LOADER: must be auto, parallel or mmap"):
        storage.choose(tmp_path, "fast")
    monkeypatch.setattr(storage, "fs_magic", lambda path: 0x65735546)
    monkeypatch.delenv("WORKER_LOADER")
    assert storage.choose(tmp_path) == "parallel"
    assert storage.fs_name(tmp_path) == "fuse"
    monkeypatch.setattr(storage, "fs_magic", lambda path: 0xEF53)
    assert storage.choose(tmp_path) == "mmap"
    assert storage.fs_name(tmp_path) == "local(0xef53)"


@pytest.fixture
def volume(artifacts: dict[str, Path], tmp_path: Path) -> Any:
    """The fp16 artifact on a slow FUSE volume (2 ms, 100 MB/s a handle, 400 MB/s in all)."""
    from tests.rig.slowfs import mounted

    with mounted(artifacts["fp16"].parent, tmp_path / "volume") as mount:
        yield mount / "fp16"
    assert not os.path.ismount(tmp_path / "volume")


def test_on_a_fuse_volume_the_parallel_loader_is_chosen_and_loads_what_from_pretrained_loads(
    volume: Path, artifacts: dict[str, Path]
) -> None:
    assert storage.fs_name(volume) == "fuse"
    assert storage.choose(volume) == "parallel"
    from artifact_format import manifest as mf
    from worker_runtime import imports, load

    torch = imports.import_torch()
    manifest = mf.load(volume)
    cls = imports.import_pipeline_class(manifest.pipeline)
    local = load.load_pipeline(cls, torch, artifacts["fp16"], manifest, "cpu")
    expected = weights(volume)
    reader = readahead.start(sorted(expected), expected, keep=storage.choose(volume) == "parallel")
    reader.check()
    assert reader.bytes_read == sum(p.stat().st_size for p in expected)
    from_volume = load.load_pipeline(cls, torch, volume, manifest, "cpu", reader)
    assert_same_models(local.pipe, from_volume.pipe)


def test_the_worker_serves_from_a_fuse_volume_with_the_same_image(
    volume: Path, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    from tests.rig.worker import run_test_input

    job = {"input": {"prompt": "a lantern", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 9}}
    pngs = []
    for name, model in (("local", artifacts["fp16"]), ("volume", volume)):
        saved = tmp_path / f"saved-{name}"
        proc = run_test_input(model, job, tmp_path / f"run-{name}", WORKER_SAVE_DIR=str(saved))
        assert proc.returncode == 0, name + proc.stdout[-3000:] + proc.stderr[-2000:]
        pngs.append((saved / "local_test.png").read_bytes())
    assert pngs[0] == pngs[1]


def test_chunks_arriving_out_of_order_are_hashed_in_file_order(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(readahead, "KEEP_CHUNK", 64 * 1024)
    files = {}
    for i, size in enumerate((0, 1, 64 * 1024, 64 * 1024 * 7 + 13)):
        path = tmp_path / f"w{i}.safetensors"
        path.write_bytes(os.urandom(size))
        files[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    reader = readahead.start(sorted(files), files, threads=8, keep=True)
    reader.check()
    assert reader.error is None
    assert all(bytes(reader.buffers[p]) == p.read_bytes() for p in files)
    wrong = {**files, tmp_path / "w3.safetensors": "0" * 64}
    with pytest.raises(StartError, match=r"w3\.safetensors: sha256"):
        readahead.start(sorted(wrong), wrong, threads=8, keep=True).check()
