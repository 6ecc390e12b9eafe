"""Which files a pipeline needs, out of the many a hub repo carries."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packager.errors import FetchError
from packager.source.select import select_files
from tests.rig import layouts as L

SD_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.42.1",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": True,
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "image_encoder": [None, None],
}
CONFIGS = [
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "vae/config.json",
]
# runwayml/stable-diffusion-v1-5, abridged: every format at once.
RUNWAYML = [
    ".gitattributes",
    "README.md",
    "model_index.json",
    "v1-5-pruned-emaonly.ckpt",
    "v1-5-pruned-emaonly.safetensors",
    "v1-5-pruned.ckpt",
    "v1-inference.yaml",
    *CONFIGS,
    "safety_checker/model.safetensors",
    "safety_checker/pytorch_model.bin",
    "safety_checker/flax_model.msgpack",
    "safety_checker/model.fp16.safetensors",
    "safety_checker/pytorch_model.fp16.bin",
    "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin",
    "text_encoder/flax_model.msgpack",
    "text_encoder/model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_flax_model.msgpack",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.bin",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_flax_model.msgpack",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "onnx/unet/model.onnx",
    "onnx/text_encoder/model.onnx",
]


def test_takes_each_component_in_safetensors_and_nothing_else():
    sel = select_files(RUNWAYML, SD_INDEX)
    assert sel.files == tuple(
        sorted(
            [
                "model_index.json",
                *CONFIGS,
                "safety_checker/model.safetensors",
                "text_encoder/model.safetensors",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
            ]
        )
    )
    assert "image_encoder" not in sel.components  # [null, null] in model_index.json


def test_takes_bin_when_that_is_all_there_is():
    files = [
        *CONFIGS,
        "model_index.json",
        "portrait+1.0.ckpt",
        "portrait+1.0.safetensors",
        "safety_checker/pytorch_model.bin",
        "text_encoder/pytorch_model.bin",
        "unet/diffusion_pytorch_model.bin",
        "vae/diffusion_pytorch_model.bin",
    ]
    sel = select_files(files, SD_INDEX)
    weights = [f for f in sel.files if f.endswith(".bin")]
    assert len(weights) == 4
    assert not any(f.startswith("portrait") for f in sel.files)


def test_variant_files_when_asked_with_a_per_component_fallback():
    sel = select_files(RUNWAYML, SD_INDEX, variant="fp16")
    weights = sorted(f for f in sel.files if f.endswith((".safetensors", ".bin")))
    assert weights == [
        "safety_checker/model.fp16.safetensors",
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    files = [f for f in RUNWAYML if f != "safety_checker/model.fp16.safetensors"]
    sel = select_files(files, SD_INDEX, variant="fp16")
    assert "safety_checker/pytorch_model.fp16.bin" in sel.files  # the variant in another format beats none
    files = [f for f in files if not f.startswith("safety_checker/pytorch_model.fp16")]
    sel = select_files(files, SD_INDEX, variant="fp16")
    assert "safety_checker/model.safetensors" in sel.files
    assert sel.notes == ("safety_checker: no 'fp16' variant weights, using the plain ones",)


def test_other_variants_are_never_taken_by_default():
    sel = select_files(RUNWAYML, SD_INDEX)
    assert "unet/diffusion_pytorch_model.non_ema.bin" not in sel.files
    sel = select_files(RUNWAYML, SD_INDEX, variant="non_ema")
    assert "unet/diffusion_pytorch_model.non_ema.bin" in sel.files


def test_a_component_with_only_variant_weights_needs_the_variant():
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"]
    index = {"_class_name": "X", "unet": ["diffusers", "UNet2DConditionModel"]}
    with pytest.raises(FetchError, match=r"unet/ has only variant weights \(fp16\): set source.variant"):
        select_files(files, index)


def test_dropped_components_are_skipped():
    sel = select_files(RUNWAYML, SD_INDEX, drop=("safety_checker", "feature_extractor"))
    assert not any(f.startswith(("safety_checker/", "feature_extractor/")) for f in sel.files)
    assert "safety_checker" not in sel.components


def encoder_files(*names: str) -> tuple[str, ...]:
    """A one-component repo: model_index.json, the text encoder's config, and `names` in its folder."""
    return ("model_index.json", "text_encoder/config.json", *(f"text_encoder/{n}" for n in names))


def encoder_index(cls: str) -> dict[str, Any]:
    return {"_class_name": "X", "text_encoder": ["transformers", cls]}


def test_shards_with_their_index_and_variant_shards():
    files = encoder_files(
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "model.fp16-00001-of-00002.safetensors",
        "model.fp16-00002-of-00002.safetensors",
        "model.safetensors.index.fp16.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
    )
    index = encoder_index("T5EncoderModel")
    assert select_files(files, index).files == encoder_files(
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    )
    assert select_files(files, index, variant="fp16").files == encoder_files(
        "model.fp16-00001-of-00002.safetensors",
        "model.fp16-00002-of-00002.safetensors",
        "model.safetensors.index.fp16.json",
    )
    bins = [f for f in files if "safetensors" not in f]
    assert (
        select_files(bins, index).files[-3:]
        == encoder_files(
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model-00002-of-00002.bin",
            "pytorch_model.bin.index.json",
        )[2:]
    )


def test_exports_that_look_like_weights_are_not_weights():
    files = encoder_files(
        "model.safetensors",
        "openvino_model.bin",
        "openvino_model.xml",
        "model.onnx",
        "model.onnx_data",
        "tf_model.h5",
        "nested/pytorch_model.bin",
    )
    assert select_files(files, encoder_index("CLIPTextModel")).files == encoder_files("model.safetensors")


def test_configs_only_for_a_single_file_base():
    sel = select_files(RUNWAYML, SD_INDEX, weights=False, drop=("safety_checker",))
    assert sel.files == tuple(
        sorted(["model_index.json", *(c for c in CONFIGS if not c.startswith("safety"))])
    )


def test_a_named_component_without_a_folder_is_an_error_that_says_drop_it():
    files = [f for f in RUNWAYML if not f.startswith("safety_checker/")]
    with pytest.raises(FetchError, match=r"no safety_checker/ folder \(drop it with components.drop"):
        select_files(files, SD_INDEX)


def test_unsafe_component_names_are_refused():
    with pytest.raises(FetchError, match=r"unsafe component name '\.\.'"):
        select_files(["model_index.json", "../x"], {"..": ["diffusers", "Evil"]})


def test_not_a_pipeline():
    with pytest.raises(FetchError, match=r"no model_index\.json"):
        select_files(["model.safetensors", "config.json"], {})


def test_real_layouts(hub_layouts):
    """The fixture repos, listed as the hub lists them."""

    def pick(repo, **kw):
        layout = hub_layouts[repo]
        index = json.loads((layout.folder / "model_index.json").read_text())
        return select_files(list(layout.files()), index, **kw).files

    sdxl = pick(L.SDXL, variant="fp16")
    assert {f.split("/")[0] for f in sdxl} == {
        "model_index.json",
        "scheduler",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "unet",
        "vae",
    }
    assert all(".fp16." in f for f in sdxl if f.endswith(".safetensors"))
    everything = pick(L.SD_EVERYTHING)
    assert not any(
        f.endswith((".bin", ".msgpack", ".onnx", ".ckpt")) or f.startswith("onnx/") for f in everything
    )
    portrait = pick(L.PORTRAITPLUS)
    assert "/" in "".join(portrait)
    assert not any(f.startswith("portrait+") for f in portrait)


names = st.from_regex(r"[a-z_]{1,12}(\.fp16)?\.(safetensors|bin|json|txt|msgpack|onnx)", fullmatch=True)


@given(st.lists(st.tuples(st.sampled_from(["unet", "vae", "onnx", "x"]), names), max_size=30))
def test_selection_is_a_subset_inside_named_components(entries):
    files = ["model_index.json", "README.md", *(f"{a}/{b}" for a, b in entries)]
    index = {"_class_name": "X", "unet": ["diffusers", "U"], "vae": ["diffusers", "V"]}
    try:
        sel = select_files(files, index)
    except FetchError as exc:
        refused = str(exc)
        assert "unet" in refused or "vae" in refused
        return
    assert set(sel.files) <= set(files)
    assert all(f == "model_index.json" or f.split("/")[0] in ("unet", "vae") for f in sel.files)
    for component in ("unet", "vae"):
        weights = [
            f for f in sel.files if f.startswith(component + "/") and not f.endswith((".json", ".txt"))
        ]
        assert len(weights) <= 1  # no shards in this alphabet: one weight file per component at most
