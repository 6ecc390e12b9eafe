"""Precision on the transformer families: every tensor's dtype against a real from_pretrained load.

The oracle: for each component, the dtypes `Class.from_pretrained(source, torch_dtype=X)` gives
its parameters and buffers, X being the component's compute precision. `auto` must match it tensor
for tensor; fp8 must differ only where the denoiser's Linear / Conv layers are stored in fp8.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from artifact_format import manifest as mf
from packager.convert.converter import convert
from packager.convert.precision import plan_precision, resolve_auto, torch_dtype
from packager.convert.settings import ConvertSettings
from packager.errors import ConvertError
from tests.rig.models import save_sd_pipeline
from tests.rig.models_dit import PIPELINES, save_pipeline

SOURCE = {"kind": "path", "path": "family"}


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    out = {name: save_pipeline(name, root / name) for name in PIPELINES}
    out["sd"] = save_sd_pipeline(root / "sd", seed=0, with_safety_checker=False)
    return out


def files_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def run(src: Path, out: Path, **settings: Any) -> mf.Manifest:
    return convert(
        src, files_of(src), out, name="family", settings=ConvertSettings(**settings), source_info=SOURCE
    )


def stored_dtypes(folder: Path) -> dict[str, Any]:
    from safetensors import safe_open

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                out[name] = fh.get_slice(name).get_dtype()
    return out


def oracle(src: Path, comp: str, spec: list[str], compute: str) -> dict[str, str]:
    """safetensors dtype codes of what from_pretrained(torch_dtype=compute) loads from the source."""
    import diffusers
    import transformers

    from packager.convert.safetensors_writer import dtype_code

    library = transformers if spec[0] == "transformers" else diffusers
    model = getattr(library, spec[1]).from_pretrained(src / comp, torch_dtype=torch_dtype(compute))
    return {name: dtype_code(t.dtype) for name, t in model.state_dict().items()}


@pytest.mark.parametrize("family", [*PIPELINES, "sd"])
@pytest.mark.parametrize("precision", ["auto", "fp8", "fp16"])
def test_every_tensor_has_the_dtype_from_pretrained_gives_it(
    families: dict[str, Path], tmp_path: Path, family: str, precision: str
) -> None:
    src = families[family]
    manifest = run(src, tmp_path / "out", precision=precision)
    index = json.loads((src / "model_index.json").read_text())
    expected_auto = "fp16" if family == "sd" else "bf16"
    assert resolve_auto(index) == expected_auto
    assert manifest.precision == (expected_auto if precision in ("auto", "fp8") else precision)
    checked = 0
    for comp, record in manifest.components.items():
        compute = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[record.compute]
        want = oracle(src, comp, index[comp], compute)
        got = stored_dtypes(tmp_path / "out" / comp)
        for name, code in want.items():
            if name not in got:  # a tied alias stored once, or a buffer that is not saved
                continue
            if record.storage == "float8_e4m3fn" and got[name] == "F8_E4M3":
                assert name.endswith((".weight", ".bias")), (comp, name)
                assert code in ("BF16", "F16"), (comp, name)
                continue
            assert got[name] == code, f"{family}/{comp}: {name} stored as {got[name]}, loads as {code}"
            checked += 1
        if precision == "fp8" and comp in ("transformer", "unet"):
            assert record.storage == "float8_e4m3fn"
            assert sum(c == "F8_E4M3" for c in got.values()) > 0
    assert checked > 0


def test_t5_keeps_wo_in_fp32_in_fp16_only(families: dict[str, Path], tmp_path: Path) -> None:
    src = families["flux-dev"]
    run(src, tmp_path / "fp16", precision="fp16")
    run(src, tmp_path / "bf16", precision="bf16")
    fp16 = stored_dtypes(tmp_path / "fp16" / "text_encoder_2")
    bf16 = stored_dtypes(tmp_path / "bf16" / "text_encoder_2")
    wo = [n for n in fp16 if n.endswith("DenseReluDense.wo.weight")]
    assert wo
    assert all(fp16[n] == "F32" for n in wo)
    assert all(bf16[n] == "BF16" for n in wo)


def test_wan_keeps_its_declared_modules_in_fp32_at_any_reduced_dtype(
    families: dict[str, Path], tmp_path: Path
) -> None:
    run(families["wan"], tmp_path / "out")
    got = stored_dtypes(tmp_path / "out" / "transformer")
    assert got["scale_shift_table"] == "F32"
    assert got["condition_embedder.time_embedder.linear_1.weight"] == "F32"
    assert got["blocks.0.attn1.to_q.weight"] == "BF16"


def test_overrides_set_a_component_or_tensor_patterns(families: dict[str, Path], tmp_path: Path) -> None:
    manifest = run(
        families["flux-dev"],
        tmp_path / "out",
        precision_overrides={"text_encoder_2": "fp32", "transformer": {"*norm*": "fp32"}},
    )
    t5 = stored_dtypes(tmp_path / "out" / "text_encoder_2")
    assert set(t5.values()) == {"F32"}
    dit = stored_dtypes(tmp_path / "out" / "transformer")
    assert all(code == "F32" for name, code in dit.items() if "norm" in name)
    assert dit["transformer_blocks.0.attn.to_q.weight"] == "BF16"
    assert manifest.packing["precision_overrides"] == {
        "text_encoder_2": "fp32",
        "transformer": {"*norm*": "fp32"},
    }
    with pytest.raises(ConvertError, match=r"precision_overrides: 'unet' is not a component with weights"):
        run(families["flux-dev"], tmp_path / "bad", precision_overrides={"unet": "fp32"})
    with pytest.raises(ConvertError, match=r"precision_overrides.vae: fp8 applies to the denoiser only"):
        run(families["flux-dev"], tmp_path / "bad", precision_overrides={"vae": "fp8"})


def test_explicit_fp16_on_t5_and_flux_warns_once_each(families: dict[str, Path]) -> None:
    src = families["flux-dev"]
    index = json.loads((src / "model_index.json").read_text())
    warned = plan_precision(index, src, "fp16").warnings
    assert len(warned) == 2
    assert "text_encoder_2 (T5EncoderModel) in fp16" in warned[0]
    assert "transformer (FluxTransformer2DModel) in fp16" in warned[1]
    assert plan_precision(index, src, "auto").warnings == ()
    assert plan_precision(index, src, "auto", {"vae": "fp16"}).warnings == ()
    sd = families["sd"]
    assert plan_precision(json.loads((sd / "model_index.json").read_text()), sd, "fp16").warnings == ()


def test_fp8_denoiser_is_smaller_than_half_bf16_and_loads_with_layerwise_casting(
    families: dict[str, Path], tmp_path: Path
) -> None:
    import diffusers
    import torch
    from diffusers.hooks import apply_layerwise_casting

    src = families["flux-dev"]
    bf16 = run(src, tmp_path / "bf16", precision="bf16")
    fp8 = run(src, tmp_path / "fp8", precision="fp8")

    def tensor_bytes(manifest: mf.Manifest) -> int:
        from packager.convert.safetensors_writer import read_header

        total = 0
        for entry in manifest.weight_files:
            if entry.path.startswith("transformer/"):
                path = tmp_path / ("fp8" if manifest is fp8 else "bf16") / entry.path
                _, header = read_header(path)
                total += sum(
                    v["data_offsets"][1] - v["data_offsets"][0]
                    for k, v in header.items()
                    if k != "__metadata__"
                )
        return total

    assert tensor_bytes(fp8) <= 0.55 * tensor_bytes(bf16)
    record = fp8.components["transformer"]
    assert record.storage == "float8_e4m3fn"
    assert record.compute == "bfloat16"

    cls = diffusers.FluxTransformer2DModel
    reference = cls.from_pretrained(tmp_path / "bf16" / "transformer", torch_dtype=torch.float32).eval()
    model = cls.from_pretrained(tmp_path / "fp8" / "transformer", torch_dtype=torch.float32).eval()
    stored = stored_dtypes(tmp_path / "fp8" / "transformer")
    for name, param in model.named_parameters():
        if stored[name] == "F8_E4M3":
            param.data = param.data.to(torch.float8_e4m3fn)
    apply_layerwise_casting(
        model, torch.float8_e4m3fn, torch.float32, skip_modules_pattern=record.skip_modules
    )
    assert all(p.dtype in (torch.float8_e4m3fn, torch.float32) for p in model.parameters())
    torch.manual_seed(0)
    config = model.config
    inputs = {
        "hidden_states": torch.randn(1, 16, config.in_channels),
        "encoder_hidden_states": torch.randn(1, 8, config.joint_attention_dim),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim),
        "timestep": torch.tensor([0.5]),
        "guidance": torch.tensor([3.5]) if config.guidance_embeds else None,
        "img_ids": torch.zeros(16, 3),
        "txt_ids": torch.zeros(8, 3),
    }
    with torch.no_grad():
        want = reference(**inputs).sample
        got = model(**inputs).sample
    assert torch.isfinite(got).all()
    cosine = torch.nn.functional.cosine_similarity(want.flatten(), got.flatten(), dim=0)
    assert cosine > 0.98, float(cosine)


def test_fp8_refuses_values_beyond_its_range(families: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(families["pixart-sigma"], src)
    path = src / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["proj_out.weight"] = state["proj_out.weight"].clone()
    state["proj_out.weight"].view(-1)[0] = 1000.0
    save_file(state, path)
    with pytest.raises(
        ConvertError, match=r"tensor proj_out\.weight has values beyond float8_e4m3fn's range"
    ):
        run(src, tmp_path / "out", precision="fp8")
    assert not (tmp_path / "out").exists()


# The denoisers at their published sizes (diffusers' defaults are the real FLUX.1 and LTX-Video).
REAL_DENOISERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "flux": ("FluxPipeline", "FluxTransformer2DModel", {"guidance_embeds": True}),
    "sd3.5-medium": (
        "StableDiffusion3Pipeline",
        "SD3Transformer2DModel",
        {
            "sample_size": 128,
            "in_channels": 16,
            "num_layers": 24,
            "attention_head_dim": 64,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "caption_projection_dim": 1536,
            "pooled_projection_dim": 2048,
            "out_channels": 16,
            "pos_embed_max_size": 384,
            "dual_attention_layers": list(range(13)),
            "qk_norm": "rms_norm",
        },
    ),
    "pixart-sigma": (
        "PixArtSigmaPipeline",
        "PixArtTransformer2DModel",
        {
            "sample_size": 128,
            "num_layers": 28,
            "attention_head_dim": 72,
            "num_attention_heads": 16,
            "out_channels": 8,
            "caption_channels": 4096,
            "cross_attention_dim": 1152,
            "norm_type": "ada_norm_single",
        },
    ),
    "wan2.1-t2v-1.3b": (
        "WanPipeline",
        "WanTransformer3DModel",
        {
            "num_attention_heads": 12,
            "attention_head_dim": 128,
            "ffn_dim": 8960,
            "num_layers": 30,
            "text_dim": 4096,
            "freq_dim": 256,
            "in_channels": 16,
            "out_channels": 16,
        },
    ),
    "ltx-video": ("LTXPipeline", "LTXVideoTransformer3DModel", {}),
}


@pytest.mark.parametrize("family", REAL_DENOISERS)
def test_fp8_holds_at_most_55_percent_of_the_bf16_bytes_at_real_size(tmp_path: Path, family: str) -> None:
    """The tiny fixtures are all norms and embeddings; at published sizes the Linear weights
    dominate. The plan is applied to every tensor of the real architecture, built on meta."""
    import diffusers
    import torch

    pipeline, class_name, config = REAL_DENOISERS[family]
    cls = getattr(diffusers, class_name)
    with torch.device("meta"):
        model = cls(**config)
    model.save_config(tmp_path / "transformer")
    index = {"_class_name": pipeline, "transformer": ["diffusers", class_name]}
    state = model.state_dict()
    total = {}
    for precision in ("bf16", "fp8"):
        rules = plan_precision(index, tmp_path, precision).for_component("transformer")
        total[precision] = sum(
            t.numel() * rules.dtype_for(n, torch.float32).itemsize for n, t in state.items()
        )
    assert total["fp8"] <= 0.55 * total["bf16"], total["fp8"] / total["bf16"]
