"""The worker code that ships in every image, and the digest that tells an up-to-date image from a
stale one without building."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from packager.errors import ImageError

if TYPE_CHECKING:
    pass


TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "dockerfiles"


# The packages that ship in the image, copied beside each other under /opt/worker.
CODE_PACKAGES = ("artifact_format", "worker_runtime", "volume_sync")


def package_dir(package: str) -> Path:
    """Where a shipped package's sources are, found without importing (and running) it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImageError(f"cannot find the {package} package to copy into the image")
    return Path(next(iter(spec.submodule_search_locations)))


def code_files() -> list[tuple[str, Path]]:
    """(path in the image under /opt/worker, source) for every shipped source file, sorted."""
    out = []
    for package in CODE_PACKAGES:
        root = package_dir(package)
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not _ignored(rel):
                out.append((f"{package}/{rel.as_posix()}", path))
    return out


def _ignored(rel: Path) -> bool:
    return any(part == "__pycache__" or part.startswith(".") for part in rel.parts) or rel.suffix in (
        ".pyc",
        ".pyo",
    )


def worker_code_digest() -> str:
    """sha256 of what changes the code layers: the shipped packages, the templates and this module.

    Recorded as a label so `packager build` can tell an up-to-date image from a stale one without
    building; it is the same on every machine for the same checkout.
    """
    h = hashlib.sha256()
    files = code_files() + [(f"dockerfiles/{p.name}", p) for p in sorted(TEMPLATES_DIR.glob("*.j2"))]
    files.append(("packager/image/render.py", Path(__file__)))
    for rel, path in files:
        data = path.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def requirements_text(base_has_torch: bool) -> str:
    """The worker's requirements, plus torch itself when the base image does not bring it."""
    text = (package_dir("worker_runtime") / "requirements.txt").read_text()
    if not base_has_torch:
        text = (
            text.rstrip("\n") + "\n# The base image has no torch (image.base_has_torch: false).\ntorch>=2.4\n"
        )
    return text
