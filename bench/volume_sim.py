"""Benchmark: loading the weights from a simulated network volume (`bench/coldstart.py --storage
volume-sim`).

The packaged artifact is served by the slow FUSE volume of tests/rig/slowfs.py (defaults: 2 ms per
open and per 4 MiB extent, 100 MB/s a file handle, 400 MB/s in all: RunPod's documented range),
mounted afresh before every run so that each run starts with a cold page cache. Each run is a fresh
process that imports first (not timed), then times the load alone, in the artifact's precision on
every device (the figure is about moving bytes, not casting them), up to every page of every
tensor having been touched:

  naive-mmap       the naive handler's load: StableDiffusionPipeline.from_pretrained(<volume>)
                   (safetensors memory maps: the bytes arrive through page faults)
  worker-mmap      the worker's own loader forced onto memory maps (WORKER_LOADER=mmap)
  worker           the worker as it starts on a network filesystem: parallel 32 MiB reads into
                   memory with every byte's sha256 checked, models built on those buffers
  worker-noverify  the same without the hash check
  ceiling          the rig's own ceiling: plain `dd`s of 256 MiB ranges of the weight files,
                   8 at a time (the worker's reader uses 8 streams too)

The page cache of the files under test is dropped by the remount; Python's own files stay cached.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("naive-mmap", "worker-mmap", "worker", "worker-noverify", "ceiling")
TARGET_VS_NAIVE = 3.0
TARGET_VS_CEILING = 1.3
CEILING_STREAMS = 8  # as many streams as the worker's reader uses
CEILING_BLOCKS = 16  # 16 MiB blocks: 256 MiB a dd

LOAD_SCRIPT = r"""
import sys, time
from pathlib import Path
from worker_runtime import imports, load, readahead, storage
from artifact_format import manifest as mf
variant, model, device = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
manifest = mf.load(model)
torch = imports.import_torch()
cls = imports.import_pipeline_class(manifest.pipeline)
# The artifact's own precision on every device: the figure is about moving bytes, not casting them.
load.precision_for = lambda manifest, device: manifest.precision
dtype = getattr(torch, load.PRECISION_NAMES[manifest.precision])
start = time.perf_counter()
if variant == "naive-mmap":
    pipe = cls.from_pretrained(str(model), torch_dtype=dtype).to(device)
else:
    reader = None
    if variant != "worker-mmap":
        assert storage.choose(model) == "parallel", storage.fs_name(model)
        files = {model / f.path: f.sha256 for f in manifest.weight_files}
        reader = readahead.start(sorted(files), files if variant == "worker" else None, keep=True)
        reader.check()
    pipe = load.load_pipeline(cls, torch, model, manifest, device, reader).pipe
# One element of every page of every tensor: weights still behind a memory map are read now.
for part in pipe.components.values():
    if isinstance(part, torch.nn.Module):
        for t in [*part.parameters(), *part.buffers()]:
            if t.numel():
                t.detach().reshape(-1)[:: max(1, 4096 // t.element_size())].float().sum().item()
if device.startswith("cuda"):
    torch.cuda.synchronize()
print(f"load_s {time.perf_counter() - start:.4f}", flush=True)
"""


def _ceiling(model: Path, weights: list[Path]) -> float:
    """Plain `dd`s of 256 MiB ranges of every weight file, CEILING_STREAMS at a time."""
    ranges = [
        (path, skip)
        for path in weights
        for skip in range(0, -(-path.stat().st_size // (16 << 20)), CEILING_BLOCKS)
    ]
    start = time.perf_counter()
    running: list[subprocess.Popen[bytes]] = []
    for path, skip in ranges:
        if len(running) >= CEILING_STREAMS and running.pop(0).wait() != 0:
            raise SystemExit(f"dd of {model} failed")
        running.append(
            subprocess.Popen(
                ["dd", f"if={path}", "of=/dev/null", "bs=16M", f"skip={skip}", f"count={CEILING_BLOCKS}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    if any(proc.wait() != 0 for proc in running):
        raise SystemExit(f"dd of {model} failed")
    return time.perf_counter() - start


def _load(variant: str, model: Path, device: str) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, variant, str(model), device],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
        timeout=1800,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("load_s ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{variant} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return float(lines[0].split()[1])


def run(artifact: Path, device: str, runs: int, variants: list[str], work: Path) -> dict[str, Any]:
    """Medians of `runs` cold loads per variant from a fresh slow-volume mount each time."""
    from tests.rig.slowfs import Limits, mounted

    limits = Limits()
    rel = [p.relative_to(artifact) for p in sorted(artifact.rglob("*.safetensors"))]
    total = sum((artifact / r).stat().st_size for r in rel)
    raw: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(runs):
        for variant in variants:  # interleaved: drift in machine load hits every variant alike
            with mounted(artifact, work / "volume", limits) as mount:
                if variant == "ceiling":
                    seconds = _ceiling(mount, [mount / r for r in rel])
                else:
                    seconds = _load(variant, mount, device)
            raw[variant].append(seconds)
            print(f"  [volume-sim] run {i + 1}/{runs} {variant}: {seconds:.2f} s", file=sys.stderr)
    table: dict[str, dict[str, Any]] = {}
    for v, xs in raw.items():
        median = statistics.median(xs)
        table[v] = {"load_s": median, "load_s_all": [round(x, 3) for x in xs], "MB_s": total / 1e6 / median}
    targets: dict[str, Any] = {}
    if "worker" in table and "naive-mmap" in table:
        targets["speedup_vs_naive_mmap"] = table["naive-mmap"]["load_s"] / table["worker"]["load_s"]
        targets["met_3x_naive"] = targets["speedup_vs_naive_mmap"] >= TARGET_VS_NAIVE
    if "worker" in table and "ceiling" in table:
        targets["worker_over_ceiling"] = table["worker"]["load_s"] / table["ceiling"]["load_s"]
        targets["met_within_1_3x_ceiling"] = targets["worker_over_ceiling"] <= TARGET_VS_CEILING
    print(f"\nvolume-sim ({limits}), {total / 1e6:.0f} MB of weights, device {device}")
    for variant, row in table.items():
        print(f"{variant:<16} load {row['load_s']:7.2f} s  {row['MB_s']:6.0f} MB/s")
    for key, value in targets.items():
        print(f"  {key}: {value:.2f}" if isinstance(value, float) else f"  {key}: {value}")
    return {"limits": vars(limits), "weight_bytes": total, "medians": table, "targets": targets}
