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
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.convert import _AnonSampler, _status_kb, _warm
from packager.settings import build_dir

NAME = "flux-shaped-2x3-bf16"
LAYOUT_VERSION = "1"
BLOCKS = {"num_layers": 2, "num_single_layers": 3}
SOURCE_SHARD = "1GB"
RESULTS = Path(__file__).parent / "results" / "flux.json"
VARIANTS = ("bf16", "fp8", "floor", "floor-half", "single", "single-eager")
SINGLE_FILE = "flux1-dev.safetensors"
_BLOCK_ELEMS = 64 << 20


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
    sampler = _AnonSampler()
    start = time.perf_counter()
    if variant in ("bf16", "fp8"):
        import torch  # noqa: F401  (imported by convert() anyway: timed apart)

        from packager.convert.converter import convert
        from packager.convert.settings import ConvertSettings

        imported = time.perf_counter()
        files = sorted(
            p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file() and p.name != ".layout"
        )
        convert(
            src,
            files,
            out,
            name="bench",
            settings=ConvertSettings(precision="auto" if variant == "bf16" else "fp8"),
            source_info={"kind": "path", "path": str(src)},
            verify=True,
        )
    elif variant in ("single", "single-eager"):
        from packager.convert import row_mapping
        from packager.convert.converter import convert
        from packager.convert.settings import ConvertSettings

        if variant == "single-eager":
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
    elif variant in ("floor", "floor-half"):
        imported = time.perf_counter()
        out.mkdir(parents=True)
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        for path in sorted((src / "transformer").glob("*.safetensors")):
            with open(path, "rb", buffering=0) as fh, open(out / path.name, "wb", buffering=0) as dst:
                while n := fh.readinto(buf):
                    dst.write(view[: n // 2] if variant == "floor-half" else view[:n])
    else:
        raise SystemExit(f"unknown variant {variant}")
    end = time.perf_counter()
    return {
        "inner_s": end - start,
        "work_s": end - imported,
        "peak_rss_mb": _status_kb("VmHWM") / 1024,
        "peak_anon_mb": sampler.stop() / 1024,
        "out_bytes": sum(p.stat().st_size for p in out.rglob("*.safetensors")),
    }


def _run_once(variant: str, src: Path, work: Path) -> dict[str, Any]:
    out = work / f"out-{variant}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.flux", "--child", variant, str(src), str(out)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, src, out = args.child
        print(json.dumps(_child(variant, Path(src), Path(out))))
        return 0
    src = ensure_flux_model()
    work = build_dir().resolve() / "bench" / "flux-work"
    work.mkdir(parents=True, exist_ok=True)
    variants = [v for v in args.variants.split(",") if v]
    _warm(src)
    os.sync()
    raw: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    single = ensure_single_file(src) if any(v.startswith("single") for v in variants) else src
    for i in range(args.runs):
        for variant in variants:
            raw[variant].append(_run_once(variant, single if variant.startswith("single") else src, work))
            print(f"  run {i + 1}/{args.runs} {variant}: {raw[variant][-1]['wall_s']:.2f} s", file=sys.stderr)
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"{'variant':<11} {'wall s':>7} {'work s':>7} {'peak anon MB':>13} {'out GB':>7}")
    for v, row in table.items():
        print(
            f"{v:<11} {row['wall_s']:>7.2f} {row['work_s']:>7.2f} {row['peak_anon_mb']:>13.0f} "
            f"{row['out_bytes'] / 1e9:>7.2f}"
        )
    for key, value in summary.items():
        print(f"{key}: {value:.3f}")
    print(f"results: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
