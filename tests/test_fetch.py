"""`packager fetch`: exactly the files the pipeline needs, into the HF cache, verified."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from packager.errors import FetchError
from packager.source import drift as dr
from packager.source import lock as lk
from packager.source.fetch import fetch
from packager.source.recipe import load_recipe
from tests.rig import layouts as L
from tests.rig.cli import run_packager
from tests.rig.fixtures_hub import HUB_TOKEN, write_recipe
from tests.rig.localhub import resolve_url


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hub_recipe(folder: Path, repo: str, extra: str = "", revision: str = "main") -> Path:
    return write_recipe(folder, f"name: model\nsource:\n  repo: {repo}\n  revision: {revision}\n{extra}")


def fetch_recipe(recipe: Path, quiet: bool = True):
    loaded = load_recipe(recipe)
    lock = dr.ensure_lock(loaded, frozen=False, quiet=True)
    return lock, fetch(loaded, lock, quiet=quiet)


def test_portraitplus_fetches_the_folders_and_never_the_root_checkpoints(hub, hub_env, hub_layouts, tmp_path):
    recipe = hub_recipe(tmp_path, L.PORTRAITPLUS)
    result = run_packager("fetch", str(recipe), "--json", env=hub_env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    folder = hub_layouts[L.PORTRAITPLUS].folder
    wanted = {rel: (folder / rel).stat().st_size for rel in out["files"]}
    assert "unet/diffusion_pytorch_model.bin" in wanted
    assert "safety_checker/pytorch_model.bin" in wanted

    sent = hub.files_sent(L.PORTRAITPLUS)
    assert sent == wanted  # each needed file once, in full; nothing else
    assert hub.bytes_sent(L.PORTRAITPLUS) == sum(wanted.values())
    root_copies = sum((folder / name).stat().st_size for name in L.PORTRAITPLUS_ROOT_FILES)
    assert root_copies > hub.bytes_sent(L.PORTRAITPLUS)  # the copies we skipped outweigh what we took
    assert not any("portrait%2B1.0" in path or "portrait+1.0" in path for _, path, _ in hub.requests())
    assert out["bytes_total"] == sum(wanted.values())
    # The lock already fetched (and hashed) the small files; fetch downloaded the weights.
    assert out["bytes_downloaded"] == sum(s for rel, s in wanted.items() if rel.endswith(".bin"))
    root = Path(out["root"])
    assert root.name == hub.head(L.PORTRAITPLUS)
    assert root.parent.parent.name == "models--tiny--portraitplus"
    assert all(sha256(root / rel) == sha256(folder / rel) for rel in wanted)


def test_variant_fetch_downloads_only_the_fp16_weights(hub, tmp_path):
    lock, result = fetch_recipe(hub_recipe(tmp_path, L.SDXL, extra="  variant: fp16\n"))
    weights = [f for f in hub.files_sent(L.SDXL) if f.endswith((".safetensors", ".bin"))]
    assert sorted(weights) == [
        "text_encoder/model.fp16.safetensors",
        "text_encoder_2/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert not any(
        f.startswith(("vae_1_0/", "sd_xl_base")) or "onnx" in f or "openvino" in f
        for f in hub.files_sent(L.SDXL)
    )
    assert lock.source["variant"] == "fp16"
    assert set(result.files) == set(lock.files)


def test_dropped_components_are_not_fetched(hub, tmp_path):
    extra = "components:\n  drop: [safety_checker, feature_extractor]\n"
    _, result = fetch_recipe(hub_recipe(tmp_path, L.SD_BIN, extra=extra))
    assert not any(f.startswith(("safety_checker/", "feature_extractor/")) for f in hub.files_sent(L.SD_BIN))
    assert not any(f.startswith(("safety_checker/", "feature_extractor/")) for f in result.files)
    assert "unet/diffusion_pytorch_model.bin" in result.files


def test_fp16_branch_fetches_the_fp16_commit(hub, tmp_path):
    from safetensors import safe_open

    lock, result = fetch_recipe(hub_recipe(tmp_path, L.SD_FP16_BRANCH, revision="fp16"))
    assert lock.commit == hub.head(L.SD_FP16_BRANCH, "fp16") == result.root.name
    with safe_open(result.root / "unet/diffusion_pytorch_model.safetensors", "pt") as fh:
        assert {str(fh.get_slice(k).get_dtype()) for k in fh.keys()} == {"F16"}  # noqa: SIM118


def test_every_format_repo_yields_safetensors_only(hub, tmp_path):
    fetch_recipe(hub_recipe(tmp_path, L.SD_EVERYTHING))
    sent = hub.files_sent(L.SD_EVERYTHING)
    assert all(f.endswith((".json", ".txt")) or f.endswith("model.safetensors") for f in sent), sent
    assert not any(f.startswith("onnx/") or f.endswith((".ckpt", ".msgpack", ".bin")) for f in sent)


def test_legacy_sharded_bin_fetches_index_and_shards(hub, tmp_path):
    _, result = fetch_recipe(hub_recipe(tmp_path, L.SD_BIN_SHARDED))
    assert [f for f in result.files if f.startswith("text_encoder/")] == [
        "text_encoder/config.json",
        "text_encoder/pytorch_model-00001-of-00002.bin",
        "text_encoder/pytorch_model-00002-of-00002.bin",
        "text_encoder/pytorch_model.bin.index.json",
    ]


def test_a_second_fetch_uses_the_cache_and_makes_no_request(hub, tmp_path):
    recipe = hub_recipe(tmp_path, L.SD_FP16_BRANCH)
    _, first = fetch_recipe(recipe)
    assert first.bytes_downloaded > 0
    hub.reset_stats()
    loaded = load_recipe(recipe)
    second = fetch(loaded, lk.read_lock(loaded), quiet=True)
    assert second.bytes_downloaded == 0
    assert second.root == first.root
    assert hub.requests() == []  # commit-pinned and cached: huggingface_hub answers from disk


def test_frozen_fetch_needs_a_fresh_lock(hub, hub_env, tmp_path):
    recipe = hub_recipe(tmp_path, L.SD_FP16_BRANCH)
    missing = run_packager("fetch", str(recipe), "--frozen", env=hub_env)
    assert missing.returncode == 2
    assert "no lock (--frozen)" in missing.stderr
    assert not recipe.with_suffix(".lock").exists()
    assert hub.files_sent(L.SD_FP16_BRANCH) == {}
    dr.ensure_lock(load_recipe(recipe), frozen=False, quiet=True)
    recipe.write_text(recipe.read_text() + "precision: bf16\n")
    drifted = run_packager("fetch", str(recipe), "--frozen", env=hub_env)
    assert drifted.returncode == 2
    assert "is out of date (--frozen): recipe changed: precision 'auto' → 'bf16'" in drifted.stderr
    relocked = run_packager("fetch", str(recipe), env=hub_env)
    assert relocked.returncode == 0
    assert "warning:" in relocked.stderr
    assert run_packager("fetch", str(recipe), "--frozen", "--json", env=hub_env).returncode == 0


def test_a_file_that_does_not_match_the_lock_is_refused_and_evicted(hub, tmp_path):
    loaded = load_recipe(hub_recipe(tmp_path, L.SD_FP16_BRANCH))
    lock = dr.ensure_lock(loaded, frozen=False, quiet=True)
    rel = "unet/diffusion_pytorch_model.safetensors"
    files = {**lock.files, rel: {**lock.files[rel], "sha256": "0" * 64}}
    bad = lk.Lock(**{**lock.__dict__, "files": files})
    with pytest.raises(FetchError, match=rf"{L.SD_FP16_BRANCH}/{rel}: sha256 .* does not match the lock"):
        fetch(loaded, bad, quiet=True)
    assert hub.bytes_sent(L.SD_FP16_BRANCH) > 0
    hub.reset_stats()
    fetch(loaded, lock, quiet=True)  # the bad blob was removed: the good lock downloads it again
    assert rel in hub.files_sent(L.SD_FP16_BRANCH)


def test_file_names_escaping_the_target_are_refused(hub, hub_env, hub_layouts, tmp_path):
    repo = "tiny/evil"
    hub.fork_repo(L.SD_FP16_BRANCH, repo)
    index = json.loads((hub_layouts[L.SD_FP16_BRANCH].folder / "model_index.json").read_text())
    index["../../outside"] = ["diffusers", "UNet2DConditionModel"]
    hub.commit(repo, {"model_index.json": json.dumps(index).encode(), "../../outside/x.json": b"{}"})
    result = run_packager("fetch", str(hub_recipe(tmp_path, repo)), env=hub_env)
    assert result.returncode == 2
    assert "model_index.json: unsafe component name '../../outside'" in result.stderr

    loaded = load_recipe(hub_recipe(tmp_path / "b", L.SD_FP16_BRANCH))
    lock = dr.ensure_lock(loaded, frozen=False, quiet=True)
    evil = lk.Lock(
        **{**lock.__dict__, "files": {**lock.files, "/etc/passwd": {"size": 1, "sha256": "0" * 64}}}
    )
    with pytest.raises(FetchError, match="escapes the target folder: '/etc/passwd'"):
        fetch(loaded, evil, quiet=True)


def test_local_path_source_is_used_in_place(hub_layouts, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(hub_layouts[L.SD_FP16_BRANCH].folder, folder)
    loaded = load_recipe(write_recipe(tmp_path, "name: local\nsource:\n  path: model\n"))
    lock = dr.ensure_lock(loaded, frozen=False, quiet=True)
    result = fetch(loaded, lock, quiet=True)
    assert result.root == folder.resolve()
    assert result.bytes_downloaded == 0
    assert result.checkpoint is None
    assert "unet/diffusion_pytorch_model.safetensors" in result.files
    assert "README.md" not in result.files
    (folder / "vae" / "config.json").write_text("{}")
    with pytest.raises(FetchError, match=r"vae/config\.json: .*run `packager lock`"):
        fetch(loaded, lock, quiet=True)


def test_url_checkpoint_is_cached_by_sha256(hub, hub_layouts, tmp_path):
    url = resolve_url(hub.url, L.SD_ORIGINAL, L.SINGLE_FILE_SAFETENSORS)
    recipe = write_recipe(tmp_path, f"name: civitai\nsource:\n  url: {url}\n  config: {L.SD_CONFIG}\n")
    _, result = fetch_recipe(recipe)
    want = sha256(hub_layouts[L.SD_ORIGINAL].folder / L.SINGLE_FILE_SAFETENSORS)
    assert (
        result.checkpoint
        == Path(os.environ["HF_HOME"]) / "packager-downloads" / want / L.SINGLE_FILE_SAFETENSORS
    )
    assert sha256(result.checkpoint) == want
    assert result.root.name == hub.head(L.SD_CONFIG)
    assert (result.root / "unet" / "config.json").is_file()
    assert set(hub.files_sent(L.SD_ORIGINAL)) == {L.SINGLE_FILE_SAFETENSORS}  # once, at lock time
    assert not any(f.endswith(".safetensors") for f in hub.files_sent(L.SD_CONFIG))
    assert result.bytes_downloaded == 0  # the lock's download is reused


def test_file_checkpoint_with_hub_config_fetches_configs_only(hub, hub_env, hub_layouts, tmp_path):
    shutil.copy(hub_layouts[L.SD_ORIGINAL].folder / L.SINGLE_FILE_CKPT, tmp_path / "model.ckpt")
    recipe = write_recipe(tmp_path, f"name: civitai\nsource:\n  file: model.ckpt\n  config: {L.SD_CONFIG}\n")
    result = run_packager("fetch", str(recipe), "--json", env=hub_env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["checkpoint"] == str((tmp_path / "model.ckpt").resolve())
    assert set(hub.files_sent(L.SD_CONFIG)) == set(out["files"])
    assert all(f.endswith((".json", ".txt")) for f in out["files"])


def test_gated_repo_fetches_with_a_token(hub, hub_env, tmp_path):
    recipe = hub_recipe(tmp_path, L.SD_GATED)
    denied = run_packager("fetch", str(recipe), env=hub_env)
    assert denied.returncode == 2
    assert "is gated" in denied.stderr
    assert "set HF_TOKEN" in denied.stderr
    allowed = run_packager("fetch", str(recipe), "--json", env={**hub_env, "HF_TOKEN": HUB_TOKEN})
    assert allowed.returncode == 0, allowed.stderr
    assert "unet/diffusion_pytorch_model.safetensors" in hub.files_sent(L.SD_GATED)
    assert HUB_TOKEN not in recipe.with_suffix(".lock").read_text()
    assert HUB_TOKEN not in allowed.stdout


def test_offline_fetch_from_the_cache_with_hf_hub_offline(hub, hub_env, tmp_path):
    recipe = hub_recipe(tmp_path, L.SD_FP16_BRANCH)
    assert run_packager("fetch", str(recipe), env=hub_env).returncode == 0
    hub.reset_stats()
    offline = {**hub_env, "HF_HUB_OFFLINE": "1"}
    result = run_packager("fetch", str(recipe), "--frozen", "--json", env=offline)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bytes_downloaded"] == 0
    assert hub.requests() == []
    other = hub_recipe(tmp_path / "other", L.SD_BIN)
    missing = run_packager("fetch", str(other), env=offline)
    assert missing.returncode == 2
    assert "HF_HUB_OFFLINE is set" in missing.stderr
