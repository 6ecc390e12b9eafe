"""Import-time shims that keep modules serving never uses out of the worker's start-up.

`torch._dynamo` (the `torch.compile` front end) costs more than a second to import on a small CPU,
and diffusers (`utils/torch_utils.py`: `allow_in_graph` on its attention classes) and transformers
(`masking_utils.py`: one context-manager class) import it at module load although an uncompiled
pipeline never calls into it. `install_lazy_dynamo()` puts a stand-in module in its place that
answers those import-time needs itself and loads the real module on the first real use, then
replays the `allow_in_graph` registrations it recorded, so `torch.compile` sees exactly what it
would have seen had the real module been there from the start.

What the stand-in answers without loading the real module, and why that answer is the real one:
- `allow_in_graph(fn)` returns `fn` (the real one returns `fn` too) and records it for the replay;
- `assume_constant_result(fn)` marks `fn` with the attribute the real decorator sets;
- `disable(fn)` (what `torch.compiler.disable` calls) wraps `fn` so that its first call after the
  real module loaded makes the real disabled wrapper; before that it calls `fn` itself;
- `is_compiling()` is False and `eval_frame.OptimizedModule` matches nothing: code can only be
  compiling, or a module be compiled, after `torch.compile` has imported the real module;
- `_trace_wrapped_higher_order_op.TransformGetItemToIndex` is a class whose construction loads the
  real module and builds the real class's instance.

Each shim was written against the library versions in `SUPPORTED`; any other version, or any
surprise while installing, leaves the plain import in place (the worker is then just slower).
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
import threading
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

DYNAMO = "torch._dynamo"
TRACE_WRAPPED = "torch._dynamo._trace_wrapped_higher_order_op"
# (package, lowest version, first version not supported) the shims were checked against.
SUPPORTED: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "torch": ((2, 6), (2, 15)),
    "diffusers": ((0, 32), (0, 43)),
    "transformers": ((4, 48), (5, 25)),
}

_lock = threading.RLock()
_recorded: list[Any] = []
_real: ModuleType | None = None


def version_tuple(text: str) -> tuple[int, int]:
    """'2.13.0+cpu' → (2, 13); anything unparsable → (0, 0), which no range admits."""
    parts = text.split("+", 1)[0].split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or "x")
    except (IndexError, ValueError):
        return (0, 0)


def versions_supported() -> tuple[bool, str]:
    """(True, "") when every library the shims touch is a version they were written for."""
    for package, (low, high) in SUPPORTED.items():
        try:
            found = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return False, f"{package} is not installed"
        if not low <= version_tuple(found) < high:
            return False, f"{package} {found} is outside {low}..{high}"
    return True, ""


class _NeverCompiled:
    """Stands in for `OptimizedModule` while no module can be compiled: isinstance is always False."""


class _LazyModule(ModuleType):
    """A module whose unknown attributes come from the real `torch._dynamo` (loaded on demand)."""

    _known: dict[str, Any]
    _real_name: str

    def __getattr__(self, name: str) -> Any:
        with _lock:
            if _real is None and name in self._known:
                return self._known[name]
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        real = load_real_dynamo()
        return getattr(sys.modules[self._real_name] if self._real_name != DYNAMO else real, name)


def _stand_in(name: str, known: dict[str, Any]) -> _LazyModule:
    module = _LazyModule(name, "stand-in until first use (worker_runtime.shims)")
    module._known = known
    module._real_name = name
    # importlib.util.find_spec(name) answers from sys.modules and refuses a module without a spec.
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name == DYNAMO)
    return module


def _allow_in_graph(fn: Any) -> Any:
    with _lock:
        if _real is not None:
            return _real.allow_in_graph(fn)
        if isinstance(fn, (list, tuple)):
            return [_allow_in_graph(x) for x in fn]
        if not callable(fn):
            raise AssertionError("allow_in_graph expects a callable")
        _recorded.append(fn)
        return fn


def _assume_constant_result(fn: Any) -> Any:
    fn._dynamo_marked_constant = True  # what the real decorator does, and all it does
    return fn


def _disable(fn: Any = None, recursive: bool = True, **kwargs: Any) -> Any:
    """`torch.compiler.disable` deferred: the real wrapper is made on the first call after the real
    module loaded; before that nothing can be compiling, so calling `fn` itself is what it would do."""
    if fn is None:
        return functools.partial(_disable, recursive=recursive, **kwargs)
    made: list[Any] = []

    @functools.wraps(fn)
    def deferred(*args: Any, **kw: Any) -> Any:
        if _real is None:
            return fn(*args, **kw)
        if not made:
            made.append(_real.disable(fn, recursive, **kwargs))
        return made[0](*args, **kw)

    return deferred


def _is_compiling() -> bool:
    import torch

    return bool(torch.compiler.is_compiling())


class TransformGetItemToIndex:
    """Builds the real `TransformGetItemToIndex` (loading torch._dynamo) when first constructed."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        load_real_dynamo()
        real_cls: Callable[..., Any] = sys.modules[TRACE_WRAPPED].TransformGetItemToIndex
        return real_cls(*args, **kwargs)


def load_real_dynamo() -> ModuleType:
    """Import the real torch._dynamo (once), replay the recorded registrations, and return it."""
    global _real
    with _lock:
        if _real is not None:
            return _real
        import torch

        for name in (TRACE_WRAPPED, DYNAMO):
            if isinstance(sys.modules.get(name), _LazyModule):
                del sys.modules[name]
        if isinstance(torch.__dict__.get("_dynamo"), _LazyModule):
            del torch.__dict__["_dynamo"]
        real = importlib.import_module(DYNAMO)
        importlib.import_module(TRACE_WRAPPED)
        for fn in _recorded:
            real.allow_in_graph(fn)
        _recorded.clear()
        _real = real
        return real


class _SubmoduleFinder(importlib.abc.MetaPathFinder):
    """Any other `torch._dynamo.*` import loads the real package first, then that submodule."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if not fullname.startswith(DYNAMO + ".") or not lazy_dynamo_active():
            return None
        load_real_dynamo()
        return importlib.util.spec_from_loader(fullname, _Existing())


class _Existing(importlib.abc.Loader):
    """Hands back the submodule imported normally under the now real `torch._dynamo`."""

    def create_module(self, spec: Any) -> ModuleType:
        return importlib.import_module(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        return None


def lazy_dynamo_active() -> bool:
    """True while the stand-in is installed and the real torch._dynamo has not been loaded."""
    return _real is None and isinstance(sys.modules.get(DYNAMO), _LazyModule)


def install_lazy_dynamo() -> str | None:
    """Put the stand-in in place of torch._dynamo; None when installed, else why not (plain import).

    Call after `import torch` and before diffusers or transformers are imported.
    """
    if DYNAMO in sys.modules and not isinstance(sys.modules[DYNAMO], _LazyModule):
        return "torch._dynamo is already imported"
    ok, why = versions_supported()
    if not ok:
        return why
    import torch

    with _lock:
        if lazy_dynamo_active():
            return None
        eval_frame = SimpleNamespace(OptimizedModule=_NeverCompiled)
        dynamo = _stand_in(
            DYNAMO,
            {
                "allow_in_graph": _allow_in_graph,
                "assume_constant_result": _assume_constant_result,
                "is_compiling": _is_compiling,
                "disable": _disable,
                "eval_frame": eval_frame,
            },
        )
        dynamo.__path__ = []  # a package: submodule imports find the stand-in below in sys.modules
        trace = _stand_in(TRACE_WRAPPED, {"TransformGetItemToIndex": TransformGetItemToIndex})
        sys.modules[DYNAMO] = dynamo
        if not any(isinstance(f, _SubmoduleFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _SubmoduleFinder())
        sys.modules[TRACE_WRAPPED] = trace
        dynamo._trace_wrapped_higher_order_op = trace  # type: ignore[attr-defined]
        torch._dynamo = dynamo
    return None
