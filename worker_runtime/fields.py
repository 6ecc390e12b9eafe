"""The checks every request field goes through: type, bounds, a bounded echo in one line.

Every number is compared against its bounds before any arithmetic or formatting: Python compares
a 400-digit int with a float exactly, where float() of it, or formatting it, would raise.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, cast

from worker_runtime.errors import RequestError, kind_of, short, type_name
from worker_runtime.family import CallSpec

# CLIP reads 77 tokens; this only bounds the memory and log lines a hostile prompt can cost.
MAX_PROMPT_CHARS = 10_000
# Below this the UNet's downsampling leaves nothing to work on.
MIN_SIDE = 64


def only(raw: Mapping[str, Any], known: Collection[str], prefix: str) -> None:
    for key in raw:
        if key not in known:
            where = f"{prefix}{key}" if isinstance(key, str) and len(key) <= 40 else f"{prefix}{short(key)}"
            raise RequestError(f"{where}: unknown field (known: {', '.join(known)})")


def optional(raw: Mapping[str, Any], key: str, kind: type, prefix: str) -> Any:
    value = raw.get(key)
    if value is not None and not isinstance(value, kind):
        raise RequestError(f"{prefix}{key}: must be a {type_name(kind)} (got {kind_of(value)})")
    return value


def string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{where}: must be a string (got {kind_of(value)})")
    if len(value) > MAX_PROMPT_CHARS:
        raise RequestError(f"{where}: {len(value)} characters is over the limit of {MAX_PROMPT_CHARS}")
    return value


def whole(values: Mapping[str, Any], key: str, default: int, lo: int, hi: int, prefix: str) -> int:
    value = values.get(key)
    if value is None:
        return default
    # JSON clients often send 30.0 for 30; accept whole floats, refuse 30.5 and true.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return int(_bounded(value, int, "a whole number", lo, hi, f"{prefix}{key}"))


def number(values: Mapping[str, Any], key: str, default: Any, lo: float, hi: float, prefix: str) -> Any:
    value = values.get(key)
    if value is None:
        return default
    return float(_bounded(value, (int, float), "a number", lo, hi, f"{prefix}{key}"))


def _bounded(value: Any, kinds: type | tuple[type, ...], what: str, lo: float, hi: float, where: str) -> Any:
    """`value` when it is of `kinds` (never a bool, never NaN) and within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, kinds) or value != value:
        raise RequestError(f"{where}: must be {what} (got {short(value)})")
    # Compared before any conversion: Python compares a 400-digit int with a float exactly, where
    # float() of it would raise; infinities fail the bounds.
    if not lo <= cast("float", value) <= hi:
        raise RequestError(f"{where}: must be between {_bound(lo)} and {_bound(hi)} (got {short(value)})")
    return value


def _bound(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def side(
    values: Mapping[str, Any], key: str, default: int, hi: int, multiple: int, call: CallSpec, prefix: str
) -> int:
    side = whole(values, key, default, MIN_SIDE, max(hi, MIN_SIDE), prefix)
    if side % multiple:
        raise RequestError(
            f"{prefix}{key}: must be a multiple of {multiple} (got {side}) for {call.pipeline}"
        )
    return side
