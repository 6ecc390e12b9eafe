"""Generated images → what the job returns: base64 PNGs, or URLs of PNGs uploaded to S3.

Uploads go through the runpod SDK's own helper (`rp_upload`), configured by the variables RunPod
documents for it (BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY), so an
endpoint set up for any RunPod worker template works here unchanged. BUCKET_NAME picks the bucket;
without it the SDK's default applies.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def as_base64(pngs: Sequence[bytes]) -> dict[str, Any]:
    """docker-diffusers-api's keys: `image_base64` for one image, `images_base64` for several."""
    encoded = [base64.b64encode(p).decode("ascii") for p in pngs]
    return {"image_base64": encoded[0]} if len(encoded) == 1 else {"images_base64": encoded}


def upload(pngs: Sequence[bytes], job_id: str, bucket_name: str | None) -> dict[str, Any]:
    """Upload under `<job id>/` and return presigned URLs: `image_url`, or `image_urls` for several."""
    # Imported on first use: it pulls in boto3 and configures logging, neither needed at start.
    from runpod.serverless.utils import rp_upload

    urls = [
        rp_upload.upload_in_memory_object(
            f"{uuid.uuid4().hex[:12]}.png", data, bucket_name=bucket_name, prefix=job_id
        )
        for data in pngs
    ]
    return {"image_url": urls[0]} if len(urls) == 1 else {"image_urls": urls}


def save(pngs: Sequence[bytes], answer: dict[str, Any], folder: Path, job_id: str) -> list[Path]:
    """Local runs (`packager smoke`) keep the PNGs and the answer: the SDK's log truncates both.

    Writes `<job id>.png` (`<job id>-<n>.png` for several) and `<job id>.json` (the answer without
    its image data), each atomically.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(pngs):
        paths.append(_write(folder / (f"{job_id}.png" if len(pngs) == 1 else f"{job_id}-{i}.png"), data))
    meta = {k: v for k, v in answer.items() if k not in ("image_base64", "images_base64")}
    _write(folder / f"{job_id}.json", (json.dumps(meta, sort_keys=True) + "\n").encode())
    return paths


def _write(target: Path, data: bytes) -> Path:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target
