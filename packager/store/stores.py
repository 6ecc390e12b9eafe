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

from pathlib import Path
from typing import Protocol

from artifact_format import manifest as mf
from packager.convert.artifact import Artifact
from packager.errors import StoreError
from packager.settings import network_timeout
from packager.source.recipe import LoadedRecipe
from packager.store import client as s3
from packager.store.local import LocalStore
from packager.store.s3 import S3Store
from packager.store.transfer import TransferResult, TransferSettings
from volume_sync import fetch


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

    def verify_remote(
        self, name: str, artifact_id: str, manifest: mf.Manifest, *, progress: bool
    ) -> list[str]:
        """Download and hash every stored file; delete bad ones and the manifest; the bad paths."""
        ...

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
        timeout=network_timeout(cfg.timeout),
    )


def open_store_uri(
    uri: str,
    *,
    endpoint_url: str | None = None,
    profile: str | None = None,
    region: str | None = None,
    settings: TransferSettings | None = None,
    timeout: float | None = None,
) -> Store:
    """A store from a URI: `s3://bucket[/prefix]` or a local directory.

    For S3 the endpoint is `endpoint_url`, else boto3's own (`AWS_ENDPOINT_URL`, the profile's, or
    AWS); credentials come only from boto3's chain. No request is made until the store is used.
    """
    if uri.startswith("s3://"):
        bucket, prefix = s3.parse_uri(uri)
        return S3Store(
            bucket,
            prefix,
            endpoint_url=endpoint_url,
            profile=profile,
            region=region,
            settings=settings,
            timeout=timeout,
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
