"""Recipes: the declarative YAML a user writes, validated into typed settings.

Validation errors are the first thing a new user sees, so each one is a single line that names the
file, the line and the field (`recipes/x.yaml:7: precision: must be one of auto, fp16, bf16, fp32, fp8 (got
'half')`). We get line numbers by composing the YAML into nodes (which keep their marks) and
walking pydantic's error location through them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from artifact_format.vocab import (
    DEFAULT_SHARD_SIZE,
    Mode,
    RecipePrecision,
    check_precision_overrides,
    parse_size,
)
from packager.errors import RecipeError
from packager.settings import build_dir
from packager.source import edges
from packager.source.recipe_sections import (
    DEFAULT_STORE,
    HUB_REPO_RE,
    Components,
    Deploy,
    Downloadable,
    Image,
    Lora,
    Publish,
    Store,
    Strict,
    Volume,
    Worker,
    one_kind,
)

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,63}$"


# A recipe is a page of settings: anything bigger is a mistake or an attack, refused before parsing.
MAX_RECIPE_BYTES = 1024 * 1024


# YAML aliases let a few lines stand for billions of nodes; a recipe never needs more than this.
MAX_YAML_NODES = 100_000


class Source(Downloadable):
    """Where the weights come from: exactly one of `repo`, `path`, `file` or `url`."""

    repo: str | None = Field(default=None, pattern=HUB_REPO_RE)
    revision: str = "main"
    variant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    path: str | None = None
    file: str | None = None
    # The diffusers config a single-file checkpoint follows: a hub repo id, or a local diffusers
    # folder (only its configs and tokenizer are read).
    config: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        kind = one_kind(self, ("repo", "path", "file", "url"))
        if kind in ("file", "url") and not self.config:
            raise ValueError("a single-file checkpoint needs `config` (a hub repo id or a local folder)")
        if kind != "url" and self.token_env:
            raise ValueError("`token_env` applies to `url` sources only")
        if kind != "repo" and self.variant:
            raise ValueError("`variant` applies to hub repos only")
        return self

    @property
    def kind(self) -> Literal["hub", "path", "file", "url"]:
        if self.repo:
            return "hub"
        if self.path:
            return "path"
        if self.file:
            return "file"
        return "url"


class Recipe(Strict):
    name: str = Field(pattern=NAME_RE)
    source: Source
    precision: RecipePrecision = "auto"
    # A component's precision, or fnmatch patterns of tensor names within one:
    # {text_encoder_2: fp32, transformer: {"*norm*": fp32}}.
    precision_overrides: dict[str, str | dict[str, str]] = Field(default_factory=dict)
    # Largest weight file (tensor bytes): GB = 10^9, GiB = 2^30, also MB/MiB/KB/KiB.
    shard_size: str = DEFAULT_SHARD_SIZE
    fp16_overflow: Literal["fail", "keep_fp32"] = "fail"
    pipeline: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    scheduler: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    components: Components = Components()
    # Fused into the weights in this order; each is locked by its sha256 like the source.
    loras: tuple[Lora, ...] = ()
    mode: Mode = "baked"
    store: Store = Store()
    image: Image = Image()
    volume: Volume = Volume()
    publish: Publish | None = None
    worker: Worker = Worker()
    deploy: Deploy = Deploy()

    # Not part of the YAML: where the recipe was read from (for relative paths and the lock).
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("shard_size")
    @classmethod
    def _shard_size(cls, value: str) -> str:
        parse_size(value)  # its ValueError says what a size looks like
        return value

    @field_validator("precision_overrides")
    @classmethod
    def _overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        for comp in value:
            if not re.match(r"^[A-Za-z0-9_]+$", comp):
                raise ValueError(f"not a component name: {comp!r}")
        check_precision_overrides(value)
        return value

    @model_validator(mode="after")
    def _cached_needs_publish(self) -> Recipe:
        if self.mode == "cached" and self.publish is None:
            raise ValueError(
                "mode: cached needs a `publish: {repo: org/name}` section (the repo to serve from)"
            )
        return self

    def packing_settings(self) -> dict[str, Any]:
        """The settings that change the artifact's bytes (hashed into the lock's fingerprint)."""
        return {
            "precision": self.precision,
            "precision_overrides": {
                k: v if isinstance(v, str) else dict(sorted(v.items()))
                for k, v in sorted(self.precision_overrides.items())
            },
            "shard_size": parse_size(self.shard_size),
            "fp16_overflow": self.fp16_overflow,
            "pipeline": self.pipeline,
            "scheduler": self.scheduler,
            "drop": list(self.components.drop),
        }


class LoadedRecipe(BaseModel):
    """A validated recipe plus the file it came from."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    recipe: Recipe
    path: Path

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def resolve(self, value: str) -> Path:
        """A path from the recipe, relative to the recipe's folder unless absolute."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def store_uri(self) -> str:
        """The store as a URI: s3:// as written, a local directory resolved to an absolute path.

        The embedded default (`build/store`) lives in the build directory (PACKAGER_BUILD_DIR),
        not beside the recipe, so every recipe shares one local store unless it names its own.
        """
        uri = self.recipe.store.uri
        if uri.startswith("s3://"):
            return uri
        if uri == DEFAULT_STORE:
            return str((build_dir() / "store").resolve())
        return str(self.resolve(uri).resolve())


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read and validate a recipe; any problem raises RecipeError with one `file:line: field: why`."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc.__class__.__name__})") from None
    return LoadedRecipe(recipe=parse_recipe(text, str(path)), path=path)


def parse_recipe(text: str, filename: str = "<recipe>") -> Recipe:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"{filename}:1: a recipe is at most {MAX_RECIPE_BYTES // 1024} KiB; this one is larger"
        )
    node, data = _compose(text, filename)
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise RecipeError(f"{filename}:1: a recipe must be a mapping of fields (got {kind})")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(err["loc"])
        line = _line_of(node, loc, key=err["type"] == "extra_forbidden")
        field = ".".join(edges.clip(p, 40).strip("'") for p in loc) or "recipe"
        raise RecipeError(f"{filename}:{line}: {field}: {_message(err)}") from None


def _compose(text: str, filename: str) -> tuple[Any, Any]:
    """The YAML's node tree and its data, after the checks that must come before construction:
    a bounded expansion of aliases and no duplicate keys (YAML keeps the last one silently)."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is not None:
            _check_nodes(node, filename)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise RecipeError(
            f"{filename}:{line}: not valid YAML: {edges.clip(problem, 80).strip(chr(39))}"
        ) from None
    except (ValueError, TypeError, RecursionError) as exc:  # odd scalars PyYAML cannot construct
        raise RecipeError(f"{filename}:1: not valid YAML: {exc.__class__.__name__}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return node, data


def _check_nodes(root: Any, filename: str) -> None:
    """Refuse duplicate mapping keys, and trees whose aliases expand past MAX_YAML_NODES nodes.

    The expanded size is counted per node once (memoised), so the count itself stays linear in
    the document however deep the aliases nest.
    """
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a recursive alias counts once instead of looping
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in seen:
                        raise RecipeError(
                            f"{filename}:{key.start_mark.line + 1}: duplicate key {edges.clip(key.value, 40)}"
                        )
                    seen.add(key.value)
                total += size(key) + size(value)
                if total > MAX_YAML_NODES:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item)
                if total > MAX_YAML_NODES:
                    break
        if total > MAX_YAML_NODES:
            raise RecipeError(
                f"{filename}:{node.start_mark.line + 1}: YAML aliases expand past {MAX_YAML_NODES} nodes"
            )
        sizes[id(node)] = total
        return total

    size(root)


def _message(err: Any) -> str:
    kind = err["type"]
    got = err.get("input")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = expected.replace("'", "").replace(" or ", ", ")
        return f"must be one of {choices} (got {_short(got)})"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "is required"
    if kind == "string_pattern_mismatch":
        return f"invalid value {_short(got)}"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")[:300]
    msg = str(err["msg"])[:300]
    return f"{msg[0].lower()}{msg[1:]} (got {_short(got)})"


def _short(value: Any) -> str:
    return edges.clip(value)


def _line_of(node: Any, loc: tuple[Any, ...], *, key: bool) -> int:
    """1-based line of the YAML node at `loc` (the key itself for unknown fields)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    is_last = i == len(loc) - 1
                    node = k if (key and is_last) else v
                    line = node.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def dump_normalised(loaded: LoadedRecipe) -> dict[str, Any]:
    """The recipe with every default filled in, as `packager validate` prints it."""
    data = loaded.recipe.model_dump(mode="json")
    data["store"]["uri"] = loaded.store_uri()
    src = data["source"]
    for key in ("path", "file"):
        if src.get(key):
            src[key] = _absolute(loaded, src[key], f"source.{key}")
    for i, lora in enumerate(data["loras"]):
        if lora.get("path"):
            lora["path"] = _absolute(loaded, lora["path"], f"loras.{i}.path")
    if src.get("config") and not _looks_like_repo_id(src["config"], loaded):
        src["config"] = _absolute(loaded, src["config"], "source.config")
    return {k: v for k, v in data.items()}


def _absolute(loaded: LoadedRecipe, value: str, field: str) -> str:
    """The recipe's path made absolute, symlinks followed; a symlink loop is the recipe's error."""
    try:
        return str(loaded.resolve(value).resolve())
    except (RuntimeError, OSError):  # Python 3.11 reports a loop as RuntimeError, 3.13 as OSError
        raise RecipeError(
            f"{loaded.path}: {field}: {edges.clip(value, 80)} is a symlink loop (or cannot be read)"
        ) from None


def _looks_like_repo_id(value: str, loaded: LoadedRecipe) -> bool:
    return bool(re.match(HUB_REPO_RE, value)) and not loaded.resolve(value).exists()
