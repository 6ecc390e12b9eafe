"""lock and fetch: pin a recipe's source, then bring exactly its files to local disk."""

from __future__ import annotations

from typing import Any

import click

from packager.commands.options import recipe_argument
from packager.output import emit, human_bytes, json_option, table
from packager.source.recipe import load_recipe


@click.command()
@recipe_argument
@click.option(
    "--check", is_flag=True, help="Change nothing: exit 1 naming what drifted, 0 when the lock is fresh."
)
@json_option
def lock(recipe_file: str, check: bool, as_json: bool) -> None:
    """Pin RECIPE's source in a lock file beside it (x.yaml → x.lock).

    Resolves the revision (branch, tag or short sha) to the full commit, and records every file the
    pipeline needs with its size and sha256, plus the packing settings, hashed into one fingerprint.
    A fresh lock is kept as it is. Exit codes: 0 fresh or written, 1 drifted (--check), 2 errors.
    """
    from packager.errors import DriftError
    from packager.source.drift import check_lock, refresh_lock

    loaded = load_recipe(recipe_file)
    path = loaded.lock_path
    if check:
        current, reasons = check_lock(loaded)
        if as_json:
            emit({"lock": str(path), "fresh": not reasons, "reasons": reasons}, True)
        if reasons:
            raise DriftError(f"{path} is out of date: {'; '.join(reasons)}")
        if not as_json and current is not None:
            click.echo(f"{path}: up to date ({source_line(current.source)})")
        return
    current, status, reasons = refresh_lock(loaded, quiet=as_json)
    if as_json:
        emit({"lock": str(path), "status": status, "reasons": reasons, **current.to_json()}, True)
        return
    from packager.pipeline.precision import precision_line

    headline = f"{path}: {status}" + (f" ({'; '.join(reasons)})" if reasons else "")
    summary = {
        "name": current.name,
        "source": source_line(current.source),
        "files": f"{len(current.files)} ({human_bytes(current.total_bytes)})",
        "precision": (precision_line(loaded, current) or loaded.recipe.precision).removeprefix("precision: "),
        "fingerprint": current.fingerprint,
        "artifact": current.artifact_id,
    }
    emit(summary, False, headline + "\n" + table(summary))


def source_line(source: dict[str, Any]) -> str:
    kind = source.get("kind")
    if kind == "hub":
        variant = f" variant {source['variant']}" if source.get("variant") else ""
        return f"{source['repo']}@{source['revision']} → {str(source['commit'])[:12]}{variant}"
    if kind == "path":
        return "local folder"
    checkpoint = source.get("checkpoint") or {}
    origin = source.get("url") if kind == "url" else "local file"
    return f"{checkpoint.get('name')} ({origin}), sha256 {str(checkpoint.get('sha256'))[:12]}"
