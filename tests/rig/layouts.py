"""Fixture hub repos in the layouts found in the wild, built deterministically from tiny pipelines.

One tiny SD 1.x pipeline (tests/rig/models.py, seed 0) and one tiny SDXL pipeline are built; every
other layout is derived from them by rewriting files, so the whole set costs two model builds:

| repo                     | layout                                                                    |
|--------------------------|---------------------------------------------------------------------------|
| tiny/sd-bin              | (1) diffusers folders, fp32 `.bin` weights (old repos, portraitplus-like) |
| tiny/sd-bin-sharded      | (1) same, the text encoder as legacy sharded `.bin` + `.bin.index.json`   |
| tiny/sdxl                | (2) SDXL: two text encoders/tokenizers, safetensors + `*.fp16.safetensors`|
|                          |     plus openvino/onnx files, a `vae_1_0/` folder and a root checkpoint    |
| tiny/sd-fp16-branch      | (3) fp32 safetensors on `main`, fp16 on branch `fp16`; tag `v1.0`         |
| tiny/sd-original         | (4) single-file original-SD-layout `tiny-sd.ckpt` and `tiny-sd.safetensors`|
| tiny/sd-config           | the diffusers configs + tokenizer that (4) follows (no weights)            |
| tiny/portraitplus        | (5) layout (1) plus big root `.ckpt`/`.safetensors` copies and images      |
| tiny/sd-everything       | safetensors + .bin + fp16 variants + flax msgpack, `onnx/`, EMA root ckpts |
| tiny/sd-gated            | a gated copy of the SD safetensors repo                                   |
| tiny/sd-private          | a private copy                                                            |

The transformer pipelines' repos (FLUX.1, SD 3.5, PixArt-Σ, Wan, LTX) are in tests/rig/layouts_dit.py.

Every repo has `.gitattributes` and `README.md` at its root, as hub repos do. The SD repos without a
safety checker are what `save_pretrained` writes for `with_safety_checker=False`.

The single-file checkpoints are made with the exact inverse of diffusers' own single-file key
mapping (diffusers.loaders.single_file_utils), so `from_single_file(ckpt, config=<sd-config>)`
gives back the tiny pipeline's tensors; tests/test_localhub.py checks that round trip.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.rig.layouts_dit import DIT_REPOS, build_dit_layouts
from tests.rig.localhub import LocalHub
from tests.rig.models import TEXT_HIDDEN, save_sd_pipeline, text_encoder_config, tiny_vae
from tests.rig.tokenizer import write_clip_tokenizer

SD_BIN = "tiny/sd-bin"
SD_BIN_SHARDED = "tiny/sd-bin-sharded"
SDXL = "tiny/sdxl"
SD_FP16_BRANCH = "tiny/sd-fp16-branch"
SD_ORIGINAL = "tiny/sd-original"
SD_CONFIG = "tiny/sd-config"
PORTRAITPLUS = "tiny/portraitplus"
SD_EVERYTHING = "tiny/sd-everything"
SD_GATED = "tiny/sd-gated"
SD_PRIVATE = "tiny/sd-private"

SINGLE_FILE_CKPT = "tiny-sd.ckpt"
SINGLE_FILE_SAFETENSORS = "tiny-sd.safetensors"
PORTRAITPLUS_ROOT_FILES = ("portrait+1.0.ckpt", "portrait+1.0.safetensors")

# Bumped whenever a layout's bytes change, so a cached build of an older layout is not reused.
LAYOUTS_VERSION = "3"
_STAMP = ".layouts-complete"
WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")


@dataclass(frozen=True)
class RepoLayout:
    """A fixture repo: the tree of each branch materialised as a folder, plus hub settings."""

    repo_id: str
    refs: Mapping[str, Path]  # branch → folder holding that branch's files ("main" always present)
    tags: Mapping[str, str] = field(default_factory=dict)  # tag → branch whose head it points at
    gated: bool = False
    private: bool = False
    about: str = ""

    @property
    def folder(self) -> Path:
        return self.refs["main"]

    def files(self, branch: str = "main") -> dict[str, int]:
        """Repo path → size, for assertions."""
        root = self.refs[branch]
        return {
            p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()
        }


# ---- building ---------------------------------------------------------------------------------------


def layouts_key() -> str:
    """A hash of what decides the layouts' bytes: this rig's sources and the library versions."""
    from importlib.metadata import version

    rig = Path(__file__).parent
    h = hashlib.sha256(LAYOUTS_VERSION.encode())
    for name in (
        "layouts.py",
        "layouts_dit.py",
        "models.py",
        "models_dit.py",
        "models_dit.json",
        "tokenizer.py",
    ):
        h.update((rig / name).read_bytes())
    for dist in ("torch", "diffusers", "transformers", "safetensors"):
        h.update(f"{dist}={version(dist)};".encode())
    return h.hexdigest()[:16]


def build_layouts(root: Path) -> dict[str, RepoLayout]:
    """Materialise every fixture repo under `root` (reused when a complete build is already there).

    Built in a temporary folder beside `root` and renamed into place, so a killed build never
    leaves a half-built set that looks complete.
    """
    if (root / _STAMP).exists():
        return _describe(root)
    tmp = root.with_name(f"{root.name}.tmp-{random.getrandbits(32):08x}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _build(tmp)
    (tmp / _STAMP).write_text(layouts_key() + "\n")
    try:
        tmp.rename(root)
    except OSError:  # another session finished first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return _describe(root)


def _describe(root: Path) -> dict[str, RepoLayout]:
    def d(repo_id: str) -> Path:
        return root / repo_id.replace("/", "__")

    layouts = [
        RepoLayout(SD_BIN, {"main": d(SD_BIN) / "main"}, about="diffusers folders with fp32 .bin weights"),
        RepoLayout(
            SD_BIN_SHARDED, {"main": d(SD_BIN_SHARDED) / "main"}, about="text encoder as legacy sharded .bin"
        ),
        RepoLayout(SDXL, {"main": d(SDXL) / "main"}, about="SDXL with fp16 variant files"),
        RepoLayout(
            SD_FP16_BRANCH,
            {"main": d(SD_FP16_BRANCH) / "main", "fp16": d(SD_FP16_BRANCH) / "fp16"},
            tags={"v1.0": "main"},
            about="fp32 on main, fp16 weights on branch fp16",
        ),
        RepoLayout(
            SD_ORIGINAL, {"main": d(SD_ORIGINAL) / "main"}, about="single-file original-layout checkpoints"
        ),
        RepoLayout(
            SD_CONFIG, {"main": d(SD_CONFIG) / "main"}, about="configs for the single-file checkpoints"
        ),
        RepoLayout(
            PORTRAITPLUS, {"main": d(PORTRAITPLUS) / "main"}, about=".bin folders plus big root checkpoints"
        ),
        RepoLayout(SD_EVERYTHING, {"main": d(SD_EVERYTHING) / "main"}, about="every format, onnx/ and flax"),
        RepoLayout(SD_GATED, {"main": d(SD_GATED) / "main"}, gated=True, about="gated"),
        RepoLayout(SD_PRIVATE, {"main": d(SD_PRIVATE) / "main"}, private=True, about="private"),
    ]
    layouts += [
        RepoLayout(r.repo_id, {"main": d(r.repo_id) / "main"}, gated=r.gated, about=r.about)
        for r in DIT_REPOS
    ]
    return {layout.repo_id: layout for layout in layouts}


def _build(root: Path) -> None:
    def d(repo_id: str, branch: str = "main") -> Path:
        return root / repo_id.replace("/", "__") / branch

    work = root / "_work"
    base = save_sd_pipeline(work / "sd-base", seed=0, with_safety_checker=True)
    plain = without_safety_checker(base, work / "sd-plain")

    # (1) fp32 .bin folders, with the safety checker, as old repos were uploaded.
    _copy(base, d(SD_BIN))
    to_bin(d(SD_BIN))
    _repo_files(d(SD_BIN), "Tiny SD with fp32 .bin weights.")

    _copy(d(SD_BIN), d(SD_BIN_SHARDED))
    # Legacy sharding is a transformers habit (big T5/CLIP encoders); diffusers only reads sharded
    # `.bin` models when told use_safetensors=False, so the text encoder is the realistic case.
    shard_bin(d(SD_BIN_SHARDED) / "text_encoder" / "pytorch_model.bin", shards=2)

    # (2) SDXL with fp16 variant files and the extras the real sdxl-base repo carries.
    sdxl = d(SDXL)
    save_sdxl_pipeline(sdxl, seed=10)
    add_fp16_variants(sdxl)
    _copy(sdxl / "vae", sdxl / "vae_1_0")
    (sdxl / "text_encoder" / "openvino_model.bin").write_bytes(_noise(150_000, 1))
    (sdxl / "text_encoder" / "openvino_model.xml").write_text("<net name='tiny'/>\n")
    (sdxl / "unet" / "model.onnx").write_bytes(_noise(120_000, 2))
    (sdxl / "unet" / "model.onnx_data").write_bytes(_noise(300_000, 3))
    (sdxl / "sd_xl_base_1.0.safetensors").write_bytes(_noise(2_000_000, 4))
    _repo_files(sdxl, "Tiny SDXL with fp16 variants.")

    # (3) fp32 on main, the same file names in fp16 on branch `fp16`.
    _copy(plain, d(SD_FP16_BRANCH))
    _repo_files(d(SD_FP16_BRANCH), "Tiny SD; fp16 weights live on the fp16 branch.")
    _copy(d(SD_FP16_BRANCH), d(SD_FP16_BRANCH, "fp16"))
    cast_safetensors_in_place(d(SD_FP16_BRANCH, "fp16"))

    # (4) single-file checkpoints in the original SD layout, and the configs they follow.
    original = d(SD_ORIGINAL)
    original.mkdir(parents=True)
    write_original_checkpoint(plain, original / SINGLE_FILE_SAFETENSORS)
    write_original_checkpoint(plain, original / SINGLE_FILE_CKPT)
    _repo_files(original, "Tiny SD as single-file checkpoints (civitai style).")
    _copy(plain, d(SD_CONFIG))
    for weights in d(SD_CONFIG).rglob("*.safetensors"):
        weights.unlink()
    _repo_files(d(SD_CONFIG), "Configs and tokenizer of the tiny SD pipeline, no weights.")

    # (5) portraitplus: the .bin folders plus root checkpoints that must never be fetched.
    pp = d(PORTRAITPLUS)
    _copy(d(SD_BIN), pp)
    write_original_checkpoint(base, pp / PORTRAITPLUS_ROOT_FILES[0])
    write_original_checkpoint(base, pp / PORTRAITPLUS_ROOT_FILES[1])
    (pp / "portraitplus_samples.jpg").write_bytes(_noise(40_000, 5))
    _repo_files(pp, "Tiny portraitplus: diffusers folders and root checkpoints.")

    # Every format at once, runwayml/stable-diffusion-v1-5 style.
    ev = d(SD_EVERYTHING)
    _copy(base, ev)
    add_fp16_variants(ev)
    for st in sorted(ev.rglob("*.safetensors")):
        _safetensors_to_bin(st, st.with_name(_bin_name(st.name)))
    for seed, component in enumerate(("unet", "vae", "text_encoder", "safety_checker")):
        name = "diffusion_flax_model.msgpack" if component in ("unet", "vae") else "flax_model.msgpack"
        (ev / component / name).write_bytes(_noise(50_000, 20 + seed))
    for seed, component in enumerate(("unet", "vae_decoder", "vae_encoder", "text_encoder")):
        (ev / "onnx" / component).mkdir(parents=True, exist_ok=True)
        (ev / "onnx" / component / "model.onnx").write_bytes(_noise(60_000, 30 + seed))
    write_original_checkpoint(base, ev / "v1-5-pruned-emaonly.safetensors")
    write_original_checkpoint(base, ev / "v1-5-pruned-emaonly.ckpt")
    (ev / "v1-5-pruned.ckpt").write_bytes(_noise(3_000_000, 6))
    _repo_files(ev, "Tiny SD in every format.")

    for repo_id in (SD_GATED, SD_PRIVATE):
        _copy(d(SD_FP16_BRANCH), d(repo_id))

    shutil.rmtree(work)
    build_dit_layouts(root, d, _repo_files)


def publish(hub: LocalHub, layouts: Mapping[str, RepoLayout]) -> dict[str, str]:
    """Create every repo on the hub with a small history; returns repo id → main's head sha.

    Each repo gets an initial commit (`.gitattributes` + README, as the hub's "create repo" makes)
    and then the upload of its whole tree; extra branches start from main and replace its tree,
    tags point at the head of their branch.
    """
    heads = {}
    for layout in layouts.values():
        hub.create_repo(layout.repo_id, gated=layout.gated, private=layout.private)
        main = layout.folder
        hub.commit(
            layout.repo_id,
            {".gitattributes": main / ".gitattributes", "README.md": b"# initial commit\n"},
            message="initial commit",
        )
        heads[layout.repo_id] = hub.commit_folder(layout.repo_id, main, message="Upload folder")
        for branch, folder in layout.refs.items():
            if branch != "main":
                hub.create_branch(layout.repo_id, branch, revision="main")
                hub.commit_folder(layout.repo_id, folder, branch=branch, message=f"{branch} weights")
        for tag, branch in layout.tags.items():
            hub.create_tag(layout.repo_id, tag, revision=branch)
    return heads


# ---- layout transformations -------------------------------------------------------------------------


def without_safety_checker(src: Path, dst: Path) -> Path:
    """The folder `save_pretrained` writes for the same pipeline built with_safety_checker=False."""
    _copy(src, dst)
    for name in ("safety_checker", "feature_extractor"):
        shutil.rmtree(dst / name, ignore_errors=True)
    index = json.loads((dst / "model_index.json").read_text())
    index["safety_checker"] = [None, None]
    index["feature_extractor"] = [None, None]
    index["requires_safety_checker"] = False
    (dst / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return dst


def to_bin(folder: Path) -> None:
    """Every `*.safetensors` becomes the `.bin` a pre-safetensors `save_pretrained` wrote (zip pickle)."""
    for st in sorted(folder.rglob("*.safetensors")):
        _safetensors_to_bin(st, st.with_name(_bin_name(st.name)))
        st.unlink()


def _bin_name(safetensors_name: str) -> str:
    """`model[.fp16].safetensors` → `pytorch_model[.fp16].bin`; diffusers names keep their stem."""
    stem, _, rest = safetensors_name.partition(".")
    stem = "pytorch_model" if stem == "model" else stem
    return f"{stem}.{rest.removesuffix('safetensors')}bin"


def _safetensors_to_bin(src: Path, dst: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(src), dst)  # torch.save writes the zip format by default


def shard_bin(path: Path, shards: int) -> None:
    """Split a `.bin` into transformers-style shards plus `<name>.index.json` (the legacy layout)."""
    import torch

    state = torch.load(path, weights_only=True)
    keys = list(state)
    per = -(-len(keys) // shards)
    stem = path.name.removesuffix(".bin")
    weight_map = {}
    total = 0
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i * per : (i + 1) * per]}
        torch.save(part, path.with_name(name))
        for k, t in part.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    path.with_name(f"{path.name}.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    path.unlink()


def cast_safetensors_in_place(folder: Path) -> None:
    """Every float tensor of every `*.safetensors` under `folder` to fp16, file names unchanged."""
    for st in sorted(folder.rglob("*.safetensors")):
        _write_fp16(st, st)


def add_fp16_variants(folder: Path) -> None:
    """`X.safetensors` → also `X.fp16.safetensors`, as `save_pretrained(variant="fp16")` names them."""
    for st in sorted(folder.rglob("*.safetensors")):
        if st.parent == folder or ".fp16." in st.name:
            continue
        _write_fp16(st, st.with_name(st.name.replace(".safetensors", ".fp16.safetensors")))


def _write_fp16(src: Path, dst: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(src)
    cast = {k: (t.half() if t.is_floating_point() else t) for k, t in state.items()}
    save_file(cast, dst, metadata={"format": "pt"})
    dst.chmod(0o644)


# ---- SDXL -------------------------------------------------------------------------------------------


def save_sdxl_pipeline(folder: Path, seed: int = 10) -> Path:
    """A tiny StableDiffusionXLPipeline (the shapes of diffusers' own SDXL fast tests, smaller)."""
    import tempfile

    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        # 6 time ids x addition_time_embed_dim + the pooled projection of text_encoder_2
        projection_class_embeddings_input_dim=6 * 8 + TEXT_HIDDEN,
        cross_attention_dim=2 * TEXT_HIDDEN,  # both encoders' hidden states, concatenated
        norm_num_groups=8,
    )
    vae = tiny_vae(seed + 1, (16, 32), 128)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = write_clip_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tmp)
    config = text_encoder_config(
        len(vocab), bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, projection_dim=TEXT_HIDDEN
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(config)
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    components = {
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "unet": unet,
        "scheduler": scheduler,
    }
    pipe = StableDiffusionXLPipeline(**components)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder, safe_serialization=True)  # type: ignore[attr-defined]
    write_clip_tokenizer(folder / "tokenizer")
    write_clip_tokenizer(folder / "tokenizer_2")
    for st in folder.rglob("*.safetensors"):
        st.chmod(0o644)
    return folder


# ---- single-file (original SD layout) checkpoints ---------------------------------------------------

_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def write_original_checkpoint(diffusers_folder: Path, out: Path) -> Path:
    """The pipeline's UNet, VAE and CLIP text encoder as one original-layout checkpoint.

    `.safetensors` → a flat safetensors file; `.ckpt` → `torch.save({"state_dict": ..., "global_step": 0})`
    like the CompVis checkpoints. Keys follow ldm's naming (`model.diffusion_model.`,
    `first_stage_model.`, `cond_stage_model.transformer.`).
    """
    import torch
    from safetensors.torch import load_file, save_file

    def weights(component: str) -> dict[str, Any]:
        folder = diffusers_folder / component
        st = next(iter(sorted(folder.glob("*.safetensors"))), None)
        if st is not None:
            return load_file(st)
        return torch.load(next(iter(sorted(folder.glob("*.bin")))), weights_only=True)

    unet_config = json.loads((diffusers_folder / "unet" / "config.json").read_text())
    vae_config = json.loads((diffusers_folder / "vae" / "config.json").read_text())
    state: dict[str, Any] = {}
    state.update(unet_to_ldm(weights("unet"), unet_config))
    state.update(vae_to_ldm(weights("vae"), vae_config))
    # The CompVis checkpoints hold a transformers CLIPTextModel of their day: keys under `text_model.`
    # (transformers >= 5.6 saves the flattened model without that prefix).
    state.update(
        {f"cond_stage_model.transformer.{_text_model_key(k)}": t for k, t in weights("text_encoder").items()}
    )
    state = {k: t.contiguous() for k, t in sorted(state.items())}
    if out.suffix == ".safetensors":
        save_file(state, out, metadata={"format": "pt"})
        out.chmod(0o644)
    else:
        torch.save({"state_dict": state, "global_step": 0}, out)
    return out


def unet_to_ldm(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of diffusers' `convert_ldm_unet_checkpoint` for any block count / layers_per_block."""
    lpb = config["layers_per_block"]
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    direct = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
    }
    out = {}
    for key, tensor in state.items():
        out[f"model.diffusion_model.{_unet_key(key, lpb, up_has_attn, direct)}"] = tensor
    return out


def _unet_key(key: str, lpb: int, up_has_attn: list[bool], direct: Mapping[str, str]) -> str:
    module, _, param = key.rpartition(".")
    if module in direct:
        return f"{direct[module]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + i * (lpb + 1) + j
        return (
            f"input_blocks.{block}.0.{_resnet(rest)}"
            if kind == "resnets"
            else f"input_blocks.{block}.1.{rest}"
        )
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (lpb + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = i * (lpb + 1) + j
        return (
            f"output_blocks.{block}.0.{_resnet(rest)}"
            if kind == "resnets"
            else f"output_blocks.{block}.1.{rest}"
        )
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        i = int(m[1])
        slot = 2 if up_has_attn[i] else 1
        return f"output_blocks.{i * (lpb + 1) + lpb}.{slot}.conv.{m[2]}"
    raise ValueError(f"no original-layout name for UNet key {key!r}")


def _text_model_key(key: str) -> str:
    return key if key.startswith("text_model.") else f"text_model.{key}"


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET_TO_LDM.get(head, head)}.{tail}"


def vae_to_ldm(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of diffusers' `convert_ldm_vae_checkpoint` (attention projections back to 1x1 convs)."""
    n_up = len(config["up_block_types"])
    direct = {
        "encoder.conv_norm_out": "encoder.norm_out",
        "decoder.conv_norm_out": "decoder.norm_out",
    }
    out = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        new: str
        if module in direct:
            new = f"{direct[module]}.{param}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_vae_resnet(m[3])}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{_vae_resnet(m[3])}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_vae_resnet(m[3])}"
        elif m := re.fullmatch(
            r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key
        ):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN_TO_LDM[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
        elif re.fullmatch(
            r"(encoder|decoder)\.conv_(in|out)\.(weight|bias)|(post_)?quant_conv\.(weight|bias)", key
        ):
            new = key
        else:
            raise ValueError(f"no original-layout name for VAE key {key!r}")
        out[f"first_stage_model.{new}"] = tensor
    return out


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


# ---- small helpers ----------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)


def _noise(n: int, seed: int) -> bytes:
    """Deterministic incompressible bytes standing in for formats we never load (onnx, flax, EMA)."""
    return random.Random(seed).randbytes(n)


def _repo_files(folder: Path, title: str) -> None:
    """What every hub repo carries at its root besides the model."""
    (folder / "README.md").write_text(f"---\nlibrary_name: diffusers\n---\n# {title}\n")
    (folder / ".gitattributes").write_text(
        "".join(f"*{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in (".bin", ".safetensors", ".ckpt"))
    )
