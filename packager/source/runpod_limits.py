"""The limits RunPod enforces on a serverless endpoint, checked when a recipe is loaded.

Each is RunPod's own rule, so a recipe that breaks one fails at `packager validate` with a line
naming the field, instead of at `deploy` with whatever the API says. It sits with the recipe, the
lowest layer, so that the recipe model can use it; `packager.deploy` reads the same tables.
"""

from __future__ import annotations

import re

# Serverless GPU pool ids (what `gpu.pools` takes; not GPU type names such as "NVIDIA A40"), from
# RunPod's GPU-types reference and the pools its flash SDK names.
GPU_POOLS = (
    "AMPERE_16",
    "AMPERE_24",
    "ADA_24",
    "ADA_32_PRO",
    "AMPERE_48",
    "ADA_48_PRO",
    "AMPERE_80",
    "ADA_80_PRO",
    "BLACKWELL_96",
    "HOPPER_141",
    "BLACKWELL_180",
)
# CUDA versions RunPod hosts advertise (the enum of the endpoint's allowed CUDA versions).
CUDA_VERSIONS = (
    "11.8",
    "12.0",
    "12.1",
    "12.2",
    "12.3",
    "12.4",
    "12.5",
    "12.6",
    "12.7",
    "12.8",
    "12.9",
    "13.0",
)
IDLE_TIMEOUT_S = (1, 3600)
# RunPod's range for a job's execution timeout: 5 s to 7 days.
EXECUTION_TIMEOUT_MS = (5_000, 7 * 24 * 3600 * 1000)
# A job is deleted when its time-to-live (default 24 h, counted from submission) runs out, even
# mid-run: an execution timeout at or past it would never fire.
JOB_TTL_MS = 24 * 3600 * 1000
NAME_LENGTH = (3, 191)
# The one place the base image's CUDA version is read from its tag (`...cuda12.8...`, `cuda:12.8.1`).
_CUDA_IN_TAG = re.compile(r"cuda[-_:]?(\d+)\.(\d+)")


def cuda_key(version: str) -> tuple[int, int]:
    """`"12.10"` → (12, 10): CUDA versions compare numerically, not as decimals."""
    major, minor = version.split(".")
    return int(major), int(minor)


def cuda_of_image(image: str) -> str | None:
    """The CUDA runtime a base image's tag names, as `major.minor`; None when it names none."""
    found = _CUDA_IN_TAG.search(image)
    return f"{int(found.group(1))}.{int(found.group(2))}" if found else None


def check_gpu_pools(value: str) -> str:
    """`value` (comma-separated pool ids) if each is a RunPod pool; else ValueError naming the first."""
    pools = [p.strip() for p in value.split(",")]
    if not pools or not all(pools):
        raise ValueError(f"a comma-separated list of GPU pool ids (got {value!r})")
    for pool in pools:
        if pool not in GPU_POOLS:
            raise ValueError(f"{pool!r} is not a RunPod GPU pool id; one of {', '.join(GPU_POOLS)}")
    if len(set(pools)) != len(pools):
        raise ValueError(f"a GPU pool is listed twice ({value})")
    return ",".join(pools)


def check_cuda(version: str) -> str:
    if version not in CUDA_VERSIONS:
        raise ValueError(
            f"{version!r} is not a CUDA version RunPod offers; one of {', '.join(CUDA_VERSIONS)}"
        )
    return version


def check_name(name: str) -> str:
    low, high = NAME_LENGTH
    if not low <= len(name) <= high:
        raise ValueError(f"RunPod names are {low} to {high} characters (got {len(name)}: {name!r})")
    return name
