"""The publish stage: make the recipe's hub repo hold the lock's artifact, and say so in the lock.

One place decides whether to publish. When the lock already records a commit in the recipe's repo
for its artifact, one ref lookup confirms the artifact's tag still points there and nothing else
happens; otherwise the artifact's bytes are asked for (local disk, the store, or a conversion)
and published (packager/publish/hub_repo.py), and the commit goes into the lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from artifact_format.vocab import short_id
from packager import settings
from packager.errors import PublishError, RecipeError
from packager.publish.hub_repo import Published, publish, published_commit
from packager.source.recipe import LoadedRecipe, Publish

if TYPE_CHECKING:
    from packager.pipeline.artifact import Artifact
    from packager.source.lock import Lock


@dataclass(frozen=True)
class Outcome:
    lock: Lock
    status: str  # "skipped" | "done"
    detail: str
    published: Published | None = None  # None when skipped


def publish_section(loaded: LoadedRecipe) -> Publish:
    if loaded.recipe.publish is None:
        raise RecipeError(
            f"{loaded.path}: cached mode and `packager publish` need a `publish: {{repo: org/name}}` section"
        )
    return loaded.recipe.publish


def token_for(section: Publish) -> str:
    token = settings.publish_token(section.token_env)
    if token is None:
        raise PublishError(
            f"{section.token_env} is not set: publishing to {section.repo} needs a hub token with write"
            " access in it"
        )
    return token


def ensure_published(
    loaded: LoadedRecipe, lock: Lock, artifact_bytes: Callable[[], Artifact], *, quiet: bool
) -> Outcome:
    """The lock, with `published` naming a commit of the recipe's repo that holds its artifact."""
    from packager.source.lock import record_published

    section = publish_section(loaded)
    token = token_for(section)
    assert lock.artifact_id is not None, "publish runs after convert"
    artifact_id = lock.artifact_id
    recorded = lock.published
    if recorded is not None and recorded["repo"] == section.repo:
        tagged = published_commit(section.repo, artifact_id, token=token, token_env=section.token_env)
        if tagged == recorded["commit"]:
            return Outcome(lock, "skipped", f"{section.repo}@{tagged[:12]} holds {short_id(artifact_id)}")
    artifact = artifact_bytes()
    done = publish(
        artifact.dir,
        artifact.manifest,
        artifact.id,
        repo=section.repo,
        private=section.private,
        token=token,
        token_env=section.token_env,
    )
    lock = record_published(loaded, lock, done.repo, done.commit)
    if done.sent_nothing:
        return Outcome(lock, "skipped", f"{done.repo}@{done.commit[:12]} already holds it ({done.tag})", done)
    detail = f"{done.repo}@{done.commit[:12]} ({done.tag}): {done.files_sent} files, {done.bytes_sent} bytes"
    if done.deleted:
        detail += f", {len(done.deleted)} stale files deleted"
    return Outcome(lock, "done", detail, done)
