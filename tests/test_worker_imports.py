"""The worker's trimmed imports: torch._dynamo stays out of start-up and the first job, images are
bit-identical with and without the shim, and torch.compile still works once it is asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.rig.artifacts import make_artifact, tiny_source
from tests.rig.worker import REPO, run_test_input, worker_env

JOB = {"input": {"prompt": "a lantern", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 3}}

# Runs in a fresh interpreter: import as the worker does, load, answer, then compile (eager backend).
PROBE = r"""
import json, sys
from pathlib import Path
from worker_runtime import imports, load
from artifact_format import manifest as mf
model = Path(sys.argv[1])
out = {}
torch = imports.import_torch()
cls = imports.import_pipeline_class(mf.load(model).pipeline)
from worker_runtime import shims
out["lazy_after_import"] = shims.lazy_dynamo_active()
UNUSED = ("peft", "torch.distributed.tensor", "torch.distributed.fsdp", "sympy", "scipy.stats._stats_py",
          "scipy.optimize", "scipy.integrate._quadpack_py", "diffusers.models.transformers.transformer_flux")
def loaded_unused():
    return [m for m in UNUSED if sys.modules.get(m) is not None]
out["unused_after_import"] = loaded_unused()
loaded = load.load_pipeline(cls, torch, model, mf.load(model), "cpu")
def run():
    g = torch.Generator("cpu").manual_seed(7)
    return loaded.pipe(prompt="a fox", num_inference_steps=2, width=64, height=64, generator=g,
                       output_type="pt").images
out["unused_after_load"] = loaded_unused()
plain = run()
out["lazy_after_job"] = shims.lazy_dynamo_active()
out["unused_after_job"] = loaded_unused()
from diffusers.models.attention_processor import Attention
loaded.pipe.unet = torch.compile(loaded.pipe.unet, backend="eager")
compiled = run()
out["lazy_after_compile"] = shims.lazy_dynamo_active()
out["compiled_equal"] = bool(torch.equal(plain, compiled))
from torch._dynamo import trace_rules
out["attention_allowed_in_graph"] = id(Attention) in trace_rules._allowed_callable_ids
out["is_compiled"] = __import__("diffusers").utils.torch_utils.is_compiled_module(loaded.pipe.unet)
print("PROBE " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imports")
    return make_artifact(tiny_source(root / "source"), root / "artifact")[0]


def probe(artifact: Path, **env: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(artifact)],
        env=worker_env(artifact, **env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert lines, proc.stdout[-2000:]
    return dict(json.loads(lines[0][len("PROBE ") :]))


def test_dynamo_stays_unloaded_through_a_job_and_compile_works_with_registrations_replayed(
    artifact: Path,
) -> None:
    out = probe(artifact)
    assert out["lazy_after_import"]
    assert out["lazy_after_job"]
    # transformers' distributed machinery (and sympy with it) and peft stay out of the imports; the
    # first two stay out for good. (Building CLIP's embeddings on the meta device goes through
    # torch._refs, which imports sympy: that part moves from the imports to the load.)
    assert out["unused_after_import"] == []
    assert out["unused_after_load"] in ([], ["sympy"])
    assert out["unused_after_job"] == out["unused_after_load"]
    assert not out["lazy_after_compile"]
    assert out["compiled_equal"]
    assert out["is_compiled"]
    assert out["attention_allowed_in_graph"]


def test_without_the_shim_dynamo_is_imported_and_compile_gives_the_same_answers(artifact: Path) -> None:
    out = probe(artifact, WORKER_TRIM_IMPORTS="0")
    unused = [
        "peft",
        "torch.distributed.tensor",
        "torch.distributed.fsdp",
        "sympy",
        "scipy.stats._stats_py",
        "scipy.optimize",
        "scipy.integrate._quadpack_py",
        "diffusers.models.transformers.transformer_flux",
    ]
    assert out["unused_after_import"] == unused
    assert not out["lazy_after_import"]
    assert not out["lazy_after_job"]
    assert out["compiled_equal"]
    assert out["attention_allowed_in_graph"]


def test_images_are_bit_identical_with_and_without_the_trimmed_imports_and_in_memory_loader(
    artifact: Path, tmp_path: Path
) -> None:
    pngs = []
    variants = [
        {"WORKER_TRIM_IMPORTS": "1"},
        {"WORKER_TRIM_IMPORTS": "0", "WORKER_VERIFY_HASHES": "0"},
        {"WORKER_LOADER": "parallel"},
    ]
    for i, env in enumerate(variants):
        saved = tmp_path / f"saved{i}"
        proc = run_test_input(artifact, JOB, tmp_path / f"run{i}", WORKER_SAVE_DIR=str(saved), **env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        pngs.append((saved / "local_test.png").read_bytes())
    assert pngs[0] == pngs[1] == pngs[2]


# What the deferred modules serve once asked: beta sigmas (scipy.stats), LMS coefficients
# (scipy.integrate), and a DiT class read from diffusers' models/transformers package.
DEFERRED_USE = r"""
import json, sys
from worker_runtime import imports
torch = imports.import_torch()
imports.import_pipeline_class("StableDiffusionPipeline")
before = [m for m in ("scipy.stats._stats_py", "scipy.integrate._quadpack_py") if m in sys.modules]
from diffusers import EulerDiscreteScheduler, LMSDiscreteScheduler
euler = EulerDiscreteScheduler(use_beta_sigmas=True)
euler.set_timesteps(6)
lms = LMSDiscreteScheduler()
lms.set_timesteps(4)
sample = torch.ones(1, 1, 2, 2)
for t in lms.timesteps[:3]:
    sample = lms.step(sample * 0.5, t, sample).prev_sample
from diffusers.models.transformers import FluxTransformer2DModel
import diffusers.models.transformers as package
print("USE " + json.dumps({
    "before": before,
    "sigmas": euler.sigmas.tolist(),
    "lms": sample.flatten().tolist(),
    "flux": FluxTransformer2DModel.__module__,
    "package_is_real": type(sys.modules["diffusers.models.transformers"]).__name__ == "module"
        and hasattr(package, "SD3Transformer2DModel"),
}))
"""


def test_deferred_modules_load_on_first_use_and_answer_as_the_plain_imports() -> None:
    answers = []
    for trim in ("1", "0"):
        proc = subprocess.run(
            [sys.executable, "-c", DEFERRED_USE],
            env=worker_env(None, WORKER_TRIM_IMPORTS=trim),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("USE "))
        answers.append(json.loads(line[len("USE ") :]))
    trimmed, plain = answers
    assert trimmed["before"] == []
    assert plain["before"] == ["scipy.stats._stats_py", "scipy.integrate._quadpack_py"]
    for key in ("sigmas", "lms", "flux", "package_is_real"):
        assert trimmed[key] == plain[key], key
    assert trimmed["flux"].startswith("diffusers.models.transformers.")
    assert trimmed["package_is_real"]


def test_an_unsupported_library_version_keeps_the_plain_import(tmp_path: Path) -> None:
    code = (
        "import sys, torch\n"
        "from worker_runtime import shims\n"
        "shims.SUPPORTED['torch'] = ((1, 0), (1, 1))\n"
        "why = shims.install_lazy_dynamo()\n"
        "from worker_runtime import trim\n"
        "assert trim.hide_peft() == trim.hide_distributed() == why, why\n"
        "assert trim.defer_scipy_stats() == trim.detection_losses_without_scipy() == why, why\n"
        "assert trim.defer_diffusers_transformers() == why, why\n"
        "import diffusers.utils.torch_utils, transformers.distributed.sharding_utils\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('peft') is not None, 'peft hidden'\n"
        "assert 'torch.distributed.tensor' in sys.modules\n"
        "import scipy.stats, diffusers.models.transformers\n"
        "assert 'scipy.stats._stats_py' in sys.modules, 'scipy.stats deferred'\n"
        "assert 'diffusers.models.transformers.transformer_flux' in sys.modules, 'DiTs deferred'\n"
        "print(why, '|', type(sys.modules['torch._dynamo']).__name__, shims.lazy_dynamo_active())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=worker_env(None), cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    why, _, rest = proc.stdout.strip().rpartition("\n")[-1].partition(" | ")
    assert why.startswith("torch ")
    assert "outside (1, 0)..(1, 1)" in why
    assert rest == "module False"


def test_version_parsing() -> None:
    from worker_runtime.shims import version_tuple

    assert version_tuple("2.13.0+cpu") == (2, 13)
    assert version_tuple("0.42.1") == (0, 42)
    assert version_tuple("5.0.0rc1") == (5, 0)
    assert version_tuple("garbage") == (0, 0)
