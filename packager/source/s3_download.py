"""One file from an `s3://bucket/key` URL into the download cache, like an https URL's.

The client is the store's (volume_sync.s3.make_client): credentials only from boto3's chain, the
endpoint and profile the recipe names beside the URL (else AWS_ENDPOINT_URL / AWS_PROFILE), so R2,
MinIO or a RunPod volume's S3 API serve as well as AWS. Bytes land in the same `.partial-…` file an
https download uses and an interrupted download resumes with a ranged GET; the sha256 is taken while
they stream and a file that is not the one expected is deleted (url_download.finish).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager.errors import FetchError
from packager.settings import network_timeout
from packager.source import url_download
from volume_sync import s3 as s3_core

_CHUNK = 8 * 1024 * 1024
_ENDPOINT_HINT = "endpoint_url beside the s3:// URL in the recipe, or AWS_ENDPOINT_URL"


@dataclass(frozen=True)
class S3Access:
    """How to reach an `s3://` URL: the endpoint and the AWS profile (None: boto3's defaults)."""

    endpoint_url: str | None = None
    profile: str | None = None


def split(url: str) -> tuple[str, str]:
    """`s3://bucket/a/b` → ("bucket", "a/b"); ValueError when there is no bucket or no key."""
    bucket, key = s3_core.parse_uri(url)
    if not key:
        raise ValueError(f"no object key in {url!r} (s3://bucket/path/to/file)")
    return bucket, key


def download(
    url: str, cache: Path, *, sha256: str | None, access: S3Access, progress: bool
) -> tuple[Path, str, int]:
    """Download the object at `url` into `cache/<sha256>/<name>`; (path, sha256, size).

    Raises FetchError (one line) when S3 cannot be reached or refuses, the object is missing, the
    transfer breaks off (the partial file is kept for the next run), or the sha256 is not `sha256`.
    """
    from huggingface_hub import utils as hf_utils

    # huggingface_hub's bar (off with HF_HUB_DISABLE_PROGRESS_BARS), which it does not re-export.
    hf_tqdm: Any = getattr(hf_utils, "tqdm")  # noqa: B009
    bucket, key = split(url)
    name = url_download.filename(None, url)
    cache.mkdir(parents=True, exist_ok=True)
    partial, offset = url_download.partial_of(cache, url)
    client = _client(url, access)
    body, total, offset = _open(client, url, bucket, key, offset)
    digest = url_download.digest_of(partial, offset)
    size = offset
    with (
        open(partial, "ab" if offset else "wb") as out,
        hf_tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=name, disable=not progress or None
        ) as bar,
    ):
        try:
            for chunk in body.iter_chunks(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
        except Exception as exc:
            raise FetchError(
                f"{url}: download interrupted after {size} bytes ({type(exc).__name__}); run again to resume"
            ) from None
        finally:
            body.close()
    return (
        url_download.finish(partial, cache / digest.hexdigest() / name, sha256, url),
        digest.hexdigest(),
        size,
    )


def _client(url: str, access: S3Access) -> Any:
    from botocore.exceptions import BotoCoreError

    try:
        return s3_core.make_client(
            endpoint_url=access.endpoint_url, profile=access.profile, timeout=network_timeout()
        )
    except BotoCoreError as exc:
        raise FetchError(f"{url}: {_explain(exc, url, access.endpoint_url)}") from None


def _open(client: Any, url: str, bucket: str, key: str, offset: int) -> tuple[Any, int, int]:
    """The object's body from `offset` (from 0 when S3 will not resume there), its total size and
    the offset it starts at."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        try:
            resp = client.get_object(
                Bucket=bucket, Key=key, **({"Range": f"bytes={offset}-"} if offset else {})
            )
        except ClientError as exc:
            if not offset or s3_core.error_code(exc) != "InvalidRange":
                raise
            offset, resp = 0, client.get_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError) as exc:
        if s3_core.is_not_found(exc):
            raise FetchError(f"{url}: no such object (check the bucket and the key)") from None
        raise FetchError(f"{url}: {_explain(exc, url, s3_core.endpoint_of(client))}") from None
    content_range = str(resp.get("ContentRange") or "")
    if offset and not content_range.startswith(f"bytes {offset}-"):
        offset = 0  # a whole object came back: start over
    total = int(content_range.rpartition("/")[2]) if content_range else int(resp.get("ContentLength") or 0)
    return resp["Body"], total, offset


def _explain(exc: BaseException, url: str, endpoint: str | None) -> str:
    bucket = url.removeprefix("s3://").partition("/")[0]
    line = s3_core.explain(
        exc,
        bucket=bucket,
        endpoint=endpoint,
        endpoint_hint=_ENDPOINT_HINT,
        bucket_hint="the bucket in the URL",
    )
    return line or f"{type(exc).__name__}: {exc}"
