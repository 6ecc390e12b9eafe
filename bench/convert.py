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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_CHILD_CPU = [0.0]  # children CPU seconds already accounted for
RESULTS = Path(__file__).parent / "results" / "convert.json"
VARIANTS = ("naive", "convert", "no-verify", "floor")
TARGETS = {"convert_wall_s": 4.0, "no_verify_wall_s": 2.5, "peak_anon_mb": 300, "speedup_vs_naive": 3.5}

# The printed table: (header, width, format of the medians) a column.
COLUMNS = (
    ("wall s", 8, "{wall_s:.2f}"),
    ("in-proc s", 10, "{inner_s:.2f}"),
    ("work s", 7, "{work_s:.2f}"),
    ("CPU s", 7, "{cpu_s:.2f}"),
    ("peak RSS MB", 12, "{peak_rss_mb:.0f}"),
    ("peak anon MB", 13, "{peak_anon_mb:.0f}"),
)


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


def measured(work: Callable[[], float]) -> dict[str, Any]:
    """Run `work` (it returns when its imports were done) and report its times and memory peaks."""
    sampler = _AnonSampler()
    start = time.perf_counter()
    imported = work()
    end = time.perf_counter()
    return {
        "inner_s": end - start,
        "work_s": end - imported,
        "peak_rss_mb": _status_kb("VmHWM") / 1024,
        "peak_anon_mb": sampler.stop() / 1024,
    }


def convert_folder(src: Path, out: Path, precision: str, *, verify: bool) -> float:
    """What `packager convert` does to the folder `src`; returns when its imports were done."""
    import torch  # noqa: F401  (imported by convert() anyway: timed apart, like the naive path's)

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
        settings=ConvertSettings(precision=precision),
        source_info={"kind": "path", "path": str(src)},
        verify=verify,
    )
    return imported


def copy_floor(paths: list[Path], out: Path, *, half: bool) -> float:
    """Read every byte of `paths` and write as many (or half as many): the I/O floor, no torch."""
    imported = time.perf_counter()
    out.mkdir(parents=True)
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    for path in paths:
        with open(path, "rb", buffering=0) as fh, open(out / path.name, "wb", buffering=0) as dst:
            while n := fh.readinto(buf):
                dst.write(view[: n // 2] if half else view[:n])
    return imported


def _child(variant: str, src: Path, out: Path) -> dict[str, Any]:
    """One variant in this process: imports (timed apart) then the work."""
    if variant == "naive":
        return measured(lambda: _naive(src, out))
    if variant in ("convert", "no-verify"):
        return measured(lambda: convert_folder(src, out, "fp16", verify=variant == "convert"))
    if variant == "floor":
        return measured(lambda: copy_floor(_weight_files(src), out, half=True))
    raise SystemExit(f"unknown variant {variant}")


def _naive(src: Path, out: Path) -> float:
    import torch
    from diffusers import StableDiffusionPipeline

    imported = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(src, dtype=torch.float16)
    pipe.save_pretrained(out)
    return imported


def parse_or_run_child(
    parser: argparse.ArgumentParser,
    argv: list[str],
    variants: tuple[str, ...],
    child: Callable[[str, Path, Path], dict[str, Any]],
) -> tuple[argparse.Namespace | None, list[str]]:
    """Parse `argv` with --variants (and the hidden --child); a child run prints its JSON and gives None."""
    parser.add_argument("--variants", default=",".join(variants))
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, src, out = args.child
        print(json.dumps(child(variant, Path(src), Path(out))))
        return None, []
    return args, [v for v in args.variants.split(",") if v]


def save_and_print(
    path: Path,
    result: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    name_width: int,
    columns: tuple[tuple[str, int, str], ...],
    notes: list[str],
) -> None:
    """Write `result` to `path`; print `rows` (one a variant, a column: header, width, format), `notes`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(" ".join([f"{'variant':<{name_width}}", *(f"{head:>{width}}" for head, width, _ in columns)]))
    for variant, row in rows.items():
        cells = (f"{fmt.format(**row):>{width}}" for _, width, fmt in columns)
        print(" ".join([f"{variant:<{name_width}}", *cells]))
    for note in notes:
        print(note)
    print(f"results: {path}")


def work_dir(name: str) -> Path:
    """A scratch folder for the benchmark's outputs, under build/bench/."""
    from packager.settings import build_dir

    work = build_dir().resolve() / "bench" / name
    work.mkdir(parents=True, exist_ok=True)
    return work


def run_interleaved(
    module: str,
    variants: list[str],
    runs: int,
    src: Path,
    work: Path,
    sources: Mapping[str, Path] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every variant `runs` times, each in a fresh `python -m module --child` process, page cache hot.

    A variant reads `src`, or its own folder in `sources`.
    """
    _warm(src)
    os.sync()
    raw: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for i in range(runs):
        for variant in variants:  # interleaved, so drift in machine load hits every variant alike
            own = (sources or {}).get(variant, src)
            raw[variant].append(_run_once(module, variant, own, work))
            print(f"  run {i + 1}/{runs} {variant}: {raw[variant][-1]['wall_s']:.2f} s", file=sys.stderr)
    return raw


def _run_once(module: str, variant: str, src: Path, work: Path) -> dict[str, Any]:
    out = work / f"out-{variant}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--child", variant, str(src), str(out)],
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
    args, variants = parse_or_run_child(parser, argv, VARIANTS, _child)
    if args is None:
        return 0

    from bench.fullsize import ensure_fullsize_model

    src = ensure_fullsize_model()
    work = work_dir("convert-work")
    runs = 1 if args.quick else args.runs
    if args.quick and "naive" in variants and args.variants == ",".join(VARIANTS):
        variants.remove("naive")
    raw = run_interleaved("bench.convert", variants, runs, src, work)
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
    notes = [
        f"{key}: {value:.2f} (target {'≥' if key == 'speedup_vs_naive' else '≤'} {TARGETS[key]})"
        for key, value in summary.items()
    ]
    save_and_print(RESULTS, result, table, 10, COLUMNS, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
