"""Plan: what a cold start of each mode costs in seconds, from bytes we can measure.

A cold worker pulls its image, imports the worker's libraries, reads the weights and builds the
pipeline. The bytes come from the artifact's manifest and, when the image was built here, from the
local Docker engine's layer sizes; the import and load times from the worker benchmark on this
machine (`bench/results/coldstart.json`). Rates nobody here can measure (registry bandwidth, local
disk, RunPod's network volume) are named constants or options, and every figure says where it came
from, so an estimate is never mistaken for a measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifact_format import manifest as mf
from artifact_format.vocab import OWN_LAYER_BYTES, Mode
from packager.image import naming
from packager.source.recipe import LoadedRecipe

MODES: tuple[Mode, ...] = ("baked", "volume", "cached")

MB = 1_000_000
# Registry → host pull rate. RunPod publishes none; 1 Gbit/s is a round assumption: measure
# yours (`docker pull` time of a known image) and pass --bandwidth-mbps.
DEFAULT_BANDWIDTH_MBPS = 1000.0
# RunPod's documented read throughput of a network volume: 200–400 MB/s.
VOLUME_READ_MBS = (200.0, 400.0)
# Reading weights from the host's local disk (assumed NVMe-class): weights baked into the image, and
# RunPod's cached models, which sit on local disk although they appear under /runpod-volume.
LOCAL_DISK_MBS = 1000.0
# Hub → host rate when a cached model is not on the host yet and RunPod downloads it before the
# worker starts. RunPod publishes none; 1 Gbit/s is a round assumption (--hub-bandwidth-mbps).
DEFAULT_HUB_BANDWIDTH_MBPS = 1000.0
# Declared, not measured: a CUDA PyTorch runtime base (pytorch/pytorch:*-cuda12.8-cudnn9-runtime is
# about 3 GB compressed on Docker Hub) plus the worker's Python packages. Used only when no local
# image or base image can be measured; --base-image-bytes replaces it.
DEFAULT_BASE_BYTES = 3_500_000_000
# When no benchmark results exist: the unavoidable imports (torch, the pipeline class, runpod)
# measured in bare processes were about 5 s together on the 2-core dev machine; pipeline
# construction from local safetensors is assumed at 1.5 s per GB of weights.
FALLBACK_IMPORT_S = 5.0
FALLBACK_LOAD_S_PER_GB = 1.5

# The keys read from bench/results/coldstart.json (the worker benchmark writes them):
#   machine: str             where it ran, printed as "measured on <machine> (<device>)"
#   device: str              "cpu" or "cuda"
#   weight_bytes: int        bytes of weights the benchmarked worker loaded
#   worker.import_s: float   median, process start → imports done
#   worker.load_s: float     median, imports done → pipeline ready (weights read included)
#   floor.read_s: float      optional median, bare read of those weight bytes
BENCH_RESULTS = Path("bench/results/coldstart.json")


@dataclass(frozen=True)
class Layer:
    size: int
    what: str


@dataclass(frozen=True)
class ImageSize:
    tag: str
    layers: tuple[Layer, ...]
    measured: bool
    source: str

    @property
    def total(self) -> int:
        return sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class Timings:
    """Import and pipeline-load seconds for THIS artifact, with where they came from."""

    import_s: float
    construct_s: float
    source: str
    measured: bool


@dataclass(frozen=True)
class ModePlan:
    mode: Mode
    image: ImageSize
    pull_s: float
    weights_bytes: int
    weights_from: str
    read_s: tuple[float, float]
    timings: Timings
    # Cached mode on a host without the model: the repo's bytes and RunPod's download of them.
    miss_bytes: int = 0
    miss_download_s: float = 0.0

    @property
    def cold_start_s(self) -> tuple[float, float]:
        fixed = self.pull_s + self.timings.import_s + self.timings.construct_s
        return (fixed + self.read_s[0], fixed + self.read_s[1])

    @property
    def cold_start_miss_s(self) -> tuple[float, float]:
        lo, hi = self.cold_start_s
        return (lo + self.miss_download_s, hi + self.miss_download_s)

    def to_json(self) -> dict[str, Any]:
        miss = {}
        if self.mode == "cached":
            miss = {
                "miss": {
                    "download_bytes": self.miss_bytes,
                    "download_s": self.miss_download_s,
                    "cold_start_s": list(self.cold_start_miss_s),
                }
            }
        return {
            "image": {
                "tag": self.image.tag,
                "bytes": self.image.total,
                "measured": self.image.measured,
                "source": self.image.source,
                "layers": [{"bytes": layer.size, "what": layer.what} for layer in self.image.layers],
            },
            "pull_s": self.pull_s,
            "weights_bytes": self.weights_bytes,
            "weights_from": self.weights_from,
            "read_s": list(self.read_s),
            "import_s": self.timings.import_s,
            "load_s": self.timings.construct_s,
            "cold_start_s": list(self.cold_start_s),
            **miss,
        }


def plan_modes(
    loaded: LoadedRecipe,
    manifest: mf.Manifest,
    artifact_id: str,
    *,
    bandwidth_mbps: float = DEFAULT_BANDWIDTH_MBPS,
    base_bytes: int | None = None,
    bench_results: Path | None = BENCH_RESULTS,
    hub_bandwidth_mbps: float = DEFAULT_HUB_BANDWIDTH_MBPS,
) -> dict[Mode, ModePlan]:
    """The cold-start estimate of every mode for one artifact (cached: a hit, and a miss)."""
    weights = sum(f.size for f in manifest.weight_files)
    timings = timings_for(weights, bench_results)
    pull_rate = bandwidth_mbps * MB / 8
    plans: dict[Mode, ModePlan] = {}
    base: tuple[int, str] | None = None
    for mode in MODES:
        tag = naming.image_tag(loaded.recipe.image.repository, loaded.recipe.name, artifact_id, mode)
        image = measure_image(tag)
        if image is None:
            base = base or _base(loaded, base_bytes)
            image = estimate_image(tag, manifest, mode, base)
        read = weights / (LOCAL_DISK_MBS * MB)
        miss_bytes, miss_s = 0, 0.0
        if mode == "baked":
            read_s, where = (read, read), f"in the image (container disk, {LOCAL_DISK_MBS:g} MB/s assumed)"
        elif mode == "cached":
            read_s, where = (
                (read, read),
                f"in RunPod's model cache (local disk, {LOCAL_DISK_MBS:g} MB/s assumed)",
            )
            miss_bytes = repo_bytes(manifest)
            miss_s = miss_bytes / (hub_bandwidth_mbps * MB / 8)
        else:
            lo, hi = VOLUME_READ_MBS
            read_s = (weights / (hi * MB), weights / (lo * MB))
            where = f"on the network volume ({lo:g}–{hi:g} MB/s, RunPod's documented range)"
        plans[mode] = ModePlan(
            mode, image, image.total / pull_rate, weights, where, read_s, timings, miss_bytes, miss_s
        )
    return plans


def repo_bytes(manifest: mf.Manifest) -> int:
    """What RunPod downloads on a cache miss: the published commit, i.e. the artifact's files."""
    return manifest.total_bytes + len(manifest.to_bytes())


def cold_start_summary(
    loaded: LoadedRecipe,
    manifest: mf.Manifest,
    *,
    image_size: int | None,
    mode: Mode,
    bench_results: Path | None = BENCH_RESULTS,
) -> dict[str, Any]:
    """The planned cold start of one mode, for `packager package`'s summary: seconds, and the basis.

    Cheap on purpose (no Docker engine probe): the image size is the one the build just measured,
    or the template estimate on the declared base. Volume mode takes the slow end of RunPod's
    volume range, so the figure is an upper bound.
    """
    weights = sum(f.size for f in manifest.weight_files)
    timings = timings_for(weights, bench_results)
    if image_size is not None:
        pull_bytes, image_basis = image_size, "measured"
    else:
        tag = naming.image_tag(loaded.recipe.image.repository, loaded.recipe.name, "0" * 64, mode)
        pull_bytes = estimate_image(tag, manifest, mode, (DEFAULT_BASE_BYTES, "declared default")).total
        image_basis = "estimate"
    rate = VOLUME_READ_MBS[0] if mode == "volume" else LOCAL_DISK_MBS  # cached: a cache hit
    pull_s = pull_bytes / (DEFAULT_BANDWIDTH_MBPS * MB / 8)
    read_s = weights / (rate * MB)
    total = pull_s + read_s + timings.import_s + timings.construct_s
    return {
        "total_s": round(total, 1),
        "pull_s": round(pull_s, 1),
        "weights_read_s": round(read_s, 2),
        "import_s": round(timings.import_s, 2),
        "load_s": round(timings.construct_s, 2),
        "basis": (
            f"image {pull_bytes / 1e9:.2f} GB ({image_basis}) at {DEFAULT_BANDWIDTH_MBPS:g} Mbit/s; "
            f"weights at {rate:g} MB/s; timings {timings.source}; `packager plan` for detail"
        ),
    }


def timings_for(weight_bytes: int, bench_results: Path | None) -> Timings:
    """Import + load for an artifact of `weight_bytes`, from the benchmark when it ran here.

    The benchmark loads its own (full-size) artifact, so the load is scaled by weight bytes; the
    bare read of the weights it measured is taken out, since each mode reads at its own rate.
    """
    try:
        bench = _read_bench(bench_results)
        why = f"no {bench_results}: run `make bench`"
    except ValueError as exc:
        bench, why = None, f"{bench_results} unusable: {exc}"
    if bench is None:
        return Timings(
            import_s=FALLBACK_IMPORT_S,
            construct_s=FALLBACK_LOAD_S_PER_GB * weight_bytes / 1e9,
            source=f"assumed constants ({why})",
            measured=False,
        )
    load = max(0.0, bench.load_s - (bench.read_s or 0.0))
    scale = weight_bytes / bench.weight_bytes
    return Timings(
        import_s=bench.import_s,
        construct_s=load * scale,
        source=f"measured on {bench.machine} ({bench.device.upper()}), load scaled by weight bytes",
        measured=True,
    )


def measure_image(tag: str) -> ImageSize | None:
    """Layer sizes of `tag` from the local Docker engine; None when no engine or no such image."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:  # pragma: no cover - docker is a dependency
        return None
    try:
        client = docker.from_env(timeout=10)
        try:
            history = client.images.get(tag).history()
        finally:
            client.close()
    except (DockerException, OSError):
        return None
    return ImageSize(
        tag=tag,
        layers=layers_from_history(history),
        measured=True,
        source="measured: layer sizes of the local image (uncompressed; registries send them compressed)",
    )


def layers_from_history(history: list[dict[str, Any]]) -> tuple[Layer, ...]:
    """Docker's image history (newest first) → the layers that carry bytes, oldest first."""
    layers = []
    for entry in reversed(history):
        size = int(entry.get("Size") or 0)
        if size <= 0:
            continue
        step = " ".join(str(entry.get("CreatedBy") or "").split())
        step = step.removeprefix("/bin/sh -c #(nop) ").removeprefix("/bin/sh -c ")
        layers.append(Layer(size, step[:80] or "(layer)"))
    return tuple(layers)


def estimate_image(tag: str, manifest: mf.Manifest, mode: Mode, base: tuple[int, str]) -> ImageSize:
    """The image the Dockerfile templates would build: base, weight layers (baked), code."""
    base_bytes, base_source = base
    layers = [Layer(base_bytes, f"base image + worker packages ({base_source})")]
    if mode == "baked":
        big = sorted((f for f in manifest.files if f.size >= OWN_LAYER_BYTES), key=lambda f: f.path)
        layers += [Layer(f.size, f"COPY {f.path}") for f in big]
        small = sum(f.size for f in manifest.files if f.size < OWN_LAYER_BYTES)
        if small:
            layers.append(Layer(small, "COPY configs, tokenizer and files under 64 MB"))
    layers.append(Layer(code_bytes(), "COPY worker_runtime/ volume_sync/ (measured)"))
    return ImageSize(
        tag=tag, layers=tuple(layers), measured=False, source=f"estimate: manifest sizes + {base_source} base"
    )


def code_bytes() -> int:
    """Bytes of the worker code that ships in images, measured on this checkout."""
    import worker_runtime

    root = Path(worker_runtime.__file__).resolve().parent.parent
    total = 0
    for package in ("worker_runtime", "volume_sync"):
        for path in (root / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                total += path.stat().st_size
    return total


def _base(loaded: LoadedRecipe, declared: int | None) -> tuple[int, str]:
    if declared is not None:
        return declared, "declared with --base-image-bytes"
    measured = measure_image(loaded.recipe.image.base)
    if measured is not None:
        return measured.total, f"measured {loaded.recipe.image.base}"
    return DEFAULT_BASE_BYTES, "declared default"


@dataclass(frozen=True)
class BenchResults:
    machine: str
    device: str
    weight_bytes: int
    import_s: float
    load_s: float
    read_s: float | None


def _read_bench(path: Path | None) -> BenchResults | None:
    """The keys listed at BENCH_RESULTS; None when there is no file, ValueError when it lacks them."""
    if path is None or not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        worker = raw["worker"]
        floor = raw.get("floor") or {}
        bench = BenchResults(
            machine=str(raw["machine"]),
            device=str(raw.get("device") or "cpu"),
            weight_bytes=int(raw["weight_bytes"]),
            import_s=float(worker["import_s"]),
            load_s=float(worker["load_s"]),
            read_s=float(floor["read_s"]) if floor.get("read_s") is not None else None,
        )
    except KeyError as exc:
        raise ValueError(f"no {exc.args[0]!r} in it") from None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(exc.__class__.__name__) from None
    if bench.weight_bytes <= 0:
        raise ValueError("weight_bytes is not positive")
    return bench
