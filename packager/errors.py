"""Every failure a user can fix has a class here, and its message says what to do.

The CLI prints any PackagerError as one line and exits with its `exit_code` (2 by default);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PackagerError(Exception):
    """Base class: a problem with the user's input or environment, reported as one line."""

    exit_code = 2


class RecipeError(PackagerError):
    """The recipe file is missing, not YAML, or does not validate."""


class LockError(PackagerError):
    """The lock is missing, unreadable, or (with --frozen) out of date."""


class DriftError(LockError):
    """`lock --check`: the lock no longer matches the recipe, the revision or the files."""

    exit_code = 1


class HubError(PackagerError):
    """The hub refused or could not answer: repo/revision not found, gated, offline."""


class FetchError(PackagerError):
    """A source file could not be fetched, or is unsafe to write (path escapes the target)."""


class ConvertError(PackagerError):
    """Weights could not be converted: unsafe pickle, fp16 overflow, unknown layout."""


class VerifyError(PackagerError):
    """An artifact does not match its manifest."""


class StoreError(PackagerError):
    """The store (S3 or a local directory) refused or could not be reached."""


class VolumeError(PackagerError):
    """A RunPod network volume could not be seeded or read."""


class PublishError(PackagerError):
    """The artifact could not be published to its hub repo: token refused, branch moved, tag taken."""


class ImageError(PackagerError):
    """Rendering, building or pushing an image failed, or no Docker engine is reachable."""


class DeployError(PackagerError):
    """The RunPod API refused or could not be reached."""


class DiskSpaceError(PackagerError):
    """Not enough free disk for the stage about to run."""


class WorkerError(PackagerError):
    """The worker failed to start, or answered a request with an error (serve, smoke)."""


class InvokeError(PackagerError):
    """A job sent by `invoke` failed, timed out, or could not be sent."""

    exit_code = 1
