"""Recipes are data: every shipped recipe validates against the settings of the verb it configures."""

import importlib

import pytest
from pydantic import BaseModel, ConfigDict

from persona.config import list_recipes, load_recipe, prompt_text, recipes_root, resolve_settings
from persona.errors import PersonaError

# recipes/<kind>/ -> the settings model (module:attribute) its TOML files configure.
RECIPE_SETTINGS: dict[str, str] = {
    "render": "persona.inference.plan:RenderSettings",
    "voice": "persona.train.voice:VoiceSettings",
    "ingest-voice": "persona.data.voice:VoiceIngestSettings",
    "lora": "persona.train.lora:LoraSettings",
    "ingest-images": "persona.data.images:ImageSettings",
    "ingest-presenter": "persona.data.presenter:PresenterSettings",
}


def _shipped():
    root = recipes_root()
    return [(p.parent.name, p.stem) for p in sorted(root.glob("*/*.toml"))]


def test_every_recipe_folder_has_settings():
    kinds = {p.name for p in recipes_root().iterdir() if p.is_dir() and p.name not in ("prompts", "__pycache__")}
    assert kinds <= set(RECIPE_SETTINGS), f"register settings for {kinds - set(RECIPE_SETTINGS)}"


@pytest.mark.parametrize("kind, name", _shipped())
def test_shipped_recipe_validates(kind, name):
    module, attr = RECIPE_SETTINGS[kind].split(":")
    cls = getattr(importlib.import_module(module), attr)
    values, _ = load_recipe(kind, name)
    settings = resolve_settings(cls, kind, name)
    for key, value in values.items():
        got = getattr(settings, key)
        assert _applied(got.model_dump() if isinstance(got, BaseModel) else got, value), (key, value, got)


def _applied(got, value) -> bool:
    """Whether the recipe's `value` shows in the settings: a table's keys (recursively), else equal."""
    if isinstance(value, dict) and isinstance(got, dict):
        return all(k in got and _applied(got[k], v) for k, v in value.items())
    return got == value


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = 16
    lr: float = 1e-4
    resolutions: list[int] = [1024]


def test_defaults_recipe_overrides(tmp_path):
    recipe = tmp_path / "mine.toml"
    recipe.write_text("rank = 32\nresolutions = [512, 768]\n")
    s = resolve_settings(Settings, "lora", str(recipe), {"lr": 3e-4, "rank": None})
    assert (s.rank, s.lr, s.resolutions) == (32, 3e-4, [512, 768])


def test_unknown_recipe_key_names_file_and_valid_keys(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text("rnak = 32\n")
    with pytest.raises(PersonaError) as e:
        resolve_settings(Settings, "lora", str(recipe))
    assert "bad.toml" in str(e.value) and "rnak" in str(e.value) and "rank" in str(e.value)


def test_unknown_recipe_name():
    with pytest.raises(PersonaError, match="no lora recipe named"):
        resolve_settings(Settings, "lora", "does-not-exist")


def test_prompt_override(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "custom.txt").write_text("mine")
    assert prompt_text("custom", tmp_path)[0] == "mine"
    with pytest.raises(PersonaError):
        prompt_text("nothing-here", tmp_path)
    assert {"tiny-cpu", "flux-dev-12gb", "flux-dev-24gb"} <= set(list_recipes("lora"))


@pytest.mark.parametrize("have, voice, render", [
    (None, None, "cpu"), (8.0, "f5-12gb", "12gb"), (11.7, "f5-12gb", "12gb"), (15.6, "f5-12gb", "16gb"),
    (23.6, "f5-24gb", "24gb"), (47.5, "f5-24gb", "48gb"), (79.2, "f5-80gb", "80gb"), (139.8, "f5-80gb", "80gb"),
])
def test_recipes_picked_by_gpu_memory_exist(monkeypatch, have, voice, render):
    """The verbs pick a shipped recipe by the GPU's memory (a card reports a little less than it is
    sold as); every name they can pick is a shipped recipe."""
    from persona.inference import plan
    from persona.train import voice as train_voice

    for module in (plan, train_voice):
        monkeypatch.setattr(module, "gpu_memory", lambda: (have, "test GPU" if have else None))
    assert train_voice.auto_recipe() == voice and plan.detect_profile() == render
    assert voice is None or voice in list_recipes("voice")
    assert render in list_recipes("render")
