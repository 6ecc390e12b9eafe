"""packager.convert on tiny pipelines: precision, layouts, loading, safety, determinism, atomicity."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from artifact_format import manifest as mf
from packager.convert.converter import convert
from packager.convert.settings import ConvertSettings
from packager.convert.verify import verify_artifact
from packager.errors import ConvertError, VerifyError
from tests.rig.artifacts import files_of, tiny_with_and_without_checker
from tests.rig.layouts import add_fp16_variants, shard_bin, to_bin
from tests.rig.worker import draw

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE = {"kind": "path", "path": "tiny"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny pipeline (with safety checker), without it, and the same as fp32 `.bin` files."""
    root = tmp_path_factory.mktemp("sources")
    both = tiny_with_and_without_checker(root)
    binary = root / "bin"
    shutil.copytree(both["plain"], binary)
    to_bin(binary)
    return {**both, "bin": binary}


def run(src: Path, out: Path, **settings: Any) -> mf.Manifest:
    verify = settings.pop("verify", True)
    files = settings.pop("files", None) or files_of(src)
    return convert(
        src, files, out, name="tiny", settings=ConvertSettings(**settings), source_info=SOURCE, verify=verify
    )


def tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(path)


def source_tensors(folder: Path) -> dict[str, Any]:
    import torch

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    out: dict[str, Any] = {}
    for f in files:
        out.update(tensors(f) if f.suffix == ".safetensors" else torch.load(f, weights_only=True))
    return out


def bits_equal(a: Any, b: Any) -> bool:
    import torch

    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    )


def image(folder: Path) -> Any:
    from diffusers import DiffusionPipeline

    return draw(DiffusionPipeline.from_pretrained(folder), "a red cube", 7)


# ---- what a user gets ---------------------------------------------------------------------------------


def test_fp16_artifact_is_the_source_cast_bit_for_bit(sources, tmp_path):
    import torch

    src = sources["full"]
    manifest = run(src, tmp_path / "art", precision="fp16")
    out = tmp_path / "art"

    for comp, name in (
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
        ("safety_checker", "model.safetensors"),
    ):
        got = tensors(out / comp / name)
        want = source_tensors(src / comp)
        assert sorted(got) == sorted(want)
        for key, t in want.items():
            assert bits_equal(got[key], t.half() if t.is_floating_point() else t), f"{comp}: {key}"
        entry = manifest.file(f"{comp}/{name}")
        assert (entry.tensors, entry.dtype) == (len(want), "float16")
        assert (out / comp / name).stat().st_mode & 0o777 == 0o644

    # configs and tokenizer are copied byte for byte; every file is listed with its real hash
    for rel in (
        "unet/config.json",
        "tokenizer/vocab.json",
        "scheduler/scheduler_config.json",
        "model_index.json",
    ):
        assert (out / rel).read_bytes() == (src / rel).read_bytes()
    listed = {f.path for f in manifest.files}
    assert listed == set(files_of(out)) - {mf.MANIFEST_NAME}
    for f in manifest.files:
        assert mf.sha256_file(out / f.path) == f.sha256
        assert (out / f.path).stat().st_size == f.size
    assert mf.artifact_id_of(out) == manifest.artifact_id
    assert (manifest.name, manifest.source, manifest.precision) == ("tiny", SOURCE, "fp16")
    assert manifest.pipeline == "StableDiffusionPipeline"
    assert manifest.scheduler == {"class": "PNDMScheduler", "overridden": False}
    assert manifest.packing["fp16_overflow"] == "fail"
    assert manifest.packing["kept_fp32"] == {}
    assert manifest.packing["precision"] == "fp16"
    assert manifest.components["unet"] == mf.ComponentPrecision("float16", "float16")
    assert verify_artifact(out).artifact_id == manifest.artifact_id

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(out, dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16
    assert pipe.safety_checker is not None


def test_fp32_from_bin_gives_the_same_image_as_the_source(sources, tmp_path):
    src = sources["bin"]
    assert (src / "unet" / "diffusion_pytorch_model.bin").exists()
    manifest = run(src, tmp_path / "art", precision="fp32")
    out = tmp_path / "art"

    assert not list(out.rglob("*.bin"))
    assert manifest.file("text_encoder/model.safetensors").dtype == "float32"
    for comp, name in (
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ):
        got, want = tensors(out / comp / name), source_tensors(src / comp)
        assert all(bits_equal(got[k], t) for k, t in want.items())
    import numpy as np

    assert np.array_equal(image(out), image(sources["plain"]))


def test_bf16_output_is_the_source_cast(sources, tmp_path):
    import torch

    manifest = run(sources["plain"], tmp_path / "art", precision="bf16")
    got = tensors(tmp_path / "art" / "vae" / "diffusion_pytorch_model.safetensors")
    want = source_tensors(sources["plain"] / "vae")
    assert all(bits_equal(got[k], t.to(torch.bfloat16)) for k, t in want.items())
    assert manifest.file("vae/diffusion_pytorch_model.safetensors").dtype == "bfloat16"
    assert manifest.precision == "bf16"


def test_same_inputs_give_byte_identical_artifacts(sources, tmp_path):
    a = run(sources["full"], tmp_path / "a")
    b = run(sources["full"], tmp_path / "b", verify=False)
    assert a.artifact_id == b.artifact_id
    for rel in files_of(tmp_path / "a"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    c = run(sources["full"], tmp_path / "c", precision="bf16")
    assert c.artifact_id != a.artifact_id


def test_fp16_variant_and_sharded_inputs_come_out_under_the_standard_names(sources, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(sources["plain"], src)
    add_fp16_variants(src)
    for st in src.rglob("*.safetensors"):
        if ".fp16." not in st.name:
            st.unlink()  # only the variant files, as a `variant: fp16` fetch selects them
    sharded = tmp_path / "sharded"
    shutil.copytree(sources["bin"], sharded)
    shard_bin(sharded / "text_encoder" / "pytorch_model.bin", shards=3)
    assert len(list((sharded / "text_encoder").glob("pytorch_model-0000*-of-00003.bin"))) == 3

    run(src, tmp_path / "variant")
    run(sharded, tmp_path / "merged")

    assert (tmp_path / "variant" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert not list((tmp_path / "variant").rglob("*.fp16.*"))
    merged = tensors(tmp_path / "merged" / "text_encoder" / "model.safetensors")
    want = source_tensors(sources["bin"] / "text_encoder")
    assert sorted(merged) == sorted(want)
    assert all(bits_equal(merged[k], t.half()) for k, t in want.items())
    assert sorted(p.name for p in (tmp_path / "merged" / "text_encoder").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]

    from diffusers import DiffusionPipeline

    DiffusionPipeline.from_pretrained(tmp_path / "merged")


def test_a_missing_shard_is_named(sources, tmp_path):
    sharded = tmp_path / "sharded"
    shutil.copytree(sources["bin"], sharded)
    shard_bin(sharded / "text_encoder" / "pytorch_model.bin", shards=2)
    files = [f for f in files_of(sharded) if not f.endswith("00002-of-00002.bin")]
    with pytest.raises(ConvertError, match=r"pytorch_model-00002-of-00002\.bin is not among"):
        run(sharded, tmp_path / "out", files=files)
    assert not (tmp_path / "out").exists()


# ---- tensors that need care ---------------------------------------------------------------------------


def test_integer_non_contiguous_and_legacy_pickled_tensors(sources, tmp_path):
    """Old `.bin` text encoders carry int64 position ids; torch.save keeps views non-contiguous;
    pre-1.6 torch wrote non-zip pickles. All convert, and integers are never cast."""
    import torch

    src = tmp_path / "src"
    shutil.copytree(sources["bin"], src)
    te = src / "text_encoder" / "pytorch_model.bin"
    state = torch.load(te, weights_only=True)
    state["embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    weight = state["encoder.layers.0.mlp.fc1.weight"]
    state["encoder.layers.0.mlp.fc1.weight"] = weight.t().contiguous().t()  # same values, transposed strides
    assert not state["encoder.layers.0.mlp.fc1.weight"].is_contiguous()
    torch.save(state, te, _use_new_zipfile_serialization=False)

    run(src, tmp_path / "out")
    got = tensors(tmp_path / "out" / "text_encoder" / "model.safetensors")
    assert got["embeddings.position_ids"].dtype == torch.int64
    assert torch.equal(got["embeddings.position_ids"], torch.arange(77).unsqueeze(0))
    assert bits_equal(got["encoder.layers.0.mlp.fc1.weight"], weight.half())


def test_tied_tensors_are_stored_once_when_the_class_reties_them(tmp_path):
    """T5's encoder embedding is tied to `shared`: torch.save writes one storage under two names."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    model = T5EncoderModel(
        T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    ).eval()
    src = tmp_path / "src"
    (src / "text_encoder").mkdir(parents=True)
    model.config.save_pretrained(src / "text_encoder")
    state = model.state_dict()
    assert state["shared.weight"].data_ptr() == state["encoder.embed_tokens.weight"].data_ptr()
    torch.save(state, src / "text_encoder" / "pytorch_model.bin")
    index = {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "T5EncoderModel"]}
    (src / "model_index.json").write_text(json.dumps(index))

    manifest = run(src, tmp_path / "out")
    got = tensors(tmp_path / "out" / "text_encoder" / "model.safetensors")
    assert "shared.weight" in got
    assert "encoder.embed_tokens.weight" not in got
    assert manifest.file("text_encoder/model.safetensors").tensors == len(state) - 1
    loaded = T5EncoderModel.from_pretrained(tmp_path / "out" / "text_encoder").eval()
    # auto: a T5 encoder is stored in bf16.
    assert torch.equal(loaded.encoder.embed_tokens.weight, state["shared.weight"].bfloat16())
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(loaded.float()(ids).last_hidden_state, model(ids).last_hidden_state, atol=1e-2)


def test_aliases_a_class_does_not_retie_are_written_under_every_name(sources, tmp_path):
    import torch

    src = tmp_path / "src"
    shutil.copytree(sources["bin"], src)
    te = src / "text_encoder" / "pytorch_model.bin"
    state = torch.load(te, weights_only=True)
    a, b = "encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.self_attn.k_proj.weight"
    state[b] = state[a]  # one storage, two names: CLIP would not re-tie these
    torch.save(state, te)
    run(src, tmp_path / "out")
    got = tensors(tmp_path / "out" / "text_encoder" / "model.safetensors")
    assert bits_equal(got[a], got[b])
    assert bits_equal(got[b], state[a].half())


def test_fp16_overflow_fails_naming_the_tensor_or_keeps_it_in_fp32(sources, tmp_path):
    import torch
    from safetensors.torch import save_file

    src = tmp_path / "src"
    shutil.copytree(sources["plain"], src)
    path = src / "unet" / "diffusion_pytorch_model.safetensors"
    state = tensors(path)
    big = "conv_in.weight"
    state[big] = state[big].clone()
    state[big].view(-1)[3] = 1.0e5  # finite in fp32, inf in fp16
    state["conv_in.bias"] = state["conv_in.bias"].clone()
    state["conv_in.bias"][0] = float("inf")  # already infinite: not an overflow
    save_file(state, path)

    with pytest.raises(
        ConvertError,
        match=r"unet/diffusion_pytorch_model\.safetensors: tensor conv_in\.weight .*fp16_overflow: keep_fp32",
    ):
        run(src, tmp_path / "fail")
    assert not (tmp_path / "fail").exists()
    assert not list(tmp_path.glob(".fail.tmp-*"))

    manifest = run(src, tmp_path / "keep", fp16_overflow="keep_fp32")
    got = tensors(tmp_path / "keep" / "unet" / "diffusion_pytorch_model.safetensors")
    assert got[big].dtype == torch.float32
    assert torch.equal(got[big], state[big])
    assert got["conv_in.bias"].dtype == torch.float16
    assert torch.isinf(got["conv_in.bias"][0])
    assert got["conv_out.weight"].dtype == torch.float16
    assert manifest.packing["kept_fp32"] == {"unet": [big]}
    assert manifest.file("unet/diffusion_pytorch_model.safetensors").dtype == "float16+float32"
    verify_artifact(tmp_path / "keep")

    bf16 = run(src, tmp_path / "bf16", precision="bf16")  # bf16 has fp32's range: no overflow
    assert bf16.packing["kept_fp32"] == {}


# ---- pipeline edits -----------------------------------------------------------------------------------


def test_dropped_components_and_a_scheduler_override_load_with_plain_diffusers(sources, tmp_path):
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    manifest = run(
        sources["full"],
        tmp_path / "out",
        drop=("feature_extractor", "safety_checker"),
        scheduler="DPMSolverMultistepScheduler",
    )
    out = tmp_path / "out"
    assert not (out / "safety_checker").exists()
    assert not (out / "feature_extractor").exists()
    index = json.loads((out / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]
    assert index["feature_extractor"] == [None, None]
    assert index["scheduler"] == ["diffusers", "DPMSolverMultistepScheduler"]
    assert (
        json.loads((out / "scheduler" / "scheduler_config.json").read_text())["beta_schedule"]
        == "scaled_linear"
    )
    assert manifest.dropped == ("feature_extractor", "safety_checker")
    assert manifest.scheduler == {
        "class": "DPMSolverMultistepScheduler",
        "overridden": True,
        "source_class": "PNDMScheduler",
    }

    pipe = DiffusionPipeline.from_pretrained(out)
    assert pipe.safety_checker is None
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)


def test_pipeline_override_and_bad_edits_are_refused(sources, tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline

    manifest = run(sources["plain"], tmp_path / "img2img", pipeline="StableDiffusionImg2ImgPipeline")
    assert manifest.pipeline == "StableDiffusionImg2ImgPipeline"
    assert isinstance(DiffusionPipeline.from_pretrained(tmp_path / "img2img"), StableDiffusionImg2ImgPipeline)

    for settings, message in (
        ({"drop": ("unet",)}, r"cannot run without 'unet'"),
        ({"drop": ("refiner",)}, r"'refiner' is not a component"),
        ({"scheduler": "NoSuchScheduler"}, r"'NoSuchScheduler' is not a diffusers scheduler"),
        ({"pipeline": "NoSuchPipeline"}, r"'NoSuchPipeline' is not a diffusers pipeline"),
        ({"precision": "fp4"}, r"precision: must be one of"),
    ):
        with pytest.raises(ConvertError, match=message):
            run(sources["plain"], tmp_path / "bad", **settings)
        assert not (tmp_path / "bad").exists()


# ---- safety -------------------------------------------------------------------------------------------


class _Payload:
    """A pickle that would create a file when unpickled without restrictions."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["torch-zip", "plain-pickle"])
def test_a_malicious_pickle_is_refused_and_never_runs(sources, tmp_path, kind):
    import torch

    src = tmp_path / "src"
    shutil.copytree(sources["bin"], src)
    marker = tmp_path / "pwned"
    payload = {"weight": _Payload(marker)}
    target = src / "vae" / "diffusion_pytorch_model.bin"
    if kind == "torch-zip":
        torch.save(payload, target)
    else:
        target.write_bytes(pickle.dumps(payload))
    reason = "it needs io.open" if kind == "torch-zip" else "it is not a plain tensor pickle"
    with pytest.raises(
        ConvertError, match=rf"vae/diffusion_pytorch_model\.bin: refused to unpickle: {reason}"
    ):
        run(src, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_paths_escaping_the_artifact_and_stray_weights_are_refused(sources, tmp_path):
    files = files_of(sources["plain"])
    for bad, message in (
        ("../outside.json", r"would escape"),
        ("/etc/passwd", r"would escape"),
        ("unet/../../x.json", r"would escape"),
    ):
        with pytest.raises(ConvertError, match=message):
            run(sources["plain"], tmp_path / "out", files=[*files, bad])
    src = tmp_path / "src"
    shutil.copytree(sources["plain"], src)
    (src / "v1-5-pruned.ckpt").write_bytes(b"x")
    with pytest.raises(ConvertError, match=r"v1-5-pruned\.ckpt: not a diffusers component's weights"):
        run(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- verification -------------------------------------------------------------------------------------


def test_verify_catches_bytes_that_differ_on_disk(sources, tmp_path, monkeypatch):
    """A write that silently lands wrong bytes (a bad disk, a bug) fails the conversion."""
    from packager.convert import safetensors_writer

    real = safetensors_writer._pwrite_all
    corrupted: list[int] = []

    def flaky(fd: int, data: memoryview, offset: int, path: Path) -> None:
        if path.parent.name == "unet" and offset > 0 and not corrupted:  # the first data chunk
            wrong = bytearray(data)
            wrong[-1] ^= 0xFF
            data = memoryview(wrong)
            corrupted.append(offset)
        real(fd, data, offset, path)

    monkeypatch.setattr(safetensors_writer, "_pwrite_all", flaky)
    with pytest.raises(
        VerifyError,
        match=r"unet/diffusion_pytorch_model\.safetensors: tensor \S+ read back from disk differs",
    ):
        run(sources["plain"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_verify_artifact_reports_tampering_in_one_line(sources, tmp_path):
    out = tmp_path / "art"
    run(sources["plain"], out)
    verify_artifact(out)
    weights = out / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(data)
    with pytest.raises(VerifyError, match=r"vae/diffusion_pytorch_model\.safetensors: sha256"):
        verify_artifact(out)
    verify_artifact(out, full=False)  # sizes still match

    # a manifest whose count disagrees with the header (re-signed, so sizes and hashes match)
    manifest = mf.load(out)
    files = tuple(
        mf.FileEntry(f.path, f.size, mf.sha256_file(out / f.path), (f.tensors or 0) + 1, f.dtype)
        if f.path == weights.relative_to(out).as_posix()
        else f
        for f in manifest.files
    )
    mf.write(mf.Manifest(**{**manifest.__dict__, "files": files}), out)
    with pytest.raises(VerifyError, match=r"tensors, the manifest says"):
        verify_artifact(out)


# ---- atomicity ----------------------------------------------------------------------------------------

_KILL_DRIVER = """
import sys, time
from pathlib import Path
from packager.convert import safetensors_writer
from packager.convert.converter import convert
from packager.convert.settings import ConvertSettings

real = safetensors_writer.FileWriter._fill_chunk
def stalled(self, index, buf):
    real(self, index, buf)
    Path(sys.argv[3]).write_text("mid-write")  # one chunk is on disk; now wait to be killed
    time.sleep(600)
safetensors_writer.FileWriter._fill_chunk = stalled
src = Path(sys.argv[1])
files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
convert(src, files, Path(sys.argv[2]), name="tiny", settings=ConvertSettings(), source_info={})
"""


def test_a_killed_convert_leaves_nothing_that_looks_complete(sources, tmp_path):
    out = tmp_path / "artifacts" / "tiny"
    flag = tmp_path / "flag"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_DRIVER, str(sources["plain"]), str(out), str(flag)], cwd=REPO_ROOT
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, "the converter exited before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        leftovers = list(out.parent.glob(".tiny.tmp-*"))
        assert leftovers
        assert list(leftovers[0].rglob("*.safetensors"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    assert not list(out.parent.rglob(mf.MANIFEST_NAME))

    manifest = run(sources["plain"], out)  # the next run cleans up after the dead one
    assert mf.artifact_id_of(out) == manifest.artifact_id
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]


def test_converting_again_replaces_the_old_artifact_only_when_the_new_one_is_complete(sources, tmp_path):
    out = tmp_path / "art"
    first = run(sources["plain"], out)
    with pytest.raises(ConvertError):
        run(sources["plain"], out, scheduler="NoSuchScheduler")
    assert mf.artifact_id_of(out) == first.artifact_id  # a failed run leaves the old artifact alone
    second = run(sources["plain"], out, precision="bf16")
    assert mf.artifact_id_of(out) == second.artifact_id != first.artifact_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
