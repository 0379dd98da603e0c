import datetime as dt
from pathlib import Path

import pytest

from persona.errors import ConsentMissing, PersonaError
from persona.workspace import Consent, Workspace, token_from_name, token_problem


def test_token_from_name():
    assert token_from_name("Michael Pound") == "MichaelPound"
    assert token_from_name("  jean-luc picard ") == "JeanLucPicard"
    single = token_from_name("Madonna")
    assert single != "Madonna" and token_problem(single) is None
    assert token_problem("rose") is not None  # a dictionary word
    assert token_problem("two words") is not None
    assert token_problem("MichaelPound") is None


def test_create_and_reload(tmp_path):
    consent = Consent(person="Michael Pound", granted_by="Michael Pound", date=dt.date(2025, 5, 1), scope="edu")
    ws = Workspace.create(tmp_path / "mp", "Michael Pound", consent=consent)
    again = Workspace(tmp_path / "mp")
    assert again.pack.token == "MichaelPound"
    assert again.pack.consent.date == dt.date(2025, 5, 1)
    assert again.require_consent("training") == consent
    with pytest.raises(PersonaError, match="already holds"):
        Workspace.create(tmp_path / "mp", "Michael Pound")
    assert ws.root == again.root


def test_find_searches_upwards(tmp_path):
    Workspace.create(tmp_path / "a", "Ada Lovelace")
    deep = tmp_path / "a" / "renders" / "x"
    deep.mkdir(parents=True)
    assert Workspace.find(start=deep).root == (tmp_path / "a").resolve()
    with pytest.raises(PersonaError, match="no persona.toml"):
        Workspace.find(start=tmp_path)
    with pytest.raises(PersonaError, match="not a persona workspace"):
        Workspace.find(explicit=tmp_path)


def test_consent_required(tmp_path):
    ws = Workspace.create(tmp_path / "w", "Ada Lovelace")
    with pytest.raises(ConsentMissing, match="consent"):
        ws.require_consent("training")


def test_update_keeps_comments_and_validates(tmp_path):
    ws = Workspace.create(tmp_path / "w", "Ada Lovelace")
    text = ws.manifest_path.read_text().replace('name = "Ada Lovelace"', '# my note\nname = "Ada Lovelace"')
    ws.manifest_path.write_text(text)
    ws = Workspace(ws.root)
    ws.update("datasets", {"images": "datasets/images"})
    ws.update("lora", {"path": "lora/a.safetensors", "strength": 1.2})
    text = ws.manifest_path.read_text()
    assert "# my note" in text and 'images = "datasets/images"' in text
    assert Workspace(ws.root).pack.lora.strength == 1.2
    with pytest.raises(PersonaError, match="strength"):
        ws.update("lora", {"strength": "strong"})
    assert Workspace(ws.root).pack.lora.strength == 1.2  # the invalid update was not written
    ws.update("lora", {"strength": None})  # None removes a key
    assert Workspace(ws.root).pack.lora.strength == 1.0


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda t: t + '\n[consent]\nperson = "A"\ngranted_by = "A"\nscope = "x"\ndate = "someday"\n', "date"),
        (lambda t: t.replace('token = "AdaLovelace"', 'token = "the"'), "token"),
        (lambda t: t + "\n[lora]\nstrength = 1.0\n", "path"),
        (lambda t: t + "\ncolour = 3\n", "colour"),
    ],
)
def test_broken_manifest_names_the_field(tmp_path, edit, field):
    ws = Workspace.create(tmp_path / "w", "Ada Lovelace")
    ws.manifest_path.write_text(edit(ws.manifest_path.read_text()))
    with pytest.raises(PersonaError) as e:
        Workspace(ws.root)
    message = str(e.value)
    assert field in message and "persona.toml" in message and "\n" not in message


def test_invalid_toml_syntax(tmp_path):
    ws = Workspace.create(tmp_path / "w", "Ada Lovelace")
    ws.manifest_path.write_text("name = \n")
    with pytest.raises(PersonaError, match="not valid TOML"):
        Workspace(ws.root)


def _workspace(tmp_path):
    consent = Consent(person="Ada", granted_by="Ada", date=dt.date(2025, 5, 1), scope="tests")
    return Workspace.create(tmp_path / "ada", "Ada Lovelace", consent=consent)


@pytest.mark.parametrize("section, values, says", [
    ("lora", {"path": "/etc/passwd"}, "[lora] path = '/etc/passwd' points outside the workspace"),
    ("lora", {"path": "../../lora.safetensors"}, "points outside the workspace"),
    ("lora", {"path": "lora/notes.txt"}, "must be a .safetensors file"),
    ("datasets", {"images": "/tmp"}, "[datasets] images = '/tmp' points outside the workspace"),
    ("voice", {"checkpoint": "voice/model.safetensors", "vocab": "voice/vocab.txt",
               "reference_audio": "/etc/hostname", "reference_text": "Hi."}, "points outside the workspace"),
    ("voice", {"checkpoint": "voice/model.pkl", "vocab": "voice/vocab.txt",
               "reference_audio": "voice/ref.wav", "reference_text": "Hi."}, "must be a .safetensors or .pt file"),
    ("lora", {"path": "lora/x.safetensors", "strength": -5}, "[lora] strength: Input should be greater than or equal to 0"),
    ("lora", {"path": "lora/x.safetensors", "strength": 7}, "less than or equal to 2"),
    ("lora", {"path": "lora/x.safetensors", "rank": 0}, "[lora] rank"),
    ("models", {"flx": "/models/flux"}, "[models] has unknown keys: flx"),
])
def test_pack_paths_and_numbers_are_checked_on_load(tmp_path, section, values, says):
    import tomlkit

    ws = _workspace(tmp_path)
    doc = tomlkit.parse(ws.manifest_path.read_text())
    doc[section] = values
    ws.manifest_path.write_text(tomlkit.dumps(doc))
    with pytest.raises(PersonaError) as e:
        Workspace(ws.root)
    line = str(e.value)
    assert says in line and "\n" not in line and line.startswith(str(ws.manifest_path))
    fresh = _workspace(tmp_path / "b")
    before = fresh.manifest_path.read_text()
    with pytest.raises(PersonaError, match="persona.toml"):  # a stage writing it is refused the same way
        fresh.update(section, values)
    assert fresh.manifest_path.read_text() == before


def test_a_link_out_of_the_workspace_is_refused(tmp_path):
    ws = _workspace(tmp_path)
    (ws.root / "lora").mkdir()
    (ws.root / "lora" / "x.safetensors").symlink_to("/etc/passwd")
    with pytest.raises(PersonaError, match="outside the workspace"):
        ws.update("lora", {"path": "lora/x.safetensors"})
    (ws.root / "lora" / "d.safetensors").mkdir()
    with pytest.raises(PersonaError, match="must be a file"):
        ws.update("lora", {"path": "lora/d.safetensors"})


def test_models_paths_are_relative_to_the_workspace(tmp_path, monkeypatch):
    ws = _workspace(tmp_path)
    ws.update("models", {"flux": "models/flux", "upscaler": "~/sr.pth", "wan-i2v": "/abs/wan"})
    (ws.root / "sub").mkdir()
    monkeypatch.chdir(ws.root / "sub")
    again = Workspace.find()
    assert again.pack.models["flux"] == str(ws.root / "models" / "flux")
    assert again.pack.models["upscaler"] == str(Path.home() / "sr.pth")
    assert again.pack.models["wan-i2v"] == "/abs/wan"
    assert "models/flux" in ws.manifest_path.read_text()  # the file keeps what the user wrote


def test_binary_manifest_is_one_line(tmp_path):
    ws = _workspace(tmp_path)
    ws.manifest_path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary")
    with pytest.raises(PersonaError) as e:
        Workspace(ws.root)
    assert str(e.value).startswith(f"{ws.manifest_path}: is not UTF-8 text") and "\n" not in str(e.value)
