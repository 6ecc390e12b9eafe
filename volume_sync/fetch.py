"""Copy an artifact out of a store (S3 or a local directory) into a directory, verified by sha256.

`volume_sync pull` uses it to fill a network volume and `packager pull` to fill a build machine, so
both read a store the same way: the manifest first (its sha256 must equal the artifact id, which
makes every file's sha256 in it trustworthy), then every file it lists, each hashed once on disk.
Files land in a staging directory beside the target, which is renamed into place only when
everything checks out; a reader never sees a half artifact under the final name. An interrupted
fetch resumes: staged files whose sha256 matches are kept and only the rest are fetched again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from artifact_format import manifest as mf
from volume_sync import s3

OnBytes = Callable[[int], None]
Arrivals = Generator[mf.FileEntry, None, None]
# Big files are fetched as concurrent ranged GETs of this size (the store's part size): large enough
# that per-request overhead is small, small enough that a failed range costs little to retry.
DOWNLOAD_CHUNK = 16 * 1024 * 1024
DOWNLOAD_CONCURRENCY = 10
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class FetchError(Exception):
    """The artifact could not be fetched (absent, unreachable, refused). One line; exit code 2."""

    exit_code = 2


class VerifyFailed(FetchError):
    """What the store holds does not match the manifest (or the manifest its id). Exit code 1."""

    exit_code = 1


@dataclass(frozen=True)
class FetchResult:
    """What a fetch moved: `bytes_fetched` counts the manifest too (it is always read)."""

    dir: Path
    files_fetched: int
    files_kept: int
    bytes_fetched: int


class Source(Protocol):
    """Where an artifact's files are read from; `uri` is the artifact prefix (for messages)."""

    uri: str

    def read(self, relpath: str) -> bytes | None: ...

    def fetch(self, entries: list[mf.FileEntry], staging: Path, on_bytes: OnBytes) -> Arrivals:
        """Write each entry to staging/<path>, yielding it once its file is complete on disk."""
        ...


class DirSource:
    """An artifact in a local-directory store: `<store>/<name>/<id>/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)

    def read(self, relpath: str) -> bytes | None:
        try:
            return (self.root / relpath).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FetchError(f"{self.root / relpath}: cannot read ({exc.strerror})") from None

    def fetch(self, entries: list[mf.FileEntry], staging: Path, on_bytes: OnBytes) -> Arrivals:
        for entry in entries:
            target = staging / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            try:
                shutil.copyfile(self.root / entry.path, tmp)
            except FileNotFoundError:
                raise VerifyFailed(f"{self.root / entry.path}: missing (listed in the manifest)") from None
            os.replace(tmp, target)
            on_bytes(entry.size)
            yield entry


class S3Source:
    """An artifact under an S3 prefix, read with s3transfer (concurrent ranged GETs for big files)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        *,
        chunk_size: int = DOWNLOAD_CHUNK,
        concurrency: int = DOWNLOAD_CONCURRENCY,
        endpoint_hint: str = "AWS_ENDPOINT_URL",
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}"
        self.chunk_size = chunk_size
        self.concurrency = concurrency
        self.endpoint_hint = endpoint_hint

    def key(self, relpath: str) -> str:
        return f"{self.prefix}/{relpath}" if self.prefix else relpath

    def failure(self, exc: BaseException, what: str) -> FetchError:
        line = s3.explain(
            exc, bucket=self.bucket, endpoint=s3.endpoint_of(self.client), endpoint_hint=self.endpoint_hint
        )
        return FetchError(line or f"{what}: {exc.__class__.__name__}: {exc}")

    def read(self, relpath: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(relpath))["Body"]
            data: bytes = body.read()
            return data
        except ClientError as exc:
            if s3.error_code(exc) in {"NoSuchKey", "404"}:
                return None
            raise self.failure(exc, f"{self.uri}/{relpath}") from None
        except BotoCoreError as exc:
            raise self.failure(exc, f"{self.uri}/{relpath}") from None

    def fetch(self, entries: list[mf.FileEntry], staging: Path, on_bytes: OnBytes) -> Arrivals:
        from boto3.s3.transfer import TransferConfig, create_transfer_manager
        from botocore.exceptions import BotoCoreError, ClientError

        config = TransferConfig(
            multipart_threshold=self.chunk_size,
            multipart_chunksize=self.chunk_size,
            max_concurrency=self.concurrency,
        )
        with create_transfer_manager(self.client, config) as manager:
            futures = []
            for entry in entries:
                target = staging / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                futures.append(
                    (
                        entry,
                        manager.download(
                            self.bucket,
                            self.key(entry.path),
                            str(target),
                            subscribers=[progress_subscriber(entry.size, on_bytes)],
                        ),
                    )
                )
            for entry, future in futures:
                try:
                    future.result()
                except ClientError as exc:
                    if s3.error_code(exc) in {"NoSuchKey", "404"}:
                        raise VerifyFailed(
                            f"{self.uri}/{entry.path}: missing from the store (listed in the manifest)"
                        ) from None
                    raise self.failure(exc, f"{self.uri}/{entry.path}") from None
                except BotoCoreError as exc:
                    raise self.failure(exc, f"{self.uri}/{entry.path}") from None
                yield entry


def parse_artifact_uri(uri: str) -> tuple[str, str]:
    """(name, artifact_id) from an artifact prefix ending in `<name>/<id>`; FetchError otherwise."""
    parts = uri.rstrip("/").split("/")
    if len(parts) < 2 or not mf.is_artifact_id(parts[-1]) or not _NAME_RE.match(parts[-2]):
        raise FetchError(
            f"{uri}: expected the artifact's prefix in the store, ending in <name>/<artifact-id> "
            "(64 hex digits)"
        )
    return parts[-2], parts[-1]


def open_source(uri: str, *, client: Any = None) -> tuple[Source, str, str]:
    """The source for an artifact prefix `s3://bucket/.../<name>/<id>` or `<dir>/<name>/<id>`.

    Returns (source, name, artifact_id). Raises FetchError for anything else.
    """
    name, artifact_id = parse_artifact_uri(uri)
    trimmed = uri.rstrip("/")
    if trimmed.startswith("s3://"):
        try:
            bucket, prefix = s3.parse_uri(trimmed)
        except s3.S3UriError as exc:
            raise FetchError(str(exc)) from None
        return S3Source(client if client is not None else s3.make_client(), bucket, prefix), name, artifact_id
    if "://" in trimmed:
        raise FetchError(f"{uri}: only s3:// URIs and local directories are supported")
    return DirSource(Path(trimmed)), name, artifact_id


def read_manifest(source: Source, artifact_id: str) -> mf.Manifest | None:
    """The artifact's manifest from the store, checked against its id; None when absent."""
    data = source.read(mf.MANIFEST_NAME)
    if data is None:
        return None
    return _check_manifest(source, data, artifact_id)


def _check_manifest(source: Source, data: bytes, artifact_id: str) -> mf.Manifest:
    digest = hashlib.sha256(data).hexdigest()
    if digest != artifact_id:
        raise VerifyFailed(
            f"{source.uri}/{mf.MANIFEST_NAME}: sha256 {digest[:16]}… is not the artifact id "
            f"{artifact_id[:16]}…: the store copy is corrupt or misplaced"
        )
    try:
        return mf.parse(data)
    except mf.ManifestError as exc:
        raise VerifyFailed(f"{source.uri}/{mf.MANIFEST_NAME}: {exc}") from None


STAGING_NAME = ".partial"


def staging_dir(dest: Path) -> Path:
    """Where a fetch into `dest` stages its files: beside it, on the same filesystem, hidden; inside
    it when `dest` is an existing (empty) folder, which may be a mount point that cannot be replaced."""
    if is_empty_destination(dest):
        return dest / STAGING_NAME
    return dest.parent / f".{dest.name}.partial"


def leftover_staging(dest: Path) -> list[Path]:
    """Staging folders an interrupted fetch into `dest` left, once `dest` is complete: beside it,
    or inside it when it was filled in place (killed between the manifest's rename and the rmdir)."""
    return [p for p in (dest.parent / f".{dest.name}.partial", dest / STAGING_NAME) if p.is_dir()]


def is_empty_destination(dest: Path) -> bool:
    """An existing folder holding nothing but an earlier fetch's staging folder."""
    return dest.is_dir() and all(child.name == STAGING_NAME for child in dest.iterdir())


def fetch_artifact(
    source: Source,
    name: str,
    artifact_id: str,
    dest: Path,
    *,
    on_bytes: OnBytes | None = None,
    on_start: Callable[[mf.Manifest, int], None] | None = None,
    on_file: Callable[[mf.FileEntry], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> FetchResult:
    """Fetch the artifact into `dest` (absent or an empty folder), verified, renamed into place.

    Args:
        source: the artifact's prefix in the store (see `open_source`).
        name, artifact_id: what the caller expects to find there; both are checked.
        dest: the final directory; files are staged in `staging_dir(dest)` and renamed into it.
        on_bytes: called with byte counts as they arrive (progress bars).
        on_start: called with the manifest and the bytes left to fetch, once they are known.
        on_file: called after each file is verified (log lines).
        before_commit: called just before the rename; raising there leaves the staged files to resume.

    Returns a FetchResult with what was fetched and what an earlier interrupted fetch had left.

    Raises:
        FetchError: no manifest (the artifact is absent or its upload never finished), or the store
            cannot be reached or refuses.
        VerifyFailed: the manifest does not hash to the id, names another model, or a file's sha256
            does not match it. The bad file is deleted; verified ones stay staged for the next try.
    """
    data = source.read(mf.MANIFEST_NAME)
    if data is None:
        raise FetchError(
            f"{source.uri}: no {mf.MANIFEST_NAME}: the artifact is not in the store (or its upload "
            "did not finish; re-run the upload)"
        )
    manifest = _check_manifest(source, data, artifact_id)
    if manifest.name != name:
        raise VerifyFailed(f"{source.uri}: the manifest names model {manifest.name!r}, not {name!r}")
    staging = staging_dir(dest)
    staging.mkdir(parents=True, exist_ok=True)
    todo, kept = _resume(staging, manifest)
    if on_start:
        on_start(manifest, sum(e.size for e in todo))
    count = on_bytes or (lambda n: None)
    fetched = 0
    with closing(source.fetch(todo, staging, count)) as arrivals:
        for entry in arrivals:
            path = staging / entry.path
            digest = mf.sha256_file(path)
            if digest != entry.sha256:
                path.unlink(missing_ok=True)
                raise VerifyFailed(
                    f"{source.uri}/{entry.path}: sha256 {digest[:16]}… does not match the manifest "
                    f"({entry.sha256[:16]}…): the store copy is corrupt; upload the artifact again"
                )
            fetched += entry.size
            if on_file:
                on_file(entry)
    mf.write_atomic(staging / mf.MANIFEST_NAME, data)
    if before_commit:
        before_commit()
    if staging.parent == dest:
        # Into the existing folder, the manifest (the commit marker) last.
        for child in sorted(staging.iterdir(), key=lambda p: p.name == mf.MANIFEST_NAME):
            os.rename(child, dest / child.name)
        staging.rmdir()
        _fsync_dir(dest)
    else:
        os.rename(staging, dest)
    _fsync_dir(dest.parent)
    return FetchResult(dest, len(todo), kept, fetched + len(data))


def _resume(staging: Path, manifest: mf.Manifest) -> tuple[list[mf.FileEntry], int]:
    """Keep staged files that already verify; remove everything else (partial and temp files)."""
    wanted = {e.path: e for e in manifest.files}
    todo: list[mf.FileEntry] = []
    kept = 0
    for entry in mf.entries(manifest):
        path = staging / entry.path
        if path.is_file() and path.stat().st_size == entry.size and mf.sha256_file(path) == entry.sha256:
            kept += 1
        else:
            path.unlink(missing_ok=True)
            todo.append(entry)
    for path in sorted(staging.rglob("*"), reverse=True):
        rel = path.relative_to(staging).as_posix()
        if path.is_file() and rel not in wanted:
            path.unlink()
    return todo, kept


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def progress_subscriber(size: int, on_bytes: Callable[[int], None]) -> Any:
    """An s3transfer subscriber that reports bytes as they move and tells the transfer its size.

    We know every size from the manifest, which saves s3transfer a HEAD request per file.
    """
    from s3transfer.subscribers import BaseSubscriber

    class _Progress(BaseSubscriber):  # type: ignore[misc]
        def on_queued(self, future: Any, **kwargs: Any) -> None:
            future.meta.provide_transfer_size(size)

        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            on_bytes(bytes_transferred)

    return _Progress()
