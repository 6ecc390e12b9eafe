"""The manifest contract: canonical bytes, artifact ids that only move when content does, and both
schemas read (1: one precision for everything; 2: per-component storage/compute, fused LoRAs)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from artifact_format import manifest as mf

# A manifest exactly as the schema-1 packager wrote it (canonical JSON, one line).
SCHEMA_1 = (
    b'{"dropped":["safety_checker"],"files":[{"path":"model_index.json","sha256":"'
    + b"a" * 64
    + b'","size":512},{"dtype":"float16+float32","path":"text_encoder/model.safetensors","sha256":"'
    + b"b" * 64
    + b'","size":2048,"tensors":12}],"name":"tiny","packing":{"converter":"1","fp16_overflow":"fail",'
    b'"kept_fp32":{}},"pipeline":"StableDiffusionPipeline","precision":"fp16","scheduler":{},'
    b'"schema":1,"source":{"kind":"path"}}\n'
)


def schema_2(**changes: object) -> mf.Manifest:
    base = mf.parse(SCHEMA_1)
    fields = {
        "precision": "bf16",
        "pipeline": "FluxPipeline",
        "components": {
            "transformer": mf.ComponentPrecision(
                "float8_e4m3fn", "bfloat16", ("^norm_out$", r"\.norm\d?$", "embed")
            ),
            "text_encoder_2": mf.ComponentPrecision("bfloat16", "bfloat16"),
        },
        **changes,
    }
    return mf.Manifest(
        name=base.name,
        source=base.source,
        files=base.files,
        scheduler=base.scheduler,
        dropped=base.dropped,
        packing=base.packing,
        **fields,  # type: ignore[arg-type]
    )


def test_a_schema_1_manifest_reads_and_writes_back_byte_for_byte() -> None:
    manifest = mf.parse(SCHEMA_1)
    assert manifest.schema == 1
    assert manifest.components == {}
    assert manifest.fused_loras == ()
    assert manifest.to_bytes() == SCHEMA_1
    assert manifest.artifact_id == hashlib.sha256(SCHEMA_1).hexdigest()
    # Every component of a schema-1 artifact is stored and run in the manifest-wide precision.
    te = manifest.precision_of("text_encoder")
    assert (te.storage, te.compute, te.layerwise) == ("float16", "float16", False)


def test_schema_2_round_trips_canonically_with_per_component_precision() -> None:
    manifest = schema_2()
    data = manifest.to_bytes()
    raw = json.loads(data)
    assert raw["schema"] == 2
    assert raw["fused_loras"] == []
    assert raw["components"]["transformer"] == {
        "compute": "bfloat16",
        "skip_modules": ["^norm_out$", r"\.norm\d?$", "embed"],
        "storage": "float8_e4m3fn",
    }
    assert data == mf.canonical_json(raw)
    assert data.count(b"\n") == 1
    back = mf.parse(data)
    assert back == manifest
    assert back.to_bytes() == data
    assert back.precision_of("transformer").layerwise
    assert not back.precision_of("text_encoder_2").layerwise
    assert back.precision_of("vae").storage == "bfloat16"  # unlisted: the manifest-wide precision


def test_the_artifact_id_follows_content_only() -> None:
    assert schema_2().artifact_id == schema_2().artifact_id
    # Dict order does not matter; every recorded value does.
    reordered = dict(reversed(list(schema_2().components.items())))
    assert schema_2(components=reordered).artifact_id == schema_2().artifact_id
    other_skip = {**schema_2().components, "transformer": mf.ComponentPrecision("float8_e4m3fn", "bfloat16")}
    assert schema_2(components=other_skip).artifact_id != schema_2().artifact_id
    lora = mf.FusedLora(
        sha256="c" * 64, scale=0.8, source={"repo": "someone/style-lora"}, components=("transformer",)
    )
    with_lora = schema_2(fused_loras=(lora,))
    assert with_lora.artifact_id != schema_2().artifact_id
    assert mf.parse(with_lora.to_bytes()).fused_loras == (lora,)
    # A manifest with nothing schema 2 records is schema 1, so today's artifact ids stay put.
    assert schema_2(components={}).schema == 1


def test_a_manifest_with_only_fused_loras_is_schema_2() -> None:
    lora = mf.FusedLora(sha256="d" * 64, scale=1.0)
    raw = json.loads(schema_2(components={}, fused_loras=(lora,)).to_bytes())
    assert raw["schema"] == 2
    assert raw["components"] == {}
    assert raw["fused_loras"] == [{"components": [], "scale": 1.0, "sha256": "d" * 64, "source": {}}]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw.update(schema=3), "manifest schema 3 is not supported (expected 1 or 2)"),
        (lambda raw: raw.update(schema=True), "manifest schema True is not supported"),
        (
            lambda raw: raw["components"]["transformer"].pop("storage"),
            "missing or has a bad field: 'storage'",
        ),
        (lambda raw: raw.update(components=[1]), "missing or has a bad field"),
        (
            lambda raw: raw.update(fused_loras=[{"sha256": "e" * 64, "scale": "x"}]),
            "missing or has a bad field",
        ),
    ],
)
def test_a_bad_schema_2_manifest_is_one_clear_error(edit, message: str) -> None:
    raw = json.loads(schema_2().to_bytes())
    edit(raw)
    with pytest.raises(mf.ManifestError, match=None) as info:
        mf.parse(json.dumps(raw).encode())
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_write_and_load_keep_the_id(tmp_path: Path) -> None:
    manifest = schema_2()
    assert mf.write(manifest, tmp_path) == manifest.artifact_id == mf.artifact_id_of(tmp_path)
    assert mf.load(tmp_path) == manifest
