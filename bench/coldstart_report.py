"""Tables and targets of bench/coldstart.py: medians of the runs, the issue's goals, the printout."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Goals (CPU): ready at most half the naive handler's; hashing every weight byte adds at most 5 %.
# Kept from before: ready within a second of the floor (and, tiny model, the first response too).
TARGET_MARGIN_S = 1.0
TARGET_READY_FRACTION = 0.5
TARGET_VERIFY_COST = 0.05


@dataclass
class Run:
    wall_s: float
    cpu_s: float = 0.0  # user + system seconds of the child: robust to a busy machine, unlike wall time
    marks: dict[str, float] = field(default_factory=dict)
    breakdown: dict[str, float] = field(default_factory=dict)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: list[Run]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "wall_s": median([r.wall_s for r in runs]),
        "cpu_s": median([r.cpu_s for r in runs]),
    }
    for key in ("ready_s", "first_response_s", "done_s"):
        values = [r.marks[key] for r in runs if key in r.marks]
        if values:
            out[key] = median(values)
            out[key + "_all"] = [round(v, 3) for v in values]
    for key in ("import_s", "load_s", "warmup_s", "total_s"):
        values = [r.breakdown[key] for r in runs if key in r.breakdown]
        if values:
            out["self_" + key] = median(values)
    return out


def targets(table: dict[str, dict[str, Any]], tiny: bool) -> dict[str, Any]:
    floor = table.get("floor", {}).get("done_s")
    worker = table.get("worker", {})
    naive = table.get("naive", {})
    out: dict[str, Any] = {"floor_s": floor}
    if floor is not None and "ready_s" in worker:
        out["ready_minus_floor_s"] = worker["ready_s"] - floor
        out["ready_within_floor_plus_1s"] = worker["ready_s"] <= floor + TARGET_MARGIN_S
    if "ready_s" in naive and "ready_s" in worker:
        out["speedup_ready_vs_naive"] = naive["ready_s"] / worker["ready_s"]
        out["ready_fraction_of_naive"] = worker["ready_s"] / naive["ready_s"]
        out["ready_at_most_half_of_naive"] = out["ready_fraction_of_naive"] <= TARGET_READY_FRACTION
    noverify = table.get("worker-noverify", {})
    if "ready_s" in noverify and "ready_s" in worker:
        out["verify_cost"] = worker["ready_s"] / noverify["ready_s"] - 1
        out["verify_cost_at_most_5pct"] = out["verify_cost"] <= TARGET_VERIFY_COST
    untrimmed = table.get("worker-untrimmed", {})
    if "ready_s" in untrimmed and "ready_s" in worker:
        out["trimmed_imports_save_s"] = untrimmed["ready_s"] - worker["ready_s"]
    if "first_response_s" in naive and "first_response_s" in worker:
        out["speedup_first_response_vs_naive"] = naive["first_response_s"] / worker["first_response_s"]
    if tiny and floor is not None and "first_response_s" in worker:
        out["first_response_minus_floor_s"] = worker["first_response_s"] - floor
        out["first_response_within_floor_plus_1s"] = worker["first_response_s"] <= floor + TARGET_MARGIN_S
    return out


def print_table(cache: str, table: dict[str, dict[str, Any]], targets: dict[str, Any]) -> None:
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.2f}"

    print(f"\ncache: {cache}")
    head = f"{'variant':<20} {'ready s':>8} {'1st resp s':>11} {'done s':>7} {'CPU s':>6}"
    print(f"{head} {'self import/load s':>19}")
    for variant, row in table.items():
        self_split = f"{row['self_import_s']:.2f}/{row['self_load_s']:.2f}" if "self_import_s" in row else "-"
        print(
            f"{variant:<20} {cell(row.get('ready_s')):>8} {cell(row.get('first_response_s')):>11} "
            f"{cell(row.get('done_s')):>7} {cell(row.get('cpu_s')):>6} {self_split:>19}"
        )
    for key, value in targets.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"  {key}: {shown}")


def machine() -> str:
    """A short description of where the figures were measured, e.g. "2-core AMD EPYC 9554 (cpu)"."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {model}"
