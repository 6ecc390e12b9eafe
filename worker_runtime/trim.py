"""Library features a serving process never uses, kept out of its start-up (after shims.py's dynamo).

`python -X importtime` of a worker start on transformers 5 / diffusers 0.42 shows more groups of
modules that an inference-only, single-process worker imports and never calls:

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
- **scipy.stats, scipy.integrate and scipy.optimize** (about 0.7 s together): every diffusers
  scheduler module does `import scipy.stats` at load for one call (`scipy.stats.beta.ppf`, only with
  `use_beta_sigmas`), the LMS scheduler `from scipy import integrate` for `integrate.quad`,
  and transformers' object-detection losses import `scipy.optimize` for their Hungarian matcher,
  reached from `modeling_utils` through `loss_utils`. `defer_scipy_stats` puts a
  stand-in in place of `scipy.stats` and `scipy.integrate` that imports the real module on the first
  attribute read, so a beta-sigmas or LMS schedule still gets the real functions;
  `detection_losses_without_scipy` imports transformers' loss modules while transformers answers
  "no scipy", which is what they see where scipy is not installed (a worker never trains a
  detector; everything else in transformers still sees scipy).
- **diffusers' `models/transformers` package** (about 0.4 s): its `__init__` imports every DiT
  class (and through one of them torch's functional collectives) when SD's UNet blocks import one
  module of it; `defer_diffusers_transformers` lets that module import alone.

transformers' image processors are left alone: diffusers' pipeline modules import `CLIPImageProcessor`
by name, but transformers' own modeling code imports the image-processing base anyway (the
`auto_docstring` decorator on `CLIPTextModel` reaches `image_processing_auto`), so deferring the
names would save only the few modules of one processor class.

Each function checks the library versions it was written for (shims.SUPPORTED) and returns None when
installed, else why not; the plain import then stays. WORKER_TRIM_IMPORTS=0 turns all of them off.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import cast

from worker_runtime import shims


def hide_distributed() -> str | None:
    """transformers sees no torch.distributed (no process group is ever started in a worker)."""
    why = _too_late("transformers.distributed.")
    if why:
        return why
    if _answer_transformers("is_torch_distributed_available", _no) is None:
        return "transformers has no is_torch_distributed_available"
    return None


def _too_late(*prefixes: str) -> str | None:
    """Why a trim cannot apply: an unsupported library version, or modules under a prefix loaded."""
    ok, why = shims.versions_supported()
    if not ok:
        return why
    for prefix in prefixes:
        if any(name.startswith(prefix) for name in sys.modules):
            return f"modules under {prefix} are already imported"
    return None


def _no() -> bool:
    return False


def _answer_transformers(check: str, answer: Callable[[], bool]) -> Callable[[], bool] | None:
    """Put `answer` in place of transformers' `utils.<check>` (both names it is imported under);
    the original back, or None (nothing replaced) when transformers has no such check."""
    import transformers.utils as utils
    import transformers.utils.import_utils as import_utils

    original = getattr(import_utils, check, None)
    if not callable(original) or getattr(utils, check, None) is not original:
        return None
    setattr(import_utils, check, answer)
    setattr(utils, check, answer)
    return cast("Callable[[], bool]", original)


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


def defer_scipy_stats() -> str | None:
    """`scipy.stats` and `scipy.integrate` load on their first attribute read, not at import."""
    names = ("scipy.stats", "scipy.integrate")
    why = _too_late(*names)
    if why:
        return why
    try:
        scipy = importlib.import_module("scipy")
    except ImportError:
        return "scipy is not installed"
    specs = [importlib.util.find_spec(name) for name in names]
    if any(spec is None for spec in specs):
        return "scipy.stats or scipy.integrate cannot be found"
    for name, spec in zip(names, specs, strict=True):
        assert spec is not None
        stand_in = _stand_in(name, spec)
        sys.modules[name] = stand_in
        setattr(scipy, name.rpartition(".")[2], stand_in)
    return None


def defer_diffusers_transformers() -> str | None:
    """diffusers' `models/transformers` package runs its `__init__` (every DiT class) on first use.

    Stable Diffusion's UNet blocks import one module of it (`dual_transformer_2d`); a stand-in
    package with the real `__path__` lets that submodule import alone, and the first read of any
    other name (a Flux or SD3 pipeline's `from ...models.transformers import ...`) runs the real
    `__init__`, which finds the submodules already imported.
    """
    name = "diffusers.models.transformers"
    why = _too_late(name)
    if why:
        return why
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return f"{name} is not a package"
    stand_in = _stand_in(name, spec)
    stand_in.__path__ = list(spec.submodule_search_locations)
    stand_in.__package__ = name
    sys.modules[name] = stand_in
    return None


_loading = threading.RLock()


class _Deferred(ModuleType):
    """Stands in for a module until an attribute it lacks is read, then imports the real one.

    The import machinery only reads `__spec__` (set, so a repeated `import` finds the module
    initialised); any other read, `__path__` for a submodule import included, loads the real
    module, puts it in the stand-in's place (sys.modules and the parent's attribute) and answers
    from it. The standard library's `LazyLoader` cannot serve here: on Python 3.11 the
    `__spec__` read of every later `import scipy.stats` statement already loads the module.
    """

    def __getattr__(self, name: str) -> object:
        with _loading:
            real = sys.modules.get(self.__name__)
            if real is None or real is self:
                sys.modules.pop(self.__name__, None)
                real = importlib.import_module(self.__name__)
            parent, _, child = self.__name__.rpartition(".")
            setattr(sys.modules[parent], child, real)
        return getattr(real, name)


def _stand_in(name: str, spec: ModuleSpec) -> _Deferred:
    stand_in = _Deferred(name)
    stand_in.__spec__ = spec
    # Read by inspect.getmodule, which walks every module in sys.modules.
    stand_in.__file__ = spec.origin
    return stand_in


def detection_losses_without_scipy() -> str | None:
    """transformers' loss modules are imported while transformers sees no scipy (see above)."""
    why = _too_late("transformers.loss")
    if why:
        return why
    original = _answer_transformers("is_scipy_available", _no)
    if original is None:
        return "transformers has no is_scipy_available"
    try:
        importlib.import_module("transformers.loss.loss_utils")
    finally:
        _answer_transformers("is_scipy_available", original)
    return None
