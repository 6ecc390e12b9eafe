"""Every scheduler alias the worker advertises (`LMS`, `DDIM`, `PNDM`) works with what the worker
image installs: each builds from a pipeline's scheduler config and takes a denoising step, and every
package that takes is required, directly or through another, by worker_runtime/requirements.txt."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from worker_runtime.requests import SCHEDULER_ALIASES

REQUIREMENTS = Path(__file__).resolve().parents[1] / "worker_runtime" / "requirements.txt"
# What the worker's Dockerfile takes from the base image rather than from requirements.txt.
FROM_BASE_IMAGE = {"torch"}

STEP_EVERY_ALIAS = """
import sys, warnings
import diffusers, torch
from worker_runtime.requests import SCHEDULER_ALIASES
warnings.simplefilter("ignore")
before = set(sys.modules)
config = diffusers.PNDMScheduler().config  # what a Stable Diffusion artifact ships
for alias, name in SCHEDULER_ALIASES.items():
    scheduler = getattr(diffusers, name).from_config(config)
    scheduler.set_timesteps(10)
    sample = torch.ones(1, 4, 8, 8)
    step = scheduler.step(torch.zeros_like(sample), scheduler.timesteps[0], sample).prev_sample
    assert torch.isfinite(step).all(), alias
    print("ok", alias, type(scheduler).__name__)
print("modules", " ".join(sorted({m.split(".")[0] for m in set(sys.modules) - before})))
"""


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def worker_distributions() -> set[str]:
    """The distributions requirements.txt installs: those it lists and everything they require."""
    todo = [_name(line) for line in REQUIREMENTS.read_text().splitlines() if line.strip() and line[0] != "#"]
    todo += sorted(FROM_BASE_IMAGE)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def test_every_advertised_alias_steps_with_the_workers_requirements() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", STEP_EVERY_ALIAS],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REQUIREMENTS.parents[1],
    )

    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("ok ")] == list(SCHEDULER_ALIASES)
    imported = lines[-1].removeprefix("modules ").split()
    by_module = metadata.packages_distributions()
    installed = worker_distributions()
    missing = sorted(
        {
            _name(dist)
            for module in imported
            for dist in by_module.get(module, [])
            if _name(dist) not in installed
        }
    )
    assert missing == [], f"the aliases import packages the worker image lacks: {missing}"
