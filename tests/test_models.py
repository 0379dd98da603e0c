import pytest

from persona import models
from persona.errors import PersonaError


def _fake_hf_snapshot(cache, repo, files):
    folder = cache / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / "0123456789abcdef"
    for f in files:
        (snap / f).parent.mkdir(parents=True, exist_ok=True)
        (snap / f).write_text("{}")
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text("0123456789abcdef")
    return snap


def test_every_model_is_described():
    for m in models.REGISTRY.values():
        assert m.title and m.licence and m.stages
        assert m.repos or m.url, m.key
        fetch = m.fetch_command()
        assert (m.repos and f"hf download {m.repos[0]}" in fetch) or (m.url and m.url in fetch and m.env in fetch), fetch
        assert m.env.startswith("PERSONA_")


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = models.spec("vocos")
    cached = _fake_hf_snapshot(tmp_path / "hub", spec.repos[0], spec.required)
    assert models.locate("vocos") == cached  # the HF cache
    env_dir = tmp_path / "env"
    for f in spec.required:
        (env_dir / f).parent.mkdir(parents=True, exist_ok=True)
        (env_dir / f).write_text("x")
    monkeypatch.setenv(spec.env, str(env_dir))
    assert models.locate("vocos") == env_dir  # env beats the cache
    ws_dir = tmp_path / "ws"
    ws_dir.mkdir()
    for f in spec.required:
        (ws_dir / f).write_text("x")
    assert models.locate("vocos", models={"vocos": str(ws_dir)}) == ws_dir  # [models] beats env
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    for f in spec.required:
        (explicit / f).write_text("x")
    assert models.locate("vocos", explicit=explicit, models={"vocos": str(ws_dir)}) == explicit


def test_missing_model_says_how_to_fetch(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("PERSONA_FLUX", raising=False)
    with pytest.raises(PersonaError) as e:
        models.locate("flux")
    text = str(e.value)
    assert "hf download black-forest-labs/FLUX.1-dev" in text and "persona doctor" in text


def test_incomplete_folder_is_reported(tmp_path):
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "model_index.json").write_text("{}")
    found = models.find("flux", explicit=tmp_path / "flux")
    assert found.problems and "transformer/config.json" in found.problems[0]
    with pytest.raises(PersonaError, match="lacks"):
        models.locate("flux", explicit=tmp_path / "flux")
    with pytest.raises(PersonaError, match="does not exist"):
        models.locate("flux", explicit=tmp_path / "nowhere")


def test_tiny_models_resolve_through_models_table(tiny_models, own_config, monkeypatch):
    table = {k: str(v) for k, v in tiny_models.items()}
    for key in tiny_models:
        if models.spec(key).runs_code:  # FILM's TorchScript: refused from a pack, honoured when trusted
            with pytest.raises(models.CodeRefused, match="--trust-pack"):
                models.locate(key, models=table)
            monkeypatch.setenv(models.TRUST_ENV, "1")
            assert models.locate(key, models=table) == tiny_models[key]
            monkeypatch.delenv(models.TRUST_ENV)
            own_config(models={key: tiny_models[key]})
            assert models.locate_entry(key, models=table).source == "user config"
        else:
            assert models.locate(key, models=table) == tiny_models[key]


def test_unknown_key():
    with pytest.raises(PersonaError, match="unknown model key"):
        models.spec("nope")
