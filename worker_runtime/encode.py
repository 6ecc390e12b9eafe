"""Generated images → what the job returns: base64 PNGs, or URLs of PNGs uploaded to S3.

Videos are H.264 MP4s (PyAV's bundled FFmpeg and libx264, yuv420p so every player takes them),
returned as `video_base64` / `video_url` beside their first frame as the image.

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


def mp4_bytes(frames: Sequence[Any], fps: int) -> bytes:
    """PIL frames → an H.264 MP4 at `fps` (sizes are even: every family's multiple is)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        for image in frames:
            frame = av.VideoFrame.from_image(image.convert("RGB"))  # type: ignore[no-untyped-call]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def as_base64(pngs: Sequence[bytes], mp4s: Sequence[bytes] = ()) -> dict[str, Any]:
    """docker-diffusers-api's keys: `image_base64` for one image, `images_base64` for several;
    videos likewise as `video_base64` / `videos_base64`."""
    out = _one_or_many("image_base64", "images_base64", [base64.b64encode(p).decode("ascii") for p in pngs])
    if mp4s:
        out |= _one_or_many(
            "video_base64", "videos_base64", [base64.b64encode(v).decode("ascii") for v in mp4s]
        )
    return out


class UploadFailed(Exception):
    """The outputs could not be stored: the job fails in one line, the worker keeps serving."""


def upload(
    pngs: Sequence[bytes], job_id: str, bucket_name: str | None, mp4s: Sequence[bytes] = ()
) -> dict[str, Any]:
    """Upload under `<job id>/` and return presigned URLs: `image_url`, or `image_urls` for several
    (`video_url` / `video_urls` for videos)."""
    # Imported on first use: it pulls in boto3 and configures logging, neither needed at start.
    from runpod.serverless.utils import rp_upload

    def put(data: bytes, ext: str) -> str:
        name = f"{uuid.uuid4().hex[:12]}.{ext}"
        try:
            return str(rp_upload.upload_in_memory_object(name, data, bucket_name=bucket_name, prefix=job_id))
        except Exception as exc:
            raise UploadFailed(f"{type(exc).__name__}: {exc}") from None

    out = _one_or_many("image_url", "image_urls", [put(data, "png") for data in pngs])
    if mp4s:
        out |= _one_or_many("video_url", "video_urls", [put(data, "mp4") for data in mp4s])
    return out


def _one_or_many(one: str, many: str, values: list[str]) -> dict[str, Any]:
    return {one: values[0]} if len(values) == 1 else {many: values}


MEDIA_KEYS = ("image_base64", "images_base64", "video_base64", "videos_base64")


def save(
    pngs: Sequence[bytes], answer: dict[str, Any], folder: Path, job_id: str, mp4s: Sequence[bytes] = ()
) -> list[Path]:
    """Local runs (`packager smoke`) keep the PNGs, MP4s and the answer: the SDK's log truncates them.

    Writes `<job id>.png` (`<job id>-<n>.png` for several), likewise `.mp4`, and `<job id>.json`
    (the answer without its media), each atomically.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, items in (("png", pngs), ("mp4", mp4s)):
        for i, data in enumerate(items):
            name = f"{job_id}.{ext}" if len(items) == 1 else f"{job_id}-{i}.{ext}"
            paths.append(_write(folder / name, data))
    meta = {k: v for k, v in answer.items() if k not in MEDIA_KEYS}
    _write(folder / f"{job_id}.json", (json.dumps(meta, sort_keys=True) + "\n").encode())
    return paths


def _write(target: Path, data: bytes) -> Path:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target
