"""A store in an S3 bucket (AWS, R2, MinIO, ...): multipart uploads through s3transfer with each
file's sha256 as object metadata, the manifest last, and one HEAD to tell a complete artifact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from artifact_format import manifest as mf
from packager.convert.artifact import Artifact
from packager.errors import PackagerError
from packager.store import client as s3
from packager.store import transfer
from packager.store.transfer import TransferResult, TransferSettings
from volume_sync import fetch


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
        timeout: float | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.settings = settings or TransferSettings()
        self._endpoint_url, self._profile, self._region = endpoint_url, profile, region
        self._client = client
        self._timeout = timeout

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3.connect(
                endpoint_url=self._endpoint_url,
                profile=self._profile,
                region=self._region,
                timeout=self._timeout,
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
        return bool(head.get("Metadata", {}).get("sha256", artifact_id) == artifact_id)

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
        return transfer.download_verified(
            self._source(name, artifact_id), name, artifact_id, Path(dest), progress
        )

    def read_manifest(self, name: str, artifact_id: str) -> mf.Manifest | None:
        return transfer.read_stored_manifest(self._source(name, artifact_id), artifact_id)

    def verify_remote(
        self, name: str, artifact_id: str, manifest: mf.Manifest, *, progress: bool
    ) -> list[str]:
        """Hash every stored object; delete the bad ones and the manifest (uncommitting the
        artifact so the next upload sends them again). Returns the bad paths."""
        from botocore.exceptions import BotoCoreError, ClientError

        bad = transfer.bad_stored_files(self._source(name, artifact_id), manifest, progress)
        if bad:
            prefix = self.key_prefix(name, artifact_id)
            try:
                self.client.delete_object(Bucket=self.bucket, Key=prefix + mf.MANIFEST_NAME)
                for path in bad:
                    self.client.delete_object(Bucket=self.bucket, Key=prefix + path)
            except (ClientError, BotoCoreError) as exc:
                raise self._fail(exc, f"deleting from {self.artifact_uri(name, artifact_id)}") from None
        return bad

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

    manifest_bytes = transfer.local_manifest_bytes(artifact)
    doing = f"uploading to s3://{bucket}/{key_prefix}"
    try:
        abort_uploads(client, bucket, key_prefix)
        wanted = list(mf.entries(artifact.manifest))
        present = _present(client, bucket, key_prefix, wanted, probe)
        files = [e for e in wanted if not _same(client, bucket, key_prefix + e.path, e, present, trust_size)]
        total = sum(e.size for e in files)
        transfer.hash_before_sending(artifact.dir, files, artifact.name, progress)
        with transfer.progress_bar(total, f"upload {artifact.name}", progress) as bar:
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
