"""Benchmark: converting a Flux-shaped transformer, against the I/O floor.

The source is FluxTransformer2DModel's real block layout (hidden 3072, 24 heads of 128, T5 width
4096, the real embedders and norms) with 2 double-stream and 3 single-stream blocks instead of
19 + 38: 1.16B parameters, 2.32 GB of bf16 safetensors in hub-style 1 GB shards with their index,
random weights. Built once and cached under build/bench/.

  bf16        packager.convert with precision auto (bf16 → bf16, re-packed by shard_size 5GB)
  fp8         precision fp8 (Linear weights → float8_e4m3fn, the rest bf16)
  floor       read every source byte, write as many (no torch): the floor for bf16
  single      the same transformer as one file under BFL's key names (`flux1-dev.safetensors`,
              written once by tests/rig/original_dit.py's inverse of diffusers' mapping) + its config:
              diffusers' single-file mapping run on row stand-ins (packager/convert/row_mapping.py)
  single-eager  the same with the mapping run on the tensors themselves, as diffusers runs it
  floor-half  read every source byte, write half as many: the floor for fp8

Each variant runs in a fresh process, interleaved, medians of --runs; verify and hashing included
(what `packager convert` does). Peak anonymous memory is RssAnon sampled every 5 ms.

  python -m bench.flux [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.convert import (
    convert_folder,
    copy_floor,
    measured,
    parse_or_run_child,
    run_interleaved,
    save_and_print,
    work_dir,
)
from packager.settings import build_dir

NAME = "flux-shaped-2x3-bf16"
LAYOUT_VERSION = "1"
BLOCKS = {"num_layers": 2, "num_single_layers": 3}
SOURCE_SHARD = "1GB"
RESULTS = Path(__file__).parent / "results" / "flux.json"
VARIANTS = ("bf16", "fp8", "floor", "floor-half", "single", "single-eager")
SINGLE_FILE = "flux1-dev.safetensors"
_BLOCK_ELEMS = 64 << 20
# The printed table: (header, width, format of the medians) a column.
COLUMNS = (
    ("wall s", 7, "{wall_s:.2f}"),
    ("work s", 7, "{work_s:.2f}"),
    ("peak anon MB", 13, "{peak_anon_mb:.0f}"),
    ("out GB", 7, "{out_gb:.2f}"),
)


def ensure_flux_model() -> Path:
    """The cached source folder (model_index.json + transformer/ in 1 GB shards), built if missing."""
    root = build_dir().resolve() / "bench" / NAME
    marker = root / ".layout"
    if marker.is_file() and marker.read_text() == LAYOUT_VERSION:
        return root
    shutil.rmtree(root, ignore_errors=True)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _build(tmp / "transformer")
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (tmp / ".layout").write_text(LAYOUT_VERSION)
    tmp.rename(root)
    return root


def ensure_single_file(src: Path) -> Path:
    """The source's transformer as one original-layout file beside a config folder (cached)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from tests.rig.original_dit import flux_original

    root = src.with_name(src.name + "-single")
    if (root / SINGLE_FILE).is_file():
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "transformer").mkdir(parents=True)
    shutil.copy(src / "model_index.json", tmp / "model_index.json")
    shutil.copy(src / "transformer" / "config.json", tmp / "transformer" / "config.json")
    state: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        for path in sorted((src / "transformer").glob("*.safetensors")):
            handle = stack.enter_context(safe_open(str(path), framework="pt"))
            state.update({name: handle.get_tensor(name) for name in handle.keys()})  # noqa: SIM118
        save_file(flux_original(state), str(tmp / SINGLE_FILE), metadata={"format": "pt"})
    tmp.rename(root)
    return root


def _build(folder: Path) -> None:
    """Write the shards tensor by tensor from one random block (memory: one shard)."""
    import torch
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from packager.convert.shards import index_bytes, parse_size, plan_shards

    folder.mkdir(parents=True)
    with torch.device("meta"):
        model: Any = FluxTransformer2DModel(**BLOCKS)
    model.save_config(folder)
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    sizes = {n: 2 * _numel(s) for n, s in shapes.items()}
    gen = torch.Generator().manual_seed(0)
    block = (torch.randn(_BLOCK_ELEMS, generator=gen) * 0.02).to(torch.bfloat16)
    shards = plan_shards("diffusion_pytorch_model.safetensors", sizes, parse_size(SOURCE_SHARD))
    offset = 0
    for shard in shards:
        tensors = {}
        for name in shard.tensors:
            n = _numel(shapes[name])
            start = offset % (_BLOCK_ELEMS - n)
            tensors[name] = block[start : start + n].clone().reshape(shapes[name])
            offset += n
        save_file(tensors, str(folder / shard.name), metadata={"format": "pt"})
        del tensors
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_bytes(index_bytes(shards))


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _child(variant: str, src: Path, out: Path) -> dict[str, Any]:
    shards = sorted((src / "transformer").glob("*.safetensors"))
    if variant in ("bf16", "fp8"):
        result = measured(
            lambda: convert_folder(src, out, "auto" if variant == "bf16" else "fp8", verify=True)
        )
    elif variant in ("single", "single-eager"):
        result = measured(lambda: _convert_single(src, out, eager=variant == "single-eager"))
    elif variant in ("floor", "floor-half"):
        result = measured(lambda: copy_floor(shards, out, half=variant == "floor-half"))
    else:
        raise SystemExit(f"unknown variant {variant}")
    result["out_bytes"] = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    return result


def _convert_single(src: Path, out: Path, *, eager: bool) -> float:
    """Convert the single-file transformer; `eager` maps the tensors themselves, as diffusers does."""
    from packager.convert import row_mapping
    from packager.convert.converter import convert
    from packager.convert.settings import ConvertSettings

    if eager:
        row_mapping.ROW_MAPPINGS = frozenset()
    imported = time.perf_counter()
    convert(
        src,
        ["model_index.json", "transformer/config.json"],
        out,
        name="bench",
        settings=ConvertSettings(precision="auto"),
        source_info={"kind": "file"},
        verify=True,
        checkpoint=src / SINGLE_FILE,
    )
    return imported


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    args, variants = parse_or_run_child(parser, argv, VARIANTS, _child)
    if args is None:
        return 0
    src = ensure_flux_model()
    work = work_dir("flux-work")
    single = ensure_single_file(src) if any(v.startswith("single") for v in variants) else src
    sources = {v: single for v in variants if v.startswith("single")}
    raw = run_interleaved("bench.flux", variants, args.runs, src, work, sources)
    keys = ("wall_s", "inner_s", "work_s", "peak_rss_mb", "peak_anon_mb", "out_bytes")
    table = {v: {k: statistics.median(r[k] for r in rs) for k in keys} for v, rs in raw.items()}
    source_bytes = sum(p.stat().st_size for p in (src / "transformer").glob("*.safetensors"))
    summary: dict[str, Any] = {}
    for variant, floor in (("bf16", "floor"), ("fp8", "floor-half"), ("single", "floor")):
        if variant in table and floor in table:
            summary[f"{variant}_work_over_floor"] = table[variant]["work_s"] / table[floor]["work_s"]
    if "bf16" in table and "fp8" in table:
        summary["fp8_bytes_over_bf16"] = table["fp8"]["out_bytes"] / table["bf16"]["out_bytes"]
    result = {
        "bench": "flux",
        "model": NAME,
        "blocks": BLOCKS,
        "source_bytes": source_bytes,
        "cpus": os.cpu_count(),
        "runs": args.runs,
        "medians": table,
        "summary": summary,
        "raw": raw,
    }
    shown = {v: {**row, "out_gb": row["out_bytes"] / 1e9} for v, row in table.items()}
    save_and_print(RESULTS, result, shown, 11, COLUMNS, [f"{k}: {v:.3f}" for k, v in summary.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
