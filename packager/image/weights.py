"""Baked mode's weights image: base, worker requirements, weight layers and the manifest, built once
per artifact and base and found again by its labels.

The worker image is built FROM it on a context that holds only the code, so the weights reach the
engine once per artifact: a code-only release sends, builds and pushes the code layers alone,
whatever the model's size. Nothing recipe-specific goes into it (no recipe name, env or worker
label), so every recipe that produces the same artifact on the same base shares it, layer digests
included.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from artifact_format import manifest as mf
from artifact_format.vocab import OWN_LAYER_BYTES
from packager.image.code import TEMPLATES_DIR
from packager.image.context import DIR_MODE, DOCKERIGNORE, link_or_copy, write_file

# Inside a baked context: the weights image's own context, which the worker's build never sends.
WEIGHTS_CONTEXT = "weights-image"


@dataclass(frozen=True)
class WeightsImage:
    """What names the weights image and finds it again: its tag, digest, labels and layers."""

    tag: str
    digest: str
    labels: dict[str, str]
    layer_steps: tuple[str, ...]


@dataclass(frozen=True)
class WeightsPlan(WeightsImage):
    """The weights image's Dockerfile and what names it, before anything is written."""

    text: str


@dataclass(frozen=True)
class WeightsContext(WeightsImage):
    """The weights image's context (`weights-image/` inside the worker's), its tag and labels."""

    context_dir: Path
    dockerfile: Path


def weights_digest(
    artifact_id: str, base: str, base_has_torch: bool, platform: str, requirements: str
) -> str:
    """sha256 of everything the weights image's layers depend on, and of nothing recipe-specific.

    The artifact id pins the files and so, with the one-layer threshold, the layer split; the
    templates that make those layers are hashed too. No recipe name, env or label enters, so two
    recipes that produce the same artifact on the same base share one weights image.
    """
    templates = [TEMPLATES_DIR / name for name in ("weights.Dockerfile.j2", "_deps.Dockerfile.j2")]
    inputs = {
        "artifact_id": artifact_id,
        "base_image": base,
        "base_has_torch": base_has_torch,
        "platform": platform,
        "requirements": requirements,
        "own_layer_bytes": OWN_LAYER_BYTES,
        "templates": [hashlib.sha256(t.read_bytes()).hexdigest() for t in templates],
    }
    return hashlib.sha256(mf.canonical_json(inputs)).hexdigest()


def write_weights_context(
    folder: Path,
    weights: WeightsPlan,
    requirements: str,
    files: dict[str, tuple[str, ...]],
    artifact_dir: Path,
) -> tuple[int, int]:
    """The weights image's context: requirements, the weights hard-linked (`files` by layer kind,
    "large" or "small"), the manifest. Returns the (hard-linked, copied) file counts."""
    linked = copied = 0
    folder.mkdir(mode=DIR_MODE)
    write_file(folder / "Dockerfile", weights.text.encode())
    write_file(folder / ".dockerignore", DOCKERIGNORE.encode())
    write_file(folder / "requirements.txt", requirements.encode())
    for where, names in files.items():
        for rel in names:
            did_link = link_or_copy(artifact_dir / rel, folder / "weights" / where / rel)
            linked, copied = linked + did_link, copied + (not did_link)
    write_file(folder / "manifest.json", (artifact_dir / mf.MANIFEST_NAME).read_bytes())
    return linked, copied
