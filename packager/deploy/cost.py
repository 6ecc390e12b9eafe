"""Serverless or always-on: the seed guide's monthly cost crossover.

A serverless worker bills only the seconds it is busy: requests/day × seconds per request × $/s,
× 30 days. An always-on worker bills every hour: $/h × 24 × 30. Below the crossover serverless is
cheaper; above it a worker that never sleeps is. One always-on worker serves at most 86 400 s of
requests a day, so past that it takes more of them (the plot's steps).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# RunPod's serverless price list (docs.runpod.io/serverless/pricing), 24 GB tier (L4, A5000, 3090),
# read 2026-11: flex (scale-to-zero) $0.00019/s; active (always-on) $0.00013/s = $0.468/h.
# Prices change: pass the current ones with --gpu-price-serverless / --gpu-price-hourly.
DEFAULT_SERVERLESS_PER_S = 0.00019
DEFAULT_ALWAYS_ON_PER_H = 0.468
# Billed seconds per request: an SD-1.5-class 512×512, 25-step image on a 24 GB GPU takes 2–3 s,
# and RunPod rounds every request up to a whole second. An assumption: pass your own measurement.
DEFAULT_SECONDS_PER_REQUEST = 3.0
DEFAULT_REQUESTS_PER_DAY = 1000
DAYS_PER_MONTH = 30
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class CostModel:
    seconds_per_request: float
    serverless_per_s: float
    always_on_per_h: float

    def serverless_monthly(self, requests_per_day: float) -> float:
        return requests_per_day * self.seconds_per_request * self.serverless_per_s * DAYS_PER_MONTH

    def always_on_workers(self, requests_per_day: float) -> int:
        busy = requests_per_day * self.seconds_per_request / SECONDS_PER_DAY
        return max(1, math.ceil(busy - 1e-12))

    def always_on_monthly(self, requests_per_day: float = 0) -> float:
        return self.always_on_workers(requests_per_day) * self.always_on_per_h * 24 * DAYS_PER_MONTH

    @property
    def crossover_requests_per_day(self) -> float | None:
        """Requests/day where serverless costs as much as one always-on worker.

        None when an always-on second costs more than a serverless one: then serverless is cheaper
        at any load, and the crossover would lie past what one always-on worker can serve.
        """
        if self.always_on_per_h / 3600 > self.serverless_per_s:
            return None
        return self.always_on_per_h * 24 / (self.seconds_per_request * self.serverless_per_s)


def plot(
    model: CostModel,
    path: Path,
    *,
    title: str,
    requests_per_day: float | None = None,
    cold_starts: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Monthly cost vs requests/day for both options, crossover marked; written atomically as PNG.

    With `cold_starts` (mode → low/high seconds), a second panel sets the modes side by side.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    crossover = model.crossover_requests_per_day
    top = max(
        2 * (crossover or 0), 1.25 * (requests_per_day or 0), 2 * SECONDS_PER_DAY / model.seconds_per_request
    )
    xs = [top * i / 400 for i in range(401)]
    if cold_starts:
        fig, (ax, bars) = plt.subplots(2, 1, figsize=(8, 7.6), dpi=110, gridspec_kw={"height_ratios": [3, 2]})
        _cold_start_bars(bars, cold_starts)
    else:
        fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    ax.plot(
        xs, [model.serverless_monthly(x) for x in xs], label=f"serverless (${model.serverless_per_s:g}/s)"
    )
    ax.step(
        xs,
        [model.always_on_monthly(x) for x in xs],
        where="post",
        label=f"always-on (${model.always_on_per_h:g}/h per worker)",
    )
    if crossover is not None:
        y = model.serverless_monthly(crossover)
        ax.axvline(crossover, color="grey", linestyle=":", linewidth=1)
        ax.plot([crossover], [y], "o", color="black")
        ax.annotate(
            f"crossover ≈ {crossover:,.0f} requests/day (${y:,.0f}/month)",
            (crossover, y),
            textcoords="offset points",
            xytext=(8, -16),
        )
    if requests_per_day:
        ax.axvline(requests_per_day, color="tab:green", linestyle="--", linewidth=1, label="your load")
    ax.set_xlabel("requests per day")
    ax.set_ylabel(f"$ per month ({DAYS_PER_MONTH} days)")
    ax.set_title(title)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlim(0, top)
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _cold_start_bars(ax: Any, cold_starts: dict[str, tuple[float, float]]) -> None:
    """Horizontal bars of each mode's cold start; the whisker spans a range (volume read rates)."""
    names = list(cold_starts)
    lows = [cold_starts[n][0] for n in names]
    spans = [cold_starts[n][1] - cold_starts[n][0] for n in names]
    ax.barh(names, lows, color="tab:blue", alpha=0.8)
    ax.barh(names, spans, left=lows, color="tab:blue", alpha=0.35)
    for y, name in enumerate(names):
        ax.annotate(
            f"{cold_starts[name][1]:.1f} s",
            (cold_starts[name][1], y),
            xytext=(4, -4),
            textcoords="offset points",
        )
    ax.invert_yaxis()
    ax.set_xlim(0, 1.18 * max(hi for _, hi in cold_starts.values()))  # room for the labels
    ax.set_xlabel("planned cold start, seconds")
    ax.grid(alpha=0.3, axis="x")
