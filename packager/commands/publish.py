"""publish: the artifact as a tagged commit of the recipe's hub repo, for RunPod's cached models."""

from __future__ import annotations

import click

from artifact_format.vocab import short_id
from packager.commands.options import frozen_option, recipe_argument
from packager.image.naming import model_reference
from packager.output import emit, human_bytes, json_option, progress_enabled


@click.command()
@recipe_argument
@frozen_option
@json_option
def publish(recipe_file: str, frozen: bool, as_json: bool) -> None:
    """Publish RECIPE's artifact to its `publish.repo` and record the commit in the lock.

    One commit per artifact, whose tree is exactly the artifact (stale files of an earlier one are
    deleted), tagged `artifact-<id12>`. When the tag already holds this artifact nothing is sent.
    The token comes from the variable `publish.token_env` names (HF_TOKEN by default) and needs
    write access; it is never written anywhere.
    """
    from packager.pipeline.run import Run
    from packager.pipeline.stages import ensure_artifact, ensure_lock
    from packager.publish.stage import ensure_published, publish_section, token_for
    from packager.source.recipe import load_recipe

    loaded = load_recipe(recipe_file)
    token_for(publish_section(loaded))  # a missing token fails now, not after a conversion
    run = Run(loaded, "cached", frozen=frozen, quiet=as_json, progress=progress_enabled(as_json))
    ensure_lock(run)
    ensure_artifact(run)
    outcome = ensure_published(run)
    assert run.lock is not None
    assert run.lock.published is not None
    sent = run.published
    files_sent, bytes_sent = (sent.files_sent, sent.bytes_sent) if sent else (0, 0)
    repo, commit = run.lock.published["repo"], run.lock.published["commit"]
    data = {
        "recipe": run.name,
        "artifact_id": run.artifact_id,
        "repo": repo,
        "commit": commit,
        "tag": f"artifact-{short_id(run.artifact_id)}",
        "status": outcome.status,
        "files_sent": files_sent,
        "bytes_sent": bytes_sent,
        "deleted": list(sent.deleted) if sent else [],
        "model_reference": model_reference(repo, commit),
    }
    text = f"{repo}@{commit} ({data['tag']}): " + (
        "already published, nothing sent"
        if outcome.moved_nothing
        else f"{files_sent} files, {human_bytes(bytes_sent)} sent"
    )
    emit(data, as_json, text)
