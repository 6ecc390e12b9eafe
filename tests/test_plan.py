"""`packager plan`: cold-start and cost figures from a tiny artifact's manifest and benchmark results."""

from __future__ import annotations

import json
import math
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from artifact_format import manifest as mf
from packager.deploy.cost import CostModel
from packager.deploy.plan import layers_from_history
from tests.rig.artifacts import make_artifact, tiny_source
from tests.rig.cli import run_packager

ROOT = Path(__file__).resolve().parents[1]
BENCH = {
    "machine": "bench-box (x86_64, 2 cores)",
    "device": "cpu",
    "weight_bytes": 2_000_000_000,
    "worker": {"import_s": 4.0, "load_s": 3.0},
    "floor": {"read_s": 1.0},
}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan")
    folder, _ = make_artifact(tiny_source(root / "source"), root / "artifact")
    return folder


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\nsource: {path: ./model}\nimage: {repository: registry.example.com/t/sd}\n")
    return path


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    path = tmp_path / "coldstart.json"
    path.write_text(json.dumps(BENCH))
    return path


def run_plan(recipe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_packager("plan", str(recipe), *args)


def plan_json(recipe: Path, *args: str) -> dict[str, Any]:
    result = run_plan(recipe, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _bench_args(artifact: Path, bench: Path) -> list[str]:
    return ["--artifact", str(artifact), "--bench-results", str(bench), "--base-image-bytes", "1000000000"]


PRICES = ["--seconds-per-request", "2.5", "--gpu-price-serverless", "0.0002", "--gpu-price-hourly", "0.5"]


def test_cold_start_figures_follow_from_the_manifest_and_the_benchmark(
    recipe: Path, artifact: Path, bench: Path
) -> None:
    out = plan_json(
        recipe,
        "--artifact", str(artifact),
        "--bench-results", str(bench),
        "--bandwidth-mbps", "800",
        "--base-image-bytes", "1000000000",
    )  # fmt: skip

    manifest = mf.load(artifact)
    weights = sum(f.size for f in manifest.weight_files)
    every_file = sum(f.size for f in manifest.files)
    assert out["artifact_id"] == mf.artifact_id_of(artifact)
    assert out["weights_bytes"] == weights > 0
    assert out["timings"]["measured"] is True

    pull_rate = 800e6 / 8  # bytes per second
    load = (3.0 - 1.0) * weights / 2e9  # benchmark load minus its bare read, scaled by weight bytes
    baked, volume = out["modes"]["baked"], out["modes"]["volume"]

    base, *middle, code = baked["image"]["layers"]
    assert base["bytes"] == 1_000_000_000
    assert [layer["bytes"] for layer in middle] == [every_file]  # the tiny files all share one layer
    assert code["bytes"] > 0
    assert volume["image"]["layers"] == [base, code]
    assert baked["image"]["bytes"] == 1_000_000_000 + every_file + code["bytes"]
    assert baked["image"]["measured"] is False
    assert "estimate" in baked["image"]["source"]

    for plan in (baked, volume):
        assert plan["pull_s"] == pytest.approx(plan["image"]["bytes"] / pull_rate)
        assert plan["import_s"] == 4.0
        assert plan["load_s"] == pytest.approx(load)
    assert baked["read_s"] == pytest.approx([weights / 1000e6] * 2)
    assert volume["read_s"] == pytest.approx([weights / 400e6, weights / 200e6])
    fixed = baked["pull_s"] + 4.0 + load
    assert baked["cold_start_s"] == pytest.approx([fixed + weights / 1000e6] * 2)
    fixed = volume["pull_s"] + 4.0 + load
    assert volume["cold_start_s"] == pytest.approx([fixed + weights / 400e6, fixed + weights / 200e6])


def test_cached_mode_is_a_slim_image_read_from_local_disk_and_a_miss_adds_the_repo_download(
    recipe: Path, artifact: Path, bench: Path
) -> None:
    out = plan_json(recipe, *_bench_args(artifact, bench), "--hub-bandwidth-mbps", "400")
    manifest = mf.load(artifact)
    weights = sum(f.size for f in manifest.weight_files)
    volume, cached = out["modes"]["volume"], out["modes"]["cached"]
    assert cached["image"]["layers"] == volume["image"]["layers"]  # the same slim image
    assert cached["read_s"] == pytest.approx([weights / 1000e6] * 2)  # local disk, not the volume
    repo = sum(f.size for f in manifest.files) + len(manifest.to_bytes())
    assert cached["miss"]["download_bytes"] == repo
    assert cached["miss"]["download_s"] == pytest.approx(repo / (400e6 / 8))
    hit = cached["cold_start_s"][0]
    assert hit == pytest.approx(cached["pull_s"] + 4.0 + (3.0 - 1.0) * weights / 2e9 + weights / 1000e6)
    assert cached["miss"]["cold_start_s"] == pytest.approx([hit + repo / (400e6 / 8)] * 2)
    assert out["assumptions"]["hub_bandwidth_mbps"] == 400
    assert hit < volume["cold_start_s"][1]

    text = run_plan(recipe, "--artifact", str(artifact), "--bench-results", str(bench)).stdout
    header = next(line for line in text.splitlines() if line.startswith("cold start "))
    assert header.split()[2:5] == ["baked", "volume", "cached"]
    assert "cache miss: hub download" in text
    assert "Mbit/s (assumed), before the worker starts" in text


def test_the_table_says_where_each_figure_comes_from(recipe: Path, artifact: Path, bench: Path) -> None:
    result = run_plan(recipe, "--artifact", str(artifact), "--bench-results", str(bench), *PRICES)

    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "measured on bench-box (x86_64, 2 cores) (CPU)" in text
    assert "estimate: manifest sizes + declared default base" in text
    assert "200–400 MB/s (RunPod)" in text
    assert "4.00 s" in text  # the benchmark's imports
    assert "crossover: 24,000 requests/day at 2.5 s/request" in text
    # at the default 1,000 requests/day: 1000 × 2.5 × 0.0002 × 30 and 0.5 × 24 × 30
    assert "$15.00/month" in text
    assert "$360.00/month (1 worker)" in text


def test_without_benchmark_results_the_constants_are_labelled(
    recipe: Path, artifact: Path, tmp_path: Path
) -> None:
    out = plan_json(recipe, "--artifact", str(artifact), "--bench-results", str(tmp_path / "none.json"))

    assert out["timings"]["measured"] is False
    assert out["timings"]["source"].startswith("assumed constants (no ")
    assert out["modes"]["baked"]["import_s"] == 5.0

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"machine": "m", "weight_bytes": 1}))
    out = plan_json(recipe, "--artifact", str(artifact), "--bench-results", str(broken))
    assert "unusable: no 'worker' in it" in out["timings"]["source"]


def test_cost_crossover_matches_the_seed_guide_formula(recipe: Path, artifact: Path, bench: Path) -> None:
    out = plan_json(
        recipe,
        "--artifact",
        str(artifact),
        "--bench-results",
        str(bench),
        "--requests-per-day",
        "5000",
        *PRICES,
    )

    cost = out["cost"]
    # requests/day × s × $/s × 30 against $/h × 24 × 30, by hand:
    assert cost["serverless_monthly"] == pytest.approx(5000 * 2.5 * 0.0002 * 30) == 75.0
    assert cost["always_on_monthly"] == pytest.approx(0.5 * 24 * 30) == 360.0
    # equal where n × 2.5 × 0.0002 × 30 = 360 → n = 24 000 requests/day
    assert cost["crossover_requests_per_day"] == pytest.approx(24_000)
    assert cost["always_on_workers"] == 1


def test_no_crossover_when_always_on_costs_more_per_second(recipe: Path, artifact: Path, bench: Path) -> None:
    result = run_plan(
        recipe, "--artifact", str(artifact), "--bench-results", str(bench), "--gpu-price-hourly", "1.0"
    )  # $1/h is $0.000278/s, above the default serverless $0.00019/s

    assert result.returncode == 0, result.stderr
    assert "no crossover" in result.stdout
    assert "serverless is cheaper at any load" in result.stdout


def test_busy_always_on_workers_are_counted() -> None:
    model = CostModel(seconds_per_request=2.0, serverless_per_s=0.0002, always_on_per_h=0.5)
    capacity = 86_400 / 2.0  # requests one worker can serve a day
    assert model.always_on_workers(capacity) == 1
    assert model.always_on_workers(capacity + 1) == 2
    assert model.always_on_monthly(capacity + 1) == pytest.approx(2 * 0.5 * 24 * 30)
    assert math.isclose(model.crossover_requests_per_day or 0, 0.5 * 24 / (2.0 * 0.0002))


def test_plot_writes_a_png(recipe: Path, artifact: Path, bench: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "cost.png"

    out = plan_json(
        recipe, "--artifact", str(artifact), "--bench-results", str(bench), "--plot", str(target), *PRICES
    )

    assert out["plot"] == str(target)
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 600
    assert height >= 300
    assert len(data) > 20_000
    assert [p.name for p in target.parent.iterdir()] == ["cost.png"]  # no temp file left behind


def test_a_folder_without_a_manifest_is_one_line(recipe: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()

    result = run_plan(recipe, "--artifact", str(empty))

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "manifest" in result.stderr
    assert str(empty) in result.stderr


def test_docker_history_becomes_layers_oldest_first() -> None:
    def entry(created_by: str, size: int) -> dict[str, Any]:
        return {"Id": "<missing>", "Created": 0, "CreatedBy": created_by, "Tags": None, "Size": size}

    history = [  # as docker's /images/{name}/history answers: newest first
        entry("/bin/sh -c #(nop) COPY dir:abc in /app/worker_runtime ", 90_000),
        entry("/bin/sh -c #(nop)  ENV MODEL_DIR=/models/artifact", 0),
        entry("/bin/sh -c #(nop) COPY file:1 in /models/artifact/unet/x.safetensors", 1_700_000_000),
        entry("/bin/sh -c pip install -r requirements.txt", 350_000_000),
        entry("/bin/sh -c #(nop) ADD file:base in / ", 3_000_000_000),
    ]

    layers = layers_from_history(history)

    assert [layer.size for layer in layers] == [3_000_000_000, 350_000_000, 1_700_000_000, 90_000]
    assert layers[0].what == "ADD file:base in /"
    assert layers[1].what == "pip install -r requirements.txt"


def test_the_package_summary_uses_the_built_image_size(recipe: Path, artifact: Path, bench: Path) -> None:
    from packager.deploy.plan import cold_start_summary
    from packager.source.recipe import load_recipe

    manifest = mf.load(artifact)
    weights = sum(f.size for f in manifest.weight_files)
    loaded = load_recipe(recipe)

    summary = cold_start_summary(
        loaded, manifest, image_size=2_000_000_000, mode="volume", bench_results=bench
    )

    load = (3.0 - 1.0) * weights / 2e9
    assert summary["pull_s"] == round(2e9 / (1000e6 / 8), 1) == 16.0
    assert summary["total_s"] == round(16.0 + weights / 200e6 + 4.0 + load, 1)
    assert "(measured)" in summary["basis"]
    assert "measured on bench-box" in summary["basis"]
    estimated = cold_start_summary(loaded, manifest, image_size=None, mode="baked", bench_results=bench)
    assert "(estimate)" in estimated["basis"]
    assert estimated["pull_s"] > 16.0
