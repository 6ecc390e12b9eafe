"""Library features a serving process never uses, kept out of its start-up (after shims.py's dynamo).

`python -X importtime` of a worker start on transformers 5 / diffusers 0.42 shows two more groups
of modules that an inference-only, single-process worker imports and never calls:

- **torch.distributed's tensor, FSDP and checkpoint packages, and sympy with them** (about 1 s of a
  core): transformers imports them at module load whenever `torch.distributed.is_available()`
  (`distributed/sharding_utils.py`, `distributed/fsdp.py`, `distributed/tensor_parallel.py`, ...),
  for tensor parallelism and FSDP. A worker never starts a process group, so every one of those
  code paths is off; `hide_distributed` answers transformers' `is_torch_distributed_available()`
  with False, which is what it answers on a torch build without distributed support.
- **peft** (about 0.7 s): diffusers imports it at module load (`loaders/lora_base.py`) to load LoRA
  adapters. LoRAs reach a worker fused into the weights at packaging time; the worker never loads an
  adapter. `hide_peft` makes peft look not installed to diffusers and transformers, so both take the
  path they take without it (no adapter layers to scale: the same arithmetic).

transformers' image processors are left alone: diffusers' pipeline modules import `CLIPImageProcessor`
by name, but transformers' own modeling code imports the image-processing base anyway (the
`auto_docstring` decorator on `CLIPTextModel` reaches `image_processing_auto`), so deferring the
names would save only the few modules of one processor class.

Each function checks the library versions it was written for (shims.SUPPORTED) and returns None when
installed, else why not; the plain import then stays. WORKER_TRIM_IMPORTS=0 turns all of them off.
"""

from __future__ import annotations

import sys

from worker_runtime import shims


def hide_distributed() -> str | None:
    """transformers sees no torch.distributed (no process group is ever started in a worker)."""
    ok, why = shims.versions_supported()
    if not ok:
        return why
    import transformers.utils as utils
    import transformers.utils.import_utils as import_utils

    if any(name.startswith("transformers.distributed.") for name in sys.modules):
        return "transformers' distributed modules are already imported"

    if not callable(getattr(import_utils, "is_torch_distributed_available", None)):
        return "transformers has no is_torch_distributed_available"

    def is_torch_distributed_available() -> bool:
        return False

    import_utils.is_torch_distributed_available = is_torch_distributed_available
    utils.is_torch_distributed_available = is_torch_distributed_available  # type: ignore[attr-defined]
    return None


def hide_peft() -> str | None:
    """peft looks not installed (to diffusers and transformers, which decide once, at import)."""
    ok, why = shims.versions_supported()
    if not ok:
        return why
    if "peft" in sys.modules or "diffusers" in sys.modules:
        return "peft or diffusers is already imported"
    # A None entry is Python's own "import blocked" mark: find_spec answers None, import raises
    # ModuleNotFoundError, exactly as when the package is absent.
    sys.modules["peft"] = None  # type: ignore[assignment]
    return None
