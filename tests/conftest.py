"""Shared fixtures: tiny models built once per session, synthetic footage, real media when present.

Tests run offline: HF_HUB_OFFLINE=1 makes any accidental download fail loudly.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from persona.progress import quiet_libraries  # noqa: E402

quiet_libraries()

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = Path(os.environ.get("PERSONA_SHARED_MEDIA", REPO.parent / "shared" / "media"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Every tiny model family, in the real on-disk layouts: {registry key: path for [models]}."""
    from persona import tiny

    return tiny.build_all(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def demo_footage(tmp_path_factory) -> dict:
    from persona.demo import make_footage

    return make_footage(tmp_path_factory.mktemp("footage"))


@pytest.fixture(autouse=True)
def own_config(tmp_path, monkeypatch):
    """Every test gets an empty user config of its own (never the developer's ~/.config/persona) and
    does not trust packs unless it says so. Returns a writer: own_config(models={...}, trust_pack=...)."""
    import tomlkit

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("PERSONA_TRUST_PACK", raising=False)
    for key in ("FILM", "LATENTSYNC", "SD_SCRIPTS"):
        monkeypatch.delenv(f"PERSONA_{key}", raising=False)

    def write(models: dict[str, str | Path] | None = None, trust_pack: bool | None = None) -> Path:
        from persona.models import user_config_path

        path = user_config_path()
        doc = tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
        if trust_pack is not None:
            doc["trust_pack"] = trust_pack
        if models:
            table = doc.setdefault("models", tomlkit.table())
            for k, v in models.items():
                table[k] = str(v)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tomlkit.dumps(doc))
        return path

    return write


@pytest.fixture
def make_workspace(tmp_path, tiny_models, own_config):
    """Factory: a workspace with consent and [models] pointing at the tiny models. The code-bearing
    ones (FILM's TorchScript) go into the user's own config, where persona honours them."""
    from persona.models import spec
    from persona.workspace import Consent, Workspace, slugify

    def make(name: str = "Test Person", consent: bool = True, models: bool = True) -> Workspace:
        c = Consent(person=name, granted_by=name, date=dt.date(2025, 5, 1), scope="tests") if consent else None
        ws = Workspace.create(tmp_path / slugify(name), name, consent=c)
        if models:
            # code-bearing models (FILM) come from the user's own config, never from a pack; and not the
            # random speaker encoder: voice decisions need Resemblyzer's real weights (tests of the
            # optional encoder set [models].speaker-embedding themselves)
            ws.update("models", {k: str(v) for k, v in tiny_models.items()
                                 if not spec(k).runs_code and k != "speaker-embedding"}, replace=True)
            own_config(models={k: v for k, v in tiny_models.items() if spec(k).runs_code})
        return ws

    return make


@pytest.fixture(scope="session")
def shared_media() -> Path:
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"real media not found at {SHARED_MEDIA} (../shared/media is absent on this machine)")
    return SHARED_MEDIA


@pytest.fixture
def pack(make_workspace, tiny_models):
    """A workspace whose [voice] is the tiny F5-TTS checkpoint with the f5-tts example reference clip
    and whose [lora] is a random tiny LoRA (the layouts `persona train-voice` / `train-lora` export)."""
    from persona import tiny

    ws = make_workspace()
    tiny.fill_pack(ws, tiny_models)
    return ws
