"""Artifact → Dockerfile + build context, laid out so that a code change costs one small layer.

On a cold start RunPod pulls every layer it does not have. Putting each large weight file in its
own layer, below the worker code, means a code-only release re-pushes (and a warm host re-pulls)
a few kilobytes instead of gigabytes. That only holds if the weight layers come out identical on
every build, so the context is deterministic: fixed modes, the same paths, nothing host-specific,
and everything that varies per recipe (env, labels) after the weights.

The weights are hard-linked into the context, not copied: a context costs no disk and no time even
for a 7 GB model. No secret is read here; the rendered output is checked against the secret
variables set in the environment before it is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from artifact_format import manifest as mf
from artifact_format.vocab import MODES, OWN_LAYER_BYTES, Mode, short_id
from packager.errors import ImageError
from packager.image import naming
from packager.image.code import TEMPLATES_DIR, code_files, requirements_text, worker_code_digest
from packager.image.context import (
    DIR_MODE,
    DOCKERIGNORE,
    check_artifact,
    fix_dir_modes,
    replace_dir,
    write_file,
)
from packager.image.weights import (
    WEIGHTS_CONTEXT,
    WeightsContext,
    WeightsImage,
    WeightsPlan,
    weights_digest,
    write_weights_context,
)
from packager.settings import build_dir, secret_values
from packager.source import edges
from packager.source.recipe import LoadedRecipe

if TYPE_CHECKING:
    import jinja2

    from packager.convert.artifact import Artifact

# Layer steps, in build order: what each instruction that adds a layer holds (see RenderResult).
STEP_DEPS = ("requirements", "pip install")
STEP_CODE = ("code", "compile")
LABEL_RECIPE = "packager.recipe"
LABEL_MODE = "packager.mode"
LABEL_ARTIFACT = "packager.artifact-id"
LABEL_SOURCE = "packager.source.repo"
LABEL_COMMIT = "packager.source.commit"
LABEL_CODE = "packager.worker-code-digest"
LABEL_CONFIG = "packager.config-digest"


# Baked mode's weights image carries `weights`, the worker image built FROM it `worker`: a search by
# the weights digest must not find a worker image, which inherits the weights image's labels.
LABEL_ROLE = "packager.role"


# What the weights image's layers depend on (artifact, base, requirements, platform, templates): the
# label by which any recipe producing the same artifact on the same base finds and reuses it.
LABEL_WEIGHTS = "packager.weights-digest"


# What each layer the Dockerfile adds holds, as a JSON list: `docker inspect` shows it, and a build
# found by its tag can still say which layer is which without the manifest.
LABEL_LAYERS = "packager.layers"


@dataclass(frozen=True)
class ImageSpec:
    """What a plan decides and a rendered context keeps: the image's name, inputs and layers.

    `layer_steps` names what each layer-adding instruction holds, in order ("requirements",
    "pip install", "weights unet/diffusion_pytorch_model.safetensors", "small files", "manifest",
    "code", "compile"): the top `len(layer_steps)` layers of the built image, one each.
    """

    mode: Mode
    tag: str
    base_image: str
    build_args: dict[str, str]
    env: dict[str, str]
    labels: dict[str, str]
    layer_steps: tuple[str, ...]
    large_files: tuple[str, ...]


@dataclass(frozen=True)
class RenderResult(ImageSpec):
    """A build context on disk and what a build needs to know about it."""

    context_dir: Path
    dockerfile: Path
    linked: int
    copied: int

    # Baked mode: the weights image's context, built (or found by its labels) before this one.
    weights: WeightsContext | None = None

    @property
    def config_digest(self) -> str:
        return self.labels[LABEL_CONFIG]

    @property
    def code_digest(self) -> str:
        return self.labels[LABEL_CODE]


@dataclass(frozen=True)
class Plan(ImageSpec):
    """The Dockerfile text and everything derived from the inputs, before anything is written."""

    text: str
    requirements: str
    small_files: tuple[str, ...]
    weights: WeightsPlan | None = None


def dockerfile_quote(value: str) -> str:
    """A value for ENV/LABEL that the Dockerfile parser reads back exactly (no `$` expansion).

    Single quotes are literal to Docker's parser, so most values go in them untouched; JSON (the
    worker config) always can, as `_json_env` spells its single quotes as \\u0027. Only a value with
    a single quote of its own falls back to escaped double quotes.
    """
    if "\n" in value or "\r" in value:
        raise ImageError(f"a Dockerfile value cannot hold a line break: {value[:40]!r}")
    if "'" not in value:
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def _json_env(env: dict[str, str]) -> dict[str, str]:
    """WORKER_CONFIG with `'` as its JSON escape: the same JSON, and always single-quotable."""
    return {k: v.replace("'", "\\u0027") if k == "WORKER_CONFIG" else v for k, v in env.items()}


def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["dq"] = dockerfile_quote
    env.filters["json"] = lambda v: json.dumps(v)
    return env


def _source_labels(manifest: mf.Manifest) -> tuple[str, str]:
    src = manifest.source
    repo = src.get("repo") or src.get("url") or src.get("kind") or ""
    commit = src.get("commit") or src.get("revision") or src.get("sha256") or ""
    return str(repo), str(commit)


def _check_find_links(url: str | None) -> None:
    if not url:
        return
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ImageError(
            "the pip find-links URL carries credentials, which would stay in the image history: "
            "serve the wheelhouse without them"
        )


@dataclass(frozen=True)
class Identity:
    """What names an image and tells an up-to-date one from a stale one, without the manifest.

    The artifact id pins everything the manifest decides (files, layout, source labels), so the
    rest is the recipe's side: worker env, base image, requirements, platform. Those go into the
    config digest; the shipped code and the templates into the worker code digest.
    """

    tag: str
    base_image: str
    env: dict[str, str]
    requirements: str
    labels: dict[str, str]  # artifact id, worker code digest, config digest (+ weights digest)
    weights_tag: str | None = None  # baked mode: the weights image the worker image is built FROM
    weights_digest: str | None = None


def identity(
    loaded: LoadedRecipe,
    artifact_id: str,
    mode: Mode,
    *,
    artifact_uri: str | None = None,
    base_image: str | None = None,
) -> Identity:
    if mode not in MODES:
        raise ImageError(f"unknown image mode {mode!r} (expected {', '.join(MODES)})")
    if not mf.is_artifact_id(artifact_id):
        raise ImageError(f"not an artifact id: {artifact_id!r}")
    image = loaded.recipe.image
    if mode in ("volume", "cached") and artifact_uri is None:
        artifact_uri = default_artifact_uri(loaded, artifact_id)
    base = base_image or image.base
    if problem := edges.image_reference_problem(base):
        raise ImageError(f"base image: {problem}")
    env = _json_env(naming.worker_env(loaded, artifact_id, mode, artifact_uri))
    requirements = requirements_text(image.base_has_torch)
    config = {
        "mode": mode,
        "base_image": base,
        "base_has_torch": image.base_has_torch,
        "platform": image.platform,
        "env": env,
        "requirements": requirements,
    }
    labels = {
        LABEL_ARTIFACT: artifact_id,
        LABEL_CODE: worker_code_digest(),
        LABEL_CONFIG: hashlib.sha256(mf.canonical_json(config)).hexdigest(),
    }
    weights = weights_tag = None
    if mode == "baked":
        weights = weights_digest(artifact_id, base, image.base_has_torch, image.platform, requirements)
        weights_tag = naming.weights_tag(image.repository, artifact_id, weights)
        labels[LABEL_WEIGHTS] = weights
    return Identity(
        tag=naming.image_tag(image.repository, loaded.recipe.name, artifact_id, mode),
        base_image=base,
        env=env,
        requirements=requirements,
        labels=labels,
        weights_tag=weights_tag,
        weights_digest=weights,
    )


def default_artifact_uri(loaded: LoadedRecipe, artifact_id: str) -> str:
    """Where a volume-mode worker pulls from: the artifact's place in the recipe's store."""
    from packager.store.stores import open_store

    return open_store(loaded).artifact_uri(loaded.recipe.name, artifact_id)


def plan(
    loaded: LoadedRecipe,
    manifest: mf.Manifest,
    artifact_id: str,
    mode: Mode,
    *,
    artifact_uri: str | None = None,
    base_image: str | None = None,
    pip_find_links: str | None = None,
) -> Plan:
    """The Dockerfile for an artifact and mode, with its labels and digests; writes nothing."""
    _check_find_links(pip_find_links)
    ident = identity(loaded, artifact_id, mode, artifact_uri=artifact_uri, base_image=base_image)
    image = loaded.recipe.image
    large = tuple(sorted(f.path for f in manifest.files if f.size >= OWN_LAYER_BYTES))
    small = tuple(sorted(f.path for f in manifest.files if f.size < OWN_LAYER_BYTES))
    model_dir = naming.BAKED_MODEL_DIR
    steps = list(STEP_DEPS)
    if mode == "baked":
        steps += [f"weights {p}" for p in large] + (["small files"] if small else []) + ["manifest"]
    steps += list(STEP_CODE)
    repo, commit = _source_labels(manifest)
    labels = {
        LABEL_RECIPE: loaded.recipe.name,
        LABEL_MODE: mode,
        LABEL_SOURCE: repo,
        LABEL_COMMIT: commit,
        **ident.labels,
        **({LABEL_ROLE: "worker"} if mode == "baked" else {}),
        LABEL_LAYERS: json.dumps(steps, separators=(",", ":")),
    }
    values = {
        "name": loaded.recipe.name,
        "artifact_id": artifact_id,
        "base_image": ident.base_image,
        "base_has_torch": image.base_has_torch,
        "model_dir": model_dir,
        "large_files": [(f"weights/large/{p}", f"{model_dir}/{p}") for p in large],
        "has_small_files": bool(small),
        "env": ident.env,
        "weights_image": ident.weights_tag,
    }
    templates = _environment()
    text = templates.get_template(f"{mode}.Dockerfile.j2").render(labels=labels, **values)
    weights = None
    if ident.weights_tag is not None and ident.weights_digest is not None:
        weight_steps = tuple(steps[: -len(STEP_CODE)])
        weight_labels = {
            LABEL_ROLE: "weights",
            LABEL_ARTIFACT: artifact_id,
            LABEL_WEIGHTS: ident.weights_digest,
            LABEL_LAYERS: json.dumps(weight_steps, separators=(",", ":")),
        }
        weights = WeightsPlan(
            text=templates.get_template("weights.Dockerfile.j2").render(labels=weight_labels, **values),
            tag=ident.weights_tag,
            digest=ident.weights_digest,
            labels=weight_labels,
            layer_steps=weight_steps,
        )
    build_args = {"BASE_IMAGE": ident.base_image, "PIP_FIND_LINKS": pip_find_links or ""}
    if weights is not None:
        build_args["WEIGHTS_IMAGE"] = weights.tag
    rendered = text + (weights.text if weights else "") + ident.requirements + json.dumps(build_args)
    if any(v in rendered for v in secret_values()):
        raise ImageError(
            "the rendered Dockerfile would contain the value of a secret environment variable "
            "(HF_TOKEN, AWS keys, RUNPOD_API_KEY): remove it from the recipe"
        )
    return Plan(
        mode=mode,
        text=text,
        requirements=ident.requirements,
        tag=ident.tag,
        base_image=ident.base_image,
        build_args=build_args,
        env=ident.env,
        labels=labels,
        large_files=large,
        small_files=small,
        layer_steps=tuple(steps),
        weights=weights,
    )


def default_context_dir(name: str, artifact_id: str, mode: Mode) -> Path:
    return build_dir() / "contexts" / name / f"{short_id(artifact_id)}-{mode}"


def render(
    loaded: LoadedRecipe,
    artifact: Artifact | None,
    manifest: mf.Manifest,
    artifact_id: str,
    mode: Mode,
    out_dir: Path | None = None,
    *,
    artifact_uri: str | None = None,
    base_image: str | None = None,
    pip_find_links: str | None = None,
) -> RenderResult:
    """Write the Dockerfile and its build context for an artifact.

    Args:
        loaded: the recipe (image settings, worker config).
        artifact: the artifact on local disk, required for baked mode; its weights are
            hard-linked (copied only across filesystems or when a file is not world-readable).
        manifest, artifact_id: the artifact; volume mode needs nothing else.
        mode: "baked" (weights in the image) or "volume" (weights on a network volume).
        out_dir: the context folder (default build/contexts/<name>/<id[:12]>-<mode>/); replaced
            whole, and only once complete.
        artifact_uri: where a volume-mode worker pulls the artifact from when the volume lacks it
            (default: the artifact's place in the recipe's store).
        base_image: overrides the recipe's `image.base` (the BASE_IMAGE build arg's default).
        pip_find_links: a wheelhouse URL for the pip step (the PIP_FIND_LINKS build arg).

    Raises:
        ImageError: baked mode without the artifact, an artifact file missing or of the wrong
            size, credentials in the find-links URL, or a secret's value in the output.
    """
    p = plan(
        loaded,
        manifest,
        artifact_id,
        mode,
        artifact_uri=artifact_uri,
        base_image=base_image,
        pip_find_links=pip_find_links,
    )
    artifact_dir = artifact.dir if artifact is not None else None
    if mode == "baked":
        if artifact_dir is None:
            raise ImageError("baked mode needs the artifact on disk (weights go into the image)")
        check_artifact(artifact_dir, manifest, artifact_id)
    target = (out_dir or default_context_dir(loaded.recipe.name, artifact_id, mode)).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    linked = copied = 0
    try:
        tmp.mkdir(mode=DIR_MODE)
        write_file(tmp / "Dockerfile", p.text.encode())
        write_file(
            tmp / ".dockerignore", (DOCKERIGNORE + (f"{WEIGHTS_CONTEXT}/\n" if p.weights else "")).encode()
        )
        for rel, src in code_files():
            write_file(tmp / "code" / rel, src.read_bytes())
        if p.weights is None:
            write_file(tmp / "requirements.txt", p.requirements.encode())
        else:
            assert artifact_dir is not None
            linked, copied = write_weights_context(
                tmp / WEIGHTS_CONTEXT,
                p.weights,
                p.requirements,
                {"large": p.large_files, "small": p.small_files},
                artifact_dir,
            )
        fix_dir_modes(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    weights = None
    if p.weights is not None:
        folder = target / WEIGHTS_CONTEXT
        weights = WeightsContext(
            **fields_of(p.weights, WeightsImage), context_dir=folder, dockerfile=folder / "Dockerfile"
        )
    return RenderResult(
        **fields_of(p, ImageSpec),
        context_dir=target,
        dockerfile=target / "Dockerfile",
        linked=linked,
        copied=copied,
        weights=weights,
    )


def fields_of(value: object, part: type) -> dict[str, Any]:
    """The fields `value` has from its dataclass base `part`, to carry a plan into what is made of it."""
    return {f.name: getattr(value, f.name) for f in fields(part)}
