"""Which way to read the weights, decided by the filesystem they are on (statfs), never by path.

On local disks a memory map is the fastest load there is: the page cache is filled by readahead
and tensors are views of it. On network filesystems (a RunPod network volume is a FUSE/NFS-style
mount) every page fault is a round trip, and faulting a model in runs far below the volume's
bandwidth; there the worker reads each file into memory with many large parallel reads and builds
the tensors on those buffers (readahead.py `keep`, load.py). The path says nothing: RunPod's model
cache sits under /runpod-volume but on local disk.

WORKER_LOADER=auto|parallel|mmap overrides the choice (auto by default).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Literal

Mode = Literal["parallel", "mmap"]

# statfs(2) f_type magic numbers of filesystems that live across a network (linux/magic.h and the
# filesystems' own headers).
NETWORK_MAGIC = {
    0x65735546: "fuse",
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x00C36400: "ceph",
    0x01021997: "9p",
    0x47504653: "gpfs",
    0x5346414F: "afs",
    0x0BD00BD0: "lustre",
    0x19830326: "fhgfs",
}
_STATFS_BUF = 256  # larger than struct statfs on every Linux ABI; f_type is its first word


def fs_magic(path: Path) -> int | None:
    """statfs(path).f_type, or None where statfs is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    buf = ctypes.create_string_buffer(_STATFS_BUF)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return int(ctypes.c_ulong.from_buffer(buf).value) & 0xFFFFFFFF


def fs_name(path: Path) -> str:
    magic = fs_magic(path)
    if magic is None:
        return "unknown"
    return NETWORK_MAGIC.get(magic, f"local(0x{magic:x})")


def is_network(path: Path) -> bool:
    magic = fs_magic(path)
    return magic is not None and magic in NETWORK_MAGIC


def choose(path: Path, override: str | None = None) -> Mode:
    """`parallel` on network filesystems, `mmap` elsewhere; `override` (WORKER_LOADER) wins."""
    wanted = (override if override is not None else os.environ.get("WORKER_LOADER", "")).strip().lower()
    if wanted in ("parallel", "mmap"):
        return "parallel" if wanted == "parallel" else "mmap"
    if wanted not in ("", "auto"):
        from worker_runtime.errors import StartError

        raise StartError(f"WORKER_LOADER: must be auto, parallel or mmap (got {wanted!r})")
    return "parallel" if is_network(path) else "mmap"
