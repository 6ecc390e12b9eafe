"""Check written weights against their source, and whole artifacts against their manifest.

`verify_written` is the converter's own check (safetensors' convert.py reloads and compares too):
the file is reopened as a loader would open it — its header parsed by the safetensors library and
by us, every name, dtype, shape and offset compared with the plan — and every byte compared with a
fresh cast of the source. The fresh cast is done chunk by chunk into a per-thread buffer on the
same pool that writes, so it costs one more cast and a memcmp, never a copy of the model.

`verify_artifact` is what `packager verify DIR` runs on an artifact from anywhere: sizes and
sha256 against the manifest, and each weight file's header against its recorded count and dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.errors import VerifyError
from packager.safetensors_writer import Engine, Entry, Layout, dtype_code, dtype_label, read_header
from worker_runtime import manifest as mf

if TYPE_CHECKING:
    import torch

CastFn = Callable[[Entry, int, int, "torch.Tensor"], None]


def verify_written(
    engine: Engine, path: Path, rel: str, plan: Layout, cast: CastFn, origin: Mapping[str, str]
) -> list[Future[Any]]:
    """Queue the checks of one freshly written file; the futures raise VerifyError on a mismatch."""
    import mmap

    import torch

    with open(path, "rb") as fh:
        # A private mapping only so torch can wrap it without a warning; nothing writes to it.
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    written = torch.frombuffer(mapped, dtype=torch.uint8) if len(mapped) else torch.empty(0, dtype=torch.uint8)
    data_start = len(plan.header)
    chunks = plan.chunks(engine.chunk_bytes)

    def check_header() -> None:
        _check_header(path, rel, plan)

    def check_chunk(index: int) -> None:
        start, length, pieces = chunks[index]
        raw = torch.frombuffer(engine.scratch(), dtype=torch.uint8)
        for p in pieces:
            entry = plan.entries[p.entry]
            cast(entry, p.lo, p.hi, raw[p.offset : p.offset + (p.hi - p.lo) * entry.itemsize].view(entry.dtype))
        got = written[data_start + start : data_start + start + length]
        if not _same_bytes(raw[:length], got):
            for p in pieces:
                entry = plan.entries[p.entry]
                n = (p.hi - p.lo) * entry.itemsize
                if not torch.equal(raw[p.offset : p.offset + n], got[p.offset : p.offset + n]):
                    where = origin.get(entry.name, "the source")
                    raise VerifyError(
                        f"{rel}: tensor {entry.name} read back from disk differs from {where} cast to "
                        f"{str(entry.dtype).removeprefix('torch.')}"
                    )
            raise VerifyError(f"{rel}: bytes at offset {data_start + start} differ from the source cast")

    futures = [engine.submit(check_header)]
    futures += [engine.submit(check_chunk, i) for i in range(len(chunks))]
    return futures


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality; compared as int64 where aligned, since torch.equal on bytes is slow."""
    import torch

    if a.numel() != b.numel():
        return False
    n8 = a.numel() // 8 * 8
    if n8 and not torch.equal(a[:n8].view(torch.int64), b[:n8].view(torch.int64)):
        return False
    return torch.equal(a[n8:], b[n8:])


def _check_header(path: Path, rel: str, plan: Layout) -> None:
    from safetensors import SafetensorError, safe_open

    size = path.stat().st_size
    if size != plan.size:
        raise VerifyError(f"{rel}: {size} bytes on disk, {plan.size} planned")
    try:
        data_start, header = read_header(path)
    except ValueError as exc:
        raise VerifyError(f"{rel}: header does not parse ({exc})") from None
    if data_start != len(plan.header):
        raise VerifyError(f"{rel}: header length differs from the one written")
    try:
        with safe_open(str(path), framework="pt") as fh:
            names = set(fh.keys())
            library_view = {n: (fh.get_slice(n).get_dtype(), list(fh.get_slice(n).get_shape())) for n in names}
    except SafetensorError as exc:
        raise VerifyError(f"{rel}: safetensors refuses the written file ({exc})") from None
    expected = {e.name for e in plan.entries}
    if names != expected:
        odd = sorted(names ^ expected)[0]
        raise VerifyError(f"{rel}: tensor {odd} is {'missing' if odd in expected else 'unexpected'} on disk")
    for e in plan.entries:
        want = (dtype_code(e.dtype), list(e.shape))
        if library_view[e.name] != want:
            raise VerifyError(f"{rel}: tensor {e.name} reads back as {library_view[e.name]}, expected {want}")
        if header[e.name].get("data_offsets") != [e.start, e.start + e.nbytes]:
            raise VerifyError(f"{rel}: tensor {e.name} has offsets {header[e.name].get('data_offsets')} on disk")


def verify_artifact(artifact_dir: Path, *, full: bool = True) -> mf.Manifest:
    """Check an artifact: every file's size (and sha256 when `full`), and each weight file's
    header against the manifest's tensor count and dtype. Raises VerifyError naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        manifest = mf.check(artifact_dir, full_hash=full)
    except mf.ManifestError as exc:
        raise VerifyError(str(exc)) from None
    for entry in manifest.weight_files:
        path = Path(artifact_dir) / entry.path
        try:
            read_header(path)
            with safe_open(str(path), framework="pt") as fh:
                codes = [fh.get_slice(n).get_dtype() for n in fh.keys()]
        except (ValueError, SafetensorError) as exc:
            raise VerifyError(f"{path}: not a readable safetensors file ({exc})") from None
        if len(codes) != entry.tensors:
            raise VerifyError(f"{path}: {len(codes)} tensors, the manifest says {entry.tensors}")
        label = dtype_label(codes)
        if label != entry.dtype:
            raise VerifyError(f"{path}: dtype {label}, the manifest says {entry.dtype}")
    return manifest
