"""Check written weights against their source, and whole artifacts against their manifest.

`ReadBack` is the converter's own check (safetensors' convert.py reloads and compares too): as soon
as a file's header is written, the file is opened the way a loader opens it — the safetensors
library parses the header and maps every tensor at the offsets *it* reads — and each chunk, right
after it is written, is compared bit for bit with the source cast still in the chunk buffer. So
every byte of every tensor is read back through the loader's own view of the file and checked,
at the cost of a memcmp on the threads that write, with no second cast and no copy of the model.

`verify_artifact` is what `packager verify DIR` runs on an artifact from anywhere: sizes and
sha256 against the manifest, and each weight file's header against its recorded count and dtype.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifact_format import manifest as mf
from packager.convert.safetensors_writer import Entry, Layout, dtype_code, dtype_label, read_header
from packager.errors import VerifyError

if TYPE_CHECKING:
    import torch


class ReadBack:
    """A written-to file as a loader sees it; `check` compares a piece with what was cast.

    Opening it checks the header twice over: the safetensors library must accept it and report
    every name, dtype and shape the plan wrote, and our own parse of the bytes on disk must give
    the planned offsets. The data are then read through a map of the file at those offsets.
    """

    def __init__(self, path: Path, rel: str, plan: Layout, origin: dict[str, str]) -> None:
        import mmap

        import torch
        from safetensors import SafetensorError, safe_open

        self.rel = rel
        self._origin = origin
        data_start, header = _check_raw_header(path, rel, plan)
        try:
            with safe_open(str(path), framework="pt") as fh:
                names = fh.keys()
                library = {
                    n: (fh.get_slice(n).get_dtype(), tuple(fh.get_slice(n).get_shape())) for n in names
                }
        except SafetensorError as exc:
            raise VerifyError(f"{rel}: safetensors refuses the written file ({exc})") from None
        if len(library) != len(plan.entries):
            raise VerifyError(f"{rel}: {len(library)} tensors read back, {len(plan.entries)} written")
        for e in plan.entries:
            want = (dtype_code(e.dtype), e.shape)
            if library.get(e.name) != want:
                raise VerifyError(
                    f"{rel}: tensor {e.name} reads back as {library.get(e.name)}, written as {want}"
                )
        self._start = {name: data_start + header[name]["data_offsets"][0] for name in library}
        with open(path, "rb") as fh:
            # Private and never written: only so torch can wrap it without a read-only warning.
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)

    def check(self, entry: Entry, lo: int, hi: int, written: torch.Tensor) -> None:
        start = self._start[entry.name] + lo * entry.itemsize
        on_disk = self._bytes[start : start + (hi - lo) * entry.itemsize]
        if not same_bytes(written, on_disk):
            where = self._origin.get(entry.name, "the source")
            kind = str(entry.dtype).removeprefix("torch.")
            raise VerifyError(
                f"{self.rel}: tensor {entry.name} read back from disk differs from {where} cast to {kind}"
            )

    def close(self) -> None:
        del self._bytes  # the map closes once nothing views it


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality of two contiguous byte tensors (NaN payloads and signed zeros included).

    libc's memcmp, which ctypes calls without the GIL: torch.equal on bytes runs at under 1 GB/s
    and cannot view arbitrarily aligned bytes as wider integers.
    """
    import torch

    n = a.numel()
    if n != b.numel():
        return False
    if not (a.is_contiguous() and b.is_contiguous()) or _MEMCMP is None:
        return torch.equal(a, b)
    return n == 0 or _MEMCMP(a.data_ptr(), b.data_ptr(), n) == 0


def _load_memcmp() -> Any:
    try:
        memcmp = ctypes.CDLL(None).memcmp
    except (OSError, AttributeError):
        return None
    memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    memcmp.restype = ctypes.c_int
    return memcmp


_MEMCMP = _load_memcmp()


def _check_raw_header(path: Path, rel: str, plan: Layout) -> tuple[int, dict[str, Any]]:
    """Our own parse of the header: every offset where the plan put it, the size it implies."""
    size = path.stat().st_size
    if size != plan.size:
        raise VerifyError(f"{rel}: {size} bytes on disk, {plan.size} planned")
    try:
        data_start, header = read_header(path)
    except ValueError as exc:
        raise VerifyError(f"{rel}: header does not parse ({exc})") from None
    if data_start != len(plan.header):
        raise VerifyError(f"{rel}: header length differs from the one written")
    for e in plan.entries:
        got = header.get(e.name, {}).get("data_offsets")
        if got != [e.start, e.start + e.nbytes]:
            raise VerifyError(f"{rel}: tensor {e.name} has offsets {got} on disk")
    return data_start, header


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
                names = fh.keys()
                codes = [fh.get_slice(n).get_dtype() for n in names]
        except (ValueError, SafetensorError) as exc:
            raise VerifyError(f"{path}: not a readable safetensors file ({exc})") from None
        if len(codes) != entry.tensors:
            raise VerifyError(f"{path}: {len(codes)} tensors, the manifest says {entry.tensors}")
        label = dtype_label(codes)
        if label != entry.dtype:
            raise VerifyError(f"{path}: dtype {label}, the manifest says {entry.dtype}")
    return manifest
