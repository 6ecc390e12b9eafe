"""`packager package`: every stage in order, each skipped when its output already exists.

A second run on an unchanged recipe must be a sub-second no-op that moves no bytes, so the order of
the checks matters: the lock knows the artifact id, the store answers "have it" with one request,
and the image (or volume) is looked up by a tag and labels derived from that id. The local artifact
is only materialised (converted, or pulled from the store) when a stage needs its bytes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from artifact_format import manifest as mf
from artifact_format.vocab import Mode, short_id
from packager.errors import ImageError
from packager.output import note
from packager.pipeline.artifact import Artifact, ensure_artifact, local_artifact
from packager.source.recipe import LoadedRecipe

ImagePolicy = Literal["build", "render", "auto"]


@dataclass
class Stage:
    name: str
    status: str  # "done" | "skipped" | "rendered" | ...
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


class _Stages:
    """Times each stage and keeps its outcome for the summary."""

    def __init__(self, quiet: bool) -> None:
        self.items: list[Stage] = []
        self.quiet = quiet

    def run(self, name: str, fn: Callable[[], tuple[str, str]]) -> None:
        start = time.perf_counter()
        status, detail = fn()
        stage = Stage(name, status, detail, round(time.perf_counter() - start, 3))
        self.items.append(stage)
        if not self.quiet:
            note(f"[{name}] {status}{': ' + detail if detail else ''} ({stage.seconds:.2f} s)")


def package(
    loaded: LoadedRecipe,
    *,
    mode: Mode | None = None,
    frozen: bool = False,
    quiet: bool = False,
    push: bool | None = None,
    image_policy: ImagePolicy = "build",
) -> PackageResult:
    """Lock → fetch → convert → upload → image (baked) or volume + slim image, skipping what exists."""
    from packager.source.lock import ensure_lock
    from packager.store.stores import open_store

    recipe = loaded.recipe
    mode = mode or recipe.mode
    stages = _Stages(quiet)
    state: dict[str, Any] = {}

    def lock_stage() -> tuple[str, str]:
        lock = ensure_lock(loaded, frozen=frozen, quiet=quiet)
        state["lock"] = lock
        return "fresh", (lock.source.get("commit") or lock.fingerprint)[:12]

    stages.run("lock", lock_stage)
    lock = state["lock"]
    store = open_store(loaded)

    def artifact_stage() -> tuple[str, str]:
        artifact_id = lock.artifact_id
        if artifact_id and local_artifact(recipe.name, artifact_id):
            return "skipped", f"artifact {short_id(artifact_id)} on local disk"
        if artifact_id and store.has_artifact(recipe.name, artifact_id):
            return "skipped", f"artifact {short_id(artifact_id)} in the store"
        artifact = ensure_artifact(loaded, lock=lock, quiet=quiet)
        state["artifact"] = artifact
        # ensure_artifact records the id in the lock; keep ours in step.
        state["lock"] = dataclasses.replace(lock, artifact_id=artifact.id)
        return "done", f"converted to {short_id(artifact.id)}"

    stages.run("convert", artifact_stage)
    lock = state["lock"]
    artifact_id: str = lock.artifact_id

    def artifact_bytes() -> Artifact:
        """The local artifact, converting or pulling it from the store only now that bytes are needed."""
        if "artifact" not in state:
            found = local_artifact(recipe.name, artifact_id)
            if found is None and store.has_artifact(recipe.name, artifact_id):
                from packager.pipeline.artifact import artifact_dir

                result = store.download(
                    recipe.name, artifact_id, artifact_dir(recipe.name, artifact_id), progress=not quiet
                )
                state["downloaded"] = state.get("downloaded", 0) + result.bytes_sent
                found = local_artifact(recipe.name, artifact_id)
            state["artifact"] = found or ensure_artifact(loaded, lock=lock, quiet=quiet)
        return state["artifact"]

    def upload_stage() -> tuple[str, str]:
        if "artifact" not in state and store.has_artifact(recipe.name, artifact_id):
            return "skipped", "already in the store"
        result = store.upload(artifact_bytes(), progress=not quiet)
        state["uploaded"] = result.bytes_sent
        if result.skipped_whole:
            return "skipped", "already in the store"
        return "done", f"{result.files_sent} files, {result.bytes_sent} bytes"

    stages.run("upload", upload_stage)
    artifact_uri = store.artifact_uri(recipe.name, artifact_id)

    manifest = _manifest(state, store, recipe.name, artifact_id)
    result = PackageResult(
        name=recipe.name,
        mode=mode,
        artifact_id=artifact_id,
        source=_describe_source(lock),
        commit=lock.source.get("commit"),
        bytes_before=sum(int(e["size"]) for e in lock.files.values()),
        bytes_after=manifest.total_bytes,
        store_uri=artifact_uri,
    )

    if mode == "volume":
        from packager.store.seed import seed_volume, volume_has_artifact

        def seed_stage() -> tuple[str, str]:
            result.volume_path = str(mf.volume_path(recipe.volume.mount, recipe.name, artifact_id))
            if not recipe.volume.id:
                return "skipped", "no volume.id in the recipe (workers pull from the store at start)"
            if volume_has_artifact(loaded, artifact_id):
                return "skipped", "volume already has the artifact"
            seeded = seed_volume(loaded, artifact_bytes(), progress=not quiet)
            state["uploaded"] = state.get("uploaded", 0) + seeded.bytes_sent
            return "done", f"{seeded.bytes_sent} bytes to volume {recipe.volume.id}"

        stages.run("volume", seed_stage)

    def image_stage() -> tuple[str, str]:
        return _image_stage(
            loaded,
            mode,
            artifact_id,
            manifest,
            artifact_uri,
            artifact_bytes,
            push,
            image_policy,
            result,
            quiet,
        )

    stages.run("image", image_stage)
    result.planned_cold_start_s = _planned_cold_start(loaded, manifest, result)
    result.bytes_uploaded = int(state.get("uploaded", 0))
    result.bytes_downloaded = int(state.get("downloaded", 0))
    result.stages = stages.items
    return result


def _image_stage(
    loaded: LoadedRecipe,
    mode: Mode,
    artifact_id: str,
    manifest: mf.Manifest,
    artifact_uri: str,
    artifact_bytes: Callable[[], Artifact],
    push: bool | None,
    policy: ImagePolicy,
    result: PackageResult,
    quiet: bool,
) -> tuple[str, str]:
    from packager.image import build as image_build
    from packager.image.naming import image_tag
    from packager.image.render import default_context_dir, plan, render

    recipe = loaded.recipe
    tag = image_tag(recipe.image.repository, recipe.name, artifact_id, mode)
    result.image_tag = tag
    push = recipe.image.push if push is None else push
    if policy != "render":
        engine_error = image_build.engine_problem()
        if engine_error and policy == "build":
            raise ImageError(engine_error)
        if engine_error:
            policy = "render"
    if policy != "render":
        existing = image_build.find_built_image(loaded, artifact_id, mode, artifact_uri=artifact_uri)
        if existing is not None:
            result.image_size, result.image_layers = existing.size, len(existing.layers)
            if push and not image_build.is_pushed(existing):
                image_build.push(existing, quiet=quiet)
                return "done", f"{tag} pushed (already built)"
            return "skipped", f"{tag} already built"
    if policy == "render":
        # The Dockerfile carries the artifact id and the worker code digest in its labels, so an
        # identical one means an identical context (contexts are replaced whole, never patched).
        context = default_context_dir(recipe.name, artifact_id, mode)
        wanted = plan(loaded, manifest, artifact_id, mode, artifact_uri=artifact_uri).text
        if (context / "Dockerfile").is_file() and (context / "Dockerfile").read_text() == wanted:
            result.context_dir = str(context.resolve())
            return (
                "skipped",
                f"context {context} up to date (no image built: no Docker engine, or --image render)",
            )
    artifact = artifact_bytes() if mode == "baked" else None
    rendered = render(loaded, artifact, manifest, artifact_id, mode, artifact_uri=artifact_uri)
    result.context_dir = str(rendered.context_dir)
    if policy == "render":
        return "rendered", f"{rendered.context_dir} (no image built: no Docker engine, or --image render)"
    built = image_build.build_context(loaded, rendered, push=push, quiet=quiet)
    result.image_size, result.image_layers, result.image_built = built.size, len(built.layers), True
    return "done", f"{tag} built{' and pushed' if built.pushed else ''}"


def _manifest(state: dict[str, Any], store: Any, name: str, artifact_id: str) -> mf.Manifest:
    if "artifact" in state:
        return state["artifact"].manifest
    found = local_artifact(name, artifact_id)
    if found:
        return found.manifest
    manifest = store.read_manifest(name, artifact_id)
    if manifest is None:  # pragma: no cover - has_artifact said yes a moment ago
        raise ImageError(f"the store lost artifact {short_id(artifact_id)} while packaging")
    return manifest


def _describe_source(lock: Any) -> str:
    src = lock.source
    if src.get("repo"):
        return f"{src['repo']}@{src.get('revision', 'main')}"
    return str(src.get("kind", "local"))


def _planned_cold_start(
    loaded: LoadedRecipe, manifest: mf.Manifest, result: PackageResult
) -> dict[str, Any] | None:
    from packager.deploy.plan import cold_start_summary

    return cold_start_summary(loaded, manifest, image_size=result.image_size, mode=result.mode)
