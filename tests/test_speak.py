import json
import subprocess
import sys

import pytest

from persona.errors import PersonaError
from persona.inference.speech import Voice, reference_text_for_f5, speak
from persona.media import probe


def test_reference_text_normalised():
    assert reference_text_for_f5("hello there") == "hello there. "
    assert reference_text_for_f5("Is it? ") == "Is it? "


def test_longer_text_gives_longer_speech(pack, tmp_path):
    short = speak(pack, "Hi.", tmp_path / "a.wav", steps=2)
    long = speak(pack, "This sentence is a good deal longer than the first one, so it lasts longer.",
                 tmp_path / "b.wav", steps=2)
    assert long["seconds"] > short["seconds"] > 0
    assert probe(tmp_path / "b.wav").sample_rate == 24000


def test_same_seed_same_take(pack):
    voice = Voice.from_workspace(pack)
    try:
        a, b = voice.say("Same words.", seed=3, steps=2), voice.say("Same words.", seed=3, steps=2)
    finally:
        voice.close()
    assert (a == b).all()


def test_speak_cli_json(pack, tmp_path):
    out = subprocess.run([sys.executable, "-m", "persona", "-w", str(pack.root), "speak", "Hello there.",
                          "-o", str(tmp_path / "x.wav"), "--steps", "2", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)  # nothing but the summary on stdout
    assert summary["seconds"] > 0 and (tmp_path / "x.wav").exists()


def test_refusals(make_workspace, pack, tmp_path):
    pack.update("consent", None)
    with pytest.raises(PersonaError, match="consent"):
        speak(pack, "Hi.", tmp_path / "a.wav")


def test_no_voice_points_to_train_voice(make_workspace, tmp_path):
    ws = make_workspace()
    with pytest.raises(PersonaError, match="train-voice"):
        speak(ws, "Hi.", tmp_path / "a.wav")
