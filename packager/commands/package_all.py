"""`packager package-all`: every recipe in a folder, in parallel, one failure not stopping the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from artifact_format.vocab import short_id
from packager.commands.options import frozen_option, image_policy_option, mode_option
from packager.output import emit, grid, json_option


@click.command("package-all")
@click.argument("folder", default="recipes", type=click.Path(file_okay=False, path_type=Path))
@mode_option
@frozen_option
@click.option("-j", "--jobs", type=int, default=None, help="Recipes packaged at once (default: cores / 2).")
@image_policy_option("auto")
@json_option
def package_all(
    folder: Path, mode: str | None, frozen: bool, jobs: int | None, image_policy: str, as_json: bool
) -> None:
    """Package every recipe under FOLDER; one failing recipe does not stop the others."""
    recipes = sorted(folder.rglob("*.yaml"))
    if not recipes:
        raise click.ClickException(f"{folder}: no *.yaml recipes found")
    jobs = jobs or max(1, (os.cpu_count() or 2) // 2)

    def one(path: Path) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "packager", "package", str(path), "--json", "--image", image_policy]
        if mode:
            cmd += ["--mode", mode]
        if frozen:
            cmd.append("--frozen")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            return {"recipe": str(path), "ok": True, **json.loads(proc.stdout)}
        lines = proc.stderr.strip().splitlines()
        return {"recipe": str(path), "ok": False, "error": lines[-1] if lines else f"exit {proc.returncode}"}

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, recipes))
    failed = [r for r in results if not r["ok"]]
    rows = [
        (
            r["recipe"],
            "ok" if r["ok"] else "FAILED",
            short_id(r.get("artifact_id") or ""),
            r.get("image_tag") or "",
            r.get("error", ""),
        )
        for r in results
    ]
    emit(
        {"results": results, "failed": len(failed)},
        as_json,
        grid(["recipe", "result", "artifact", "image", "error"], rows),
    )
    if failed:
        sys.exit(1)
