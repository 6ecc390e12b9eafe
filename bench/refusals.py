"""How long the worker takes to refuse a bad request, beside what a served request costs.

Runs the worker's job path (`worker_runtime.jobs.answer`) in this process on the tiny SD fixture
(CPU, fp32): each hostile request of tests/test_worker_requests.py (a 400-digit guidance_scale,
NaN, infinities, bools posing as numbers, nested junk, 20 000-character prompts, ...) many times,
then one good 64 px, 2-step request as the baseline. Prints per-refusal medians and the 99th
percentile, and writes bench/results/refusals.json.

    python bench/refusals.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "refusals.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="times each bad request is sent")
    args = parser.parse_args()

    from tests.rig.artifacts import make_artifact, tiny_source
    from tests.rig.served import served_in_process
    from tests.test_worker_requests import HOSTILE, HOSTILE_DIFFUSERS_API, WORKER_CONFIG
    from worker_runtime import jobs

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, _ = make_artifact(tiny_source(Path(tmp) / "source"), Path(tmp) / "artifact")
        served = served_in_process(model_dir, WORKER_CONFIG)
        bad: list[dict[str, Any]] = [{"prompt": "a fox", **extra} for extra, _ in HOSTILE]
        for extra, _ in HOSTILE_DIFFUSERS_API:
            model_inputs: dict[str, Any] = dict(extra.get("modelInputs", {}))
            bad.append({**extra, "modelInputs": {"prompt": "a fox", **model_inputs}})
        samples: list[float] = []
        for _ in range(args.rounds):
            for body in bad:
                started = time.perf_counter()
                out = jobs.answer(served, {"id": "bench", "input": body})
                samples.append(time.perf_counter() - started)
                assert "error" in out, out
        good = []
        for _ in range(3):
            started = time.perf_counter()
            out = jobs.answer(served, {"id": "bench", "input": {"prompt": "a fox", "seed": 1}})
            good.append(time.perf_counter() - started)
            assert "image_base64" in out
    samples.sort()
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "bad_requests": len(bad),
        "refusals": len(samples),
        "refusal_median_us": round(statistics.median(samples) * 1e6, 1),
        "refusal_p99_us": round(samples[int(len(samples) * 0.99)] * 1e6, 1),
        "refusal_max_us": round(samples[-1] * 1e6, 1),
        "served_median_s": round(statistics.median(good), 3),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['refusals']} refusals of {result['bad_requests']} bad requests: median "
        f"{result['refusal_median_us']} us, p99 {result['refusal_p99_us']} us, max "
        f"{result['refusal_max_us']} us; a served 64 px 2-step request: {result['served_median_s']} s"
    )


if __name__ == "__main__":
    main()
