"""One packaging run: the recipe, the options, and what the stages have found or made so far.

Stages read and fill a `Run` instead of passing values around: the lock they pinned, the artifact
bytes once some stage needed them, the bytes moved. Everything is derived lazily, so a run whose
stages all skip never opens the artifact, converts, or downloads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from artifact_format import manifest as mf
from artifact_format.vocab import Mode
from packager.convert.artifact import Artifact, artifact_dir, local_artifact
from packager.pipeline.artifact import materialise
from packager.source.recipe import LoadedRecipe

if TYPE_CHECKING:
    from packager.image.built import BuildResult
    from packager.image.render import RenderResult
    from packager.publish.hub_repo import Published
    from packager.source.lock import Lock
    from packager.store.seed import SeedResult
    from packager.store.stores import Store
    from packager.store.transfer import TransferResult

ImagePolicy = Literal["build", "render", "auto"]


@dataclass(frozen=True)
class Outcome:
    """What a stage did: "done", "skipped", "fresh" (the lock) or "rendered", and a line saying so."""

    status: str
    detail: str = ""

    @property
    def moved_nothing(self) -> bool:
        return self.status.startswith("skip") or self.status == "fresh"


@dataclass(frozen=True)
class ImageOptions:
    """How the image stage runs: build (needs an engine), render only, or build when an engine is there."""

    policy: ImagePolicy = "build"
    push: bool | None = None  # None: the recipe's image.push
    base_image: str | None = None
    pip_find_links: str | None = None
    network: str | None = None
    no_cache: bool = False
    out_dir: Path | None = None  # the context folder (default: build/contexts/<name>/<id>-<mode>/)
    fresh_context: bool = False  # render even when an identical context is already there
    quiet_build: bool = False


@dataclass
class Run:
    """One recipe on its way through the stages."""

    loaded: LoadedRecipe
    mode: Mode
    frozen: bool = False
    quiet: bool = False
    verify: bool = True
    progress: bool | None = None  # progress bars on stderr; None: unless quiet
    image: ImageOptions = field(default_factory=ImageOptions)
    lock: Lock | None = None
    artifact: Artifact | None = None
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0
    transfer: TransferResult | None = None
    seeded: SeedResult | None = None
    rendered: RenderResult | None = None
    built: BuildResult | None = None
    image_tag: str | None = None
    volume_path: str | None = None
    published: Published | None = None
    _store: Store | None = None
    _manifest: mf.Manifest | None = None

    @property
    def name(self) -> str:
        return self.loaded.recipe.name

    @property
    def shows_progress(self) -> bool:
        return not self.quiet if self.progress is None else self.progress

    @property
    def store(self) -> Store:
        if self._store is None:
            from packager.store.stores import open_store

            self._store = open_store(self.loaded)
        return self._store

    @property
    def artifact_id(self) -> str:
        """The artifact id; converts when the lock does not know it yet."""
        if self.lock is not None and self.lock.artifact_id:
            return self.lock.artifact_id
        return self.artifact_bytes().id

    @property
    def artifact_uri(self) -> str:
        return self.store.artifact_uri(self.name, self.artifact_id)

    def use_artifact(self, artifact: Artifact) -> None:
        """Keep `artifact` as this run's bytes; the lock records its id (materialise wrote it)."""
        import dataclasses

        self.artifact = artifact
        if self.lock is not None and self.lock.artifact_id != artifact.id:
            self.lock = dataclasses.replace(self.lock, artifact_id=artifact.id)

    def artifact_bytes(self) -> Artifact:
        """The local artifact, converting or pulling it from the store only now that bytes are needed."""
        if self.artifact is not None:
            return self.artifact
        known = self.lock.artifact_id if self.lock is not None else None
        found = local_artifact(self.name, known) if known else None
        if found is None and known and self.store.has_artifact(self.name, known):
            result = self.store.download(
                self.name, known, artifact_dir(self.name, known), progress=self.shows_progress
            )
            self.bytes_downloaded += result.bytes_sent
            found = local_artifact(self.name, known)
        if found is None:
            found = materialise(
                self.loaded, frozen=self.frozen, quiet=self.quiet, lock=self.lock, verify=self.verify
            )
        self.use_artifact(found)
        return found

    def manifest(self) -> mf.Manifest:
        """The artifact's manifest from wherever it is cheapest: the bytes in hand, local disk, the store."""
        if self._manifest is not None:
            return self._manifest
        if self.artifact is not None:
            self._manifest = self.artifact.manifest
            return self._manifest
        artifact_id = self.artifact_id
        found = local_artifact(self.name, artifact_id)
        manifest = found.manifest if found else self._stored_manifest(artifact_id)
        self._manifest = manifest or self.artifact_bytes().manifest
        return self._manifest

    def _stored_manifest(self, artifact_id: str) -> mf.Manifest | None:
        from packager.errors import PackagerError

        try:
            return self.store.read_manifest(self.name, artifact_id)
        except PackagerError:
            return None  # an unreachable store only means the manifest comes from converting
