"""Running the `packager` CLI as a user does: a subprocess, stdin closed, output captured.

Every test that drives the command line goes through `run_packager`, so they all run it the same
way (the repository as working directory unless told otherwise, the same timeout rule).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs the CLI, then reports on stderr which heavy modules the run imported (no-op runs must not
# import torch or diffusers).
_REPORT_IMPORTS = """
import sys
from packager.cli import main
try:
    main()
finally:
    heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
    print("IMPORTED:" + ",".join(heavy), file=sys.stderr)
"""


def run_packager(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
    report_imports: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`packager ARGS` in a subprocess; with `report_imports`, stderr ends in `IMPORTED:<modules>`."""
    launcher = ["-c", _REPORT_IMPORTS] if report_imports else ["-m", "packager"]
    return subprocess.run(
        [sys.executable, *launcher, *args],
        env=env,
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def imported_modules(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The heavy modules a `report_imports` run imported."""
    last = proc.stderr.strip().splitlines()[-1]
    return [m for m in last.removeprefix("IMPORTED:").split(",") if m]
