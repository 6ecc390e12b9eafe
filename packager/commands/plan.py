"""plan: the cold start of each mode and the serverless-vs-always-on cost, before deploying."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from artifact_format.vocab import short_id
from packager.commands.options import recipe_argument, shown_option, value_option
from packager.deploy import cost as costs
from packager.deploy import plan as planning
from packager.output import emit, grid, human_bytes, json_option, warn

if TYPE_CHECKING:
    from artifact_format.manifest import Manifest
    from artifact_format.vocab import Mode
    from packager.source.recipe import LoadedRecipe

_positive = click.FloatRange(min=0, min_open=True)


@click.command()
@recipe_argument
@value_option(
    "--artifact",
    "DIR",
    "Artifact folder to plan for (default: the recipe's, under build/artifacts/).",
    dest="artifact_path",
    value_type=click.Path(file_okay=False, exists=True, path_type=Path),
)
@shown_option(
    "--bandwidth-mbps",
    _positive,
    planning.DEFAULT_BANDWIDTH_MBPS,
    "Image pull rate from the registry, in megabits per second (an assumption: measure yours).",
)
@shown_option(
    "--hub-bandwidth-mbps",
    _positive,
    planning.DEFAULT_HUB_BANDWIDTH_MBPS,
    "Hub → host rate RunPod downloads a cached model at on a cache miss (an assumption).",
)
@shown_option(
    "--requests-per-day",
    click.FloatRange(min=0),
    costs.DEFAULT_REQUESTS_PER_DAY,
    "Load to price both options at.",
)
@shown_option(
    "--seconds-per-request",
    _positive,
    costs.DEFAULT_SECONDS_PER_REQUEST,
    "Billed GPU seconds per request (RunPod rounds each request up to a whole second).",
)
@shown_option(
    "--gpu-price-serverless",
    _positive,
    costs.DEFAULT_SERVERLESS_PER_S,
    "Serverless (flex) $ per second; default: RunPod's 24 GB tier.",
)
@shown_option(
    "--gpu-price-hourly",
    _positive,
    costs.DEFAULT_ALWAYS_ON_PER_H,
    "Always-on worker $ per hour; default: RunPod's 24 GB active worker ($0.00013/s).",
)
@click.option(
    "--base-image-bytes",
    type=click.IntRange(min=0),
    default=None,
    help="Bytes of the base image + worker packages, when no built image can be measured locally.",
)
@click.option(
    "--bench-results",
    type=click.Path(dir_okay=False, path_type=Path),
    default=planning.BENCH_RESULTS,
    show_default=True,
    help="Worker benchmark results to take import and load times from.",
)
@value_option(
    "--plot",
    "FILE.png",
    "Write a PNG of monthly cost vs requests/day for both options.",
    dest="plot_path",
    value_type=click.Path(dir_okay=False, path_type=Path),
)
@json_option
def plan(
    recipe_file: str,
    artifact_path: Path | None,
    bandwidth_mbps: float,
    hub_bandwidth_mbps: float,
    requests_per_day: float,
    seconds_per_request: float,
    gpu_price_serverless: float,
    gpu_price_hourly: float,
    base_image_bytes: int | None,
    bench_results: Path,
    plot_path: Path | None,
    as_json: bool,
) -> None:
    """Estimate RECIPE's cold start in each mode and where serverless stops being cheaper.

    Bytes are measured (the artifact's manifest; the built image's layers when a Docker engine has
    it) and times come from the worker benchmark on this machine; whatever is assumed instead says
    so. Cost follows requests/day × seconds × $/s (serverless) against $/h × 24 × 30 (always-on).
    """
    from packager.source.recipe import load_recipe

    loaded = load_recipe(recipe_file)
    folder, manifest, artifact_id = _artifact(loaded, artifact_path)
    if manifest.name != loaded.recipe.name:
        warn(f"{folder} holds an artifact of {manifest.name!r}, not {loaded.recipe.name!r}")
    modes = planning.plan_modes(
        loaded,
        manifest,
        artifact_id,
        bandwidth_mbps=bandwidth_mbps,
        base_bytes=base_image_bytes,
        bench_results=bench_results,
        hub_bandwidth_mbps=hub_bandwidth_mbps,
    )
    model = costs.CostModel(seconds_per_request, gpu_price_serverless, gpu_price_hourly)
    data = _to_json(loaded, manifest, artifact_id, modes, model, requests_per_day, bandwidth_mbps)
    data["assumptions"]["hub_bandwidth_mbps"] = hub_bandwidth_mbps
    if plot_path is not None:
        cached = modes["cached"]
        costs.plot(
            model,
            plot_path,
            title=f"{loaded.recipe.name}: monthly cost at {seconds_per_request:g} s/request",
            requests_per_day=requests_per_day or None,
            cold_starts={
                **{mode: p.cold_start_s for mode, p in modes.items()},
                "cached (miss)": cached.cold_start_miss_s,
            },
        )
        data["plot"] = str(plot_path)
    emit(data, as_json, _text(data, modes))


def _artifact(loaded: LoadedRecipe, given: Path | None) -> tuple[Path, Manifest, str]:
    from artifact_format import manifest as mf
    from packager.errors import LockError, VerifyError

    if given is None:
        from packager.convert.artifact import artifact_dir
        from packager.pipeline.artifact import known_artifact_id

        known = known_artifact_id(loaded)
        if not known:
            raise LockError(
                f"{loaded.path}: no packaged artifact yet: run `packager package {loaded.path}`, "
                "or pass --artifact DIR"
            )
        given = artifact_dir(loaded.recipe.name, known)
    try:
        manifest = mf.load(given)
    except mf.ManifestError as exc:
        raise VerifyError(str(exc)) from None
    return given, manifest, mf.artifact_id_of(given)


def _to_json(
    loaded: LoadedRecipe,
    manifest: Manifest,
    artifact_id: str,
    modes: dict[Mode, planning.ModePlan],
    model: costs.CostModel,
    requests_per_day: float,
    bandwidth_mbps: float,
) -> dict[str, Any]:
    any_mode = next(iter(modes.values()))
    crossover = model.crossover_requests_per_day
    return {
        "recipe": loaded.recipe.name,
        "artifact_id": artifact_id,
        "precision": manifest.precision,
        "weights_bytes": any_mode.weights_bytes,
        "weight_files": len(manifest.weight_files),
        "modes": {mode: p.to_json() for mode, p in modes.items()},
        "assumptions": {
            "bandwidth_mbps": bandwidth_mbps,
            "volume_read_mbs": list(planning.VOLUME_READ_MBS),
            "local_disk_mbs": planning.LOCAL_DISK_MBS,
        },
        "timings": {"source": any_mode.timings.source, "measured": any_mode.timings.measured},
        "cost": {
            "seconds_per_request": model.seconds_per_request,
            "serverless_per_s": model.serverless_per_s,
            "always_on_per_h": model.always_on_per_h,
            "requests_per_day": requests_per_day,
            "serverless_monthly": model.serverless_monthly(requests_per_day),
            "always_on_monthly": model.always_on_monthly(requests_per_day),
            "always_on_workers": model.always_on_workers(requests_per_day),
            "crossover_requests_per_day": crossover,
            "days_per_month": costs.DAYS_PER_MONTH,
        },
    }


def _text(data: dict[str, Any], modes: dict[Mode, planning.ModePlan]) -> str:
    baked, volume, cached = modes["baked"], modes["volume"], modes["cached"]
    every = (baked, volume, cached)
    lo, hi = planning.VOLUME_READ_MBS
    a = data["assumptions"]
    rows = [
        ["image to pull", *(_image_cell(p) for p in every), _image_source(*every)],
        ["  pull", *(_secs(p.pull_s) for p in every), f"at {a['bandwidth_mbps']:g} Mbit/s"],
        [
            "weights read",
            *(_span(p.read_s) for p in every),
            f"{human_bytes(baked.weights_bytes)}: local disk {planning.LOCAL_DISK_MBS:g} MB/s (assumed; "
            f"image and RunPod's model cache); volume {lo:g}–{hi:g} MB/s (RunPod)",
        ],
        ["imports", *(_secs(p.timings.import_s) for p in every), baked.timings.source],
        ["pipeline load", *(_secs(p.timings.construct_s) for p in every), "(same)"],
        ["cold start", *(_span(p.cold_start_s) for p in every), "sum of the above (cached: a cache hit)"],
        [
            "cache miss: hub download",
            "-",
            "-",
            _secs(cached.miss_download_s),
            f"{human_bytes(cached.miss_bytes)} at {a['hub_bandwidth_mbps']:g} Mbit/s (assumed), "
            "before the worker starts",
        ],
        ["cold start, cache miss", "-", "-", _span(cached.cold_start_miss_s), "cold start + hub download"],
    ]
    layer_rows = [
        [mode, human_bytes(layer.size), layer.what] for mode, p in modes.items() for layer in p.image.layers
    ]
    c = data["cost"]
    crossover = c["crossover_requests_per_day"]
    rpd = c["requests_per_day"]
    cost_rows = [
        ["price", f"${c['serverless_per_s']:g}/s", f"${c['always_on_per_h']:g}/h per worker"],
        [
            f"{rpd:,.0f} requests/day",
            f"${c['serverless_monthly']:,.2f}/month",
            _always_on_cell(c),
        ],
    ]
    verdict = (
        f"crossover: {crossover:,.0f} requests/day at {c['seconds_per_request']:g} s/request "
        f"(serverless is cheaper below it)"
        if crossover is not None
        else "no crossover: an always-on second costs more than a serverless one, "
        "so serverless is cheaper at any load"
    )
    header = (
        f"{data['recipe']}: artifact {short_id(data['artifact_id'])} ({data['precision']}), "
        f"{human_bytes(data['weights_bytes'])} of weights in {data['weight_files']} files"
    )
    parts = [
        header,
        "",
        grid(["cold start", "baked", "volume", "cached", "from"], rows),
        "",
        grid(["image layers", "bytes", "layer"], layer_rows),
        "",
        grid([f"cost ({c['days_per_month']} days)", "serverless", "always-on"], cost_rows),
        verdict,
    ]
    if "plot" in data:
        parts.append(f"plot: {data['plot']}")
    return "\n".join(parts)


def _always_on_cell(c: dict[str, Any]) -> str:
    workers = c["always_on_workers"]
    return f"${c['always_on_monthly']:,.2f}/month ({workers} worker{'s' if workers > 1 else ''})"


def _image_cell(p: planning.ModePlan) -> str:
    kind = "measured" if p.image.measured else "estimate"
    return f"{human_bytes(p.image.total)} ({len(p.image.layers)} layers, {kind})"


def _image_source(*plans: planning.ModePlan) -> str:
    sources = dict.fromkeys(p.image.source for p in plans)
    return "; ".join(sources)


def _secs(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def _span(span: tuple[float, float]) -> str:
    lo, hi = _secs(span[0]), _secs(span[1])
    return lo if lo == hi else f"{lo.removesuffix(' s')}–{hi}"
