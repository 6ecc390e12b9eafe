"""package, package-all, gc: the commands a user actually types."""

from __future__ import annotations

from typing import Any

import click

from packager.commands.options import frozen_option, image_policy_option, mode_option, recipe_argument
from packager.output import emit, grid, human_bytes, json_option
from packager.source.recipe import load_recipe


@click.command()
@recipe_argument
@mode_option
@frozen_option
@click.option("--push/--no-push", default=None, help="Push the image (default: the recipe's image.push).")
@image_policy_option("build")
@json_option
def package(
    recipe_file: str, mode: str | None, frozen: bool, push: bool | None, image_policy: str, as_json: bool
) -> None:
    """Run every stage for RECIPE; stages whose output exists are skipped.

    lock → fetch → convert → upload → baked: render + build (+ push) / volume: seed + slim image.
    A second run on an unchanged recipe moves no bytes and says so.
    """
    from packager.pipeline.package import package as run_package

    loaded = load_recipe(recipe_file)
    result = run_package(
        loaded,
        mode=mode,  # type: ignore[arg-type]
        frozen=frozen,
        quiet=as_json,
        push=push,
        image_policy=image_policy,  # type: ignore[arg-type]
    )
    emit(result.to_json(), as_json, summary_table(result.to_json()))


def summary_table(r: dict[str, Any]) -> str:
    plan = r.get("planned_cold_start_s") or {}
    rows: list[tuple[str, Any]] = [
        ("recipe", f"{r['name']} ({r['mode']})"),
        ("artifact id", r["artifact_id"]),
        ("source", f"{r['source']} {r['commit'] or ''}".strip()),
        ("bytes before → after", f"{human_bytes(r['bytes_before'])} → {human_bytes(r['bytes_after'])}"),
        ("store", r["store_uri"]),
    ]
    if r["mode"] == "volume":
        rows.append(("volume path", r.get("volume_path")))
    image = r.get("image_tag") or "-"
    if r.get("image_size"):
        image += f"  ({human_bytes(r['image_size'])}, {r['image_layers']} layers)"
    elif r.get("context_dir"):
        image += f"  (rendered only: {r['context_dir']})"
    rows.append(("image", image))
    if plan:
        parts = ", ".join(
            f"{k.removesuffix('_s')} {plan[k]:.1f} s"
            for k in ("pull_s", "weights_read_s", "import_s", "load_s")
            if isinstance(plan.get(k), (int, float))
        )
        rows.append(("planned cold start", f"{plan.get('total_s', 0):.1f} s ({parts})"))
        rows.append(("  basis", plan.get("basis")))
    moved = (
        "nothing moved (every stage already done)"
        if r["moved_nothing"]
        else (f"uploaded {human_bytes(r['bytes_uploaded'])}, downloaded {human_bytes(r['bytes_downloaded'])}")
    )
    rows.append(("this run", moved))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v if v is not None else '-'}" for k, v in rows]
    stages = grid(
        ["stage", "status", "seconds", "detail"],
        [(s["name"], s["status"], f"{s['seconds']:.2f}", s["detail"]) for s in r["stages"]],
    )
    return stages + "\n\n" + "\n".join(lines)
