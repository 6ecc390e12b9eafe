"""A full-size SD 1.5-architecture pipeline with random weights, in the fp32 `.bin` layout.

What the benchmarks convert and cold-start: UNet 859.5M params, VAE 83.7M, CLIP ViT-L/14 text
encoder 123.1M (~4.27 GB of fp32 `.bin`), with real configs, an offline tokenizer and a scheduler,
so `DiffusionPipeline.from_pretrained` loads it like the real model. Built once and cached under
build/bench/ (`python -m bench.fullsize` builds it ahead of time).

Building stays fast and small: each checkpoint is first written by `torch.save` under
`torch.serialization.skip_data()` from untouched `torch.empty` tensors (no memory committed), then
memory-mapped shared and filled tensor by tensor from one random block, then the zip CRCs are
patched so the file is a valid zip as `torch.save` would have written it. Peak memory is the random
block (256 MB) whatever the model size.
"""

from __future__ import annotations

import json
import mmap
import shutil
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

from packager.settings import build_dir
from tests.rig.tokenizer import BOS, EOS, write_clip_tokenizer

NAME = "sd15-random-fp32-bin"
# Bumped when the layout changes, so a stale cached copy is rebuilt.
LAYOUT_VERSION = "1"
EXPECTED_PARAMS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
_BLOCK_ELEMS = 64 << 20  # the random block tensors are cut from (256 MB of fp32)
_STD = 0.02

# SD 1.5's own configs (unet, vae, scheduler, the CLIP text encoder's), as its hub repo ships them.
CONFIGS: dict[str, dict[str, Any]] = json.loads((Path(__file__).parent / "sd15_configs.json").read_text())
UNET_CONFIG = CONFIGS["unet"]
VAE_CONFIG = CONFIGS["vae"]
SCHEDULER_CONFIG = CONFIGS["scheduler"]


def fullsize_dir() -> Path:
    return build_dir().resolve() / "bench" / NAME


def ensure_fullsize_model() -> Path:
    """The cached full-size model folder, built on first use (about a minute, 4.3 GB of disk)."""
    target = fullsize_dir()
    stamp = target / ".layout"
    if stamp.is_file() and stamp.read_text().strip() == LAYOUT_VERSION:
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _build(tmp)
    (tmp / ".layout").write_text(LAYOUT_VERSION + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _build(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = write_clip_tokenizer(folder / "tokenizer")
    scheduler: Any = PNDMScheduler(**SCHEDULER_CONFIG)
    scheduler.save_config(folder / "scheduler")
    block = torch.empty(_BLOCK_ELEMS).normal_(0.0, _STD, generator=torch.Generator().manual_seed(1234))

    unet: Any
    vae: Any
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        text_config = CLIPTextConfig(
            **CONFIGS["text_encoder"],
            bos_token_id=vocab[BOS],
            eos_token_id=vocab[EOS],
            pad_token_id=vocab[EOS],
        )
        text_encoder = CLIPTextModel(text_config)
    text_config.architectures = ["CLIPTextModel"]

    for model, name in ((unet, "unet"), (vae, "vae")):
        model.save_config(folder / name)
    text_config.save_pretrained(folder / "text_encoder")
    cursor = 0
    models: tuple[tuple[Any, str], ...] = (
        (unet, "unet/diffusion_pytorch_model.bin"),
        (vae, "vae/diffusion_pytorch_model.bin"),
        (text_encoder, "text_encoder/pytorch_model.bin"),
    )
    for (model, rel), (component, params) in zip(models, EXPECTED_PARAMS.items(), strict=True):
        count = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
        assert count == params, f"{component}: {count} parameters, SD 1.5 has {params}"
        cursor = write_random_bin(folder / rel, model.state_dict(), block, cursor)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)


def write_random_bin(path: Path, shapes: dict[str, Any], block: Any, cursor: int = 0) -> int:
    """torch.save a state dict of `shapes` (tensors, meta is fine) filled from `block`, without
    ever holding it in memory. Returns the block cursor for the next file."""
    import torch

    empty = {name: torch.empty(t.shape, dtype=t.dtype) for name, t in shapes.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.serialization.skip_data():
        torch.save(empty, path)
    del empty
    previous = torch.serialization.get_default_mmap_options()
    torch.serialization.set_default_mmap_options(mmap.MAP_SHARED)
    try:
        loaded = torch.load(path, mmap=True, weights_only=True)
    finally:
        torch.serialization.set_default_mmap_options(previous or mmap.MAP_PRIVATE)
    for name in sorted(loaded):
        tensor = loaded[name]
        flat = tensor.view(-1)
        if not tensor.is_floating_point():
            flat.copy_(torch.arange(flat.numel(), dtype=tensor.dtype))
            continue
        done = 0
        while done < flat.numel():
            take = min(flat.numel() - done, _BLOCK_ELEMS - cursor)
            flat[done : done + take].copy_(block[cursor : cursor + take])
            done += take
            cursor = (cursor + take) % _BLOCK_ELEMS
        cursor = (cursor + 7919) % _BLOCK_ELEMS  # neighbours do not share values
    del loaded
    fix_zip_crcs(path)
    return cursor


def fix_zip_crcs(path: Path) -> None:
    """Write the CRC-32 of every member into its data descriptor and central directory entry
    (skip_data left them computed over the placeholder bytes)."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        start_dir = zf.start_dir
    with open(path, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as mm:
        crcs = {}
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: {info.filename} is compressed; cannot patch")
            name_len, extra_len = struct.unpack_from("<HH", mm, info.header_offset + 26)
            data_start = info.header_offset + 30 + name_len + extra_len
            crc = 0
            for pos in range(data_start, data_start + info.compress_size, 64 << 20):
                end = min(pos + (64 << 20), data_start + info.compress_size)
                crc = zlib.crc32(mm[pos:end], crc)
            crcs[info.filename] = crc
            if info.flag_bits & 0x08:
                desc = data_start + info.compress_size
                if mm[desc : desc + 4] == b"PK\x07\x08":
                    desc += 4
                struct.pack_into("<I", mm, desc, crc)
            else:
                struct.pack_into("<I", mm, info.header_offset + 14, crc)
        pos = start_dir
        while mm[pos : pos + 4] == b"PK\x01\x02":
            name_len, extra_len, comment_len = struct.unpack_from("<HHH", mm, pos + 28)
            name = bytes(mm[pos + 46 : pos + 46 + name_len]).decode()
            struct.pack_into("<I", mm, pos + 16, crcs[name])
            pos += 46 + name_len + extra_len + comment_len
        mm.flush()


def main(argv: list[str]) -> int:
    folder = ensure_fullsize_model()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"{folder}: {size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
