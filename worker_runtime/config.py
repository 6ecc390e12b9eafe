"""What the worker reads from its environment, read once, here.

`WORKER_CONFIG` is the recipe's `worker` section as JSON (packager/recipe.py `Worker`). The worker
cannot import the packager's pydantic model, so it parses the same shape itself: the same field
names and defaults, and a one-line error for an unknown field or a wrong type, because a typo in a
hand-set endpoint variable should stop the worker at start rather than be silently ignored.

Variables the runpod SDK reads itself (RUNPOD_*, and BUCKET_ENDPOINT_URL / BUCKET_ACCESS_KEY_ID /
BUCKET_SECRET_ACCESS_KEY for uploads) are only looked at here to know whether uploads can work;
their values are never logged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from worker_runtime.errors import StartError

# Where RunPod mounts a network volume: serverless workers see /runpod-volume, pods /workspace.
VOLUME_MOUNTS = ("/runpod-volume", "/workspace")
# Long enough for a few GB at the rates a RunPod volume's S3 API gives, short enough that a worker
# stuck behind a dead puller gives up inside the endpoint's execution timeout.
DEFAULT_PULL_TIMEOUT_S = 600.0
# Where RunPod's cached models appear: the standard HF cache layout, on the host's local disk.
DEFAULT_HF_HUB_CACHE = "/runpod-volume/huggingface-cache/hub"
BUCKET_VARS = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")
_TRUE = {"1", "true", "yes", "on"}
# How a failed job is answered: RunPod's FAILED status, or docker-diffusers-api's `$error` output.
ERROR_STYLES = ("runpod", "diffusers-api")


@dataclass(frozen=True)
class Defaults:
    """Used for fields a request leaves out (recipe `worker.defaults`). None: the pipeline's own
    default (its `__call__`'s, or its model card's where that differs; see family.py)."""

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    num_images: int | None = None
    negative_prompt: str | None = None
    max_sequence_length: int | None = None
    num_frames: int | None = None
    fps: int | None = None


@dataclass(frozen=True)
class Limits:
    """What a request may ask for (recipe `worker.limits`): bounds memory and time per job."""

    max_steps: int = 100
    max_width: int = 1024
    max_height: int = 1024
    max_images: int = 4
    max_pixels: int = 1024 * 1024
    max_guidance: float = 30.0
    max_frames: int = 161
    # frames x width x height: LTX-Video's 161 frames at 704x512 and Wan's 81 at 832x480 fit.
    max_video_pixels: int = 161 * 704 * 512


@dataclass(frozen=True)
class WorkerConfig:
    defaults: Defaults = field(default_factory=Defaults)
    limits: Limits = field(default_factory=Limits)
    warmup: bool = False
    verify_hashes: bool = True


@dataclass(frozen=True)
class Settings:
    """The worker's environment, parsed."""

    model_dir: Path | None
    artifact_uri: str | None
    volume_mount: Path
    pull_timeout_s: float
    worker: WorkerConfig
    verify_hashes: bool
    device: str | None
    readahead: bool
    save_dir: Path | None
    bucket_name: str | None
    bucket_configured: bool
    # Cached mode: the hub repo and commit RunPod caches, and the cache it puts them in.
    model_repo: str | None = None
    model_commit: str | None = None
    hf_hub_cache: Path = Path(DEFAULT_HF_HUB_CACHE)
    errors: str = "runpod"  # WORKER_ERRORS, one of ERROR_STYLES


def parse_worker_config(text: str | None) -> WorkerConfig:
    """WORKER_CONFIG → WorkerConfig; unset or empty gives the recipe's defaults."""
    if not text or not text.strip():
        return WorkerConfig()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StartError(f"WORKER_CONFIG: not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(raw, dict):
        raise StartError(f"WORKER_CONFIG: must be a JSON object (got {type(raw).__name__})")
    _no_unknown(raw, WorkerConfig, "WORKER_CONFIG")
    return WorkerConfig(
        defaults=_section(raw.get("defaults"), Defaults, "WORKER_CONFIG.defaults"),
        limits=_section(raw.get("limits"), Limits, "WORKER_CONFIG.limits"),
        warmup=_typed(raw.get("warmup", False), bool, "WORKER_CONFIG.warmup"),
        verify_hashes=_typed(raw.get("verify_hashes", True), bool, "WORKER_CONFIG.verify_hashes"),
    )


def _no_unknown(raw: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise StartError(f"{where}.{key}: unknown field (known: {', '.join(sorted(known))})")


def _section(raw: Any, cls: type, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise StartError(f"{where}: must be a JSON object (got {type(raw).__name__})")
    _no_unknown(raw, cls, where)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        value = raw[f.name]
        kind = str(f.type)
        if value is None and kind.endswith("| None"):
            values[f.name] = None
        elif kind.startswith("str"):
            values[f.name] = _typed(value, str, f"{where}.{f.name}")
        elif kind.startswith("float"):
            number = float(_typed(value, (int, float), f"{where}.{f.name}"))
            if number < 0:
                raise StartError(f"{where}.{f.name}: must be at least 0 (got {number:g})")
            values[f.name] = number
        else:
            values[f.name] = _positive_int(value, f"{where}.{f.name}")
    return cls(**values)


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    # bool is an int to Python; a `true` where a number belongs is still a mistake.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise StartError(f"{where}: wrong type {type(value).__name__} (value {value!r})")
    return value


def _positive_int(value: Any, where: str) -> int:
    number = _typed(value, int, where)
    if number < 1:
        raise StartError(f"{where}: must be at least 1 (got {number})")
    return int(number)


def _flag(env: dict[str, str] | os._Environ[str], name: str) -> bool:
    return env.get(name, "").strip().lower() in _TRUE


def default_volume_mount() -> Path:
    """The first of RunPod's mount points that exists (serverless, then pods)."""
    for candidate in VOLUME_MOUNTS:
        if Path(candidate).is_dir():
            return Path(candidate)
    return Path(VOLUME_MOUNTS[0])


def read_settings(env: dict[str, str] | os._Environ[str] = os.environ) -> Settings:
    worker = parse_worker_config(env.get("WORKER_CONFIG"))
    timeout_text = env.get("PULL_TIMEOUT_S", "").strip()
    try:
        pull_timeout = float(timeout_text) if timeout_text else DEFAULT_PULL_TIMEOUT_S
    except ValueError:
        raise StartError(f"PULL_TIMEOUT_S: not a number of seconds ({timeout_text!r})") from None
    device = env.get("WORKER_DEVICE", "").strip().lower() or None
    if device is not None and device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise StartError(f"WORKER_DEVICE: must be cpu, cuda or cuda:N (got {device!r})")
    mount = env.get("VOLUME_MOUNT", "").strip()
    errors = env.get("WORKER_ERRORS", "").strip().lower() or ERROR_STYLES[0]
    if errors not in ERROR_STYLES:
        raise StartError(f"WORKER_ERRORS: must be one of {', '.join(ERROR_STYLES)} (got {errors[:40]!r})")
    return Settings(
        model_dir=Path(env["MODEL_DIR"]) if env.get("MODEL_DIR", "").strip() else None,
        artifact_uri=env.get("ARTIFACT_URI", "").strip() or None,
        volume_mount=Path(mount) if mount else default_volume_mount(),
        pull_timeout_s=pull_timeout,
        worker=worker,
        # The variable, when set, wins over the recipe either way.
        verify_hashes=_flag(env, "WORKER_VERIFY_HASHES")
        if env.get("WORKER_VERIFY_HASHES", "").strip()
        else worker.verify_hashes,
        device=device,
        # Off only to measure what it buys (bench/coldstart.py).
        readahead=env.get("WORKER_READAHEAD", "1").strip().lower() not in {"0", "false", "no", "off"},
        save_dir=Path(env["WORKER_SAVE_DIR"]) if env.get("WORKER_SAVE_DIR", "").strip() else None,
        bucket_name=env.get("BUCKET_NAME", "").strip() or None,
        bucket_configured=all(env.get(name, "").strip() for name in BUCKET_VARS),
        model_repo=env.get("MODEL_REPO", "").strip() or None,
        model_commit=env.get("MODEL_COMMIT", "").strip() or None,
        hf_hub_cache=Path(env.get("HF_HUB_CACHE", "").strip() or DEFAULT_HF_HUB_CACHE),
        errors=errors,
    )
