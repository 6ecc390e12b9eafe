"""Seed a RunPod network volume directly, through RunPod's S3-compatible volume API.

The volume is the bucket (`volume.id`) at its datacenter's endpoint (`volume.datacenter` or
`volume.endpoint_url`), and the artifact goes to `models/<name>/<id>/`, which workers see as
`<mount>/models/<name>/<id>/`. The API differs from S3 in ways that shape this module:

- A single PUT must stay under 500 MB, so big files go multipart with parts far below that.
- Listing is slow on a full volume and DeleteObjects is not offered: we HEAD the artifact's own keys
  and never list or delete.
- A directory cannot be renamed into place over S3, so completeness is the `.ready` marker, written
  after everything else (manifest included); every reader on the volume checks it. Its presence
  makes a re-run skip everything with one request.
- The keys are a separate RunPod "S3 API key", found through boto3's chain: the AWS profile named
  `runpod` when it exists (`aws configure --profile runpod`), otherwise the default chain
  (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE), e.g. in a CI step of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from artifact_format import manifest as mf
from packager.convert.artifact import Artifact
from packager.errors import VolumeError
from packager.source.recipe import LoadedRecipe
from packager.store import client as s3
from packager.store.s3 import put_artifact
from packager.store.transfer import AsJson, TransferSettings

# The profile that holds the RunPod S3 API key, when the user keeps it apart from their AWS keys.
RUNPOD_PROFILE = "runpod"
# RunPod refuses single requests of 500 MB or more; the store's 16 MiB parts are far below that,
# and its threshold sends anything bigger than one part through multipart.
PART_LIMIT = 500 * 1000 * 1000
SEED_SETTINGS = TransferSettings()
VOLUME_ENDPOINT_HINT = "volume.datacenter or volume.endpoint_url in the recipe"


@dataclass(frozen=True)
class SeedResult(AsJson):
    volume_id: str
    endpoint_url: str
    key_prefix: str
    path_on_volume: str
    files_sent: int
    files_skipped: int
    bytes_sent: int
    skipped_whole: bool


@dataclass(frozen=True)
class VolumeTarget:
    """Where a recipe's volume is reached over S3, and how workers will see the artifact."""

    volume_id: str
    endpoint_url: str
    region: str | None
    mount: str


def volume_target(loaded: LoadedRecipe) -> VolumeTarget:
    volume = loaded.recipe.volume
    if not volume.id:
        raise VolumeError(
            f"{loaded.path}: volume.id is not set (the network volume's id, from the RunPod console)"
        )
    endpoint = volume.s3_endpoint
    if not endpoint:
        raise VolumeError(
            f"{loaded.path}: set volume.datacenter (e.g. EU-RO-1) or volume.endpoint_url to reach the "
            "volume's S3 API"
        )
    return VolumeTarget(volume.id, endpoint, _region(volume.datacenter, endpoint), volume.mount)


def _region(datacenter: str | None, endpoint: str) -> str | None:
    """RunPod signs requests with the datacenter id as the region (`EU-RO-1`)."""
    if datacenter:
        return datacenter.upper()
    match = re.match(r"^https?://s3api-([a-z0-9-]+)\.runpod\.io/?$", endpoint, re.IGNORECASE)
    return match.group(1).upper() if match else None


def volume_client(target: VolumeTarget) -> Any:
    """A client for the volume API with the RunPod S3 API key (see the module docstring)."""
    from volume_sync.s3 import available_profiles

    profile = RUNPOD_PROFILE if RUNPOD_PROFILE in available_profiles() else None
    # Plain signed requests: the volume API is young, and trailing checksums are the newest part of S3.
    return s3.connect(
        endpoint_url=target.endpoint_url,
        profile=profile,
        region=target.region,
        checksums="when_required",
        error=VolumeError,
    )


def is_seeded(client: Any, target: VolumeTarget, name: str, artifact_id: str) -> bool:
    """One HEAD of `.ready`: the artifact is complete on the volume."""
    from botocore.exceptions import BotoCoreError, ClientError

    key = mf.volume_key_prefix(name, artifact_id) + mf.READY_MARKER
    try:
        client.head_object(Bucket=target.volume_id, Key=key)
    except ClientError as exc:
        if s3.is_not_found(exc):
            return False
        raise _fail(exc, client, target, f"checking {key}") from None
    except BotoCoreError as exc:
        raise _fail(exc, client, target, f"checking {key}") from None
    return True


def check_volume(client: Any, target: VolumeTarget) -> None:
    """One listing limited to our own prefix (never the whole volume): names a wrong volume or key."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.list_objects_v2(Bucket=target.volume_id, Prefix=f"{mf.VOLUME_MODELS_DIR}/", MaxKeys=1)
    except (ClientError, BotoCoreError) as exc:
        raise _fail(exc, client, target, f"checking volume {target.volume_id}") from None


def volume_has_artifact(loaded: LoadedRecipe, artifact_id: str) -> bool:
    """Whether the recipe's volume already holds the artifact, complete (`.ready`); one request."""
    target = volume_target(loaded)
    return is_seeded(volume_client(target), target, loaded.recipe.name, artifact_id)


def seed_volume(
    loaded: LoadedRecipe,
    artifact: Artifact,
    *,
    progress: bool,
    settings: TransferSettings | None = None,
    client: Any = None,
) -> SeedResult:
    """Upload the artifact onto the recipe's network volume, `.ready` last; skip it if already there.

    Raises VolumeError (one line) for a missing volume/endpoint setting, refused keys, an unknown
    volume (bucket) or an unreachable endpoint; VerifyError when the local artifact is incomplete.
    """
    target = volume_target(loaded)
    settings = settings or SEED_SETTINGS
    if settings.chunk_size >= PART_LIMIT or settings.multipart_threshold >= PART_LIMIT:
        raise VolumeError(f"RunPod's volume API takes requests under {PART_LIMIT} bytes; use smaller parts")
    client = client or volume_client(target)
    prefix = mf.volume_key_prefix(artifact.name, artifact.id)
    on_volume = str(mf.volume_path(target.mount, artifact.name, artifact.id))
    n_files = len(artifact.manifest.files)
    if is_seeded(client, target, artifact.name, artifact.id):
        return SeedResult(target.volume_id, target.endpoint_url, prefix, on_volume, 0, n_files, 0, True)
    sent, skipped, nbytes = put_artifact(
        client,
        target.volume_id,
        prefix,
        artifact,
        settings=settings,
        progress=progress,
        probe="head",
        # The volume is a filesystem behind the API and may not keep object metadata; the key holds
        # the artifact id, and a killed upload leaves no object of full size, so size suffices.
        trust_size=True,
        fail=lambda exc, doing: _fail(exc, client, target, doing),
    )
    marker = (artifact.id + "\n").encode()
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.put_object(Bucket=target.volume_id, Key=prefix + mf.READY_MARKER, Body=marker)
    except (ClientError, BotoCoreError) as exc:
        raise _fail(exc, client, target, f"writing {prefix}{mf.READY_MARKER}") from None
    return SeedResult(
        target.volume_id, target.endpoint_url, prefix, on_volume, sent, skipped, nbytes + len(marker), False
    )


def _fail(exc: BaseException, client: Any, target: VolumeTarget, doing: str) -> VolumeError:
    err = s3.failure(
        exc,
        client=client,
        bucket=target.volume_id,
        doing=doing,
        endpoint_hint=VOLUME_ENDPOINT_HINT,
        bucket_hint="volume.id in the recipe (the volume must be in that datacenter)",
        error=VolumeError,
    )
    return VolumeError(str(err))
