"""`make demo`: the whole flow on a tiny model, on the embedded defaults, in about a minute.

1. (the Makefile) generate the tiny random-weight fixture pipeline under build/fixtures/tiny;
2. `packager package recipes/examples/tiny.yaml` (local store; the image is built only when a
   Docker engine is reachable and the base image is already present locally, else just rendered);
3. serve one request with the packaged worker and write the image to build/demo.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RECIPE = Path("recipes/examples/tiny.yaml")
FIXTURE = Path("build/fixtures/tiny")
OUTPUT = Path("build/demo.png")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    print(f"$ {' '.join(args)}", flush=True)
    proc = subprocess.run(list(args), text=True, stdout=subprocess.PIPE)
    if proc.returncode != 0:
        sys.exit(f"demo: `{' '.join(args)}` failed (exit {proc.returncode})")
    return proc


def _image_policy() -> str:
    """Build only where an engine answers and the base image is already here (nothing is pulled)."""
    from packager.image.build import engine_problem
    from packager.source.recipe import load_recipe

    if engine_problem():
        return "render"
    import docker

    base = os.environ.get("BASE_IMAGE") or load_recipe(RECIPE).recipe.image.base
    try:
        docker.from_env().images.get(base)
    except Exception:
        print(f"demo: base image {base} is not present locally: rendering the image, not building it")
        return "render"
    return "build"


def main() -> int:
    start = time.perf_counter()
    if not (FIXTURE / "model_index.json").exists():
        sys.exit(f"demo: {FIXTURE} is missing: run `make demo`, which generates it first")
    packager = [sys.executable, "-m", "packager"]
    proc = _run(*packager, "package", str(RECIPE), "--json", "--image", _image_policy())
    result = json.loads(proc.stdout)
    from packager.commands.package import summary_table

    print(summary_table(result))
    _run(*packager, "smoke", str(RECIPE), "-o", str(OUTPUT), "--prompt", "a lighthouse at dusk")
    print(f"\ndemo: wrote {OUTPUT} in {time.perf_counter() - start:.1f} s total")
    print("demo: run it again: every stage is skipped and nothing moves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
