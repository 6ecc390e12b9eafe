"""Benchmark: streaming conversion vs the naive diffusers round trip, on a full-size SD 1.5.

Each variant runs in a fresh process (imports included, as a user would run it), several times;
the table reports medians. Page cache hot: the source is read once before the first run and every
output is deleted (outside the timing) before the next.

  naive       StableDiffusionPipeline.from_pretrained(torch_dtype=fp16) + save_pretrained
  convert     packager.convert.convert (verify + hashing: what `packager convert` does)
  no-verify   the same with verify=False
  floor       read every source weight byte and write half as many (the I/O floor, no torch)

Memory: peak RSS is the kernel's VmHWM; peak anonymous memory is RssAnon sampled every 5 ms
(file-backed pages of memory-mapped checkpoints are page cache, not the process's memory).
"work s" is the time after imports (torch alone takes 1-3 s to import on a small machine); "CPU s" is
user + system time of the whole process, the steadiest figure on a machine shared with others.

  python -m bench.convert [--quick] [--runs N] [--variants convert,no-verify]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

_CHILD_CPU = [0.0]  # children CPU seconds already accounted for
RESULTS = Path(__file__).parent / "results" / "convert.json"
VARIANTS = ("naive", "convert", "no-verify", "floor")
TARGETS = {"convert_wall_s": 4.0, "no_verify_wall_s": 2.5, "peak_anon_mb": 300, "speedup_vs_naive": 3.5}


class _AnonSampler:
    """Peak RssAnon of this process, sampled on a thread (the kernel keeps no high-water mark)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))
            self._stop.wait(self._interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))
        return self.peak_kb


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _weight_files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in (".bin", ".safetensors"))


def _child(variant: str, src: Path, out: Path) -> dict[str, Any]:
    """One variant in this process: imports (timed apart) then the work."""
    sampler = _AnonSampler()
    start = time.perf_counter()
    if variant == "naive":
        import torch
        from diffusers import StableDiffusionPipeline

        imported = time.perf_counter()
        pipe = StableDiffusionPipeline.from_pretrained(src, dtype=torch.float16)
        pipe.save_pretrained(out)
    elif variant in ("convert", "no-verify"):
        import torch  # imported by convert() anyway: timed apart, like the naive path's

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
            settings=ConvertSettings(precision="fp16"),
            source_info={"kind": "path", "path": str(src)},
            verify=variant == "convert",
        )
    elif variant == "floor":
        imported = time.perf_counter()
        out.mkdir(parents=True)
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        for path in _weight_files(src):
            with open(path, "rb", buffering=0) as fh, open(out / path.name, "wb", buffering=0) as dst:
                while n := fh.readinto(buf):
                    dst.write(view[: n // 2])
    else:
        raise SystemExit(f"unknown variant {variant}")
    end = time.perf_counter()
    return {
        "inner_s": end - start,
        "work_s": end - imported,
        "peak_rss_mb": _status_kb("VmHWM") / 1024,
        "peak_anon_mb": sampler.stop() / 1024,
    }


def _run_once(variant: str, src: Path, work: Path) -> dict[str, Any]:
    out = work / f"out-{variant}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.convert", "--child", variant, str(src), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    # communicate() reaped the child; its CPU time is in our children's rusage.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - _CHILD_CPU[0]
    _CHILD_CPU[0] = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["cpu_s"] = cpu
    shutil.rmtree(out, ignore_errors=True)
    os.sync()  # every run starts with no dirty pages left by the one before
    return result


def _warm(src: Path) -> None:
    buf = bytearray(8 << 20)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one run each, naive path skipped")
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant (median reported)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, src, out = args.child
        print(json.dumps(_child(variant, Path(src), Path(out))))
        return 0

    from bench.fullsize import ensure_fullsize_model
    from packager.settings import build_dir

    src = ensure_fullsize_model()
    work = build_dir().resolve() / "bench" / "convert-work"
    work.mkdir(parents=True, exist_ok=True)
    variants = [v for v in args.variants.split(",") if v]
    runs = 1 if args.quick else args.runs
    if args.quick and "naive" in variants and args.variants == ",".join(VARIANTS):
        variants.remove("naive")
    _warm(src)
    os.sync()
    raw: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for i in range(runs):
        for variant in variants:  # interleaved, so drift in machine load hits every variant alike
            raw[variant].append(_run_once(variant, src, work))
            print(f"  run {i + 1}/{runs} {variant}: {raw[variant][-1]['wall_s']:.2f} s", file=sys.stderr)
    table = {
        v: {
            k: statistics.median(r[k] for r in rs)
            for k in ("wall_s", "inner_s", "work_s", "cpu_s", "peak_rss_mb", "peak_anon_mb")
        }
        for v, rs in raw.items()
    }
    summary: dict[str, Any] = {}
    if "convert" in table:
        summary["convert_wall_s"] = table["convert"]["wall_s"]
        summary["peak_anon_mb"] = table["convert"]["peak_anon_mb"]
    if "no-verify" in table:
        summary["no_verify_wall_s"] = table["no-verify"]["wall_s"]
    if "naive" in table and "convert" in table:
        summary["speedup_vs_naive"] = table["naive"]["wall_s"] / table["convert"]["wall_s"]
    result = {
        "bench": "convert",
        "model": str(src.name),
        "source_bytes": sum(p.stat().st_size for p in _weight_files(src)),
        "cpus": os.cpu_count(),
        "runs": runs,
        "medians": table,
        "summary": summary,
        "targets": TARGETS,
        "raw": raw,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    head = ("variant", "wall s", "in-proc s", "work s", "CPU s", "peak RSS MB", "peak anon MB")
    print(f"{head[0]:<10} {head[1]:>8} {head[2]:>10} {head[3]:>7} {head[4]:>7} {head[5]:>12} {head[6]:>13}")
    for v, row in table.items():
        print(
            f"{v:<10} {row['wall_s']:>8.2f} {row['inner_s']:>10.2f} {row['work_s']:>7.2f} "
            f"{row['cpu_s']:>7.2f} {row['peak_rss_mb']:>12.0f} {row['peak_anon_mb']:>13.0f}"
        )
    for key, value in summary.items():
        print(f"{key}: {value:.2f} (target {'≥' if key == 'speedup_vs_naive' else '≤'} {TARGETS[key]})")
    print(f"results: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
