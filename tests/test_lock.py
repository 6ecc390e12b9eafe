"""`packager lock`: pin a recipe's source to a commit and file hashes; report drift; clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from artifact_format.vocab import CONVERTER_VERSION
from packager.errors import FetchError, LockError
from packager.source import drift as dr
from packager.source import local_folder
from packager.source import lock as lk
from packager.source.recipe import load_recipe
from tests.rig import layouts as L
from tests.rig.cli import run_packager
from tests.rig.fixtures_hub import HUB_TOKEN, write_recipe
from tests.rig.localhub import resolve_url


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hub_recipe(folder: Path, repo: str, revision: str = "main", extra: str = "", name: str = "model") -> Path:
    return write_recipe(
        folder, f"name: {name}\nsource:\n  repo: {repo}\n  revision: {revision}\n{extra}", name
    )


@pytest.mark.parametrize("revision", ["main", "v1.0", "fp16", "short-sha"])
def test_lock_resolves_branch_tag_and_short_sha_to_the_full_commit(hub, tmp_path, revision):
    branch = "fp16" if revision == "fp16" else "main"
    head = hub.head(L.SD_FP16_BRANCH, branch)
    rev = head[:7] if revision == "short-sha" else revision
    recipe = hub_recipe(tmp_path, L.SD_FP16_BRANCH, rev)
    lock = dr.ensure_lock(load_recipe(recipe), frozen=False, quiet=True)
    assert lock.commit == head
    assert len(head) == 40
    assert lock.source == {
        "kind": "hub",
        "repo": L.SD_FP16_BRANCH,
        "revision": rev,
        "commit": head,
        "variant": None,
    }
    written = recipe.with_suffix(".lock")
    assert written.is_file()
    assert written.read_text() == json.dumps(json.loads(written.read_text()), indent=2, sort_keys=True) + "\n"


def test_lock_records_every_needed_file_with_its_sha256(hub, hub_layouts, tmp_path):
    recipe = hub_recipe(
        tmp_path, L.PORTRAITPLUS, extra="precision: bf16\ncomponents:\n  drop: [safety_checker]\n"
    )
    lock = dr.ensure_lock(load_recipe(recipe), frozen=False, quiet=True)
    folder = hub_layouts[L.PORTRAITPLUS].folder
    assert "unet/diffusion_pytorch_model.bin" in lock.files
    assert not any(f.startswith(("portrait+", "safety_checker/", "README")) for f in lock.files)
    for rel, entry in lock.files.items():
        assert entry == {"size": (folder / rel).stat().st_size, "sha256": sha256(folder / rel)}, rel
    assert lock.settings == {
        "precision": "bf16",
        "precision_overrides": {},
        "shard_size": 5_000_000_000,
        "fp16_overflow": "fail",
        "pipeline": None,
        "scheduler": None,
        "drop": ["safety_checker"],
        "converter": CONVERTER_VERSION,
    }
    assert lock.fingerprint == lk.fingerprint_of(lock.name, lock.source, lock.files, lock.settings)
    # Locking downloads only the small plain-git files (to hash them), never the weights.
    sent = hub.files_sent(L.PORTRAITPLUS)
    assert sent
    assert all(f.endswith((".json", ".txt")) for f in sent)


def test_cli_lock_writes_then_keeps_a_fresh_lock(hub, hub_env, tmp_path):
    recipe = hub_recipe(tmp_path, L.SD_BIN)
    first = run_packager("lock", str(recipe), env=hub_env)
    assert first.returncode == 0, first.stderr
    assert f"{recipe.with_suffix('.lock')}: created" in first.stdout
    assert hub.head(L.SD_BIN)[:12] in first.stdout
    again = run_packager("lock", str(recipe), "--json", env=hub_env)
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["status"] == "unchanged"
    assert data["source"]["commit"] == hub.head(L.SD_BIN)
    check = run_packager("lock", str(recipe), "--check", env=hub_env)
    assert check.returncode == 0
    assert "up to date" in check.stdout


def test_check_names_a_moved_branch(hub, hub_env, tmp_path):
    repo = f"tiny/moving-{tmp_path.name}"[:60]
    hub.fork_repo(L.SD_FP16_BRANCH, repo)
    recipe = hub_recipe(tmp_path, repo)
    dr.ensure_lock(load_recipe(recipe), frozen=False, quiet=True)
    old = hub.head(repo)
    new = hub.commit(repo, {"unet/config.json": b'{"changed": true}\n'}, message="retrain")
    check = run_packager("lock", str(recipe), "--check", env=hub_env)
    assert check.returncode == 1
    assert f"revision moved: {repo}@main is now {new[:12]}, locked at {old[:12]}" in check.stderr
    assert check.stderr.count("\n") == 1
    assert check.stderr.startswith("packager: error:")
    relock = run_packager("lock", str(recipe), env=hub_env)
    assert relock.returncode == 0
    assert "updated (revision moved" in relock.stdout
    assert json.loads(recipe.with_suffix(".lock").read_text())["source"]["commit"] == new


def test_check_names_a_changed_recipe_setting(hub, hub_env, tmp_path):
    recipe = hub_recipe(tmp_path, L.SD_BIN)
    dr.ensure_lock(load_recipe(recipe), frozen=False, quiet=True)
    recipe.write_text(
        recipe.read_text() + "precision: bf16\nshard_size: 2GiB\ncomponents:\n  drop: [safety_checker]\n"
    )
    check = run_packager("lock", str(recipe), "--check", "--json", env=hub_env)
    assert check.returncode == 1
    reasons = json.loads(check.stdout)["reasons"]
    assert "recipe changed: precision 'auto' → 'bf16'" in reasons
    assert "recipe changed: shard_size 5000000000 → 2147483648" in reasons
    assert "recipe changed: components.drop [] → ['safety_checker']" in reasons


def test_check_names_changed_local_files(hub_layouts, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(hub_layouts[L.SD_FP16_BRANCH].folder, folder)
    recipe = write_recipe(tmp_path, "name: local\nsource:\n  path: ./model\n", "local")
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    dr.ensure_lock(load_recipe(recipe), frozen=False, quiet=True)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    weights.write_bytes(bytes(data))
    (folder / "unet" / "config.json").unlink()
    check = run_packager("lock", str(recipe), "--check", env=env)
    assert check.returncode == 1
    assert "files changed: vae/diffusion_pytorch_model.safetensors" in check.stderr
    assert "files removed: unet/config.json" in check.stderr


def test_check_without_a_lock_is_drift(hub_env, tmp_path):
    recipe = hub_recipe(tmp_path, L.SD_BIN)
    check = run_packager("lock", str(recipe), "--check", env=hub_env)
    assert check.returncode == 1
    assert "no lock" in check.stderr


def test_touched_local_files_are_not_drift_and_are_not_hashed_again(hub_layouts, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(hub_layouts[L.SD_FP16_BRANCH].folder, folder)
    loaded = load_recipe(write_recipe(tmp_path, "name: local\nsource:\n  path: model\n"))
    lock = dr.ensure_lock(loaded, frozen=False, quiet=True)
    assert set(lock.stat_cache) == set(lock.files)
    text = loaded.lock_path.read_text()
    assert str(tmp_path) not in text
    assert str(folder) not in text

    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    os.utime(unet, ns=(unet.stat().st_atime_ns, unet.stat().st_mtime_ns + 10**9))
    assert dr.drift(loaded, lock) == []
    refreshed = dr.ensure_lock(loaded, frozen=False, quiet=True)
    assert refreshed.fingerprint == lock.fingerprint
    assert (
        refreshed.stat_cache["unet/diffusion_pytorch_model.safetensors"]["mtime_ns"]
        == unet.stat().st_mtime_ns
    )

    hashed = []
    real = local_folder.sha256_file
    monkeypatch.setattr(local_folder, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert dr.drift(loaded, lk.read_lock(loaded)) == []
    assert lk.build_lock(loaded, quiet=True).fingerprint == lock.fingerprint
    assert hashed == []  # the stat cache answered for every file


def test_ensure_lock_relocks_with_a_warning_and_frozen_refuses(hub, tmp_path, capsys):
    recipe = hub_recipe(tmp_path, L.SD_BIN)
    loaded = load_recipe(recipe)
    with pytest.raises(LockError, match=r"no lock \(--frozen\): run `packager lock"):
        dr.ensure_lock(loaded, frozen=True, quiet=True)
    first = dr.ensure_lock(loaded, frozen=False, quiet=False)
    assert "locked model" in capsys.readouterr().err
    assert dr.ensure_lock(loaded, frozen=True, quiet=True) == first

    recipe.write_text(recipe.read_text() + "precision: fp32\n")
    loaded = load_recipe(recipe)
    with pytest.raises(
        LockError, match=r"out of date \(--frozen\): recipe changed: precision 'auto' → 'fp32'"
    ):
        dr.ensure_lock(loaded, frozen=True, quiet=True)
    assert lk.read_lock(loaded) == first  # --frozen writes nothing
    second = dr.ensure_lock(loaded, frozen=False, quiet=True)
    assert "warning:" in capsys.readouterr().err
    assert second.settings["precision"] == "fp32"
    assert second.fingerprint != first.fingerprint


def test_artifact_id_is_recorded_outside_the_fingerprint(hub, tmp_path):
    loaded = load_recipe(hub_recipe(tmp_path, L.SD_BIN))
    lock = dr.ensure_lock(loaded, frozen=False, quiet=True)
    artifact = "ab" * 32
    recorded = lk.record_artifact_id(loaded, lock, artifact)
    assert lk.read_lock(loaded) == recorded
    assert recorded.artifact_id == artifact
    assert recorded.fingerprint == lock.fingerprint
    assert dr.drift(loaded, recorded) == []
    assert lk.build_lock(loaded, quiet=True).artifact_id == artifact  # same fingerprint: kept
    with pytest.raises(LockError, match="not an artifact id"):
        lk.record_artifact_id(loaded, lock, "nope")


def test_a_hand_edited_or_broken_lock_is_reported(hub, tmp_path):
    loaded = load_recipe(hub_recipe(tmp_path, L.SD_BIN))
    dr.ensure_lock(loaded, frozen=False, quiet=True)
    data = json.loads(loaded.lock_path.read_text())
    data["files"]["unet/config.json"]["size"] += 1
    loaded.lock_path.write_text(json.dumps(data))
    assert dr.drift(loaded, lk.read_lock(loaded)) == [
        "the lock was edited (its fingerprint does not match its content)"
    ]
    data["files"]["../../etc/passwd"] = data["files"].pop("unet/config.json")
    loaded.lock_path.write_text(json.dumps(data))
    with pytest.raises(LockError, match=r"not a valid lock \(unsafe file path '\.\./\.\./etc/passwd'\)"):
        lk.read_lock(loaded)
    loaded.lock_path.write_text("{not json")
    with pytest.raises(LockError, match=r"model\.lock:1: not valid JSON"):
        dr.ensure_lock(loaded, frozen=True, quiet=True)
    assert dr.ensure_lock(loaded, frozen=False, quiet=True).commit == hub.head(L.SD_BIN)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "repo",
            "hub repo 'tiny/no-such-model' not found (check the repo id; for a private repo set HF_TOKEN",
        ),
        (
            "revision",
            "hub repo 'tiny/sd-bin' has no revision 'no-such-branch' (give a branch, tag or commit sha)",
        ),
        ("gated", "hub repo 'tiny/sd-gated' is gated: accept its terms at"),
        (
            "private",
            "hub repo 'tiny/sd-private' not found (check the repo id; for a private repo set HF_TOKEN",
        ),
        (
            "bad-token",
            "hub repo 'tiny/sd-bin': the hub refused HF_TOKEN (401): set HF_TOKEN to a valid token",
        ),
        ("offline", "cannot reach the hub at http://127.0.0.1:"),
    ],
)
def test_hub_errors_are_one_line_and_exit_2(hub_env, tmp_path, case, expected):
    repo = {"repo": "tiny/no-such-model", "gated": L.SD_GATED, "private": L.SD_PRIVATE}.get(case, L.SD_BIN)
    revision = "no-such-branch" if case == "revision" else "main"
    env = dict(hub_env)
    if case == "bad-token":
        env["HF_TOKEN"] = "hf_wrong_token_1234"
    if case == "offline":
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    recipe = hub_recipe(tmp_path, repo, revision)
    result = run_packager("lock", str(recipe), env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"packager: error: {expected}")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "HF_TOKEN" in result.stderr or case in ("revision", "offline")
    assert "hf_wrong_token_1234" not in result.stderr
    assert not recipe.with_suffix(".lock").exists()


def test_gated_repo_with_a_token_never_writes_the_token(hub, hub_env, tmp_path):
    recipe = hub_recipe(tmp_path, L.SD_GATED)
    result = run_packager("lock", str(recipe), env={**hub_env, "HF_TOKEN": HUB_TOKEN})
    assert result.returncode == 0, result.stderr
    text = recipe.with_suffix(".lock").read_text()
    assert HUB_TOKEN not in text
    assert json.loads(text)["source"]["commit"] == hub.head(L.SD_GATED)


def test_single_file_checkpoint_with_a_local_config(hub_layouts, tmp_path):
    shutil.copy(hub_layouts[L.SD_ORIGINAL].folder / L.SINGLE_FILE_CKPT, tmp_path / "model.ckpt")
    shutil.copytree(hub_layouts[L.SD_CONFIG].folder, tmp_path / "config")
    loaded = load_recipe(
        write_recipe(tmp_path, "name: civitai\nsource:\n  file: model.ckpt\n  config: ./config\n")
    )
    lock = dr.ensure_lock(loaded, frozen=False, quiet=True)
    assert lock.source == {
        "kind": "file",
        "checkpoint": {
            "name": "model.ckpt",
            "size": (tmp_path / "model.ckpt").stat().st_size,
            "sha256": sha256(tmp_path / "model.ckpt"),
        },
        "config": {"kind": "path"},
    }
    assert "model_index.json" in lock.files
    assert "tokenizer/vocab.json" in lock.files
    assert not any(f.endswith((".safetensors", ".bin")) for f in lock.files)
    with open(tmp_path / "model.ckpt", "ab") as fh:
        fh.write(b"\0")
    assert dr.drift(loaded, lock) == ["checkpoint changed: model.ckpt"]


def test_url_checkpoint_with_a_hub_config(hub, hub_layouts, tmp_path):
    url = resolve_url(hub.url, L.SD_ORIGINAL, L.SINGLE_FILE_SAFETENSORS)
    body = f"name: civitai\nsource:\n  url: {url}\n  config: {L.SD_CONFIG}\n"
    loaded = load_recipe(write_recipe(tmp_path, body))
    lock = dr.ensure_lock(loaded, frozen=False, quiet=True)
    want = sha256(hub_layouts[L.SD_ORIGINAL].folder / L.SINGLE_FILE_SAFETENSORS)
    assert lock.source["checkpoint"]["sha256"] == want
    assert lock.source["config"] == {
        "kind": "hub",
        "repo": L.SD_CONFIG,
        "revision": "main",
        "commit": hub.head(L.SD_CONFIG),
    }
    cached = Path(os.environ["HF_HOME"]) / "packager-downloads" / want / L.SINGLE_FILE_SAFETENSORS
    assert cached.is_file()

    wrong = write_recipe(tmp_path / "wrong", body + f'  sha256: "{"0" * 64}"\n')
    with pytest.raises(FetchError, match=r"sha256 is \w+, not the expected 0000"):
        lk.build_lock(load_recipe(wrong), quiet=True)
    pinned = write_recipe(tmp_path / "pinned", body + f'  sha256: "{want}"\n')
    hub.reset_stats()
    assert lk.build_lock(load_recipe(pinned), quiet=True).source["checkpoint"]["sha256"] == want
    assert L.SINGLE_FILE_SAFETENSORS not in hub.files_sent(L.SD_ORIGINAL)  # pinned and cached: no download
