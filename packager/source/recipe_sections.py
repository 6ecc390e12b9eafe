"""The recipe sections after `source`: components, store, image, volume, publish, worker and deploy,
each a strict pydantic model that refuses unknown keys and checks its values where it is read."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from packager.source import edges
from packager.source import runpod_limits as limits

DEFAULT_STORE = "build/store"


HUB_REPO_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$"


# A CUDA PyTorch runtime image: what RunPod's GPUs need, with torch already installed so the
# worker layer stays small. Users override it with `image.base` or BASE_IMAGE.
DEFAULT_BASE_IMAGE = "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime"


DEFAULT_MOUNT = "/runpod-volume"


# Side lengths the worker accepts are multiples of this (worker_runtime.requests.SIDE_MULTIPLE).
SIDE_MULTIPLE = 8


def check_url(value: str | None) -> str | None:
    if value is not None and (problem := edges.url_problem(value)):
        raise ValueError(problem)
    return value


def one_kind(model: BaseModel, kinds: tuple[str, ...]) -> str:
    """The one field of `kinds` the section sets (a source names exactly one place)."""
    given = [k for k in kinds if getattr(model, k)]
    if len(given) != 1:
        names = f"{', '.join(kinds[:-1])} or {kinds[-1]}"
        raise ValueError(f"give exactly one of {names} (got {', '.join(given) if given else 'none'})")
    return given[0]


CudaVersion = Annotated[str, AfterValidator(limits.check_cuda)]


class Strict(BaseModel):
    # inf and nan are no setting at all (an infinite guidance renders black images).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Downloadable(Strict):
    """The fields of a file that may come from a URL: the URL, the sha256 it must have (else the
    first download pins it in the lock), and the variable holding the token it is sent with."""

    url: str | None = Field(default=None, pattern=r"^(https?|s3)://\S+$")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # The environment variable holding the token an https `url` download sends (CivitAI's, say).
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # For an s3:// `url`: the S3 endpoint (R2, MinIO, ...) and the AWS profile; credentials only
    # from boto3's chain.
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    profile: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.+-]+$")

    @field_validator("url", "endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return check_url(value)

    @model_validator(mode="after")
    def _s3(self) -> Downloadable:
        if self.url and self.url.startswith("s3://"):
            from packager.source.s3_download import split

            split(self.url)  # its ValueError says what an s3:// URL looks like
            if self.token_env:
                raise ValueError("`token_env` applies to https URLs; s3:// URLs use boto3's credential chain")
        elif self.endpoint_url or self.profile:
            raise ValueError("`endpoint_url` and `profile` apply to s3:// URLs only")
        return self


class Lora(Downloadable):
    """A LoRA fused into the weights while converting: exactly one of `repo` (+ `file`), `path` or
    `url`, and the `scale` it is fused at (W + scale·(alpha/r)·B·A)."""

    repo: str | None = Field(default=None, pattern=HUB_REPO_RE)
    revision: str = "main"
    file: str | None = None
    path: str | None = None
    scale: float = 1.0

    @model_validator(mode="after")
    def _one_kind(self) -> Lora:
        one_kind(self, ("repo", "path", "url"))
        if self.repo and not self.file:
            raise ValueError("a hub LoRA needs `file` (the weights file in the repo)")
        if self.file and not self.repo:
            raise ValueError("`file` applies to hub LoRAs (`repo`) only")
        if self.token_env and not self.url:
            raise ValueError("`token_env` applies to `url` LoRAs only")
        return self


class Components(Strict):
    drop: tuple[str, ...] = ()

    @field_validator("drop")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(edges.all_match(value, r"[A-Za-z0-9_]+", "a component name"))))


class Store(Strict):
    """`uri` is `s3://bucket/prefix` or a local directory. Credentials never go here: boto3's chain."""

    uri: str = DEFAULT_STORE
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    profile: str | None = None
    region: str | None = None

    # Seconds without progress before a store request fails (PACKAGER_TIMEOUT overrides).
    timeout: float = Field(default=60.0, gt=0, le=3600)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return check_url(value)

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if "://" in value and not value.startswith("s3://"):
            raise ValueError(f"must be s3://bucket/prefix or a local directory (got {edges.clip(value)})")
        if value.startswith("s3://") and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,62}(/\S*)?", value):
            raise ValueError(f"not a valid S3 bucket URI: {edges.clip(value)}")
        return value.rstrip("/") if value != "/" else value


class Image(Strict):
    repository: str = Field(default="localhost/packager", pattern=r"^[a-z0-9][a-z0-9._:/-]*$")
    base: str = DEFAULT_BASE_IMAGE
    tags: tuple[str, ...] = ()
    push: bool = False
    platform: str = "linux/amd64"
    # Whether the base image already has torch (CUDA PyTorch images do): then the worker
    # requirements are installed against it instead of replacing it.
    base_has_torch: bool = True

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return edges.all_match(value, r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", "a valid image tag")

    @field_validator("base")
    @classmethod
    def _base(cls, value: str) -> str:
        if problem := edges.image_reference_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str) -> str:
        if problem := edges.image_reference_problem(value, tag_allowed=False):
            raise ValueError(problem)
        return value


class Volume(Strict):
    """A RunPod network volume. The S3 API keys are a separate RunPod "S3 API key", from the env."""

    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    datacenter: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]+$")
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    mount: str = DEFAULT_MOUNT

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return check_url(value)

    @property
    def s3_endpoint(self) -> str | None:
        if self.endpoint_url:
            return self.endpoint_url
        if self.datacenter:
            return f"https://s3api-{self.datacenter.lower()}.runpod.io"
        return None


class Publish(Strict):
    """The hub repo cached mode publishes the artifact to (`packager publish`).

    The token needs write access to the repo and is read only from the variable named here.
    """

    repo: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    private: bool = True
    token_env: str = Field(default="HF_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class WorkerDefaults(Strict):
    """Request defaults; unset fields take the pipeline's own (its `__call__`'s or model card's)."""

    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0)
    true_cfg_scale: float | None = Field(default=None, ge=0)
    width: int | None = Field(default=None, ge=8)
    height: int | None = Field(default=None, ge=8)
    num_images: int | None = Field(default=None, ge=1)
    negative_prompt: str | None = None
    max_sequence_length: int | None = Field(default=None, ge=1)
    num_frames: int | None = Field(default=None, ge=1)
    fps: int | None = Field(default=None, ge=1)


class WorkerLimits(Strict):
    max_steps: int = Field(default=100, ge=1)
    max_width: int = Field(default=1024, ge=8)
    max_height: int = Field(default=1024, ge=8)
    max_images: int = Field(default=4, ge=1)
    max_pixels: int = Field(default=1024 * 1024, ge=64)
    max_guidance: float = Field(default=30.0, ge=0)
    max_frames: int = Field(default=161, ge=1)
    max_video_pixels: int = Field(default=161 * 704 * 512, ge=64)


class Worker(Strict):
    defaults: WorkerDefaults = WorkerDefaults()
    limits: WorkerLimits = WorkerLimits()
    warmup: bool = False
    # Check the sha256 of every weight byte at start, while the imports run (WORKER_VERIFY_HASHES=0
    # turns it off on an endpoint).
    verify_hashes: bool = True

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> Worker:
        """A default the worker's own limits refuse would fail every request that relies on it."""
        d, lim = self.defaults, self.limits
        checks = [
            ("num_inference_steps", d.num_inference_steps, "max_steps", lim.max_steps),
            ("guidance_scale", d.guidance_scale, "max_guidance", lim.max_guidance),
            ("width", d.width, "max_width", lim.max_width),
            ("height", d.height, "max_height", lim.max_height),
            ("num_images", d.num_images, "max_images", lim.max_images),
        ]
        for field, value, limit_name, limit in checks:
            if value is not None and value > limit:
                raise ValueError(f"defaults.{field} ({value}) is above limits.{limit_name} ({limit})")
        for field, side in (("width", d.width), ("height", d.height)):
            if side is not None and side % SIDE_MULTIPLE:
                raise ValueError(f"defaults.{field} ({side}) must be a multiple of {SIDE_MULTIPLE}")
        if d.width and d.height and d.width * d.height > lim.max_pixels:
            raise ValueError(
                f"defaults.width x defaults.height ({d.width * d.height}) is above limits.max_pixels "
                f"({lim.max_pixels})"
            )
        return self


class Deploy(Strict):
    """RunPod serverless endpoint settings (`packager deploy`), within the limits RunPod enforces."""

    endpoint_name: str | None = None
    # Only when set: a serverless template kept in step with the endpoint, for reuse in the console.
    template_name: str | None = None
    gpu_ids: str = "AMPERE_24,ADA_24"
    gpu_count: int = Field(default=1, ge=1)
    workers_min: int = Field(default=0, ge=0)
    workers_max: int = Field(default=3, ge=0)
    scaler_type: Literal["QUEUE_DELAY", "REQUEST_COUNT"] = "QUEUE_DELAY"
    scaler_value: int = Field(default=4, ge=1)
    # RunPod's serverless guide: 5 s is too aggressive for bursty traffic, 60 s suits most APIs.
    idle_timeout: int = Field(default=60, ge=limits.IDLE_TIMEOUT_S[0], le=limits.IDLE_TIMEOUT_S[1])
    # true (FLASHBOOT), false (OFF) or "priority" (PRIORITY_FLASHBOOT).
    flashboot: bool | Literal["priority"] = True
    # Well below RunPod's 600 s default so a stuck job fails instead of holding a worker.
    execution_timeout_ms: int = Field(
        default=300_000, ge=limits.EXECUTION_TIMEOUT_MS[0], le=limits.EXECUTION_TIMEOUT_MS[1]
    )
    container_disk_gb: int = Field(default=20, ge=1)
    # CUDA the host must offer: an exact list, else a floor (default: the base image's CUDA).
    allowed_cuda_versions: tuple[CudaVersion, ...] = ()
    min_cuda_version: CudaVersion | None = None
    locations: str | None = None
    registry_auth_id: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # Environment variable → name of a RunPod secret; sent as `{{ RUNPOD_SECRET_<name> }}`.
    secrets: dict[str, str] = Field(default_factory=dict)

    @field_validator("endpoint_name", "template_name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else limits.check_name(value)

    @field_validator("gpu_ids")
    @classmethod
    def _pools(cls, value: str) -> str:
        return limits.check_gpu_pools(value)

    @field_validator("idle_timeout")
    @classmethod
    def _idle(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("scaler_type") == "REQUEST_COUNT":
            raise ValueError("RunPod refuses an idle timeout for a queue endpoint scaling on REQUEST_COUNT")
        return value

    @field_validator("flashboot", mode="before")
    @classmethod
    def _flashboot(cls, value: Any) -> Any:
        if value is True or value is False or value == "priority":
            return value
        raise ValueError(f"must be true, false or priority (got {edges.clip(value)})")

    @field_validator("execution_timeout_ms")
    @classmethod
    def _execution(cls, value: int) -> int:
        if value >= limits.JOB_TTL_MS:
            raise ValueError(
                f"at or past RunPod's job TTL ({limits.JOB_TTL_MS} ms), which deletes a job mid-run "
                f"(got {value})"
            )
        return value

    @field_validator("min_cuda_version")
    @classmethod
    def _floor(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and info.data.get("allowed_cuda_versions"):
            raise ValueError("RunPod takes a CUDA floor or a list of allowed versions, not both")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if "://" in item and (found := edges.url_credentials(item)):
                raise ValueError(f"{edges.clip(key, 40)}: the URL {found}; {edges.CREDENTIAL_ADVICE}")
        return value

    @model_validator(mode="after")
    def _workers(self) -> Deploy:
        if self.workers_max < self.workers_min:
            raise ValueError(f"workers_max ({self.workers_max}) is below workers_min ({self.workers_min})")
        return self
