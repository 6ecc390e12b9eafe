"""The worker knows each pipeline: defaults from its own `__call__` (model cards where they differ),
request fields mapped onto what it takes, one-line refusals for what it cannot, and videos as MP4s.

In-process tests run the same functions the worker does on the tiny artifacts; the served tests start
the real worker per family and send prompt-only requests in both request shapes.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from artifact_format import manifest as mf
from tests.rig.artifacts import family_artifact, fp8_variant
from tests.rig.worker import decode_png, draw, start_worker
from worker_runtime import family, generate, load, requests
from worker_runtime.config import Defaults, Limits
from worker_runtime.errors import RequestError, StartError

KINDS = ("flux-dev", "flux-schnell", "sd3", "pixart-sigma", "wan", "ltx")
VIDEO = {"wan", "ltx"}
# The defaults table the README prints: (guidance, steps, max_sequence_length, extra).
EXPECTED_DEFAULTS = {
    "flux-dev": (3.5, 28, 512, {}),
    "flux-schnell": (0.0, 4, 256, {}),
    "sd3": (7.0, 28, 256, {}),
    "pixart-sigma": (4.5, 20, 300, {"negative_prompt": ""}),
    "wan": (5.0, 50, 512, {"num_frames": 81, "fps": 16, "width": 832, "height": 480}),
    "ltx": (3, 50, 128, {"num_frames": 161, "fps": 25, "width": 704, "height": 512}),
}


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {kind: family_artifact(kind, root / kind)[0] for kind in KINDS}


@pytest.fixture(scope="module")
def loaded(artifacts: dict[str, Path]) -> dict[str, load.Loaded]:
    import diffusers
    import torch

    out = {}
    for kind, folder in artifacts.items():
        manifest = mf.load(folder)
        out[kind] = load.load_pipeline(getattr(diffusers, manifest.pipeline), torch, folder, manifest, "cpu")
    return out


def serving(
    loaded: load.Loaded, recipe: Defaults = Defaults(), limits: Limits = Limits()
) -> requests.Serving:
    return requests.Serving(
        call=family.describe(loaded.pipe, recipe),
        limits=limits,
        default_size=loaded.default_size,
        pipeline=type(loaded.pipe).__name__,
        model_ids=frozenset({"m"}),
        precision="fp32",
        has_safety_checker=False,
        can_upload=False,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_come_from_the_pipeline_and_its_model_card(
    loaded: dict[str, load.Loaded], kind: str
) -> None:
    guidance, steps, max_seq, extra = EXPECTED_DEFAULTS[kind]
    gen = requests.parse({"prompt": "a fox"}, serving(loaded[kind]))
    assert (gen.guidance_scale, gen.num_inference_steps, gen.max_sequence_length) == (
        guidance,
        steps,
        max_seq,
    )
    for key, value in extra.items():
        assert getattr(gen, key) == value, key
    kwargs = generate.call_kwargs(gen, serving(loaded[kind]).call)
    assert kwargs["guidance_scale"] == guidance
    assert "true_cfg_scale" not in kwargs
    if kind not in ("pixart-sigma",):
        assert "negative_prompt" not in kwargs  # None never reaches a pipeline
    assert ("num_videos_per_prompt" if kind in VIDEO else "num_images_per_prompt") in kwargs
    assert ("frame_rate" in kwargs) == (kind == "ltx")


def test_recipe_defaults_override_the_pipeline_and_the_card(loaded: dict[str, load.Loaded]) -> None:
    recipe = Defaults(guidance_scale=1.5, num_inference_steps=3, max_sequence_length=64)
    gen = requests.parse({"prompt": "a fox"}, serving(loaded["flux-schnell"], recipe))
    assert (gen.guidance_scale, gen.num_inference_steps, gen.max_sequence_length) == (1.5, 3, 64)
    with pytest.raises(
        StartError, match=r"^WORKER_CONFIG.defaults.num_frames: FluxPipeline does not take it$"
    ):
        family.describe(loaded["flux-dev"].pipe, Defaults(num_frames=9))


def test_the_size_and_frame_rules_match_the_pipelines(loaded: dict[str, load.Loaded]) -> None:
    wan, ltx = loaded["wan"].pipe, loaded["ltx"].pipe
    assert family.VIDEO_RULES["WanPipeline"].size_multiple == wan.vae_scale_factor_spatial * 2
    assert family.VIDEO_RULES["WanPipeline"].frame_step == wan.vae_scale_factor_temporal
    assert family.VIDEO_RULES["LTXPipeline"].size_multiple == ltx.vae_spatial_compression_ratio
    assert family.VIDEO_RULES["LTXPipeline"].frame_step == ltx.vae_temporal_compression_ratio
    assert family.IMAGE_SIZE_MULTIPLE["FluxPipeline"] == loaded["flux-dev"].pipe.vae_scale_factor * 2
    sd3 = loaded["sd3"].pipe
    assert family.IMAGE_SIZE_MULTIPLE["StableDiffusion3Pipeline"] == sd3.vae_scale_factor * sd3.patch_size


REFUSED = [
    ("flux-dev", {"num_frames": 9}, "num_frames: FluxPipeline does not take it"),
    ("flux-dev", {"fps": 8}, "fps: FluxPipeline does not take it"),
    ("sd3", {"true_cfg_scale": 2}, "true_cfg_scale: StableDiffusion3Pipeline does not take it"),
    ("flux-dev", {"width": 72}, "width: must be a multiple of 16 (got 72) for FluxPipeline"),
    (
        "flux-dev",
        {"negative_prompt": "blur", "true_cfg_scale": 1},
        "negative_prompt: FluxPipeline uses a negative prompt only with true_cfg_scale > 1 (got 1)",
    ),
    ("sd3", {"max_sequence_length": 1000}, "max_sequence_length: must be between 1 and 512"),
    ("wan", {"width": 72, "height": 64}, "width: must be a multiple of 16 (got 72) for WanPipeline"),
    ("wan", {"num_frames": 10, "width": 64, "height": 64}, "num_frames: WanPipeline makes 4k+1 frames"),
    (
        "ltx",
        {"num_frames": 9, "width": 80, "height": 64},
        "width: must be a multiple of 32 (got 80) for LTXPipeline",
    ),
    ("ltx", {"num_frames": 13, "width": 64, "height": 64}, "num_frames: LTXPipeline makes 8k+1 frames"),
    ("ltx", {"num_frames": 200}, "num_frames: must be between 1 and 161"),
    ("wan", {"num_frames": 161, "width": 1024, "height": 1024}, "num_frames: 161 frames x 1048576 pixels"),
]


@pytest.mark.parametrize(("kind", "fields", "message"), REFUSED)
def test_what_a_pipeline_cannot_take_is_one_line(
    loaded: dict[str, load.Loaded], kind: str, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(RequestError) as err:
        requests.parse({"prompt": "a fox", **fields}, serving(loaded[kind]))
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    # The same in the docker-diffusers-api shape, under modelInputs.
    with pytest.raises(RequestError) as err:
        requests.parse({"modelInputs": {"prompt": "a fox", **fields}}, serving(loaded[kind]))
    assert f"modelInputs.{message}" in str(err.value)


def test_a_negative_prompt_turns_on_flux_true_cfg(loaded: dict[str, load.Loaded]) -> None:
    spec = serving(loaded["flux-dev"])
    gen = requests.parse({"prompt": "a fox", "negative_prompt": "blur"}, spec)
    assert gen.true_cfg_scale == family.TRUE_CFG_WITH_NEGATIVE
    kwargs = generate.call_kwargs(gen, spec.call)
    assert kwargs["negative_prompt"] == "blur"
    assert kwargs["true_cfg_scale"] == 4.0
    explicit = requests.parse({"prompt": "a fox", "negative_prompt": "blur", "true_cfg_scale": 2.5}, spec)
    assert explicit.true_cfg_scale == 2.5


def test_an_fp8_transformer_loads_as_stored_and_generates_close_to_bf16(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    import diffusers
    import torch

    src = artifacts["flux-dev"]
    folder, _ = fp8_variant(src, tmp_path / "fp8")
    manifest = mf.load(folder)
    assert manifest.schema == 2
    assert manifest.precision_of("transformer").layerwise
    fp8 = load.load_pipeline(diffusers.FluxPipeline, torch, folder, manifest, "cpu")
    transformer = fp8.pipe.transformer
    dtypes = {n: p.dtype for n, p in transformer.named_parameters()}
    assert dtypes["transformer_blocks.0.norm1.linear.weight"] == torch.float8_e4m3fn  # adaLN modulation
    assert dtypes["single_transformer_blocks.0.proj_out.weight"] == torch.float8_e4m3fn
    assert dtypes["x_embedder.weight"] == torch.float32  # skipped: stored bf16, computes in fp32 on CPU
    assert fp8.pipe.vae.dtype == torch.float32

    def image(pipe: Any) -> Any:
        return torch.as_tensor(draw(pipe, "a fox", 0))

    got = image(fp8.pipe)
    reference = image(load.load_pipeline(diffusers.FluxPipeline, torch, src, mf.load(src), "cpu").pipe)
    assert torch.isfinite(got).all()
    assert (got - reference).abs().mean() < 0.05  # fp8 weights, same seed: the same picture, roughly


def test_both_manifest_schemas_load_and_generate(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """Schema 1 (one precision for everything) and schema 2 (per-component precision) of the same
    weights: the worker finds, checks and loads both alike."""
    import dataclasses

    import diffusers
    import torch

    from worker_runtime import artifact, config

    src = artifacts["pixart-sigma"]
    images = []
    for schema in (1, 2):
        folder = tmp_path / f"schema-{schema}"
        shutil.copytree(src, folder)
        manifest = mf.load(folder)
        components = {c: mf.ComponentPrecision("float32", "float32") for c in ("text_encoder", "transformer")}
        manifest = dataclasses.replace(manifest, components=components if schema == 2 else {})
        (folder / mf.MANIFEST_NAME).unlink()
        mf.write(manifest, folder)
        located = artifact.locate(config.read_settings({"MODEL_DIR": str(folder)}))
        assert located.manifest.schema == schema
        pipe = load.load_pipeline(diffusers.PixArtSigmaPipeline, torch, folder, located.manifest, "cpu").pipe
        images.append(torch.as_tensor(draw(pipe, "a fox", 0)))
    assert torch.equal(images[0], images[1])


# ---- served by the real worker ----------------------------------------------------------------


def worker_config(kind: str) -> dict[str, Any]:
    defaults: dict[str, Any] = {"num_inference_steps": 2, "width": 64, "height": 64}
    if kind in VIDEO:
        defaults |= {"num_frames": 9}
    return {"defaults": defaults, "limits": {"max_width": 256, "max_height": 256}}


@pytest.fixture(scope="module", params=KINDS)
def served(
    request: pytest.FixtureRequest, artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any]]:
    kind = request.param
    worker = start_worker(
        artifacts[kind],
        tmp_path_factory.mktemp(f"worker-{kind}"),
        WORKER_CONFIG=json.dumps(worker_config(kind)),
    )
    try:
        yield kind, worker
    finally:
        worker.stop()


def test_a_prompt_only_request_is_answered_in_both_shapes(served: tuple[str, Any]) -> None:
    kind, worker = served
    flat = worker.runsync({"prompt": "a red fox", "seed": 3})
    api = worker.runsync({"modelInputs": {"prompt": "a red fox", "seed": 3}, "callInputs": {}})
    for job in (flat, api):
        assert job["status"] == "COMPLETED", job
        out = job["output"]
        assert decode_png(out["image_base64"]).size == (64, 64)
        if kind in VIDEO:
            frames = mp4_frames(out["video_base64"])
            assert len(frames) == out["num_frames"] == 9
            assert frames[0].size == (64, 64)
            assert out["fps"] == EXPECTED_DEFAULTS[kind][3]["fps"]
        else:
            assert "video_base64" not in out
    assert flat["output"]["image_base64"] == api["output"]["image_base64"]
    refused = worker.runsync({"prompt": "a fox", "num_frames": 10, "width": 64})
    assert refused["status"] == "FAILED"
    assert "num_frames" in refused["error"]
    assert "\n" not in refused["error"]


def mp4_frames(data: str) -> list[Any]:
    import av

    raw = base64.b64decode(data, validate=True)
    with av.open(io.BytesIO(raw)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return [frame.to_image() for frame in container.decode(stream)]
