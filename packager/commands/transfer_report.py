"""The report upload, pull and seed print: what moved where, or that nothing had to."""

from __future__ import annotations

from typing import Any

from artifact_format.vocab import short_id
from packager.output import emit, human_bytes


def report(verb: str, name: str, artifact_id: str, data: dict[str, Any], as_json: bool) -> None:
    data = {"name": name, "artifact_id": artifact_id, **data}
    if as_json:
        emit(data, True)
        return
    where = data.get("path_on_volume") or data["uri"]
    short = f"{name}/{short_id(artifact_id)}"
    if data["skipped_whole"]:
        text = f"{short}: already complete at {data['uri']} (nothing sent)"
    else:
        moved = "fetched" if verb == "pull" else "sent"
        text = (
            f"{short} → {where}\n"
            f"files  {data['files_sent']} {moved}, {data['files_skipped']} already there\n"
            f"bytes  {human_bytes(data['bytes_sent'])} {moved}"
        )
    emit(data, False, text)
