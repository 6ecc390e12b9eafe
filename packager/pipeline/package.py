"""`packager package`: every stage in order, each skipped when its output already exists.

A second run on an unchanged recipe must be a sub-second no-op that moves no bytes, so the order of
the checks matters: the lock knows the artifact id, the store answers "have it" with one request,
and the image (or volume) is looked up by a tag and labels derived from that id. The local artifact
is only materialised (converted, or pulled from the store) when a stage needs its bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from artifact_format.vocab import Mode
from packager.output import note
from packager.pipeline import stages
from packager.pipeline.run import ImageOptions, ImagePolicy, Outcome, Run
from packager.source.recipe import LoadedRecipe


@dataclass
class Stage:
    name: str
    status: str  # "done" | "skipped" | "fresh" | "rendered"
    detail: str = ""
    seconds: float = 0.0


@dataclass
class PackageResult:
    name: str
    mode: Mode
    artifact_id: str
    source: str
    commit: str | None
    bytes_before: int
    bytes_after: int
    store_uri: str
    image_tag: str | None = None
    image_size: int | None = None
    image_layers: int | None = None
    image_built: bool = False
    context_dir: str | None = None
    volume_path: str | None = None
    published: dict[str, str] | None = None
    planned_cold_start_s: dict[str, Any] | None = None
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0
    stages: list[Stage] = field(default_factory=list)

    @property
    def moved_nothing(self) -> bool:
        return all(s.status.startswith("skip") or s.status == "fresh" for s in self.stages)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["moved_nothing"] = self.moved_nothing
        return data


def package(
    loaded: LoadedRecipe,
    *,
    mode: Mode | None = None,
    frozen: bool = False,
    quiet: bool = False,
    push: bool | None = None,
    image_policy: ImagePolicy = "build",
) -> PackageResult:
    """Lock → fetch → convert → upload → image (baked), volume + slim image, or publish + slim image
    (cached), skipping what exists."""
    run = Run(
        loaded,
        mode or loaded.recipe.mode,
        frozen=frozen,
        quiet=quiet,
        image=ImageOptions(policy=image_policy, push=push),
    )
    steps: list[tuple[str, Callable[[Run], Outcome]]] = [
        ("lock", stages.ensure_lock),
        ("convert", stages.ensure_artifact),
        ("upload", stages.ensure_upload),
    ]
    if run.mode == "volume":
        steps.append(("volume", stages.ensure_volume))
    if run.mode == "cached":
        from packager.publish.stage import ensure_published, publish_section, token_for

        token_for(publish_section(loaded))  # a missing token fails now, not after a conversion
        steps.append(("publish", ensure_published))
    steps.append(("image", stages.ensure_image))
    done = [_timed(name, step, run) for name, step in steps]
    return _result(run, done)


def _timed(name: str, step: Callable[[Run], Outcome], run: Run) -> Stage:
    start = time.perf_counter()
    outcome = step(run)
    stage = Stage(name, outcome.status, outcome.detail, round(time.perf_counter() - start, 3))
    if not run.quiet:
        note(f"[{name}] {stage.status}{': ' + stage.detail if stage.detail else ''} ({stage.seconds:.2f} s)")
    return stage


def _result(run: Run, done: list[Stage]) -> PackageResult:
    from packager.deploy.plan import cold_start_summary

    assert run.lock is not None
    manifest = run.manifest()
    result = PackageResult(
        name=run.name,
        mode=run.mode,
        artifact_id=run.artifact_id,
        source=_describe_source(run.lock.source),
        commit=run.lock.source.get("commit"),
        bytes_before=run.lock.total_bytes,
        bytes_after=manifest.total_bytes,
        store_uri=run.artifact_uri,
        image_tag=run.image_tag,
        volume_path=run.volume_path,
        published=run.lock.published if run.mode == "cached" else None,
        bytes_uploaded=run.bytes_uploaded,
        bytes_downloaded=run.bytes_downloaded,
        stages=done,
    )
    if run.built is not None:
        result.image_size, result.image_layers = run.built.size, len(run.built.layers)
        result.image_built = not run.built.skipped
    if run.rendered is not None:
        result.context_dir = str(run.rendered.context_dir)
    elif done[-1].status == "skipped" and run.built is None:
        from packager.image.render import default_context_dir

        result.context_dir = str(default_context_dir(run.name, result.artifact_id, run.mode).resolve())
    result.planned_cold_start_s = cold_start_summary(
        run.loaded, manifest, image_size=result.image_size, mode=result.mode
    )
    return result


def _describe_source(source: dict[str, Any]) -> str:
    if source.get("repo"):
        return f"{source['repo']}@{source.get('revision', 'main')}"
    return str(source.get("kind", "local"))
