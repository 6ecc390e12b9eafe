"""What `precision` resolves to for a locked source, per component, said before anything converts.

`convert` prints the same line from the plan it converts with; `lock` and `validate` build that plan
from the locked configs where they already are on this machine (`lock` has just downloaded them),
so the user sees what `auto` came to, and which keep-lists apply, without a conversion.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from artifact_format.vocab import MODEL_INDEX
from packager.errors import PackagerError
from packager.source.inputs import input_for

if TYPE_CHECKING:
    from packager.source.lock import Lock
    from packager.source.recipe import LoadedRecipe


def precision_line(loaded: LoadedRecipe, lock: Lock) -> str | None:
    """`precision: auto → bf16 (text_encoder=bf16, …; text_encoder_2 (T5EncoderModel) keeps wo in
    fp32)`, or None when the locked configs are not on this machine or do not make a plan (convert
    will say why)."""
    from packager.convert.precision import plan_precision

    root = input_for(loaded).config_root(lock)
    configs = [rel for rel in lock.files if rel == MODEL_INDEX or rel.endswith("/config.json")]
    if root is None or MODEL_INDEX not in configs or not all((root / rel).is_file() for rel in configs):
        return None
    recipe = loaded.recipe
    try:
        index = json.loads((root / MODEL_INDEX).read_bytes())
        plan = plan_precision(
            index, root, recipe.precision, recipe.precision_overrides, set(recipe.components.drop)
        )
    except (PackagerError, OSError, ValueError):
        return None
    return plan.summary()
