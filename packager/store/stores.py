"""The artifact store: where an artifact waits between the build machine and the workers.

Layout: `<store>/<name>/<artifact-id>/<files>`, the same in S3 (`s3://bucket/prefix`) and in a local
directory. The manifest goes in LAST and is the commit marker: a prefix without one is absent to
every reader, so an upload that dies half way is invisible and a re-run finishes it. Because the
artifact id is the manifest's sha256, "the manifest is there" means "exactly this content is there":
a complete artifact is skipped with one request, and a re-run moves no bytes.

Each S3 object carries its file's sha256 as `x-amz-meta-sha256` (multipart checksums are composite
and never equal a file's sha256), so a re-run can skip objects that are already right without
reading them, and a download can verify what it got against the manifest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from artifact_format import manifest as mf
from artifact_format.vocab import short_id
from packager.errors import PackagerError, StoreError, VerifyError
from packager.pipeline.artifact import Artifact
from packager.source.recipe import LoadedRecipe
from packager.store import client as s3
from volume_sync import fetch

MiB = 1024 * 1024


@dataclass(frozen=True)
class TransferResult:
    uri: str
    files_sent: int
    files_skipped: int
    bytes_sent: int
    skipped_whole: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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


class Store(Protocol):
    uri: str

    def artifact_uri(self, name: str, artifact_id: str) -> str: ...

    def has_artifact(self, name: str, artifact_id: str) -> bool: ...

    def check(self) -> None:
        """Fail now, in one line, if the store cannot take an upload (before a long conversion)."""
        ...

    def upload(self, artifact: Artifact, *, progress: bool) -> TransferResult: ...

    def download(self, name: str, artifact_id: str, dest: Path, *, progress: bool) -> TransferResult: ...

    def read_manifest(self, name: str, artifact_id: str) -> mf.Manifest | None: ...

    def list_artifacts(self) -> list[tuple[str, str]]: ...

    def delete_artifact(self, name: str, artifact_id: str) -> None: ...


def open_store(loaded: LoadedRecipe, *, settings: TransferSettings | None = None) -> Store:
    """The recipe's store: `store.uri`, with its endpoint, profile and region for S3."""
    cfg = loaded.recipe.store
    return open_store_uri(
        loaded.store_uri(),
        endpoint_url=cfg.endpoint_url,
        profile=cfg.profile,
        region=cfg.region,
        settings=settings,
    )


def open_store_uri(
    uri: str,
    *,
    endpoint_url: str | None = None,
    profile: str | None = None,
    region: str | None = None,
    settings: TransferSettings | None = None,
) -> Store:
    """A store from a URI: `s3://bucket[/prefix]` or a local directory.

    For S3 the endpoint is `endpoint_url`, else boto3's own (`AWS_ENDPOINT_URL`, the profile's, or
    AWS); credentials come only from boto3's chain. No request is made until the store is used.
    """
    if uri.startswith("s3://"):
        bucket, prefix = s3.parse_uri(uri)
        return S3Store(
            bucket, prefix, endpoint_url=endpoint_url, profile=profile, region=region, settings=settings
        )
    if "://" in uri:
        raise StoreError(f"{uri}: a store is s3://bucket/prefix or a local directory")
    return LocalStore(Path(uri))


def split_artifact_uri(uri: str) -> tuple[str, str, str]:
    """`s3://b/models/<name>/<id>` → ("s3://b/models", name, id); the same for a local path."""
    try:
        name, artifact_id = fetch.parse_artifact_uri(uri)
    except fetch.FetchError as exc:
        raise StoreError(str(exc)) from None
    store_uri = uri.rstrip("/").rsplit("/", 2)[0]
    if store_uri == "s3:/":
        raise StoreError(f"{uri}: no bucket before <name>/<artifact-id>")
    return store_uri, name, artifact_id


# -- local directory -------------------------------------------------------------------------------


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
        manifest_bytes = _local_manifest_bytes(artifact)
        for leftover in final.rglob(".*.tmp*") if final.is_dir() else ():
            leftover.unlink()  # a copy that a killed run never renamed into place
        todo = []
        for entry in mf.entries(artifact.manifest):
            target = final / entry.path
            # Files only ever appear here by rename after a full copy, so one of the right size is whole.
            if not (target.is_file() and target.stat().st_size == entry.size):
                todo.append(entry)
        try:
            with _bar(sum(e.size for e in todo), f"upload {artifact.name}", progress) as bar:
                for entry in todo:
                    target = final / entry.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
                    shutil.copyfile(artifact.dir / entry.path, tmp)
                    os.replace(tmp, target)
                    bar.update(entry.size)
            _write_atomic(final / mf.MANIFEST_NAME, manifest_bytes)
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
        return _download(source, name, artifact_id, Path(dest), progress)

    def read_manifest(self, name: str, artifact_id: str) -> mf.Manifest | None:
        return _read_manifest(fetch.DirSource(self._dir(name, artifact_id)), artifact_id)

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


# -- S3 --------------------------------------------------------------------------------------------


class S3Store:
    """A store under `s3://bucket/prefix` on AWS, R2, MinIO or any S3-compatible service."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        profile: str | None = None,
        region: str | None = None,
        settings: TransferSettings | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.settings = settings or TransferSettings()
        self._endpoint_url, self._profile, self._region = endpoint_url, profile, region
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3.connect(
                endpoint_url=self._endpoint_url, profile=self._profile, region=self._region
            )
        return self._client

    def key_prefix(self, name: str, artifact_id: str) -> str:
        """`<prefix>/<name>/<id>/`, ending in a slash so that listing it never matches a sibling."""
        return f"{self.prefix}/{name}/{artifact_id}/" if self.prefix else f"{name}/{artifact_id}/"

    def artifact_uri(self, name: str, artifact_id: str) -> str:
        return f"s3://{self.bucket}/{self.key_prefix(name, artifact_id).rstrip('/')}"

    def _fail(self, exc: BaseException, doing: str) -> PackagerError:
        return s3.failure(exc, client=self.client, bucket=self.bucket, doing=doing)

    def has_artifact(self, name: str, artifact_id: str) -> bool:
        """One HEAD of the manifest: present (with the id as its sha256) means complete."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key_prefix(name, artifact_id) + mf.MANIFEST_NAME
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if s3.is_not_found(exc):
                return False
            raise self._fail(exc, f"checking s3://{self.bucket}/{key}") from None
        except BotoCoreError as exc:
            raise self._fail(exc, f"checking s3://{self.bucket}/{key}") from None
        return head.get("Metadata", {}).get("sha256", artifact_id) == artifact_id

    def check(self) -> None:
        """One small listing: names a missing bucket, refused keys or a wrong endpoint."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "", MaxKeys=1
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, f"checking {self.uri}") from None

    def upload(self, artifact: Artifact, *, progress: bool) -> TransferResult:
        uri = self.artifact_uri(artifact.name, artifact.id)
        if self.has_artifact(artifact.name, artifact.id):
            return TransferResult(uri, 0, len(artifact.manifest.files), 0, skipped_whole=True)
        sent, skipped, nbytes = put_artifact(
            self.client,
            self.bucket,
            self.key_prefix(artifact.name, artifact.id),
            artifact,
            settings=self.settings,
            progress=progress,
        )
        return TransferResult(uri, sent, skipped, nbytes, skipped_whole=False)

    def _source(self, name: str, artifact_id: str) -> fetch.S3Source:
        return fetch.S3Source(
            self.client,
            self.bucket,
            self.key_prefix(name, artifact_id),
            chunk_size=self.settings.chunk_size,
            concurrency=self.settings.concurrency,
            endpoint_hint=s3.STORE_ENDPOINT_HINT,
        )

    def download(self, name: str, artifact_id: str, dest: Path, *, progress: bool) -> TransferResult:
        return _download(self._source(name, artifact_id), name, artifact_id, Path(dest), progress)

    def read_manifest(self, name: str, artifact_id: str) -> mf.Manifest | None:
        return _read_manifest(self._source(name, artifact_id), artifact_id)

    def list_artifacts(self) -> list[tuple[str, str]]:
        from botocore.exceptions import BotoCoreError, ClientError

        base = f"{self.prefix}/" if self.prefix else ""
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            ):
                for obj in page.get("Contents", []):
                    parts = obj["Key"][len(base) :].split("/")
                    if len(parts) == 3 and parts[2] == mf.MANIFEST_NAME and mf.is_artifact_id(parts[1]):
                        found.append((parts[0], parts[1]))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, f"listing {self.uri}") from None
        return sorted(found)

    def delete_artifact(self, name: str, artifact_id: str) -> None:
        """Uncommit (delete the manifest) first, then the files and any unfinished uploads."""
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = self.key_prefix(name, artifact_id)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=prefix + mf.MANIFEST_NAME)
            abort_uploads(self.client, self.bucket, prefix)
            keys = [
                {"Key": obj["Key"]}
                for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix
                )
                for obj in page.get("Contents", [])
            ]
            for i in range(0, len(keys), 1000):
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys[i : i + 1000], "Quiet": True}
                )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, f"deleting {self.artifact_uri(name, artifact_id)}") from None


def put_artifact(
    client: Any,
    bucket: str,
    key_prefix: str,
    artifact: Artifact,
    *,
    settings: TransferSettings,
    progress: bool,
    probe: str = "list",
    trust_size: bool = False,
    fail: Callable[[BaseException, str], PackagerError] | None = None,
) -> tuple[int, int, int]:
    """Upload an artifact's files under `key_prefix`, then its manifest; returns (sent, skipped, bytes).

    Objects already there with the file's size and sha256 metadata are skipped (with `trust_size`,
    size alone when the service keeps no metadata). Unfinished multipart uploads under the prefix,
    left by a killed run, are aborted first. `probe` is how we learn what is there: one listing of
    the prefix ("list"), or a HEAD per file ("head") where listing is slow. `fail` turns a boto3
    failure into the caller's one-line error (default: StoreError).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    manifest_bytes = _local_manifest_bytes(artifact)
    doing = f"uploading to s3://{bucket}/{key_prefix}"
    try:
        abort_uploads(client, bucket, key_prefix)
        wanted = list(mf.entries(artifact.manifest))
        present = _present(client, bucket, key_prefix, wanted, probe)
        files = [e for e in wanted if not _same(client, bucket, key_prefix + e.path, e, present, trust_size)]
        total = sum(e.size for e in files)
        with _bar(total, f"upload {artifact.name}", progress) as bar:
            _upload_files(client, bucket, key_prefix, artifact.dir, files, settings, bar.update)
        # Last, and only once every file is in: the commit marker.
        client.put_object(
            Bucket=bucket,
            Key=key_prefix + mf.MANIFEST_NAME,
            Body=manifest_bytes,
            ContentType="application/json",
            Metadata={"sha256": artifact.id},
        )
    except (ClientError, BotoCoreError) as exc:
        if fail is not None:
            raise fail(exc, doing) from None
        raise s3.failure(exc, client=client, bucket=bucket, doing=doing) from None
    n_files = len(artifact.manifest.files)
    return len(files), n_files - len(files), total + len(manifest_bytes)


def abort_uploads(client: Any, bucket: str, key_prefix: str) -> int:
    """Abort unfinished multipart uploads under the prefix (a killed run's parts cost storage)."""
    from botocore.exceptions import ClientError

    aborted = 0
    try:
        pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=key_prefix)
        uploads = [up for page in pages for up in page.get("Uploads", [])]
    except ClientError as exc:
        if s3.error_code(exc) in {"NotImplemented", "501", "MethodNotAllowed", "405", "AccessDenied"}:
            # A service without the call (or a key without s3:ListBucketMultipartUploads) leaves
            # the stale parts to the bucket's lifecycle rules; the upload itself can go on.
            return 0
        raise
    for up in uploads:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
            aborted += 1
        except ClientError as exc:
            if s3.error_code(exc) != "NoSuchUpload":
                raise
    return aborted


def _present(
    client: Any, bucket: str, key_prefix: str, wanted: list[mf.FileEntry], probe: str
) -> dict[str, Any]:
    """Key → size for what is already under the prefix (a HEAD response in "head" mode)."""
    if probe == "list":
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix)
        return {obj["Key"]: obj["Size"] for page in pages for obj in page.get("Contents", [])}
    found: dict[str, Any] = {}
    for entry in wanted:
        head = _head(client, bucket, key_prefix + entry.path)
        if head is not None:
            found[key_prefix + entry.path] = head
    return found


def _same(
    client: Any, bucket: str, key: str, entry: mf.FileEntry, present: dict[str, Any], trust_size: bool
) -> bool:
    """Is the object at `key` already this file? Size first (free), then the sha256 metadata."""
    seen = present.get(key)
    if seen is None:
        return False
    head = seen if isinstance(seen, dict) else None
    size = head["ContentLength"] if head else seen
    if size != entry.size:
        return False
    if head is None:
        head = _head(client, bucket, key)
        if head is None:
            return False
    digest = head.get("Metadata", {}).get("sha256")
    if digest is None:
        return trust_size
    return bool(digest == entry.sha256)


def _head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        head: dict[str, Any] = client.head_object(Bucket=bucket, Key=key)
        return head
    except ClientError as exc:
        if s3.is_not_found(exc):
            return None
        raise


def _upload_files(
    client: Any,
    bucket: str,
    key_prefix: str,
    root: Path,
    files: list[mf.FileEntry],
    settings: TransferSettings,
    on_bytes: Callable[[int], None],
) -> None:
    """All files through one s3transfer manager: its threads interleave parts of every file."""
    if not files:
        return
    from boto3.s3.transfer import create_transfer_manager

    with create_transfer_manager(client, settings.transfer_config()) as manager:
        futures = [
            manager.upload(
                str(root / entry.path),
                bucket,
                key_prefix + entry.path,
                extra_args={"Metadata": {"sha256": entry.sha256}},
                subscribers=[fetch.progress_subscriber(entry.size, on_bytes)],
            )
            for entry in files
        ]
        for future in futures:
            future.result()


def _local_manifest_bytes(artifact: Artifact) -> bytes:
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


def _read_manifest(source: fetch.Source, artifact_id: str) -> mf.Manifest | None:
    try:
        return fetch.read_manifest(source, artifact_id)
    except fetch.VerifyFailed as exc:
        raise VerifyError(str(exc)) from None
    except fetch.FetchError as exc:
        raise StoreError(str(exc)) from None


def _download(
    source: fetch.Source, name: str, artifact_id: str, dest: Path, progress: bool
) -> TransferResult:
    """Fetch into `dest` (staged beside it, verified, renamed); a complete copy already there is kept."""
    if dest.exists():
        if (dest / mf.MANIFEST_NAME).is_file() and mf.artifact_id_of(dest) == artifact_id:
            try:
                manifest = mf.check(dest)
            except mf.ManifestError as exc:
                raise VerifyError(
                    f"{dest}: holds artifact {short_id(artifact_id)} but {exc}; remove it and pull again"
                ) from None
            return TransferResult(str(dest), 0, len(manifest.files), 0, skipped_whole=True)
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        else:
            raise StoreError(
                f"{dest}: exists and is not artifact {short_id(artifact_id)}; remove it or pull elsewhere"
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _bar(0, f"pull {name}", progress) as bar:

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


def _bar(total: int, desc: str, progress: bool) -> Any:
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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
