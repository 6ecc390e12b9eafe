"""What deploy remembers between runs: the ids of the endpoint and template it manages.

`x.yaml` → `x.deploy.json`, beside the lock, keyed by API base URL and mode. With the id a re-run
reads its endpoint directly instead of searching the account's list by name, and a renamed
endpoint is still the one this recipe manages. It holds ids and names only (never a key, env value
or secret reference); it is machine-local and git-ignored. A missing or unreadable file means
"search by name", never an error.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

Kind = Literal["endpoint", "template"]
VERSION = 1


def state_path(recipe_path: Path) -> Path:
    return recipe_path.with_suffix(".deploy.json")


def remembered(path: Path, base_url: str, mode: str, kind: Kind) -> str | None:
    """The id stored for this API, mode and kind, if any."""
    entry = _read(path).get(base_url, {}).get(mode, {}).get(kind)
    found = entry.get("id") if isinstance(entry, dict) else None
    return found if isinstance(found, str) and found else None


def remember(path: Path, base_url: str, mode: str, kind: Kind, *, id: str, name: str) -> None:
    data = _read(path)
    data.setdefault(base_url, {}).setdefault(mode, {})[kind] = {"id": id, "name": name}
    _write(path, data)


def _write(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a temp file beside it, then a rename."""
    data["version"] = VERSION
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == VERSION else {}
