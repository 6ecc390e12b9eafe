"""The publish stage: make the recipe's hub repo hold the lock's artifact, and say so in the lock.

One place decides whether to publish. When the lock already records a commit in the recipe's repo
for its artifact, one ref lookup confirms the artifact's tag still points there and nothing else
happens; otherwise the artifact's bytes are asked for (local disk, the store, or a conversion)
and published (packager/publish/hub_repo.py), and the commit goes into the lock.
"""

from __future__ import annotations

from artifact_format.vocab import short_id
from packager import settings
from packager.errors import PublishError, RecipeError
from packager.pipeline.run import Outcome, Run
from packager.publish.hub_repo import publish, published_commit
from packager.source.recipe import LoadedRecipe
from packager.source.recipe_sections import Publish


def publish_section(loaded: LoadedRecipe) -> Publish:
    if loaded.recipe.publish is None:
        raise RecipeError(
            f"{loaded.path}: cached mode and `packager publish` need a `publish: {{repo: org/name}}` section"
        )
    return loaded.recipe.publish


def token_for(section: Publish) -> str:
    token = settings.env_value(section.token_env)
    if token is None:
        raise PublishError(
            f"{section.token_env} is not set: publishing to {section.repo} needs a hub token with write"
            " access in it"
        )
    return token


def ensure_published(run: Run) -> Outcome:
    """The recipe's hub repo holds the run's artifact at a commit the lock records."""
    from packager.source.lock import record_published

    section = publish_section(run.loaded)
    token = token_for(section)
    assert run.lock is not None, "ensure_lock runs first"
    artifact_id = run.artifact_id
    recorded = run.lock.published if run.lock.artifact_id == artifact_id else None
    if recorded is not None and recorded["repo"] == section.repo:
        tagged = published_commit(section.repo, artifact_id, token=token, token_env=section.token_env)
        if tagged == recorded["commit"]:
            return Outcome("skipped", f"{section.repo}@{tagged[:12]} holds {short_id(artifact_id)}")
    artifact = run.artifact_bytes()
    assert run.lock is not None
    done = publish(
        artifact.dir,
        artifact.manifest,
        artifact.id,
        repo=section.repo,
        private=section.private,
        token=token,
        token_env=section.token_env,
    )
    run.lock = record_published(run.loaded, run.lock, done.repo, done.commit)
    run.published = done
    if done.sent_nothing:
        return Outcome("skipped", f"{done.repo}@{done.commit[:12]} already holds it ({done.tag})")
    detail = f"{done.repo}@{done.commit[:12]} ({done.tag}): {done.files_sent} files, {done.bytes_sent} bytes"
    if done.deleted:
        detail += f", {len(done.deleted)} stale files deleted"
    return Outcome("done", detail)
