"""S3 clients from boto3's own configuration chain, and failures explained in one line.

Credentials are never passed around by this code: boto3 finds them (environment, profile, instance
role). The endpoint comes from the caller or, when none is given, from boto3 itself
(`AWS_ENDPOINT_URL`), which is how one binary talks to AWS, R2, MinIO or RunPod's volume API.
The packager reuses these pieces for its store, so a failure reads the same from either tool.
"""

from __future__ import annotations

from typing import Any

# Retries cover dropped connections and throttling; more attempts only delay the message a user needs
# when the endpoint is wrong.
MAX_ATTEMPTS = 4
# Seconds to open a connection, and seconds a transfer may go without progress before it fails.
CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 60.0
# Enough pooled connections for the transfer manager's threads plus a few metadata requests.
MAX_POOL_CONNECTIONS = 32

CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
        "AuthorizationHeaderMalformed",
        "403",
        "Forbidden",
    }
)


class S3UriError(ValueError):
    """A string that is not `s3://bucket[/prefix]`."""


def parse_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b/` → ("bucket", "a/b"): the bucket and the key prefix without slashes at the ends."""
    if not uri.startswith("s3://"):
        raise S3UriError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise S3UriError(f"no bucket in {uri!r}")
    return bucket, prefix.strip("/")


def make_client(
    *,
    endpoint_url: str | None = None,
    profile: str | None = None,
    region: str | None = None,
    max_pool_connections: int = MAX_POOL_CONNECTIONS,
    checksums: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """An S3 client; boto3's chain supplies credentials and, when `endpoint_url` is None, the endpoint.

    Made with botocore's session (what boto3 wraps) because a "does the store have it?" check is
    one request, and skipping boto3's own imports is a good part of its cost.

    `checksums` None keeps botocore's default (a CRC32 trailer on every upload, which S3 checks,
    and no SHA-256 pass over the payload), or what the user configured through
    AWS_REQUEST_CHECKSUM_CALCULATION for a service that does not take trailers; "when_required"
    sends plain signed requests, the most widely understood form.

    `timeout` bounds how long a request may go without a byte: each of the MAX_ATTEMPTS tries gets
    its share, so an endpoint that accepts connections and never answers fails in about `timeout`
    seconds however large the transfer, while one that keeps sending is never cut off.
    """
    import botocore.session
    from botocore.config import Config

    session = botocore.session.Session(profile=profile)
    options: dict[str, Any] = {}
    if checksums is not None:
        options = {"request_checksum_calculation": checksums, "response_checksum_validation": checksums}
    config = Config(
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=max(1.0, timeout / MAX_ATTEMPTS),
        **options,
    )
    return session.create_client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def available_profiles() -> list[str]:
    """Profiles in the user's AWS config and credentials files."""
    import botocore.session

    return list(botocore.session.Session().available_profiles)


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError (`NoSuchKey`, `404`, ...), else None."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(status) if status else None
    return None


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in {"404", "NoSuchKey", "NotFound"}


def explain(
    exc: BaseException,
    *,
    bucket: str,
    endpoint: str | None,
    endpoint_hint: str = "AWS_ENDPOINT_URL",
    bucket_hint: str = "the bucket name in the URI",
) -> str | None:
    """One line saying which S3 problem this is and how to fix it; None for anything unrecognised.

    `endpoint_hint` and `bucket_hint` name where the user sets the endpoint and the bucket (an env
    var, a URI, a recipe field), so the message points at the thing to change.
    """
    from botocore import exceptions as bx

    where = endpoint or "the default AWS endpoint"
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError)):
        return f"cannot reach the S3 endpoint {where}: check {endpoint_hint} and that the service is up"
    if isinstance(exc, bx.ReadTimeoutError):
        return (
            f"the S3 endpoint {where} accepted the connection but sent nothing back in time: check "
            f"{endpoint_hint} and that the service is up (store.timeout or PACKAGER_TIMEOUT allow longer)"
        )
    if isinstance(exc, bx.NoCredentialsError):
        return "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
    if isinstance(exc, bx.ProfileNotFound):
        return f"{exc} (check AWS_PROFILE or the profile named in the recipe)"
    if isinstance(exc, bx.PartialCredentialsError):
        return f"incomplete S3 credentials: {exc}"
    code = error_code(exc)
    if code == "NoSuchBucket":
        return (
            f"bucket {bucket!r} does not exist at {where}: create it, or fix {bucket_hint} "
            f"(and {endpoint_hint} if it points at the wrong service)"
        )
    if code in CREDENTIAL_CODES:
        code = f"HTTP {code}" if code.isdigit() else code
        return (
            f"the S3 endpoint {where} refused the credentials ({code}) for bucket {bucket!r}: check "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and that they may use this bucket"
        )
    if isinstance(exc, bx.BotoCoreError):
        return f"S3 request to {where} failed: {exc}"
    if code:
        return f"S3 request to {where} failed ({code}) for bucket {bucket!r}"
    return None


def endpoint_of(client: Any) -> str | None:
    url = getattr(getattr(client, "meta", None), "endpoint_url", None)
    return str(url) if url else None
