"""The parallel in-memory loader (network storage) builds exactly the models `from_pretrained` builds,
for every fixture family, in the reduced precisions a GPU serves: the same tensors in the same dtypes
(the classes' keep-in-fp32 lists honoured), the same tied weights, and an fp8 denoiser as the
converter stores it, upcast layer by layer.

The artifacts are made by the real converter from the tiny pipelines of tests/rig/models_dit.py. On
a CPU the worker computes in fp32; here both loaders are run at the artifact's own precision (what
they do on a GPU), so the dtype rules are exercised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from artifact_format import manifest as mf
from tests.test_worker_loader import assert_same_models, weights
from worker_runtime import imports, load, readahead

KINDS = ("flux-dev", "sd3", "pixart-sigma", "wan", "ltx")
CASES = [(kind, p) for kind in KINDS for p in ("fp16", "bf16")] + [("flux-dev", "fp8"), ("wan", "fp8")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.rig.models_dit import save_pipeline

    root = tmp_path_factory.mktemp("family-sources")
    return {kind: save_pipeline(kind, root / kind) for kind in KINDS}


def converted(source: Path, out: Path, precision: str) -> Path:
    from packager.convert.converter import convert
    from packager.convert.settings import ConvertSettings
    from packager.source.local_folder import select_local

    convert(
        source,
        list(select_local(source, ())),
        out,
        name=source.name,
        settings=ConvertSettings(precision=precision),  # type: ignore[arg-type]
        source_info={"kind": "path"},
    )
    return out


def tie_groups(model: Any) -> set[frozenset[str]]:
    """Names of the parameters that share one storage, for each storage shared by several."""
    by_ptr: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.numel():
            by_ptr.setdefault(param.data_ptr(), set()).add(name)
    return {frozenset(names) for names in by_ptr.values() if len(names) > 1}


@pytest.mark.parametrize(("kind", "precision"), CASES)
def test_the_in_memory_loader_builds_from_pretrained_models_for_every_family(
    sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, precision: str
) -> None:
    import torch

    artifact = converted(sources[kind], tmp_path / "artifact", precision)
    manifest = mf.load(artifact)
    monkeypatch.setattr(load, "precision_for", lambda manifest, device: manifest.precision)
    torch_ = imports.import_torch()
    cls = imports.import_pipeline_class(manifest.pipeline)
    mapped = load.load_pipeline(cls, torch_, artifact, manifest, "cpu")
    files = weights(artifact)
    reader = readahead.start(sorted(files), files, keep=True)
    reader.check()
    in_memory = load.load_pipeline(cls, torch_, artifact, manifest, "cpu", reader)
    assert not reader.buffers
    assert_same_models(mapped.pipe, in_memory.pipe)

    dtype = getattr(torch, load.PRECISION_NAMES[manifest.precision])
    models = {n: c for n, c in mapped.pipe.components.items() if isinstance(c, torch.nn.Module)}
    for name, model in models.items():
        assert tie_groups(model) == tie_groups(in_memory.pipe.components[name]), name
    # What the comparison covered: every family's T5 ties its embeddings, fp16 keeps T5's `wo`
    # layers in fp32, fp8 stores the denoiser's layers in float8.
    assert any(tie_groups(m) for m in models.values())
    found = {t.dtype for m in models.values() for t in m.state_dict().values() if t.is_floating_point()}
    assert dtype in found
    if precision == "fp16":
        assert torch.float32 in found
    if precision == "fp8":
        assert torch.float8_e4m3fn in found
        assert manifest.components, "the converter wrote no per-component precision"
