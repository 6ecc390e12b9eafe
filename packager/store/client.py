"""S3 clients for the packager's store and volume seeding, and their failures as one-line errors.

The client itself and the wording of each failure come from `volume_sync.s3`, so the build machine
and the workers describe a missing bucket or a refused key the same way; this module adds the
recipe's settings and turns failures into the packager's error classes. boto3 is imported only when
a client is made, so commands that never touch S3 stay fast.
"""

from __future__ import annotations

from typing import Any

from packager.errors import PackagerError, StoreError
from packager.settings import network_timeout
from volume_sync import s3 as s3_core

STORE_ENDPOINT_HINT = "store.endpoint_url in the recipe or AWS_ENDPOINT_URL"


def connect(
    *,
    endpoint_url: str | None = None,
    profile: str | None = None,
    region: str | None = None,
    checksums: str | None = None,
    error: type[PackagerError] = StoreError,
    timeout: float | None = None,
) -> Any:
    """An S3 client; credentials come only from boto3's chain (env, profile, instance role)."""
    from botocore.exceptions import BotoCoreError

    try:
        return s3_core.make_client(
            endpoint_url=endpoint_url,
            profile=profile,
            region=region,
            checksums=checksums,
            timeout=network_timeout() if timeout is None else timeout,
        )
    except BotoCoreError as exc:
        raise error(s3_core.explain(exc, bucket="?", endpoint=endpoint_url) or str(exc)) from None


def failure(
    exc: BaseException,
    *,
    client: Any,
    bucket: str,
    doing: str,
    endpoint_hint: str = STORE_ENDPOINT_HINT,
    bucket_hint: str = "the bucket in store.uri",
    error: type[PackagerError] = StoreError,
) -> PackagerError:
    """The PackagerError for a boto3/botocore exception raised while `doing` something."""
    line = s3_core.explain(
        exc,
        bucket=bucket,
        endpoint=s3_core.endpoint_of(client),
        endpoint_hint=endpoint_hint,
        bucket_hint=bucket_hint,
    )
    return error(line or f"{doing}: {exc.__class__.__name__}: {exc}")


def parse_uri(uri: str) -> tuple[str, str]:
    try:
        return s3_core.parse_uri(uri)
    except s3_core.S3UriError as exc:
        raise StoreError(str(exc)) from None


is_not_found = s3_core.is_not_found
error_code = s3_core.error_code
