"""Benchmark: the baked image's layout (one layer per large weight file, code last) against a
single-layer layout (every weight file and the code in one COPY, as the seed's templates did).

For each layout and run, in a fresh process, on the offline Docker rig (tests/rig/docker_env.py):

  full build     `--no-cache` build: pip layer, weights, code (a machine with no cache pays this)
  first build    v1 on a cache that has the base and pip layers: the weights and the code
  code rebuild   v2 = v1 with one line of worker code changed, built on v1's cache (layered: the
                 median of CODE_REBUILDS successive one-line changes, each on the last one's cache)
  push           v1 to an empty repository of the loopback registry (base and pip layers are in
                 the registry already, as they would be after the first release)
  code re-push   v2 after v1: what a code-only release uploads
  pull           v1 onto a host without it (only the base and pip layers present), then v2 onto
                 the host that has v1: what a code-only release costs a warm RunPod host

The artifact is synthetic (random bytes in SD 1.x proportions, `--size-mb` in all) so that gzip in
the push cannot shrink it. Medians over `--runs`; ratios against the single layout in the same run.
Targets: code rebuild <= 10% of a full build, and a code-only re-push uploads only the code layers.

  python bench/image.py [--quick] [--sizes 600,4000] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/image.py` as well as `python -m bench.image`
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "image.json"
LAYOUTS = ("layered", "single")
# At the largest size a code rebuild costs at most this share of a no-cache build, and no more
# than TARGET_SIZE_GROWTH times what it costs at the smallest: independent of the model's size.
TARGET_LARGE_REBUILD_RATIO = 0.05
TARGET_SIZE_GROWTH = 1.10
CODE_STEPS = ("code", "compile")
# Code-only rebuilds per layered run (the single-layer baseline resends every weight byte each time).
CODE_REBUILDS = 5


def _recipe(folder: Path, rig: dict[str, str], repository: str) -> Any:
    from packager.source.recipe import load_recipe

    path = folder / "bench.yaml"
    path.write_text(
        "name: bench\nsource: {path: .}\n"
        f"image: {{base: '{rig['base_image']}', base_has_torch: false, repository: '{repository}'}}\n"
    )
    return load_recipe(path)


def _single_layer(rendered: Any) -> Any:
    """One context, one build: every weight file, the manifest and the code under one COPY after
    the deps layers, sent whole to the engine on every build (the seed's layout)."""
    ctx = rendered.context_dir
    weights_ctx = rendered.weights.context_dir
    bundle = ctx / "all"
    model_dir = Path("models/artifact")
    for sub in ("weights/large", "weights/small"):
        for src in sorted((weights_ctx / sub).rglob("*")) if (weights_ctx / sub).exists() else []:
            if src.is_file():
                dest = bundle / model_dir / src.relative_to(weights_ctx / sub)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dest)
    shutil.copy2(weights_ctx / "manifest.json", bundle / model_dir / "manifest.json")
    shutil.copytree(ctx / "code", bundle / "opt/worker", copy_function=os.link)
    shutil.copy2(weights_ctx / "requirements.txt", ctx / "requirements.txt")
    deps = []
    for line in rendered.weights.dockerfile.read_text().splitlines():
        if line.startswith('COPY ["weights/') or line.startswith('COPY ["manifest.json"'):
            break
        deps.append(line)
    worker = rendered.dockerfile.read_text().splitlines()
    code_at = next(i for i, line in enumerate(worker) if line.startswith('COPY ["code/"'))
    lines = [*deps, 'COPY ["all/", "/"]']
    for line in worker[code_at + 1 :]:
        if line.strip().startswith("packager.layers="):
            line = '      packager.layers=\'["requirements","pip install","everything","compile"]\''
        lines.append(line)
    for sub in ("weights-image", "code"):
        shutil.rmtree(ctx / sub)
    rendered.dockerfile.write_text("\n".join(lines) + "\n")
    for dirpath, _dirs, _files in os.walk(ctx):
        os.chmod(dirpath, 0o755)
    args = {k: v for k, v in rendered.build_args.items() if k != "WEIGHTS_IMAGE"}
    steps = ("requirements", "pip install", "everything", "compile")
    return replace(rendered, layer_steps=steps, weights=None, build_args=args)


def _drop(client: Any, repository: str) -> None:
    """Every tag of the repository (the weights image's too), then the dangling layer chains."""
    for tag in {t for img in client.images.list() for t in img.tags if t.startswith(repository + ":")}:
        client.images.remove(tag, force=True)
    client.images.prune(filters={"dangling": True})


def _code_copy(folder: Path, marker: str) -> None:
    """Point render at a copy of the shipped packages with one line of worker code changed."""
    from packager.image import code

    copies = {}
    for package in code.CODE_PACKAGES:
        copies[package] = folder / package
        shutil.copytree(
            code.package_dir(package), copies[package], ignore=shutil.ignore_patterns("__pycache__")
        )
    handler = copies["worker_runtime"] / "handler.py"
    handler.write_text(handler.read_text() + f"\n# {marker}\n")
    code.package_dir = lambda name: copies[name]  # type: ignore[assignment]


def _child(layout: str, run: int, rig: dict[str, str], artifact_dir: Path) -> dict[str, Any]:
    """One layout, one run, in this process; returns timings and sizes."""
    import docker

    from artifact_format import manifest as mf
    from packager.convert.artifact import Artifact
    from packager.image import build as image_build
    from packager.image import push as image_push
    from packager.image import render

    client = docker.DockerClient(base_url=rig["docker_host"], timeout=1800)
    manifest = mf.load(artifact_dir)
    art = Artifact(manifest.name, mf.artifact_id_of(artifact_dir), artifact_dir, manifest)
    repository = f"{rig['registry']}/bench-{layout}-{run}-{os.getpid()}"
    out: dict[str, Any] = {"layout": layout, "run": run}
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        work = Path(tmp)
        loaded = _recipe(work, rig, repository)

        def context(version: str) -> Any:
            """This layout's build context for the code as it is now, rendered into ctx-<version>."""
            rendered = render.render(
                loaded,
                art,
                manifest,
                art.id,
                "baked",
                work / f"ctx-{version}",
                pip_find_links=rig["find_links"],
            )
            return _single_layer(rendered) if layout == "single" else rendered

        # v0: a build from nothing but the base image, then dropped with its whole layer chain.
        rendered = context("v0")
        started = time.perf_counter()
        built = image_build.build_context(loaded, rendered, no_cache=True, quiet=True, client=client)
        out["full_build_s"] = time.perf_counter() - started
        client.images.remove(built.image_id, force=True)
        _drop(client, repository)
        tags = {}
        for version in ("v1", "v2"):
            if version == "v2":
                _code_copy(work / "code-v2", f"code-only change, run {run}")
            rendered = context(version)
            started = time.perf_counter()
            built = image_build.build_context(loaded, rendered, quiet=True, client=client)
            key = "first_build" if version == "v1" else "code_rebuild"
            out[f"{key}_s"] = time.perf_counter() - started
            out[f"{key}_context_bytes"] = built.context_bytes + built.weights_context_bytes
            tags[version] = f"{repository}:{version}"
            client.images.get(built.image_id).tag(repository, version)
            started = time.perf_counter()
            pushed = image_push.push(replace(built, tags=(tags[version],)), quiet=True, client=client)
            key = "push" if version == "v1" else "code_repush"
            out[f"{key}_s"] = time.perf_counter() - started
            out[f"{key}_layers"] = pushed.uploaded_layers
            if version == "v1":
                v1_digests = {x.digest for x in built.layers}
            if version == "v2":
                # What a code-only release moves: the bytes of every layer v1 does not have.
                out["code_change_bytes"] = sum(x.size for x in built.layers if x.digest not in v1_digests)
                out["image_bytes"] = built.size
                out["layers"] = [{"step": x.step, "bytes": x.size} for x in built.layers]
                out["code_layers_bytes"] = sum(x.size for x in built.layers if x.step in CODE_STEPS)
        if layout == "layered":
            # More code-only rebuilds, each a new change on the last: the median is the figure the
            # size sweep compares, and one rebuild of a few seconds is noisy on a shared machine.
            times = [out["code_rebuild_s"]]
            for extra in range(3, 2 + CODE_REBUILDS):
                _code_copy(work / f"code-v{extra}", f"code-only change {extra}, run {run}")
                rendered = context(f"v{extra}")
                started = time.perf_counter()
                image_build.build_context(loaded, rendered, quiet=True, client=client)
                times.append(time.perf_counter() - started)
            out["code_rebuilds"] = [round(t, 2) for t in times]
            out["code_rebuild_s"] = statistics.median(times)
        # Drop both versions (and the build cache that holds their weight layers), then pull.
        _drop(client, repository)
        for version, key in (("v1", "pull_s"), ("v2", "code_pull_s")):
            started = time.perf_counter()
            client.images.pull(repository, tag=version)
            out[key] = time.perf_counter() - started
        _drop(client, repository)
    return out


def _warm_registry(rig: dict[str, str], artifact_dir: Path) -> None:
    """Build the deps layers once and put them in the registry, so every run's push starts equal."""
    import docker

    from artifact_format import manifest as mf
    from packager.image import build as image_build
    from packager.image import push as image_push
    from packager.image import render

    client = docker.DockerClient(base_url=rig["docker_host"], timeout=1800)
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        repository = f"{rig['registry']}/bench-deps"
        loaded = _recipe(Path(tmp), rig, repository)
        manifest = mf.load(artifact_dir)
        artifact_id = mf.artifact_id_of(artifact_dir)
        rendered = render.render(
            loaded, None, manifest, artifact_id, "volume", Path(tmp) / "ctx", pip_find_links=rig["find_links"]
        )
        built = image_build.build_context(loaded, rendered, quiet=True, client=client)
        image_push.push(replace(built, tags=(built.tag,)), quiet=True, client=client)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    keys = (
        "full_build_s",
        "first_build_s",
        "code_rebuild_s",
        "push_s",
        "code_repush_s",
        "pull_s",
        "code_pull_s",
    )
    for layout in LAYOUTS:
        mine = [r for r in runs if r["layout"] == layout]
        row: dict[str, Any] = {k: round(_median([r[k] for r in mine]), 2) for k in keys}
        row["code_repush_layers"] = max(r["code_repush_layers"] for r in mine)
        row["push_layers"] = max(r["push_layers"] for r in mine)
        row["image_bytes"] = mine[-1]["image_bytes"]
        row["code_layers_bytes"] = mine[-1]["code_layers_bytes"]
        row["code_change_bytes"] = mine[-1]["code_change_bytes"]
        row["code_rebuild_context_bytes"] = mine[-1]["code_rebuild_context_bytes"]
        row["first_build_context_bytes"] = mine[-1]["first_build_context_bytes"]
        row["layers"] = mine[-1]["layers"]
        row["rebuild_vs_full"] = round(row["code_rebuild_s"] / row["full_build_s"], 3)
        table[layout] = row
    ours, single = table["layered"], table["single"]
    table["ratios_layered_vs_single"] = {
        k: round(ours[k] / single[k], 3) if single[k] else None
        for k in (
            "code_rebuild_s",
            "code_repush_s",
            "code_pull_s",
            "push_s",
            "pull_s",
            "first_build_s",
            "full_build_s",
        )
    }
    return table


def _print(table: dict[str, Any], meta: dict[str, Any]) -> None:
    from packager.output import grid, human_bytes

    rows = []
    labels = {
        "full_build_s": "full build (no cache), s",
        "first_build_s": "first build (deps cached), s",
        "code_rebuild_s": "code-only rebuild, s",
        "push_s": "push v1, s",
        "code_repush_s": "code-only re-push, s",
        "code_repush_layers": "  layers uploaded",
        "code_change_bytes": "  bytes in changed layers",
        "code_rebuild_context_bytes": "  context sent to the engine",
        "pull_s": "pull v1 (deps present), s",
        "code_pull_s": "code-only pull (v1 present), s",
        "rebuild_vs_full": "rebuild / full build",
    }
    ratios = table["ratios_layered_vs_single"]
    for key, label in labels.items():
        ratio = ratios.get(key)
        mine, theirs = table["layered"][key], table["single"][key]
        if key.endswith("_bytes"):
            mine, theirs = human_bytes(mine), human_bytes(theirs)
        rows.append((label, mine, theirs, "-" if ratio is None else f"{ratio:.3f}"))
    rows.append(
        (
            "image size",
            human_bytes(table["layered"]["image_bytes"]),
            human_bytes(table["single"]["image_bytes"]),
            "",
        )
    )
    rows.append(("code layers", human_bytes(table["layered"]["code_layers_bytes"]), "-", ""))
    print(f"bench/image: {meta['size_mb']} MB synthetic artifact, {meta['runs']} run(s), medians")
    print(grid(("", "layered", "single", "layered/single"), rows))
    print()
    print(
        grid(
            ("layer (layered)", "size"),
            [(x["step"], human_bytes(x["bytes"])) for x in table["layered"]["layers"]],
        )
    )


def _sweep_size(size_mb: int, runs_wanted: int, rig_info: dict[str, str]) -> list[dict[str, Any]] | None:
    """Every run of both layouts at one artifact size, each in a fresh process."""
    from tests.rig.s3 import synthetic_artifact

    cache = REPO / "build" / "bench-image"
    artifact = cache / f"artifact-{size_mb}mb"
    if not artifact.exists():
        staging = cache / f"staging-{size_mb}mb"
        shutil.rmtree(staging, ignore_errors=True)
        synthetic_artifact(staging, size_mb * 1_000_000, name="bench")
        staging.rename(artifact)
    _warm_registry(rig_info, artifact)
    runs = []
    for run in range(runs_wanted):
        for layout in LAYOUTS if run % 2 == 0 else tuple(reversed(LAYOUTS)):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", layout, str(run)]
            done = subprocess.run(
                [*cmd, json.dumps(rig_info), str(artifact)], capture_output=True, text=True, cwd=REPO
            )
            if done.returncode != 0:
                print(done.stderr[-4000:], file=sys.stderr)
                return None
            runs.append({"size_mb": size_mb, **json.loads(done.stdout.strip().splitlines()[-1])})
            print(
                f"{size_mb} MB run {run} {layout}: "
                + ", ".join(f"{k}={v:.1f}" for k, v in runs[-1].items() if k.endswith("_s")),
                flush=True,
            )
    return runs


def _targets(tables: dict[int, dict[str, Any]]) -> dict[str, bool]:
    small, large = tables[min(tables)]["layered"], tables[max(tables)]["layered"]
    targets = {
        f"code rebuild <= {TARGET_LARGE_REBUILD_RATIO:.0%} of a full build at {max(tables)} MB": large[
            "rebuild_vs_full"
        ]
        <= TARGET_LARGE_REBUILD_RATIO,
        "code-only re-push uploads only the code layers": all(
            t["layered"]["code_repush_layers"] == len(CODE_STEPS) for t in tables.values()
        ),
    }
    if len(tables) > 1:
        growth = large["code_rebuild_s"] / small["code_rebuild_s"]
        targets[
            f"code rebuild at {max(tables)} MB within {TARGET_SIZE_GROWTH - 1:.0%} of {min(tables)} MB"
        ] = growth <= TARGET_SIZE_GROWTH
    return targets


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default="600,4000",
        help="synthetic artifact sizes in MB, comma-separated (default 600,4000)",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per layout and size (default 1)")
    parser.add_argument("--quick", action="store_true", help="300 MB, one run: a smoke test of the benchmark")
    parser.add_argument(
        "--child", nargs=4, metavar=("LAYOUT", "RUN", "RIG_JSON", "ARTIFACT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        layout, run, rig_json, artifact = args.child
        print(json.dumps(_child(layout, int(run), json.loads(rig_json), Path(artifact))))
        return 0
    sizes = [300] if args.quick else sorted(int(x) for x in args.sizes.split(","))
    runs_wanted = 1 if args.quick else args.runs

    from tests.rig import docker_env

    rig = docker_env.start()
    runs: list[dict[str, Any]] = []
    try:
        rig_info = {
            "docker_host": rig.docker_host,
            "registry": rig.registry,
            "find_links": rig.find_links,
            "base_image": rig.base_image,
        }
        for size_mb in sizes:
            done = _sweep_size(size_mb, runs_wanted, rig_info)
            if done is None:
                return 1
            runs += done
            # Each size's runs as soon as they are done: a sweep cut short keeps what it measured.
            partial = RESULTS.with_suffix(".partial.json")
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"runs": runs}, indent=2, sort_keys=True) + "\n")
    finally:
        rig.stop()
    tables = {size: _summarise([r for r in runs if r["size_mb"] == size]) for size in sizes}
    targets = _targets(tables)
    meta = {"sizes_mb": sizes, "runs": runs_wanted, "quick": args.quick, "targets": targets}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    results = {str(size): table for size, table in tables.items()}
    tmp.write_text(
        json.dumps({"meta": meta, "results": results, "runs": runs}, indent=2, sort_keys=True) + "\n"
    )
    tmp.replace(RESULTS)
    for size, table in tables.items():
        _print(table, {"size_mb": size, "runs": runs_wanted})
        print()
    for name, ok in targets.items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
