"""An fp8 denoiser loads with every tensor in the dtype the manifest stored it in: fp8 layers as they
are, the class's fp32 keep-list (Wan's norms, time embedder) in fp32, the rest in the compute dtype."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifact_format import manifest as mf
from packager.convert.converter import convert
from packager.convert.settings import ConvertSettings
from packager.source.local_folder import select_local
from tests.rig.models_dit import save_pipeline
from worker_runtime.layerwise import load_layerwise


@pytest.fixture(scope="module")
def wan_fp8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wan-fp8")
    source = save_pipeline("wan", root / "source")
    convert(
        source,
        list(select_local(source, ())),
        root / "artifact",
        name="wan",
        settings=ConvertSettings(precision="fp8"),
        source_info={"kind": "path"},
    )
    return root / "artifact"


def stored(folder: Path) -> dict[str, str]:
    """Tensor name → the dtype its safetensors header records (F8_E4M3, F32, BF16)."""
    from packager.convert.safetensors_writer import read_header

    out: dict[str, str] = {}
    for path in sorted(folder.glob("*.safetensors")):
        _, header = read_header(path)
        out.update({k: v["dtype"] for k, v in header.items() if k != "__metadata__"})
    return out


@pytest.mark.parametrize("compute", ["bfloat16", "float32"])
def test_an_fp8_wan_transformer_keeps_its_stored_fp32_tensors(wan_fp8: Path, compute: str) -> None:
    import torch

    manifest = mf.load(wan_fp8)
    precision = manifest.precision_of("transformer")
    dtype = getattr(torch, compute)
    model = load_layerwise(wan_fp8, "transformer", precision, torch, "cpu", dtype)
    on_disk = stored(wan_fp8 / "transformer")
    names = {"F8_E4M3": torch.float8_e4m3fn, "F32": torch.float32, "BF16": torch.bfloat16}
    kept = [n for n, d in on_disk.items() if d == "F32"]
    assert kept, "the tiny Wan stores its keep-list in fp32"
    for name, param in model.state_dict().items():
        want = names[on_disk[name]]
        if want == torch.bfloat16:
            want = dtype  # stored in the GPU's compute dtype, widened on a CPU computing in fp32
        assert param.dtype == want, name
