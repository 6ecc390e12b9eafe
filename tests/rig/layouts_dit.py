"""Fixture hub repos for the transformer pipelines, in the layouts their real repos have.

Built from the tiny pipelines of tests/rig/models_dit.py (one build each) and registered with the
other layouts in tests/rig/layouts.py:

| repo                      | layout                                                                 |
|---------------------------|------------------------------------------------------------------------|
| tiny/flux-dev             | gated; diffusers folders (T5 and transformer in shards) plus the root  |
|                           | single files `flux1-dev.safetensors`, `ae.safetensors`, a sample grid  |
| tiny/flux-schnell         | the same for schnell (`guidance_embeds: false`), not gated             |
| tiny/sd3.5-medium         | gated; `text_encoder_3` (T5) in shards, plus the root single file and  |
|                           | the `text_encoders/` folder of ComfyUI files the real repo carries     |
| tiny/pixart-sigma         | diffusers folders, T5 in shards                                        |
| tiny/wan2.1-t2v-1.3b      | diffusers folders, UMT5 in shards, an `assets/` folder of sample media |
| tiny/ltx-video            | diffusers folders, T5 in shards, root single-file checkpoints, media/  |

The root single files and sample media are deterministic noise of realistic names and sizes larger
than the diffusers weights: they are never loaded, and a fetch that took one would show in the
hub's byte counters at once.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.rig.models_dit import save_pipeline

FLUX_DEV = "tiny/flux-dev"
FLUX_SCHNELL = "tiny/flux-schnell"
SD35_MEDIUM = "tiny/sd3.5-medium"
PIXART_SIGMA = "tiny/pixart-sigma"
WAN_T2V = "tiny/wan2.1-t2v-1.3b"
LTX_VIDEO = "tiny/ltx-video"


@dataclass(frozen=True)
class DitRepo:
    repo_id: str
    pipeline: str  # a key of models_dit.PIPELINES
    extras: dict[str, int]  # repo path → size of the noise file standing in for it
    gated: bool = False
    about: str = ""


DIT_REPOS = (
    DitRepo(
        FLUX_DEV,
        "flux-dev",
        {"flux1-dev.safetensors": 1_500_000, "ae.safetensors": 400_000, "dev_grid.jpg": 90_000},
        gated=True,
        about="FLUX.1-dev: diffusers folders plus root single files; gated",
    ),
    DitRepo(
        FLUX_SCHNELL,
        "flux-schnell",
        {"flux1-schnell.safetensors": 1_500_000, "ae.safetensors": 400_000, "schnell_grid.jpeg": 90_000},
        about="FLUX.1-schnell: diffusers folders plus root single files",
    ),
    DitRepo(
        SD35_MEDIUM,
        "sd3",
        {
            "sd3.5_medium.safetensors": 1_200_000,
            "text_encoders/clip_g.safetensors": 300_000,
            "text_encoders/clip_l.safetensors": 200_000,
            "text_encoders/t5xxl_fp16.safetensors": 600_000,
            "text_encoders/t5xxl_fp8_e4m3fn.safetensors": 300_000,
            "mmdit.png": 60_000,
        },
        gated=True,
        about="SD 3.5 medium: T5 in shards, root single file, text_encoders/; gated",
    ),
    DitRepo(PIXART_SIGMA, "pixart-sigma", {"asset/logo.png": 30_000}, about="PixArt-Σ: T5 in shards"),
    DitRepo(
        WAN_T2V,
        "wan",
        {"assets/t2v_res.jpg": 80_000, "examples/i2v_input.JPG": 80_000},
        about="Wan 2.1 T2V 1.3B: UMT5 in shards, sample media",
    ),
    DitRepo(
        LTX_VIDEO,
        "ltx",
        {
            "ltx-video-2b-v0.9.safetensors": 1_000_000,
            "ltx-video-2b-v0.9.1.safetensors": 1_000_000,
            "media/trailer.gif": 120_000,
        },
        about="LTX-Video: diffusers folders plus root single-file checkpoints",
    ),
)


def build_dit_layouts(root: Path, d: Callable[[str], Path], repo_files: Callable[[Path, str], None]) -> None:
    """Write every repo of DIT_REPOS under `d(repo_id)`; `repo_files` adds README/.gitattributes."""
    work = root / "_work-dit"
    built: dict[str, Path] = {}
    for seed, repo in enumerate(DIT_REPOS):
        if repo.pipeline not in built:
            built[repo.pipeline] = save_pipeline(repo.pipeline, work / repo.pipeline)
        folder = d(repo.repo_id)
        shutil.copytree(built[repo.pipeline], folder)
        for rel, size in repo.extras.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(random.Random(f"{repo.repo_id}/{rel}/{seed}").randbytes(size))
        repo_files(folder, f"Tiny {repo.about}.")
    shutil.rmtree(work)
