import datetime as dt

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
