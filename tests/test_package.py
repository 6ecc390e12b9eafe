"""`packager package`: the whole flow, and the second run that moves nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.rig.cli import imported_modules, run_packager
from tests.rig.fixtures_s3 import S3Env

ROOT = Path(__file__).resolve().parents[1]


def package(recipe: Path, env: dict[str, str], *args: str) -> tuple[dict, list[str]]:
    proc = run_packager(
        "package", str(recipe), "--json", "--image", "render", *args, env=env, report_imports=True
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), imported_modules(proc)


def write_recipe(folder: Path, source: Path, s3: S3Env, volume_bucket: str, extra: str = "") -> Path:
    recipe = folder / "tiny.yaml"
    recipe.write_text(
        f"name: tiny\nsource: {{path: {source}}}\n"
        f"store: {{uri: 's3://{s3.bucket}/models'}}\n"
        f"volume: {{id: {volume_bucket}, endpoint_url: '{s3.endpoint_url}'}}\n"
        "components: {drop: [safety_checker, feature_extractor]}\n" + extra
    )
    return recipe


@pytest.mark.parametrize("mode", ["baked", "volume"])
def test_second_run_on_an_unchanged_recipe_moves_nothing(
    s3: S3Env, tiny_build: tuple[Path, Path], tmp_path: Path, mode: str
) -> None:
    source, _ = tiny_build
    volume = s3.new_bucket(f"vol-{mode}-{tmp_path.name[-8:].lower().replace('_', '-')}")
    recipe = write_recipe(tmp_path, source, s3, volume)
    env = s3.subprocess_env(PACKAGER_BUILD_DIR=str(tmp_path / "build"))

    first, imported = package(recipe, env, "--mode", mode)
    stages = {s["name"]: s["status"] for s in first["stages"]}
    assert stages["convert"] == "done"
    assert stages["upload"] == "done"
    assert "torch" in imported  # the first run really converted
    prefix = f"models/tiny/{first['artifact_id']}/"
    assert f"{prefix}manifest.json" in s3.keys(prefix)
    if mode == "volume":
        assert stages["volume"] == "done"
        assert f"models/tiny/{first['artifact_id']}/.ready" in s3.keys("models/", bucket=volume)
    assert first["bytes_after"] < first["bytes_before"]  # fp32 → fp16

    s3.traffic.reset()
    second, imported = package(recipe, env, "--mode", mode)
    assert second["artifact_id"] == first["artifact_id"]
    assert second["moved_nothing"], second["stages"]
    assert {s["status"] for s in second["stages"]} <= {"fresh", "skipped"}
    assert second["bytes_uploaded"] == 0
    assert second["bytes_downloaded"] == 0
    assert s3.traffic.bytes_in() == 0
    assert s3.traffic.count(op="GetObject") == 0
    # One HEAD for the store's manifest, one for the volume's .ready marker.
    assert s3.traffic.count() <= (2 if mode == "volume" else 1)
    assert imported == [], f"a no-op run imported {imported}"


def test_changed_setting_makes_a_new_artifact_and_frozen_refuses_drift(
    s3: S3Env, tiny_build: tuple[Path, Path], tmp_path: Path
) -> None:
    source, _ = tiny_build
    volume = s3.new_bucket(f"vol-drift-{tmp_path.name[-8:].lower().replace('_', '-')}")
    recipe = write_recipe(tmp_path, source, s3, volume)
    env = s3.subprocess_env(PACKAGER_BUILD_DIR=str(tmp_path / "build"))
    first, _ = package(recipe, env)

    recipe.write_text(recipe.read_text() + "precision: bf16\n")
    frozen = run_packager("package", str(recipe), "--frozen", "--image", "render", env=env, timeout=120)
    assert frozen.returncode == 2
    assert len(frozen.stderr.strip().splitlines()) == 1
    assert "precision" in frozen.stderr or "settings" in frozen.stderr

    second, _ = package(recipe, env)
    assert second["artifact_id"] != first["artifact_id"]
    assert {s["name"]: s["status"] for s in second["stages"]}["convert"] == "done"


def test_summary_table_for_people(s3: S3Env, tiny_build: tuple[Path, Path], tmp_path: Path) -> None:
    source, _ = tiny_build
    volume = s3.new_bucket(f"vol-table-{tmp_path.name[-8:].lower().replace('_', '-')}")
    recipe = write_recipe(tmp_path, source, s3, volume)
    env = s3.subprocess_env(PACKAGER_BUILD_DIR=str(tmp_path / "build"))
    first, _ = package(recipe, env)
    proc = run_packager("package", str(recipe), "--image", "render", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stages_text, _, rows_text = proc.stdout.partition("\n\n")
    rows = dict(line.split("  ", 1) for line in rows_text.strip().splitlines())
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["recipe"] == "tiny (baked)"
    assert rows["artifact id"] == first["artifact_id"]
    assert rows["store"] == first["store_uri"]
    assert first["artifact_id"] in rows["store"]
    assert rows["bytes before → after"].count("→") == 1
    before, after = (part.strip() for part in rows["bytes before → after"].split("→"))
    assert before != after, "the fp32 source halves in fp16"
    assert rows["image"].startswith(f"{first['image_tag']}  (rendered only: ")
    assert rows["planned cold start"].endswith(")")
    assert float(rows["planned cold start"].split(" s ", 1)[0]) > 0
    assert rows["this run"] == "nothing moved (every stage already done)"
    statuses = {line.split()[0]: line.split()[1] for line in stages_text.strip().splitlines()[2:]}
    assert statuses == {
        "lock": "fresh",
        "convert": "skipped",
        "upload": "skipped",
        "image": "skipped",
    }


def test_package_all_reports_every_recipe_and_one_failure_does_not_stop_the_others(
    tiny_build: tuple[Path, Path], tmp_path: Path
) -> None:
    source, _ = tiny_build
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "good.yaml").write_text(f"name: good\nsource: {{path: {source}}}\nprecision: fp32\n")
    (recipes / "broken.yaml").write_text("name: broken\nsource: {path: ./missing}\nprecision: half\n")
    env = {**os.environ, "PACKAGER_BUILD_DIR": str(tmp_path / "build")}
    proc = run_packager("package-all", str(recipes), "--image", "render", "--json", env=env, timeout=600)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    by_name = {Path(r["recipe"]).name: r for r in data["results"]}
    assert by_name["good.yaml"]["ok"]
    assert len(by_name["good.yaml"]["artifact_id"]) == 64
    assert not by_name["broken.yaml"]["ok"]
    assert "precision: must be one of auto, fp16, bf16, fp32, fp8" in by_name["broken.yaml"]["error"]
    assert data["failed"] == 1


def test_gc_removes_what_no_lock_points_at(tiny_build: tuple[Path, Path], tmp_path: Path) -> None:
    source, _ = tiny_build
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    recipe = recipes / "tiny.yaml"
    recipe.write_text(f"name: tiny\nsource: {{path: {source}}}\nprecision: fp32\n")
    env = {**os.environ, "PACKAGER_BUILD_DIR": str(tmp_path / "build")}
    old, _ = package(recipe, env)
    recipe.write_text(recipe.read_text().replace("fp32", "bf16"))
    new, _ = package(recipe, env)
    artifacts = tmp_path / "build" / "artifacts" / "tiny"
    store = tmp_path / "build" / "store" / "tiny"
    assert {p.name for p in artifacts.iterdir()} >= {old["artifact_id"], new["artifact_id"]}

    def gc(*args: str) -> dict:
        proc = run_packager(
            "gc", "--recipes", str(recipes), "--no-images", "--json", *args, env=env, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    dry = gc("--dry-run")
    assert {(r["kind"], Path(r["what"]).name) for r in dry["removed"]} == {
        ("artifact", old["artifact_id"]),
        ("store", old["artifact_id"]),
    }
    assert (artifacts / old["artifact_id"]).exists()  # a dry run removes nothing
    gc()
    assert [p.name for p in artifacts.iterdir() if not p.name.startswith(".")] == [new["artifact_id"]]
    assert [p.name for p in store.iterdir() if not p.name.startswith(".")] == [new["artifact_id"]]
