"""Recipes: every shipped one validates; bad ones fail with one `file:line: field: why` line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packager.errors import RecipeError
from packager.source.recipe import load_recipe, parse_recipe
from tests.rig.cli import run_packager

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").rglob("*.yaml"))


def test_the_real_recipes_are_shipped() -> None:
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in SHIPPED}
    assert {
        "portraitplus.yaml",
        "sd-2-1-base.yaml",
        "anything-v3.yaml",
        "sdxl-base.yaml",
        "examples/tiny.yaml",
        "flux-schnell.yaml",
        "flux-dev.yaml",
        "sd3.5-medium.yaml",
        "pixart-sigma.yaml",
        "wan2.1-t2v-1.3b.yaml",
        "ltx-video.yaml",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path: Path) -> None:
    result = run_packager("validate", str(path), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == load_recipe(path).recipe.name
    assert data["precision"] in ("auto", "fp16", "bf16", "fp32", "fp8")
    assert data["shard_size"].endswith(("GB", "GiB", "MB", "MiB"))


def test_the_model_family_recipes_resolve_as_their_comments_say() -> None:
    for name, precision in (
        ("flux-schnell", "auto"),
        ("flux-dev", "fp8"),
        ("sd3.5-medium", "auto"),
        ("pixart-sigma", "auto"),
        ("wan2.1-t2v-1.3b", "auto"),
        ("ltx-video", "auto"),
    ):
        recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml").recipe
        assert recipe.precision == precision, name
        assert recipe.packing_settings()["shard_size"] == 5 * 10**9, name
        assert recipe.source.kind == "hub", name


def test_revision_variant_and_precision_are_separate() -> None:
    r = parse_recipe("name: x\nsource: {repo: a/b, revision: fp16, variant: fp16}\nprecision: bf16\n")
    assert (r.source.revision, r.source.variant, r.precision) == ("fp16", "fp16", "bf16")
    assert r.source.kind == "hub"


def test_minimal_recipe_gets_the_embedded_defaults(tmp_path: Path) -> None:
    recipe = tmp_path / "sub" / "m.yaml"
    recipe.parent.mkdir()
    recipe.write_text("name: x\nsource: {path: ./model}\n")
    loaded = load_recipe(recipe)
    assert loaded.recipe.precision == "auto"
    assert loaded.recipe.shard_size == "5GB"
    assert loaded.recipe.mode == "baked"
    assert loaded.recipe.store.uri == "build/store"
    assert loaded.resolve(loaded.recipe.source.path or "") == recipe.parent / "model"
    assert loaded.lock_path == recipe.parent / "m.lock"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: x\nsource: {path: .}\nprecision: half\n",
            "bad.yaml:3: precision: must be one of auto, fp16, bf16, fp32, fp8 (got 'half')",
        ),
        (
            "name: x\nsource: {path: .}\nshard_size: 5XB\n",
            "bad.yaml:3: shard_size: not a size (got '5XB'); write e.g. 5GB (10^9 bytes), 4GiB (2^30), 500MB",
        ),
        (
            "name: x\nsource: {path: .}\nprecision_overrides:\n  transformer: {'*norm*': fp8}\n",
            "bad.yaml:4: precision_overrides: transformer.*norm*: must be one of fp16, bf16, fp32 "
            "(got 'fp8')",
        ),
        ("name: x\nsource: {path: .}\ncolour: red\n", "bad.yaml:3: colour: unknown field"),
        ("name: Bad Name\nsource: {path: .}\n", "bad.yaml:1: name: invalid value 'Bad Name'"),
        ("source: {path: .}\n", "bad.yaml:1: name: is required"),
        (
            "name: x\nsource:\n  repo: a/b\n  path: .\n",
            "bad.yaml:3: source: give exactly one of repo, path, file or url (got repo, path)",
        ),
        (
            "name: x\nsource: {path: .}\nimage:\n  push: maybe\n",
            "bad.yaml:4: image.push: input should be a valid boolean",
        ),
        (
            "name: x\nsource: {path: .}\ncomponents:\n  drop: [safety_checker, 'bad name']\n",
            "bad.yaml:4: components.drop: not a component name: 'bad name'",
        ),
        ("name: x\nsource: {file: a.ckpt}\n", "bad.yaml:2: source: a single-file checkpoint needs `config`"),
        ("- just\n- a list\n", "bad.yaml:1: a recipe must be a mapping of fields (got list)"),
        ("name: [unclosed\n", "bad.yaml:2: not valid YAML"),
        ("", "bad.yaml:1: a recipe must be a mapping of fields (got empty)"),
    ],
)
def test_bad_recipes_fail_with_one_line_naming_file_line_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = run_packager("validate", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("packager: error: ")
    assert expected in lines[0].replace(str(tmp_path) + "/", "")


def test_missing_recipe_file_is_one_line(tmp_path: Path) -> None:
    result = run_packager("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"packager: error: {tmp_path / 'nope.yaml'}: no such recipe file"


def test_secrets_are_not_recipe_fields() -> None:
    with pytest.raises(RecipeError, match=r"store\.aws_secret_access_key: unknown field"):
        parse_recipe("name: x\nsource: {path: .}\nstore: {uri: s3://bucket/p, aws_secret_access_key: s}\n")


# Values a user might plausibly type, and some they might not.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["fp16", "bf16", "fp32", "baked", "volume", "s3://b/p", "a/b", "main", "..", "x"]),
)
_keys = st.sampled_from(
    [
        "name",
        "source",
        "precision",
        "fp16_overflow",
        "pipeline",
        "scheduler",
        "components",
        "mode",
        "store",
        "image",
        "volume",
        "worker",
        "deploy",
        "repo",
        "path",
        "drop",
        "uri",
        "limits",
        "defaults",
        "bogus",
    ]
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(_keys, _values, max_size=6))
def test_any_yaml_document_either_validates_or_fails_with_one_line(doc: dict[str, object]) -> None:
    text = yaml.safe_dump(doc)
    try:
        parse_recipe(text, "fuzz.yaml")
    except RecipeError as exc:
        message = str(exc)
        assert "\n" not in message
        assert message.startswith("fuzz.yaml:")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_never_raises_anything_but_recipe_error(text: str) -> None:
    message = ""
    try:
        parse_recipe(text, "fuzz.yaml")
    except RecipeError as exc:
        message = str(exc)
    assert "\n" not in message
