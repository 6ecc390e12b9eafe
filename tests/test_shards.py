"""shard_size: sizes as written, greedy packing, shard files and index that from_pretrained reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artifact_format import manifest as mf
from packager.convert.converter import convert
from packager.convert.safetensors_writer import read_header
from packager.convert.settings import ConvertSettings
from packager.convert.shards import pack, parse_size, plan_shards
from packager.errors import ConvertError
from tests.rig.models_dit import save_pipeline


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("5GB", 5 * 10**9),
        ("4GiB", 4 * 2**30),
        ("500MB", 500 * 10**6),
        ("64MiB", 64 * 2**20),
        ("20KB", 20_000),
        ("1.5GB", 1_500_000_000),
        ("2 gib", 2 * 2**30),
        (1000, 1000),
    ],
)
def test_sizes_are_read_in_the_units_written(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["5", "5XB", "-1GB", "0B", "GB", ""])
def test_a_bad_size_is_one_line_naming_the_field(text: str) -> None:
    with pytest.raises(ConvertError, match=r"^shard_size: "):
        parse_size(text)


def test_packing_is_greedy_in_name_order_and_a_big_tensor_stands_alone() -> None:
    sizes = {"d": 4, "a": 3, "c": 20, "b": 3, "e": 1}
    assert pack(sizes, 10) == [["a", "b"], ["c"], ["d", "e"]]
    shards = plan_shards("model.safetensors", sizes, 10)
    assert [s.name for s in shards] == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]
    assert [s.nbytes for s in shards] == [6, 20, 5]
    assert plan_shards("model.safetensors", sizes, 100)[0].name == "model.safetensors"


def files_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def run(src: Path, out: Path, **settings: object) -> mf.Manifest:
    return convert(
        src,
        files_of(src),
        out,
        name="flux",
        settings=ConvertSettings(**settings),  # type: ignore[arg-type]
        source_info={"kind": "path"},
    )


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pipeline("flux-dev", tmp_path_factory.mktemp("flux") / "src")


def test_components_are_packed_under_the_limit_and_load_as_before(flux: Path, tmp_path: Path) -> None:
    import torch
    from diffusers import FluxTransformer2DModel
    from transformers import T5EncoderModel

    limit = 4_000
    whole = run(flux, tmp_path / "whole")
    # The source's T5 shards (8 KB each) are re-packed: one file at the default 5GB.
    assert [f.path for f in whole.weight_files if f.path.startswith("text_encoder_2/")] == [
        "text_encoder_2/model.safetensors"
    ]
    assert not (tmp_path / "whole" / "text_encoder_2" / "model.safetensors.index.json").exists()

    sharded = run(flux, tmp_path / "sharded", shard_size=limit)
    assert sharded.packing["shard_size"] == limit
    for entry in sharded.weight_files:
        _, header = read_header(tmp_path / "sharded" / entry.path)
        spans = [v["data_offsets"] for k, v in header.items() if k != "__metadata__"]
        data = sum(b - a for a, b in spans)
        assert data <= limit or len(spans) == 1, entry.path
    for comp, stem in (("transformer", "diffusion_pytorch_model"), ("text_encoder_2", "model")):
        index = json.loads((tmp_path / "sharded" / comp / f"{stem}.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 1
        assert all(s.startswith(f"{stem}-00001-of-") or "-of-" in s for s in shards)
        assert {f"{comp}/{s}" for s in shards} == {
            f.path for f in sharded.weight_files if f.path.startswith(comp + "/")
        }
        assert sorted(index["weight_map"]) == list(index["weight_map"])

    for cls, comp in ((FluxTransformer2DModel, "transformer"), (T5EncoderModel, "text_encoder_2")):
        a = cls.from_pretrained(tmp_path / "whole" / comp).state_dict()
        b = cls.from_pretrained(tmp_path / "sharded" / comp).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)

    again = run(flux, tmp_path / "again", shard_size=limit)
    assert again.artifact_id == sharded.artifact_id
