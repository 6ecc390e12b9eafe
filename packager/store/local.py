"""A store in a local folder (`store.uri: build/store` or any path): the same layout as S3,
<root>/<name>/<artifact-id>/, written file by file with the manifest last."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from artifact_format import manifest as mf
from packager.convert.artifact import Artifact
from packager.errors import StoreError
from packager.store.transfer import (
    TransferResult,
    bad_stored_files,
    download_verified,
    hash_before_sending,
    local_manifest_bytes,
    progress_bar,
    read_stored_manifest,
)
from volume_sync import fetch


class LocalStore:
    """A store in a local directory; files are copied in atomically (temp + rename), manifest last."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)

    def _dir(self, name: str, artifact_id: str) -> Path:
        return self.root / name / artifact_id

    def artifact_uri(self, name: str, artifact_id: str) -> str:
        return str(self._dir(name, artifact_id))

    def has_artifact(self, name: str, artifact_id: str) -> bool:
        return (self._dir(name, artifact_id) / mf.MANIFEST_NAME).is_file()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot create the store directory ({exc.strerror})") from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"{self.root}: the store directory is not writable")

    def upload(self, artifact: Artifact, *, progress: bool) -> TransferResult:
        final = self._dir(artifact.name, artifact.id)
        uri = str(final)
        if self.has_artifact(artifact.name, artifact.id):
            return TransferResult(uri, 0, len(artifact.manifest.files), 0, skipped_whole=True)
        manifest_bytes = local_manifest_bytes(artifact)
        for leftover in final.rglob(".*.tmp*") if final.is_dir() else ():
            leftover.unlink()  # a copy that a killed run never renamed into place
        todo = []
        for entry in mf.entries(artifact.manifest):
            target = final / entry.path
            # Files only ever appear here by rename after a full copy, so one of the right size is whole.
            if not (target.is_file() and target.stat().st_size == entry.size):
                todo.append(entry)
        hash_before_sending(artifact.dir, todo, artifact.name, progress)
        try:
            with progress_bar(sum(e.size for e in todo), f"upload {artifact.name}", progress) as bar:
                for entry in todo:
                    target = final / entry.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
                    shutil.copyfile(artifact.dir / entry.path, tmp)
                    os.replace(tmp, target)
                    bar.update(entry.size)
            mf.write_atomic(final / mf.MANIFEST_NAME, manifest_bytes)
        except OSError as exc:
            raise StoreError(
                f"{exc.filename or self.root}: cannot write to the store ({exc.strerror})"
            ) from None
        sent = sum(e.size for e in todo) + len(manifest_bytes)
        return TransferResult(
            uri, len(todo), len(artifact.manifest.files) - len(todo), sent, skipped_whole=False
        )

    def download(self, name: str, artifact_id: str, dest: Path, *, progress: bool) -> TransferResult:
        source = fetch.DirSource(self._dir(name, artifact_id))
        return download_verified(source, name, artifact_id, Path(dest), progress)

    def read_manifest(self, name: str, artifact_id: str) -> mf.Manifest | None:
        return read_stored_manifest(fetch.DirSource(self._dir(name, artifact_id)), artifact_id)

    def verify_remote(
        self, name: str, artifact_id: str, manifest: mf.Manifest, *, progress: bool
    ) -> list[str]:
        """Hash every stored file; delete the bad ones and the manifest. Returns the bad paths."""
        final = self._dir(name, artifact_id)
        bad = bad_stored_files(fetch.DirSource(final), manifest, progress)
        if bad:
            (final / mf.MANIFEST_NAME).unlink(missing_ok=True)
            for path in bad:
                (final / path).unlink(missing_ok=True)
        return bad

    def list_artifacts(self) -> list[tuple[str, str]]:
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.glob(f"*/*/{mf.MANIFEST_NAME}"):
            artifact_dir = path.parent
            if mf.is_artifact_id(artifact_dir.name):
                found.append((artifact_dir.parent.name, artifact_dir.name))
        return sorted(found)

    def delete_artifact(self, name: str, artifact_id: str) -> None:
        """Uncommit first (manifest), so a reader never sees a complete-looking half-deleted artifact."""
        path = self._dir(name, artifact_id)
        (path / mf.MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
