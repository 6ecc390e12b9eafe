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

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from artifact_format import manifest as mf
from artifact_format.vocab import OWN_LAYER_BYTES, Mode, short_id
from packager.errors import ImageError
from packager.image import naming
from packager.settings import build_dir, secret_values
from packager.source.recipe import LoadedRecipe

if TYPE_CHECKING:
    from packager.pipeline.artifact import Artifact

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "dockerfiles"
# The packages that ship in the image, copied beside each other under /opt/worker.
CODE_PACKAGES = ("artifact_format", "worker_runtime", "volume_sync")
# Non-root users in the container must read everything; nothing in the image needs to be writable.
FILE_MODE = 0o644
DIR_MODE = 0o755
# The classic builder's COPY keeps each file's mode and mtime: fixed values make layers repeatable.
CONTEXT_MTIME = 315532800  # 1980-01-01
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
# What each layer the Dockerfile adds holds, as a JSON list: `docker inspect` shows it, and a build
# found by its tag can still say which layer is which without the manifest.
LABEL_LAYERS = "packager.layers"


@dataclass(frozen=True)
class RenderResult:
    """A build context on disk and what a build needs to know about it.

    `layer_steps` names what each layer-adding instruction holds, in order ("requirements",
    "pip install", "weights unet/diffusion_pytorch_model.safetensors", "small files", "manifest",
    "code", "compile"): the top `len(layer_steps)` layers of the built image, one each.
    """

    context_dir: Path
    dockerfile: Path
    mode: Mode
    tag: str
    base_image: str
    build_args: dict[str, str]
    env: dict[str, str]
    labels: dict[str, str]
    layer_steps: tuple[str, ...]
    large_files: tuple[str, ...]
    linked: int
    copied: int

    @property
    def config_digest(self) -> str:
        return self.labels[LABEL_CONFIG]

    @property
    def code_digest(self) -> str:
        return self.labels[LABEL_CODE]


@dataclass(frozen=True)
class Plan:
    """The Dockerfile text and everything derived from the inputs, before anything is written."""

    mode: Mode
    text: str
    requirements: str
    tag: str
    base_image: str
    build_args: dict[str, str]
    env: dict[str, str]
    labels: dict[str, str]
    large_files: tuple[str, ...]
    small_files: tuple[str, ...]
    layer_steps: tuple[str, ...]


def package_dir(package: str) -> Path:
    """Where a shipped package's sources are, found without importing (and running) it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImageError(f"cannot find the {package} package to copy into the image")
    return Path(next(iter(spec.submodule_search_locations)))


def _code_files() -> list[tuple[str, Path]]:
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
    files = _code_files() + [(f"dockerfiles/{p.name}", p) for p in sorted(TEMPLATES_DIR.glob("*.j2"))]
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


def _environment():  # type: ignore[no-untyped-def]
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
    labels: dict[str, str]  # artifact id, worker code digest, config digest


def identity(
    loaded: LoadedRecipe,
    artifact_id: str,
    mode: Mode,
    *,
    artifact_uri: str | None = None,
    base_image: str | None = None,
) -> Identity:
    if mode not in ("baked", "volume"):
        raise ImageError(f"unknown image mode {mode!r} (expected baked or volume)")
    if not mf.is_artifact_id(artifact_id):
        raise ImageError(f"not an artifact id: {artifact_id!r}")
    image = loaded.recipe.image
    if mode == "volume" and artifact_uri is None:
        artifact_uri = default_artifact_uri(loaded, artifact_id)
    base = base_image or image.base
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
    return Identity(
        tag=naming.image_tag(image.repository, loaded.recipe.name, artifact_id, mode),
        base_image=base,
        env=env,
        requirements=requirements,
        labels={
            LABEL_ARTIFACT: artifact_id,
            LABEL_CODE: worker_code_digest(),
            LABEL_CONFIG: hashlib.sha256(mf.canonical_json(config)).hexdigest(),
        },
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
        LABEL_LAYERS: json.dumps(steps, separators=(",", ":")),
    }
    text = (
        _environment()
        .get_template(f"{mode}.Dockerfile.j2")
        .render(
            name=loaded.recipe.name,
            artifact_id=artifact_id,
            base_image=ident.base_image,
            base_has_torch=image.base_has_torch,
            model_dir=model_dir,
            large_files=[(f"weights/large/{p}", f"{model_dir}/{p}") for p in large],
            has_small_files=bool(small),
            env=ident.env,
            labels=labels,
        )
    )
    build_args = {"BASE_IMAGE": ident.base_image, "PIP_FIND_LINKS": pip_find_links or ""}
    rendered = text + ident.requirements + json.dumps(build_args)
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
        _check_artifact(artifact_dir, manifest, artifact_id)
    target = (out_dir or default_context_dir(loaded.recipe.name, artifact_id, mode)).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    linked = copied = 0
    try:
        tmp.mkdir(mode=DIR_MODE)
        _write(tmp / "Dockerfile", p.text.encode())
        _write(tmp / ".dockerignore", _DOCKERIGNORE.encode())
        _write(tmp / "requirements.txt", p.requirements.encode())
        for rel, src in _code_files():
            _write(tmp / "code" / rel, src.read_bytes())
        if mode == "baked":
            assert artifact_dir is not None
            for rel in p.large_files:
                did_link = _link_or_copy(artifact_dir / rel, tmp / "weights" / "large" / rel)
                linked, copied = linked + did_link, copied + (not did_link)
            for rel in p.small_files:
                did_link = _link_or_copy(artifact_dir / rel, tmp / "weights" / "small" / rel)
                linked, copied = linked + did_link, copied + (not did_link)
            _write(tmp / "manifest.json", (artifact_dir / mf.MANIFEST_NAME).read_bytes())
        _fix_dir_modes(tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RenderResult(
        context_dir=target,
        dockerfile=target / "Dockerfile",
        mode=mode,
        tag=p.tag,
        base_image=p.base_image,
        build_args=p.build_args,
        env=p.env,
        labels=p.labels,
        layer_steps=p.layer_steps,
        large_files=p.large_files,
        linked=linked,
        copied=copied,
    )


# The context is generated and holds only what the image needs; this guards a user's own
# `docker build` of it against stray bytecode and editor files added later.
_DOCKERIGNORE = """\
# Generated by packager render: the context holds exactly what the image needs.
**/__pycache__
**/*.pyc
**/.*.swp
"""


def _check_artifact(artifact_dir: Path, manifest: mf.Manifest, artifact_id: str) -> None:
    try:
        on_disk = mf.artifact_id_of(artifact_dir)
    except FileNotFoundError:
        raise ImageError(f"{artifact_dir}: no manifest (the artifact is missing or incomplete)") from None
    if on_disk != artifact_id:
        raise ImageError(f"{artifact_dir}: holds artifact {short_id(on_disk)}, not {short_id(artifact_id)}")
    try:
        mf.check(artifact_dir, manifest)
    except mf.ManifestError as exc:
        raise ImageError(str(exc)) from None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(FILE_MODE)
    os.utime(path, (CONTEXT_MTIME, CONTEXT_MTIME))


def _link_or_copy(src: Path, dest: Path) -> bool:
    """Hard-link `src` to `dest` (True), or copy it where a link cannot be made or shared (False)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A link shares the inode and so its mode: a file others cannot read is copied, never chmod-ed,
    # so the artifact itself is left as it is.
    if stat.S_IMODE(src.stat().st_mode) & 0o444 == 0o444:
        try:
            os.link(src, dest, follow_symlinks=True)
            return True
        except OSError:  # another filesystem (EXDEV), or links refused (EPERM, EMLINK)
            pass
    shutil.copyfile(src, dest)
    dest.chmod(FILE_MODE)
    st = src.stat()
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
    return False


def _fix_dir_modes(root: Path) -> None:
    for dirpath, _dirs, _files in os.walk(root):
        os.chmod(dirpath, DIR_MODE)
        os.utime(dirpath, (CONTEXT_MTIME, CONTEXT_MTIME))


def _replace_dir(tmp: Path, target: Path) -> None:
    """Swap a finished folder into place; the old one is removed only after the swap."""
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(old)
