"""What moving an artifact reports and how it moves, shared by every store: the result of a
transfer, the transfer settings, and the verified download every store's pull goes through."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from artifact_format import manifest as mf
from artifact_format.vocab import short_id
from packager.convert.artifact import Artifact
from packager.errors import StoreError, VerifyError
from volume_sync import fetch

MiB = 1024 * 1024
HASH_CHUNK = 4 * MiB


class AsJson:
    """For the result dataclasses that `--json` prints: every field, in the order declared."""

    def to_json(self) -> dict[str, Any]:
        assert is_dataclass(self)
        return asdict(self)


@dataclass(frozen=True)
class TransferResult(AsJson):
    uri: str
    files_sent: int
    files_skipped: int
    bytes_sent: int
    skipped_whole: bool


@dataclass(frozen=True)
class TransferSettings:
    """How S3 transfers are cut up.

    16 MiB parts measured fastest of 8, 16, 32 and 64 MiB against the local S3 server: big enough
    that per-request overhead is small, small enough that ten requests keep the link busy to the
    last byte. Far below every provider's limit (RunPod's volume API refuses single requests of
    500 MB or more), and a 2 GB UNet is ~100 parts of S3's 10,000. Ten concurrent requests match
    the AWS CLI's default.
    Tests shrink the threshold to exercise multipart on small files (S3's floor is 5 MiB a part).
    """

    multipart_threshold: int = 16 * MiB
    chunk_size: int = 16 * MiB
    concurrency: int = 10

    def transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.chunk_size,
            max_concurrency=self.concurrency,
        )


def local_manifest_bytes(artifact: Artifact) -> bytes:
    """The manifest as stored beside the files, after checking the files against it (sizes)."""
    try:
        mf.check(artifact.dir, artifact.manifest)
        data = (artifact.dir / mf.MANIFEST_NAME).read_bytes()
    except (mf.ManifestError, OSError) as exc:
        raise VerifyError(f"{artifact.dir}: not a complete artifact: {exc}") from None
    if hashlib.sha256(data).hexdigest() != artifact.id:
        raise VerifyError(
            f"{artifact.dir / mf.MANIFEST_NAME}: does not hash to the artifact id {short_id(artifact.id)}"
        )
    return data


def hash_before_sending(root: Path, files: list[mf.FileEntry], label: str, progress: bool) -> None:
    """Hash every file about to leave, before the first byte does: the sha256 stored beside each
    object (and checked by every reader) is the manifest's, so a file that no longer matches it
    would be published as good. One line names the first bad file."""
    with progress_bar(sum(e.size for e in files), f"hash {label}", progress) as bar:
        for entry in files:
            path = root / entry.path
            h = hashlib.sha256()
            try:
                with open(path, "rb") as fh:
                    while chunk := fh.read(HASH_CHUNK):
                        h.update(chunk)
                        bar.update(len(chunk))
            except OSError as exc:
                raise VerifyError(f"{path}: cannot read ({exc.strerror})") from None
            if h.hexdigest() != entry.sha256:
                raise VerifyError(
                    f"{path}: sha256 {h.hexdigest()[:16]}… does not match the manifest "
                    f"({entry.sha256[:16]}…): the local artifact is corrupt; delete {root} and convert again"
                )


def bad_stored_files(source: fetch.Source, manifest: mf.Manifest, progress: bool) -> list[str]:
    """Download and hash every stored file, one at a time into a temporary folder; the paths of
    those that are absent or do not match the manifest."""
    import tempfile

    bad = []
    with (
        tempfile.TemporaryDirectory(prefix="packager-verify-") as tmp,
        progress_bar(manifest.total_bytes, f"verify {manifest.name}", progress) as bar,
    ):
        for entry in manifest.files:
            path = Path(tmp) / entry.path
            try:
                for _ in source.fetch([entry], Path(tmp), bar.update):
                    pass
                ok = mf.sha256_file(path) == entry.sha256
            except (fetch.FetchError, OSError):
                ok = False
            if not ok:
                bad.append(entry.path)
            path.unlink(missing_ok=True)
    return bad


def read_stored_manifest(source: fetch.Source, artifact_id: str) -> mf.Manifest | None:
    try:
        return fetch.read_manifest(source, artifact_id)
    except fetch.VerifyFailed as exc:
        raise VerifyError(str(exc)) from None
    except fetch.FetchError as exc:
        raise StoreError(str(exc)) from None


def download_verified(
    source: fetch.Source, name: str, artifact_id: str, dest: Path, progress: bool
) -> TransferResult:
    """Fetch into `dest` (staged beside it, verified, renamed); a complete copy already there is kept."""
    if dest.exists():
        if (dest / mf.MANIFEST_NAME).is_file() and mf.artifact_id_of(dest) == artifact_id:
            try:
                manifest = mf.check(dest, full_hash=True)
            except mf.ManifestError as exc:
                raise VerifyError(
                    f"{dest}: holds artifact {short_id(artifact_id)} but {exc}; remove it and pull again"
                ) from None
            for leftover in fetch.leftover_staging(dest):
                shutil.rmtree(leftover, ignore_errors=True)
            return TransferResult(str(dest), 0, len(manifest.files), 0, skipped_whole=True)
        if not fetch.is_empty_destination(dest):
            raise StoreError(
                f"{dest}: exists and is not artifact {short_id(artifact_id)}; remove it or pull elsewhere"
            )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return _fetch_into(source, name, artifact_id, dest, progress)
    except OSError as exc:
        where = exc.filename or dest
        raise StoreError(f"{where}: cannot write the pulled artifact ({exc.strerror or exc})") from None


def _fetch_into(
    source: fetch.Source, name: str, artifact_id: str, dest: Path, progress: bool
) -> TransferResult:
    with progress_bar(0, f"pull {name}", progress) as bar:

        def start(manifest: mf.Manifest, todo_bytes: int) -> None:
            bar.reset(total=todo_bytes)

        try:
            result = fetch.fetch_artifact(
                source, name, artifact_id, dest, on_bytes=bar.update, on_start=start
            )
        except fetch.VerifyFailed as exc:
            raise VerifyError(str(exc)) from None
        except fetch.FetchError as exc:
            raise StoreError(str(exc)) from None
    return TransferResult(
        str(dest), result.files_fetched, result.files_kept, result.bytes_fetched, skipped_whole=False
    )


def progress_bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
        leave=False,
    )
