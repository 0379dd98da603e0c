"""Recipes and prompt files: typed settings with defaults, overridden by a recipe, then by flags.

A verb's settings are a pydantic model whose fields are the verb's arguments (extra keys forbidden).
A recipe (`recipes/<kind>/<name>.toml`, shipped as package data, or any TOML file) only overrides
fields; command-line flags override the recipe. Every shipped recipe is validated by a test.
"""

from __future__ import annotations

import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from persona.errors import PersonaError

S = TypeVar("S", bound=BaseModel)


def recipes_root() -> Path:
    return Path(str(files("persona.recipes")))


def list_recipes(kind: str) -> list[str]:
    folder = recipes_root() / kind
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def recipe_file(kind: str, name: str) -> Path:
    """A shipped recipe by name (e.g. 'flux-dev-24gb'), or a path to a TOML file."""
    candidate = Path(name)
    if candidate.suffix == ".toml" and candidate.exists():
        return candidate
    shipped = recipes_root() / kind / f"{name}.toml"
    if shipped.exists():
        return shipped
    known = ", ".join(list_recipes(kind)) or "none"
    raise PersonaError(f"no {kind} recipe named {name!r}", file=candidate if candidate.suffix else None,
                       fix=f"use one of: {known}, or a path to a .toml file")


def load_recipe(kind: str, name: str) -> tuple[dict[str, Any], Path]:
    path = recipe_file(kind, name)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), path
    except tomllib.TOMLDecodeError as e:
        raise PersonaError(f"is not valid TOML ({e})", file=path, fix="fix the syntax at that line") from None


def resolve_settings(cls: type[S], kind: str, recipe: str | None = None, overrides: dict[str, Any] | None = None) -> S:
    """Defaults of `cls` <- recipe values <- overrides (None values are ignored; tables such as
    render's [video] are merged key by key)."""
    values: dict[str, Any] = {}
    source: Path | None = None
    if recipe:
        values, source = load_recipe(kind, recipe)
    values = _merge(values, overrides or {})
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        fields = ", ".join(cls.model_fields)
        fix = f"valid settings are: {fields}" if first["type"] == "extra_forbidden" else "correct the value"
        raise PersonaError(f"setting {field}: {first['msg']}", file=source, fix=fix) from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict):
            out[k] = _merge(out[k] if isinstance(out.get(k), dict) else {}, v)
        elif v is not None:
            out[k] = v
    return out


def prompt_text(name: str, workspace_root: Path | None = None) -> tuple[str, Path]:
    """A prompt file: the workspace's `prompts/<name>.txt` if the user made one, else the shipped one."""
    candidates = []
    if workspace_root is not None:
        candidates.append(Path(workspace_root) / "prompts" / f"{name}.txt")
    candidates.append(recipes_root() / "prompts" / f"{name}.txt")
    for path in candidates:
        if path.exists():
            return path.read_text(encoding="utf-8"), path
    raise PersonaError(f"no prompt file named {name}.txt", fix=f"create {candidates[0]}")
