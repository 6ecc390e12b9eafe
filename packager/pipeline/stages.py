"""The stages, one `ensure_<stage>(run) -> Outcome` each: the only place that decides skip or do.

`packager package` runs them in order; the single-stage commands (`upload`, `seed`, `render`,
`build`, ...) call the same functions, so a stage is skipped for the same reason whichever command
reaches it. Each check is the cheapest that can prove the stage's output exists: the lock knows
the artifact id, the store answers with one request, an image is found by its tag and labels.
"""

from __future__ import annotations

from artifact_format import manifest as mf
from artifact_format.vocab import short_id
from packager.convert.artifact import local_artifact
from packager.errors import ImageError
from packager.pipeline.artifact import materialise
from packager.pipeline.run import Outcome, Run

_NOT_BUILT = "(no image built: no Docker engine, or --image render)"


def ensure_lock(run: Run) -> Outcome:
    """The recipe's lock, fresh (re-locked on drift, refused under --frozen)."""
    from packager.source.drift import ensure_lock as fresh_lock

    run.lock = fresh_lock(run.loaded, frozen=run.frozen, quiet=run.quiet)
    return Outcome("fresh", (run.lock.source.get("commit") or run.lock.fingerprint)[:12])


def ensure_artifact(run: Run) -> Outcome:
    """An artifact for the lock exists: on local disk, in the store, or converted now."""
    assert run.lock is not None, "ensure_lock runs first"
    known = run.lock.artifact_id
    if known and local_artifact(run.name, known):
        return Outcome("skipped", f"artifact {short_id(known)} on local disk")
    if known and run.store.has_artifact(run.name, known):
        return Outcome("skipped", f"artifact {short_id(known)} in the store")
    run.use_artifact(materialise(run.loaded, lock=run.lock, quiet=run.quiet, verify=run.verify))
    assert run.artifact is not None
    return Outcome("done", f"converted to {short_id(run.artifact.id)}")


def ensure_upload(run: Run) -> Outcome:
    """The artifact is complete in the store (one HEAD when it already is)."""
    known = run.lock.artifact_id if run.lock is not None else None
    if run.artifact is None and known and run.store.has_artifact(run.name, known):
        return Outcome("skipped", "already in the store")
    if run.artifact is None:
        run.store.check()  # a wrong bucket or key fails here, not after a long conversion
    run.transfer = run.store.upload(run.artifact_bytes(), progress=run.shows_progress)
    run.bytes_uploaded += run.transfer.bytes_sent
    if run.transfer.skipped_whole:
        return Outcome("skipped", "already in the store")
    return Outcome("done", f"{run.transfer.files_sent} files, {run.transfer.bytes_sent} bytes")


def ensure_volume(run: Run) -> Outcome:
    """The artifact is on the recipe's network volume (`.ready` there), when the recipe names one."""
    from packager.store.seed import check_volume, is_seeded, seed_volume, volume_client, volume_target

    recipe = run.loaded.recipe
    if not recipe.volume.id:
        run.volume_path = str(mf.volume_path(recipe.volume.mount, recipe.name, run.artifact_id))
        return Outcome("skipped", "no volume.id in the recipe (workers pull from the store at start)")
    target = volume_target(run.loaded)
    client = volume_client(target)
    known = run.lock.artifact_id if run.lock is not None else None
    if known and is_seeded(client, target, run.name, known):
        run.volume_path = str(mf.volume_path(target.mount, recipe.name, known))
        return Outcome("skipped", "volume already has the artifact")
    if run.artifact is None:
        check_volume(client, target)  # a wrong volume or key fails here, not after a long conversion
    run.seeded = seed_volume(run.loaded, run.artifact_bytes(), progress=run.shows_progress, client=client)
    run.volume_path = run.seeded.path_on_volume
    run.bytes_uploaded += run.seeded.bytes_sent
    return Outcome("done", f"{run.seeded.bytes_sent} bytes to volume {recipe.volume.id}")


def ensure_image(run: Run) -> Outcome:
    """The image for the artifact and mode is built (and pushed when asked), or its context rendered."""
    from packager.image import build as image_build
    from packager.image import engine as image_engine
    from packager.image import push as image_push
    from packager.image.naming import image_tag
    from packager.image.render import default_context_dir, identity, plan, render

    recipe = run.loaded.recipe
    options = run.image
    policy = options.policy
    if policy != "render":
        # Before anything else: no engine should fail in a second, not after a long conversion.
        engine_error = image_engine.engine_problem()
        if engine_error and policy == "build":
            raise ImageError(engine_error)
        if engine_error:
            policy = "render"
    artifact_id = run.artifact_id
    tag = image_tag(recipe.image.repository, recipe.name, artifact_id, run.mode)
    run.image_tag = tag
    push = recipe.image.push if options.push is None else options.push
    artifact_uri = run.artifact_uri
    if policy != "render" and not options.no_cache:
        ident = identity(
            run.loaded, artifact_id, run.mode, artifact_uri=artifact_uri, base_image=options.base_image
        )
        existing = image_build.find_built_image(run.loaded, ident)
        if existing is not None:
            run.built = existing
            if push and not image_push.is_pushed(existing):
                run.built = image_push.push(existing, quiet=run.quiet or options.quiet_build)
                return Outcome("done", f"{tag} pushed (already built)")
            return Outcome("skipped", f"{tag} already built")
    manifest = run.manifest()
    if policy == "render" and not options.fresh_context:
        # The Dockerfile carries the artifact id and the worker code digest in its labels, so an
        # identical one means an identical context (contexts are replaced whole, never patched).
        context = default_context_dir(recipe.name, artifact_id, run.mode)
        wanted = plan(
            run.loaded,
            manifest,
            artifact_id,
            run.mode,
            artifact_uri=artifact_uri,
            base_image=options.base_image,
        ).text
        if (context / "Dockerfile").is_file() and (context / "Dockerfile").read_text() == wanted:
            run.rendered = None
            return Outcome(
                "skipped",
                f"context {context} up to date (no image built: no Docker engine, or --image render)",
            )
    artifact = run.artifact_bytes() if run.mode == "baked" else None
    run.rendered = render(
        run.loaded,
        artifact,
        manifest,
        artifact_id,
        run.mode,
        options.out_dir,
        artifact_uri=artifact_uri,
        base_image=options.base_image,
        pip_find_links=options.pip_find_links,
    )
    if policy == "render":
        return Outcome(
            "rendered", f"{run.rendered.context_dir} (no image built: no Docker engine, or --image render)"
        )
    run.built = image_build.build_context(
        run.loaded,
        run.rendered,
        push=push,
        network=options.network,
        no_cache=options.no_cache,
        quiet=run.quiet or options.quiet_build,
    )
    return Outcome("done", f"{tag} built{' and pushed' if run.built.pushed else ''}")


def lock_then_image(run: Run) -> Outcome:
    """The lock, then the image stage alone: all `render` and `build` need (the artifact only when baked)."""
    ensure_lock(run)
    return ensure_image(run)
