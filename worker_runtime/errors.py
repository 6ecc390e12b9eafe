"""The two ways the worker says no: at start (the process exits) and per request (the job fails)."""

from __future__ import annotations


class StartError(Exception):
    """The worker cannot serve: missing or damaged artifact, bad environment, failed pull.

    The message is one line naming the file, variable or value; the process prints it and exits
    non-zero, so RunPod shows it in the worker log and does not route jobs to a broken worker.
    """


class RequestError(ValueError):
    """A request the worker will not run. One line naming the field; the job is marked FAILED."""
