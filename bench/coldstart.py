"""Benchmark: worker cold start, process start → ready and → first response, vs the naive handler.

Every run is a fresh `python` process (interpreter start-up and imports included, as on RunPod);
variants run interleaved, several times each, and the table reports medians.

  worker          python -m worker_runtime --test_input JOB on the packaged artifact (safetensors):
                  trimmed imports, every weight byte's sha256 checked while reading (the defaults)
  worker-noverify the same with WORKER_VERIFY_HASHES=0 (what the hash check costs)
  worker-untrimmed the same with WORKER_TRIM_IMPORTS=0 (what the lazy torch._dynamo buys)
  worker-no-ra    no readahead and no hash check (what readahead buys)
  naive           the RunPod guide's handler: module-level
                  StableDiffusionPipeline.from_pretrained(<original fp32 .bin folder>), then
                  runpod.serverless.start; same device and dtype, same job
  floor           a bare process: import torch, the pipeline class and runpod, then read every weight
                  byte of the artifact: the work no worker can skip, done one after the other
  floor-read      import torch + read the weight bytes
  import-*        one import each in a bare process: torch, the pipeline class, diffusers'
                  DiffusionPipeline (auto-resolution), runpod, runpod with the worker's cpuinfo
                  shortcut, torch + the pipeline class as the worker imports them (trimmed)

ready = the runpod SDK's "--- Starting Serverless Worker" line (model loaded, handler about to
run); first response = the SDK's "completed successfully" line for the job. Both are timestamped
by this process as the lines arrive, from the moment it spawned the child. CPU s is the child's
user + system time for the whole run (to exit): on a shared machine it moves far less than wall time.

On a CPU the worker flushes denormal floats to zero (torch.set_flush_denormal); the naive handler
does not. The benchmark model's random weights produce many denormals, so the first-response gap is
larger on it than on a trained model: compare `ready` for start-up itself.

Cache states: "warm" (weights in the page cache, the second start on a machine) and "cold" (the
weight files evicted with POSIX_FADV_DONTNEED before each run, as after an image pull; Python's own
files stay cached either way).

`--storage volume-sim` measures the load alone from a simulated network volume instead (see
bench/volume_sim.py): the naive mmap load, the worker's parallel loader, and the rig's ceiling.

  python bench/coldstart.py [--tiny] [--runs N] [--device cpu|cuda] [--precision fp16|bf16|fp32]
                            [--cache warm|cold|both] [--storage local|volume-sim]
                            [--until response|ready] [--variants a,b,...]
Results: bench/results/coldstart[-tiny][-cuda-<precision>][-volume-sim].json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import volume_sim  # noqa: E402
from bench.coldstart_report import Run, machine, print_table, summarise, targets  # noqa: E402

RESULTS = REPO / "bench" / "results" / "coldstart.json"
READY_MARK = "--- Starting Serverless Worker"
ANSWER_MARK = "completed successfully"
FLOOR_MARK = "floor done"
BREAKDOWN_RE = re.compile(
    r"worker ready: import (?P<import_s>[\d.]+) s, load (?P<load_s>[\d.]+) s, "
    r"warmup (?P<warmup_s>[\d.]+) s, total (?P<total_s>[\d.]+) s"
)
# Targets from the issue (CPU): ready within a second of the floor and at least twice as fast as the
# naive handler; with the tiny model, the first response within a second of the floor.
RUN_TIMEOUT_S = 900

NAIVE_HANDLER = '''\
"""The handler from RunPod's guide: load at module level with default settings, then serve."""
import base64
import io
import os

import runpod
import torch
from diffusers import StableDiffusionPipeline

DEVICE = os.environ["BENCH_DEVICE"]
DTYPE = getattr(torch, os.environ["BENCH_DTYPE"])
pipe = StableDiffusionPipeline.from_pretrained(os.environ["BENCH_MODEL"], torch_dtype=DTYPE)
pipe = pipe.to(DEVICE)


def handler(job):
    params = job["input"]
    generator = torch.Generator("cpu").manual_seed(params.get("seed", 0))
    image = pipe(
        params["prompt"],
        num_inference_steps=params["num_inference_steps"],
        width=params["width"],
        height=params["height"],
        generator=generator,
    ).images[0]
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"image_base64": base64.b64encode(buf.getvalue()).decode()}


runpod.serverless.start({"handler": handler})
'''

FLOOR_SCRIPT = """\
import os, sys
import torch
{pipeline_import}
{runpod_import}
buf = bytearray(8 << 20)
for path in sys.argv[1:]:
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass
print("floor done", flush=True)
"""


@dataclass(frozen=True)
class Setup:
    name: str
    source: Path  # the model as published (naive handler's input)
    artifact: Path  # the packaged artifact (the worker's MODEL_DIR)
    pipeline: str
    device: str
    precision: str
    job: dict[str, Any]
    handler_path: Path


def _weights(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".bin", ".safetensors"))


def _evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _warm(paths: list[Path]) -> None:
    buf = bytearray(8 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def _child_env(setup: Setup, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RUNPOD_", "BUCKET_", "WORKER_", "MODEL_DIR", "ARTIFACT_URI"))
    }
    env.update(
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO),
        RUNPOD_LOG_LEVEL="INFO",
        # The naive handler points at a local folder; offline keeps a DNS timeout out of its figure.
        HF_HUB_OFFLINE="1",
    )
    env.update(extra)
    return env


def _commands(setup: Setup, variant: str) -> tuple[list[str], dict[str, str], str]:
    """(argv, env, the line that marks the end of the measured work) for one variant."""
    py = sys.executable
    job = json.dumps({"input": setup.job})
    dtype = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[setup.precision]
    if variant.startswith("worker"):
        env = _child_env(setup, MODEL_DIR=str(setup.artifact), WORKER_DEVICE=setup.device)
        env.update(WORKER_SWITCHES[variant])
        return [py, "-m", "worker_runtime", "--test_input", job], env, ANSWER_MARK
    if variant == "naive":
        env = _child_env(setup, BENCH_MODEL=str(setup.source), BENCH_DEVICE=setup.device, BENCH_DTYPE=dtype)
        return [py, str(setup.handler_path), "--test_input", job], env, ANSWER_MARK
    if variant in ("floor", "floor-read"):
        full = variant == "floor"
        script = FLOOR_SCRIPT.format(
            pipeline_import=f"from diffusers import {setup.pipeline}" if full else "",
            runpod_import="import runpod" if full else "",
        )
        return [py, "-c", script, *map(str, _weights(setup.artifact))], _child_env(setup), FLOOR_MARK
    imports = {
        "import-torch": "import torch",
        "import-pipeline": f"from diffusers import {setup.pipeline}",
        "import-auto": "import diffusers; diffusers.DiffusionPipeline",
        "import-runpod": "import runpod",
        "import-runpod-fast": "from worker_runtime import imports; imports.import_runpod()",
        "import-pipeline-trimmed": (
            f"from worker_runtime import imports; imports.import_torch(); "
            f"imports.import_pipeline_class({setup.pipeline!r})"
        ),
    }
    code = imports[variant] + f"; print({FLOOR_MARK!r}, flush=True)"
    return [py, "-c", code], _child_env(setup), FLOOR_MARK


def _note(run: Run, line: str, now: float) -> None:
    """Record the marks and the worker's own timing breakdown a line of output carries."""
    for mark, key in ((READY_MARK, "ready_s"), (ANSWER_MARK, "first_response_s"), (FLOOR_MARK, "done_s")):
        if mark in line:
            run.marks.setdefault(key, now)
    if match := BREAKDOWN_RE.search(line):
        run.breakdown = {k: float(v) for k, v in match.groupdict().items()}


def _run_once(setup: Setup, variant: str, until_ready: bool = False) -> Run:
    """One fresh process of `variant`; `until_ready` stops a handler at its ready line (no job)."""
    argv, env, end_mark = _commands(setup, variant)
    if until_ready and end_mark == ANSWER_MARK:
        end_mark = READY_MARK
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run = Run(wall_s=0.0)
    tails: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def watch(stream: Any, name: str) -> None:
        for line in stream:
            tails[name] = (tails[name] + [line[:300]])[-40:]
            _note(run, line, time.perf_counter() - start)
            if READY_MARK in line and end_mark == READY_MARK:
                proc.terminate()

    threads = [
        threading.Thread(target=watch, args=(proc.stdout, "stdout"), daemon=True),
        threading.Thread(target=watch, args=(proc.stderr, "stderr"), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SystemExit(f"{variant}: no answer within {RUN_TIMEOUT_S}s") from None
    for t in threads:
        t.join()
    run.wall_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # children run one at a time
    run.cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    finished = {ANSWER_MARK: "first_response_s", READY_MARK: "ready_s"}.get(end_mark, "done_s")
    if (proc.returncode != 0 and end_mark != READY_MARK) or finished not in run.marks:
        tail = "".join(tails["stdout"][-15:] + tails["stderr"][-15:])
        raise SystemExit(f"{variant} failed (exit {proc.returncode}):\n{tail}")
    return run


def _prepare(tiny: bool, device: str, precision: str, job: dict[str, Any]) -> Setup:
    from artifact_format import manifest as mf
    from packager.convert.converter import convert
    from packager.convert.settings import ConvertSettings
    from packager.settings import build_dir

    work = build_dir().resolve() / "bench" / "coldstart"
    work.mkdir(parents=True, exist_ok=True)
    if tiny:
        from tests.rig.artifacts import tiny_source

        source = tiny_source(work / "tiny-source")
        name = "tiny"
    else:
        from bench.fullsize import ensure_fullsize_model

        source = ensure_fullsize_model()
        name = "sd15-fullsize"
    artifact = work / f"{name}-{precision}-artifact"
    if not (artifact / mf.MANIFEST_NAME).exists():
        print(f"packaging {source} at {precision} → {artifact}", file=sys.stderr)
        files = sorted(
            p.relative_to(source).as_posix()
            for p in source.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        convert(
            source,
            files,
            artifact,
            name=name,
            settings=ConvertSettings(precision=precision),  # type: ignore[arg-type]
            source_info={"kind": "path", "path": str(source)},
            verify=False,
        )
    handler = work / "naive_handler.py"
    handler.write_text(NAIVE_HANDLER)
    pipeline = mf.load(artifact).pipeline
    return Setup(name, source, artifact, pipeline, device, precision, job, handler)


WORKER_SWITCHES: dict[str, dict[str, str]] = {
    "worker": {},
    "worker-noverify": {"WORKER_VERIFY_HASHES": "0"},
    "worker-untrimmed": {"WORKER_TRIM_IMPORTS": "0"},
    "worker-no-ra": {"WORKER_READAHEAD": "0", "WORKER_VERIFY_HASHES": "0"},
}
VARIANTS = (
    "worker",
    "worker-noverify",
    "worker-untrimmed",
    "worker-no-ra",
    "naive",
    "floor",
    "floor-read",
    "import-torch",
    "import-pipeline",
    "import-auto",
    "import-runpod",
    "import-runpod-fast",
    "import-pipeline-trimmed",
)
# Variants whose figures depend on the page cache; the bare imports are run warm only.
CACHE_SENSITIVE = (*WORKER_SWITCHES, "naive", "floor", "floor-read")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny test model only (quick)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant (medians reported)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--precision",
        choices=("fp16", "bf16", "fp32"),
        default=None,
        help="artifact and naive dtype (default: fp32 on cpu, fp16 on cuda)",
    )
    parser.add_argument("--cache", choices=("warm", "cold", "both"), default="both")
    parser.add_argument("--variants", default=None, help="comma-separated (default: all)")
    parser.add_argument("--storage", choices=("local", "volume-sim"), default="local")
    parser.add_argument(
        "--until",
        choices=("response", "ready"),
        default="response",
        help="stop each handler at its first response (default) or at ready (no job: shorter runs)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="inference steps of the first request (cpu 1, cuda 20)"
    )
    parser.add_argument(
        "--size", type=int, default=None, help="image side of the first request (cpu 64, cuda 512)"
    )
    args = parser.parse_args(argv)

    # A volume artifact is packaged for a GPU (fp16); on a CPU the worker casts it to fp32 as it loads.
    local_default = "fp32" if args.device == "cpu" else "fp16"
    precision = args.precision or (local_default if args.storage == "local" else "fp16")
    # On a CPU the first request is kept minimal: inference is the same work for every variant
    # and would drown the start-up differences being measured.
    size = args.size or (64 if args.device == "cpu" else 512)
    steps = args.steps or (1 if args.device == "cpu" else 20)
    job = {
        "prompt": "a lighthouse at dawn",
        "num_inference_steps": steps,
        "width": size,
        "height": size,
        "seed": 1,
    }
    setup = _prepare(args.tiny, args.device, precision, job)
    known = VARIANTS if args.storage == "local" else volume_sim.VARIANTS
    variants = [v for v in (args.variants or ",".join(known)).split(",") if v]
    unknown = sorted(set(variants) - set(known))
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(unknown)} (known: {', '.join(known)})")
    out = _results_path(args.tiny, args.device, precision, args.storage)
    if args.storage == "volume-sim":
        work = setup.artifact.parent / "volume-sim"
        data = volume_sim.run(setup.artifact, args.device, args.runs, variants, work)
        data.update(bench="coldstart-volume-sim", machine=machine(), model=setup.name, device=args.device)
        data.update(precision=precision, cpus=os.cpu_count(), runs=args.runs)
        out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        print(f"\nresults: {out}")
        return 0
    all_weights = _weights(setup.source) + _weights(setup.artifact)
    caches = ["warm", "cold"] if args.cache == "both" else [args.cache]
    results: dict[str, Any] = {}
    for cache in caches:
        chosen = [v for v in variants if cache == "warm" or v in CACHE_SENSITIVE]
        raw: dict[str, list[Run]] = {v: [] for v in chosen}
        if cache == "warm":
            _warm(all_weights)
        for i in range(args.runs):
            for variant in chosen:  # interleaved: drift in machine load hits every variant alike
                if cache == "cold":
                    _evict(all_weights)
                run = _run_once(setup, variant, args.until == "ready")
                raw[variant].append(run)
                shown = ", ".join(f"{k} {v:.2f}" for k, v in [*run.marks.items(), ("cpu_s", run.cpu_s)])
                print(f"  [{cache}] run {i + 1}/{args.runs} {variant}: {shown}", file=sys.stderr)
        table = {v: summarise(rs) for v, rs in raw.items()}
        goals = targets(table, args.tiny)
        print_table(cache, table, goals)
        results[cache] = {"medians": table, "targets": goals}

    weights_bytes = sum(p.stat().st_size for p in _weights(setup.artifact))
    # The summary `packager plan` reads (see packager/plan.py BENCH_RESULTS): the worker's own
    # import and load split, page cache warm when measured so, else cold.
    basis = results.get("warm") or results.get("cold") or {}
    medians = basis.get("medians", {})
    worker = medians.get("worker", {})
    data = {
        "machine": machine(),
        "weight_bytes": weights_bytes,
        "worker": {"import_s": worker.get("self_import_s"), "load_s": worker.get("self_load_s")},
        "floor": {"read_s": medians.get("floor-read", {}).get("done_s")},
        "bench": "coldstart",
        "model": setup.name,
        "device": args.device,
        "precision": precision,
        "cpus": os.cpu_count(),
        "runs": args.runs,
        "job": job,
        "weights_bytes": weights_bytes,
        "results": results,
    }
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\nresults: {out}")
    return 0


def _results_path(tiny: bool, device: str, precision: str, storage: str) -> Path:
    """coldstart.json for the CPU default (what `packager plan` reads), else a name per setting."""
    name = "coldstart" + ("-tiny" if tiny else "")
    if device != "cpu" or precision != "fp32":
        name += f"-{device}-{precision}"
    if storage != "local":
        name += f"-{storage}"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    return RESULTS.with_name(name + ".json")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
