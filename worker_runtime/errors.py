"""The two ways the worker says no: at start (the process exits) and per request (the job fails),
and how a refusal shows the client's value: its kind, or a bounded echo."""

from __future__ import annotations

from typing import Any


class StartError(Exception):
    """The worker cannot serve: missing or damaged artifact, bad environment, failed pull.

    The message is one line naming the file, variable or value; the process prints it and exits
    non-zero, so RunPod shows it in the worker log and does not route jobs to a broken worker.
    """


class RequestError(ValueError):
    """A request the worker will not run. One line naming the field; the job is marked FAILED."""


_KINDS: dict[type, str] = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def kind_of(value: Any) -> str:
    """The JSON kind of a client's value, for "must be a string (got array)"."""
    return _KINDS.get(type(value), type(value).__name__)


def type_name(kind: type) -> str:
    return _KINDS.get(kind, kind.__name__)


def short(value: Any) -> str:
    """A bounded echo of a client's value: never its whole text, never an error of its own."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        # repr() of a long enough int raises (Python's int-to-str digit limit) and is unreadable.
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    if isinstance(value, (dict, list)):
        return f"{kind_of(value)} of {len(value)} item(s)"
    text = repr(value[:41] if isinstance(value, str) else value)
    return text if len(text) <= 40 else text[:37] + "..."
