"""`packager verify`: an artifact folder checked against its manifest, file by file."""

from __future__ import annotations

from pathlib import Path

import click

from artifact_format import manifest as mf
from packager.output import emit, json_option


@click.command()
@click.argument("artifact_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@json_option
def verify(artifact_dir: Path, as_json: bool) -> None:
    """Check every file of the artifact in DIR against its manifest (sizes and sha256)."""
    from packager.convert.verify import verify_artifact

    manifest = verify_artifact(artifact_dir, full=True)
    emit(
        {
            "dir": str(artifact_dir),
            "artifact_id": mf.artifact_id_of(artifact_dir),
            "files": len(manifest.files),
            "bytes": manifest.total_bytes,
            "ok": True,
        },
        as_json,
    )
