"""The three placements side by side for the shipped recipes, as `packager plan` figures them.

The real artifacts are several GB each and cannot be downloaded on the development machine, so
each recipe's artifact is described by its components' parameter counts (the published model
cards' figures) × the recipe's precision; everything else is `packager plan`'s own arithmetic:
the declared base image, the assumed pull, disk and hub rates, and the import/load times of
bench/results/coldstart.json. Prints a markdown table (and --json).

    python -m bench.plan_modes [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from artifact_format.manifest import FileEntry, Manifest
from packager.deploy import plan as planning
from packager.source.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
M = 1_000_000
# Parameters per component (millions), from the models' cards and configs.
SD15 = {"unet": 859.52, "vae": 83.65, "text_encoder": 123.06}
SD21 = {"unet": 865.91, "vae": 83.65, "text_encoder": 340.39}
SDXL = {"unet": 2567.46, "vae": 83.65, "text_encoder": 123.06, "text_encoder_2": 694.66}
ARCHITECTURES = {
    "portraitplus": SD15,
    "anything-v3": SD15,
    "sd-2-1-base": SD21,
    "sdxl-base": SDXL,
}
BYTES_PER_PARAM = {"fp16": 2, "bf16": 2, "fp32": 4}


def described_manifest(name: str, precision: str, components: dict[str, float]) -> Manifest:
    files = tuple(
        FileEntry(
            f"{component}/diffusion_pytorch_model.safetensors",
            int(params * M) * BYTES_PER_PARAM[precision],
            "0" * 64,
            tensors=1,
            dtype=precision,
        )
        for component, params in components.items()
    )
    return Manifest(name, {"kind": "hub"}, precision, "StableDiffusionPipeline", files)


def plan_recipe(path: Path) -> dict[str, Any]:
    loaded = load_recipe(path)
    recipe = loaded.recipe
    manifest = described_manifest(recipe.name, recipe.precision, ARCHITECTURES[recipe.name])
    modes = planning.plan_modes(loaded, manifest, "0" * 64, base_bytes=planning.DEFAULT_BASE_BYTES)
    cached = modes["cached"]
    return {
        "recipe": recipe.name,
        "weights_bytes": cached.weights_bytes,
        "baked": modes["baked"].cold_start_s,
        "volume": modes["volume"].cold_start_s,
        "cached_hit": cached.cold_start_s,
        "cached_miss": cached.cold_start_miss_s,
        "timings": cached.timings.source,
    }


def _span(span: tuple[float, float]) -> str:
    lo, hi = span
    return f"{lo:.0f} s" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [plan_recipe(RECIPES / f"{name}.yaml") for name in ARCHITECTURES]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| recipe | weights | baked | volume | cached, hit | cached, miss |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [_span(r[k]) for k in ("baked", "volume", "cached_hit", "cached_miss")]
        print(f"| {r['recipe']} | {r['weights_bytes'] / 1e9:.2f} GB | " + " | ".join(cells) + " |")
    print(f"\ntimings: {rows[0]['timings']}")


if __name__ == "__main__":
    main()
