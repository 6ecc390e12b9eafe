"""Locked source → the exact files on local disk, verified against the lock.

Hub files go into the normal Hugging Face cache through `snapshot_download` with the lock's exact
file list as `allow_patterns`, pinned to the locked commit: files a user already has are not
downloaded again, and nothing the pipeline does not need (root checkpoints, onnx, flax, the other
weight format) is ever requested. Local `path` sources are used where they are. Single-file
checkpoints come from the recipe's file, or from a `url` cached under `$HF_HOME/packager-downloads/`.

Verification: sizes of every file, always (cheap); sha256 of every file downloaded by this run and
of local files whose size or mtime moved since they were locked.
"""

from __future__ import annotations

from packager.errors import PackagerError
from packager.source.inputs import Fetched, check_relpath, input_for
from packager.source.lock import Lock, lock_fetched, unwrite_lock
from packager.source.recipe import LoadedRecipe


def fetch(loaded: LoadedRecipe, lock: Lock, *, quiet: bool) -> Fetched:
    """Make the lock's files present locally and check them.

    `root` of the result holds `files` at their repo-relative paths: the HF cache snapshot for hub
    sources, the folder itself for `path` sources, the config folder for single-file sources (whose
    weights are `checkpoint`). `root` may hold other files too (an earlier fetch of other files of
    the same commit); only `files` belong to this recipe.

    Raises HubError (hub unreachable, gated, ...) or FetchError (a file is unsafe, missing, or does
    not match the lock). Then a lock this process wrote is taken back: it pins nothing that arrived.
    """
    try:
        for rel in lock.files:
            check_relpath(rel, "")
        fetched = input_for(loaded).fetch(lock, quiet=quiet)
    except PackagerError:
        unwrite_lock(loaded)
        raise
    lock_fetched(loaded)
    return fetched
