"""Which of a pipeline's components a single-file checkpoint carries, read from its tensor names.

A checkpoint in the original SD layout (civitai style) carries the UNet, the VAE and the CLIP text
encoders; what FLUX.1 and SD 3.5 ship as `flux1-dev.safetensors` or `sd3.5_large.safetensors`, and
the fp8 files ComfyUI users share, carry the transformer alone (sometimes with the VAE). The config
repo supplies the weights of everything the file lacks, so the lock takes them there: a component
comes from the checkpoint only when its key prefix is in the file. The prefixes are those of the
original layouts, as diffusers' single-file mappings read them (diffusers.loaders.single_file_utils).

A safetensors file is judged by its header alone (no tensor read); a pickled `.ckpt` cannot be read
without loading it, and in practice only ever holds full SD checkpoints, so it counts as carrying
the denoiser, the VAE and the CLIP encoders.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager.errors import FetchError

DENOISERS = ("unet", "transformer")
# Key prefixes of the VAE and the CLIP text encoders in the original single-file layouts (LDM and
# SGM for SD 1.x/2.x/XL, SD3's `text_encoders.clip_l/clip_g`, ComfyUI's `vae.` for FLUX.1 files).
VAE_PREFIXES = ("first_stage_model.", "vae.")
CLIP_PREFIXES = ("cond_stage_model.", "conditioner.embedders.", "text_encoders.clip_")
# Bigger than any real safetensors header (FLUX.1's is ~90 kB): a larger length is a broken file.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class CheckpointParts:
    """The parts a checkpoint carries; called as the config's weight predicate: True for each
    component whose weights the config must bring."""

    vae: bool
    clip: bool

    def __call__(self, component: str, spec: Any) -> bool:
        if component in DENOISERS:
            return False
        if component == "vae":
            return not self.vae
        class_name = str(spec[1]) if isinstance(spec, (list, tuple)) and len(spec) == 2 else ""
        if class_name.startswith("CLIPText"):
            return not self.clip
        return True  # T5 encoders, safety checkers, image encoders: never in these files


def checkpoint_parts(path: Path) -> CheckpointParts:
    """What `path` carries besides the denoiser (see the module docstring)."""
    if not path.name.endswith(".safetensors"):
        return CheckpointParts(vae=True, clip=True)
    names = safetensors_names(path)
    return CheckpointParts(
        vae=any(n.startswith(VAE_PREFIXES) for n in names),
        clip=any(n.startswith(CLIP_PREFIXES) for n in names),
    )


def safetensors_names(path: Path) -> list[str]:
    """The tensor names of a safetensors file, from its header (8-byte length + JSON)."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(f.read(length))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (OSError, ValueError, struct.error) as exc:
        raise FetchError(f"{path.name}: not a readable safetensors file ({exc})") from None
    return [str(name) for name in header if name != "__metadata__"]
