"""The images on a real Docker engine, offline: build, run, rebuild, push, pull, scan.

Everything runs on the rig of tests/rig/docker_env.py (a private dockerd, a debootstrap base image,
a wheelhouse on 127.0.0.1, a loopback registry), so the tier needs root and Debian's docker.io,
docker-registry and debootstrap, and nothing from the internet. The worker inside each image
answers one request through the runpod SDK's `--test_input` and writes its PNG to a mounted folder.

The tests share the module's images and run in file order: the secret scan (a `--no-cache` build
through the CLI, whose pip layer the later builds reuse) → first build → code-only rebuild →
push/pull → volume mode.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from artifact_format import manifest as mf
from artifact_format.vocab import OWN_LAYER_BYTES
from packager.convert.artifact import Artifact
from packager.image import build as image_build
from packager.image import built as image_built
from packager.image import code, render
from packager.image import push as image_push
from packager.source.recipe import LoadedRecipe, load_recipe
from tests.rig.artifacts import make_artifact, tiny_recipe, tiny_source
from tests.rig.docker_env import DockerRig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "build" / "e2e-report.json"
JOB = {"input": {"prompt": "a red fox in the snow", "num_inference_steps": 2, "seed": 7}}
# A file above the one-layer-per-file threshold, so that path is proven on a real engine too. The
# tiny model's own weights are a few MB; diffusers ignores a folder model_index.json does not name.
PADDING = "extras/padding.bin"
PADDING_BYTES = OWN_LAYER_BYTES + 1024 * 1024
WEIGHT_STEPS = ("requirements", "pip install", f"weights {PADDING}", "small files", "manifest")
CODE_STEPS = ("code", "compile")


@dataclass
class Ran:
    exit_code: int
    logs: str
    png: Path | None


def report(**values: Any) -> None:
    """Timings for people (the e2e tier asserts behaviour, the benchmark asserts speed)."""
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data.update(values)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(" ".join(f"{k}={v}" for k, v in values.items()))


def padded_artifact(source: Path, folder: Path) -> Artifact:
    """The tiny fixture artifact plus one large file (sparse zeros), with its own manifest and id."""
    if not (folder / mf.MANIFEST_NAME).exists():
        plain, _ = make_artifact(source, folder.with_name(folder.name + "-plain"))
        staging = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(plain, staging)
        (staging / mf.MANIFEST_NAME).unlink()
        pad = staging / PADDING
        pad.parent.mkdir(parents=True)
        with open(pad, "wb") as fh:
            fh.truncate(PADDING_BYTES)
        pad.chmod(0o644)
        manifest = mf.load(plain)
        entry = mf.FileEntry(PADDING, PADDING_BYTES, mf.sha256_file(pad))
        mf.write(mf.Manifest(**{**manifest.__dict__, "files": (*manifest.files, entry)}), staging)
        staging.rename(folder)
    manifest = mf.load(folder)
    return Artifact(manifest.name, mf.artifact_id_of(folder), folder, manifest)


def run_worker(
    rig: DockerRig,
    image: str,
    scratch: Path,
    *,
    network: str = "none",
    volume: Path | None = None,
    env: dict[str, str] | None = None,
    user: str = "65534:65534",
) -> Ran:
    """`python -m worker_runtime --test_input JOB` in a container, as a non-root user by default."""
    out = scratch / f"out-{uuid.uuid4().hex[:8]}"
    out.mkdir(parents=True)
    out.chmod(0o777)
    volumes = {str(out): {"bind": "/out", "mode": "rw"}}
    if volume is not None:
        volumes[str(volume)] = {"bind": "/runpod-volume", "mode": "rw"}
    client = rig.client()
    container = client.containers.run(
        image,
        ["python", "-m", "worker_runtime", "--test_input", json.dumps(JOB)],
        network_mode=network,
        user=user,
        volumes=volumes,
        environment={"WORKER_SAVE_DIR": "/out", **(env or {})},
        detach=True,
    )
    try:
        code = container.wait(timeout=600)["StatusCode"]
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    pngs = sorted(out.glob("*.png"))
    return Ran(code, logs, pngs[0] if pngs else None)


def assert_served_a_png(ran: Ran) -> None:
    from PIL import Image

    tail = "\n".join(line[:300] for line in ran.logs.splitlines()[-15:])
    assert ran.exit_code == 0, f"worker exited {ran.exit_code}:\n{tail}"
    assert "worker ready:" in ran.logs, tail
    assert ran.png is not None, f"no PNG written:\n{tail}"
    assert ran.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(ran.png) as img:
        img.load()
        assert img.size == (128, 128)
        assert len(set(img.convert("RGB").getdata())) > 1, "a blank image"


@pytest.fixture
def ship_code(work: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """`ship_code("v2")`: a code-only release, marked "v2", for the rest of the test."""

    def ship(marker: str) -> None:
        shipped_code_copy(work / f"code-{marker}", monkeypatch, marker)

    return ship


def shipped_code_copy(folder: Path, monkeypatch: pytest.MonkeyPatch, marker: str) -> None:
    """Point render at a copy of the shipped packages with one line of worker code changed.

    The real worker_runtime/ is never edited: a code-only release is simulated on a copy.
    """
    copies = {}
    for package in code.CODE_PACKAGES:
        copies[package] = folder / package
        if not copies[package].exists():
            shutil.copytree(
                code.package_dir(package), copies[package], ignore=shutil.ignore_patterns("__pycache__")
            )
    handler = copies["worker_runtime"] / "handler.py"
    handler.write_text(handler.read_text() + f"\n# code-only change: {marker}\n")
    monkeypatch.setattr(code, "package_dir", lambda name: copies[name])


# --- the module's images -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def tiny(work: Path) -> tuple[Path, Artifact]:
    source = tiny_source(work / "source")
    return source, padded_artifact(source, work / "artifact")


@pytest.fixture(scope="module")
def loaded(docker_rig: DockerRig, tiny: tuple[Path, Artifact], work: Path) -> LoadedRecipe:
    source, _ = tiny
    extra = (
        f"image: {{base: '{docker_rig.base_image}', base_has_torch: false, "
        f"repository: '{docker_rig.registry}/packager-e2e', tags: [e2e-latest]}}\n"
        "worker:\n  defaults: {num_inference_steps: 2, width: 128, height: 128,"
        " negative_prompt: 'it''s \"quoted\" and $dollared'}\n"
    )
    return load_recipe(tiny_recipe(work / "recipes", source, "tiny", extra))


@pytest.fixture(scope="module")
def baked_identity(loaded: LoadedRecipe, tiny: tuple[Path, Artifact]) -> render.Identity:
    """What the first build's env and labels should be, taken before it starts."""
    return render.identity(loaded, tiny[1].id, "baked")


def build_baked(
    docker_rig: DockerRig, loaded: LoadedRecipe, art: Artifact, *, push: bool = False, client: Any = None
) -> image_built.BuildResult:
    """`packager build` of `art`'s baked image for `loaded`, from the rig's wheelhouse."""
    return image_build.build(
        loaded,
        art,
        art.manifest,
        art.id,
        "baked",
        push=push,
        pip_find_links=docker_rig.find_links,
        quiet=True,
        client=client or docker_rig.client(),
    )


@pytest.fixture(scope="module")
def baked(
    docker_rig: DockerRig, loaded: LoadedRecipe, tiny: tuple[Path, Artifact], baked_identity: render.Identity
) -> image_built.BuildResult:
    _, art = tiny
    result = build_baked(docker_rig, loaded, art)
    report(
        first_build_s=round(result.seconds, 1),
        first_build_skipped=result.skipped,
        first_build_context_bytes=result.context_bytes + result.weights_context_bytes,
    )
    return result


# --- 5. planted secrets (first: its --no-cache build leaves the pip layer cached for the rest) ---


def image_bytes_contain(
    client: Any, tag: str, needles: list[bytes], scratch: Path
) -> list[tuple[str, bytes]]:
    """(where, needle) for each needle found: image config, history, every file of every layer."""
    found = []
    meta = json.dumps([client.api.inspect_image(tag), client.api.history(tag)]).encode()
    found += [("inspect/history", n) for n in needles if n in meta]
    archive = scratch / "image.tar"
    with open(archive, "wb") as fh:
        for chunk in client.images.get(tag).save(named=True):
            fh.write(chunk)
    try:
        with tarfile.open(archive) as outer:
            for member in outer:
                if not member.isfile():
                    continue
                data = outer.extractfile(member)
                assert data is not None
                if member.name.endswith("layer.tar"):
                    found += [(f"{member.name}:{where}", n) for where, n in _scan_layer(data, needles)]
                else:
                    blob = data.read()
                    found += [(member.name, n) for n in needles if n in blob]
    finally:
        archive.unlink()
    return found


def _scan_layer(fileobj: Any, needles: list[bytes]) -> Iterator[tuple[str, bytes]]:
    overlap = max(len(n) for n in needles)
    with tarfile.open(fileobj=fileobj, mode="r|") as layer:
        for member in layer:
            names = (member.name + " " + member.linkname).encode()
            yield from ((f"{member.name} (name)", n) for n in needles if n in names)
            if not member.isfile():
                continue
            fh = layer.extractfile(member)
            assert fh is not None
            tail = b""
            while chunk := fh.read(8 * 1024 * 1024):
                window = tail + chunk
                yield from ((member.name, n) for n in needles if n in window)
                tail = window[-overlap:]


def test_no_planted_secret_reaches_the_image(
    docker_rig: DockerRig, tiny: tuple[Path, Artifact], work: Path
) -> None:
    source, _ = tiny
    planted = {
        key: f"planted-{key.lower()}-{uuid.uuid4().hex}"
        for key in (
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "RUNPOD_API_KEY",
        )
    }
    recipe_path = tiny_recipe(
        work / "secret-recipe",
        source,
        "tiny-secret",
        f"image: {{base: '{docker_rig.base_image}', base_has_torch: false}}\n",
    )
    env = {**docker_rig.env(), "PACKAGER_BUILD_DIR": str(work / "secret-build"), **planted}
    # --no-cache: every RUN step executes in this build, with the secrets in the builder's env.
    command = ["build", str(recipe_path), "--mode", "baked", "--no-cache", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "packager", *command, "--find-links", docker_rig.find_links],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert not result["skipped"]
    needles = [v.encode() for v in planted.values()]
    assert not [n for n in needles if n in (done.stdout + done.stderr).encode()], "a secret reached the log"
    # The recipe name rides along as a control: the scan must find it (labels, and the manifest's layer).
    control = b"tiny-secret"
    hits = image_bytes_contain(docker_rig.client(), result["tag"], [*needles, control], work)
    assert [where for where, n in hits if n != control] == []
    assert any(n == control and "layer.tar" in where for where, n in hits), hits


# --- 1. baked image, offline ----------------------------------------------------------------------------


def test_baked_image_serves_a_request_with_no_network(
    docker_rig: DockerRig,
    baked: image_built.BuildResult,
    baked_identity: render.Identity,
    tiny: tuple[Path, Artifact],
    work: Path,
) -> None:
    _, art = tiny
    assert [x.step for x in baked.layers] == [*WEIGHT_STEPS, *CODE_STEPS]
    padding = next(x for x in baked.layers if x.step == f"weights {PADDING}")
    assert padding.size >= PADDING_BYTES  # its own layer, holding the file

    attrs = docker_rig.client().images.get(baked.tag).attrs
    env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
    for key, value in baked_identity.env.items():  # ENV quoting reads back exactly, odd characters included
        assert env[key] == value, key
    assert json.loads(env["WORKER_CONFIG"])["defaults"]["negative_prompt"] == 'it\'s "quoted" and $dollared'
    labels = attrs["Config"]["Labels"]
    for key, value in baked_identity.labels.items():  # artifact id, code and config digests
        assert labels[key] == value, key
    assert set(baked.tags) == {baked.tag, f"{docker_rig.registry}/packager-e2e:e2e-latest"}

    ran = run_worker(docker_rig, baked.tag, work)
    assert_served_a_png(ran)
    assert f"tiny {art.id[:12]}" in ran.logs


def test_an_up_to_date_image_is_not_rebuilt(
    docker_rig: DockerRig, baked: image_built.BuildResult, loaded: LoadedRecipe, tiny: tuple[Path, Artifact]
) -> None:
    _, art = tiny
    again = build_baked(docker_rig, loaded, art)
    assert again.skipped
    assert again.image_id == baked.image_id


# --- 2. code-only change ----------------------------------------------------------------------------------


def test_code_only_rebuild_reuses_every_weight_layer(
    docker_rig: DockerRig,
    baked: image_built.BuildResult,
    loaded: LoadedRecipe,
    tiny: tuple[Path, Artifact],
    ship_code: Callable[[str], None],
    work: Path,
) -> None:
    _, art = tiny
    ship_code("v2")
    rebuilt = build_baked(docker_rig, loaded, art)
    assert not rebuilt.skipped
    assert rebuilt.image_id != baked.image_id
    # The weights reached the engine once, with the first build; this one sent the code alone.
    assert baked.weights_built
    assert baked.weights_context_bytes > PADDING_BYTES
    assert not rebuilt.weights_built
    assert rebuilt.weights_context_bytes == 0
    code_bytes = sum(path.stat().st_size for _, path in code.code_files())
    assert code_bytes < rebuilt.context_bytes < code_bytes + 1024 * 1024
    assert rebuilt.context_bytes < baked.weights_context_bytes / 50
    before = {x.step: x.digest for x in baked.layers}
    after = {x.step: x.digest for x in rebuilt.layers}
    for step in WEIGHT_STEPS:
        assert after[step] == before[step], f"{step} layer changed on a code-only rebuild"
    for step in CODE_STEPS:
        assert after[step] != before[step], f"{step} layer should hold the new code"
    # The image under the tag is the new one, and it still serves.
    assert_served_a_png(run_worker(docker_rig, rebuilt.tag, work))
    report(code_only_rebuild_s=round(rebuilt.seconds, 1), code_only_context_bytes=rebuilt.context_bytes)


def test_another_recipe_with_the_same_artifact_reuses_the_weights_image(
    docker_rig: DockerRig,
    baked: image_built.BuildResult,
    tiny: tuple[Path, Artifact],
    work: Path,
) -> None:
    """Found by its labels, not rebuilt: no weight byte is sent, and every weight layer digest is
    the first recipe's, under another repository and another worker config."""
    source, art = tiny
    extra = (
        f"image: {{base: '{docker_rig.base_image}', base_has_torch: false, "
        f"repository: '{docker_rig.registry}/packager-e2e-other'}}\n"
        "worker:\n  defaults: {num_inference_steps: 2, width: 128, height: 128}\n"
    )
    other = load_recipe(tiny_recipe(work / "other-recipe", source, "tiny-other", extra))
    result = build_baked(docker_rig, other, art)
    assert not result.weights_built
    assert result.weights_context_bytes == 0
    assert result.weights_tag is not None
    assert result.weights_tag.startswith(f"{docker_rig.registry}/packager-e2e-other:weights-{art.id[:12]}-")
    before = {x.step: x.digest for x in baked.layers}
    after = {x.step: x.digest for x in result.layers}
    assert [after[step] for step in WEIGHT_STEPS] == [before[step] for step in WEIGHT_STEPS]


# --- 4. registry round trip ---------------------------------------------------------------------------------


def test_push_remove_pull_run_and_a_code_change_pushes_only_code(
    docker_rig: DockerRig,
    baked: image_built.BuildResult,
    loaded: LoadedRecipe,
    tiny: tuple[Path, Artifact],
    work: Path,
    ship_code: Callable[[str], None],
) -> None:
    _, art = tiny
    client = docker_rig.client()
    started = time.monotonic()
    pushed = build_baked(docker_rig, loaded, art, push=True, client=client)
    push_s = time.monotonic() - started
    assert pushed.pushed
    assert pushed.uploaded_layers >= len(WEIGHT_STEPS) + len(CODE_STEPS)
    assert image_push.is_pushed(pushed, client=client)
    # Both images are in the registry: the weights image other builds start from, and the worker.
    assert pushed.weights_tag is not None
    weights_remote = client.api.inspect_distribution(pushed.weights_tag)["Descriptor"]["digest"]
    assert weights_remote.startswith("sha256:")

    # A code-only release: the registry already has every layer but the code ones.
    ship_code("v3")
    started = time.monotonic()
    released = build_baked(docker_rig, loaded, art, push=True, client=client)
    repush_s = time.monotonic() - started
    assert not released.skipped
    assert released.uploaded_layers == len(CODE_STEPS), "a code-only change must upload only the code layers"

    for tag in released.tags:
        client.images.remove(tag, force=True)
    started = time.monotonic()
    repository, _, name = released.tag.rpartition(":")
    pulled = client.images.pull(repository, tag=name)
    pull_s = time.monotonic() - started
    assert pulled.id == released.image_id
    assert_served_a_png(run_worker(docker_rig, released.tag, work))
    report(push_s=round(push_s, 1), code_only_repush_s=round(repush_s, 1), pull_s=round(pull_s, 1))


# --- 3. volume mode --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume_store(s3_server: Any, tiny: tuple[Path, Artifact], work: Path) -> dict[str, str]:
    """The artifact in a local store folder and in a bucket on the local S3 server."""
    import boto3

    _, art = tiny
    local = work / "store" / art.name / art.id
    if not local.exists():
        shutil.copytree(art.dir, local)
    bucket, prefix = "e2e-models", f"store/{art.name}/{art.id}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="e2e-key",
        aws_secret_access_key="e2e-secret",
    )
    s3.create_bucket(Bucket=bucket)
    for entry in art.manifest.files:  # manifest last, as the store writes it
        s3.upload_file(str(art.dir / entry.path), bucket, f"{prefix}/{entry.path}")
    s3.upload_file(str(art.dir / mf.MANIFEST_NAME), bucket, f"{prefix}/{mf.MANIFEST_NAME}")
    return {"local": str(local), "s3": f"s3://{bucket}/{prefix}", "endpoint": s3_server.endpoint_url}


@pytest.fixture(scope="module")
def slim(
    docker_rig: DockerRig, loaded: LoadedRecipe, tiny: tuple[Path, Artifact], volume_store: dict[str, str]
) -> image_built.BuildResult:
    _, art = tiny
    return image_build.build(
        loaded,
        None,
        art.manifest,
        art.id,
        "volume",
        artifact_uri=volume_store["s3"],
        pip_find_links=docker_rig.find_links,
        quiet=True,
        client=docker_rig.client(),
    )


def test_volume_image_serves_from_a_volume_seeded_by_volume_sync(
    docker_rig: DockerRig,
    slim: image_built.BuildResult,
    tiny: tuple[Path, Artifact],
    volume_store: dict[str, str],
    work: Path,
) -> None:
    _, art = tiny
    assert [x.step for x in slim.layers] == ["requirements", "pip install", *CODE_STEPS]
    volume = work / "seeded-volume"
    volume.mkdir()
    seeded = subprocess.run(
        [
            sys.executable,
            "-m",
            "volume_sync",
            "pull",
            volume_store["local"],
            "--mount",
            str(volume),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert seeded.returncode == 0, seeded.stderr
    assert (mf.volume_path(volume, art.name, art.id) / mf.READY_MARKER).is_file()

    ran = run_worker(docker_rig, slim.tag, work, volume=volume)
    assert_served_a_png(ran)
    assert "pulling" not in ran.logs  # served from the volume as seeded


def test_volume_image_pulls_into_an_empty_volume_then_serves(
    docker_rig: DockerRig,
    slim: image_built.BuildResult,
    tiny: tuple[Path, Artifact],
    volume_store: dict[str, str],
    work: Path,
) -> None:
    _, art = tiny
    volume = work / "empty-volume"
    volume.mkdir()
    volume.chmod(0o777)
    # Credentials reach the worker at run time only, as an endpoint's env would give them.
    runtime_env = {
        "AWS_ENDPOINT_URL": volume_store["endpoint"],
        "AWS_ACCESS_KEY_ID": "e2e-key",
        "AWS_SECRET_ACCESS_KEY": "e2e-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    ran = run_worker(docker_rig, slim.tag, work, network="host", volume=volume, env=runtime_env)
    assert_served_a_png(ran)
    assert "pulling" in ran.logs
    pulled = mf.volume_path(volume, art.name, art.id)
    assert (pulled / mf.READY_MARKER).is_file()
    assert mf.check(pulled, full_hash=True).files == art.manifest.files
    env = docker_rig.client().images.get(slim.tag).attrs["Config"]["Env"]
    assert not any(e.startswith("AWS_") for e in env), "credentials must not be baked into the image"
