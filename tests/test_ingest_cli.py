"""`persona ingest` as a user runs it: both sides from one command, and how it fails."""

import json
import subprocess
import sys

import numpy as np
import pytest


def run(ws, *args):
    return subprocess.run([sys.executable, "-m", "persona", "-w", str(ws.root), "ingest", *map(str, args)],
                          capture_output=True, text=True, timeout=900)


@pytest.fixture
def demo_recipes(tmp_path):
    images = tmp_path / "images.toml"
    images.write_text("min_face = 96\nsample_every = 0.5\nresolution = 512\ncount = 6\n")  # 360p demo faces
    voice = tmp_path / "voice.toml"
    voice.write_text("drop_truncated = false\nmin_asr_logprob = -1000.0\n")  # the tiny Whisper never stops
    return images, voice


def test_both_sides_from_the_demo_footage(make_workspace, demo_footage, demo_recipes):
    ws = make_workspace()
    files = demo_footage["files"]
    out = run(ws, files["lecture"], files["interview"], "--image-recipe", demo_recipes[0],
              "--voice-recipe", demo_recipes[1], "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["inputs"]["videos"] == 2 and summary["failed"] == {}
    assert summary["images"]["images"] >= 1 and summary["voice"]["clips"] >= 1
    assert summary["voice"]["target"] == "presence"  # the voice heard while the astronaut is on screen
    from persona.workspace import Workspace

    pack = Workspace(ws.root).pack
    assert pack.datasets.images == "datasets/images" and pack.datasets.voice == "datasets/voice"
    for caption in (ws.root / "datasets/images").glob("*.txt"):
        assert caption.read_text().startswith(ws.token)


def test_one_side_only_and_bad_flags(make_workspace, demo_footage, demo_recipes):
    ws = make_workspace(models=False)
    out = run(ws, demo_footage["files"]["speech"], "--voice-only", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["images"] is None and summary["voice"]["transcribed"] == 0  # no ASR model: untranscribed
    both = run(ws, demo_footage["files"]["speech"], "--voice-only", "--images-only")
    assert both.returncode == 1 and "exclude each other" in both.stderr


def test_one_failed_side_does_not_stop_the_other(make_workspace, demo_footage, demo_recipes, tmp_path):
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(blank)  # a "reference photo" with no face
    ws = make_workspace(models=False)
    out = run(ws, demo_footage["files"]["lecture"], "--face", blank, "--image-recipe", demo_recipes[0], "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert "images" in summary["failed"] and summary["voice"]["clips"] >= 1
    assert "blank.png" in out.stderr


def test_nothing_usable(make_workspace, tmp_path):
    (tmp_path / "notes.txt").write_text("not footage")
    ws = make_workspace(models=False)
    out = run(ws, tmp_path / "notes.txt")
    assert out.returncode == 1 and "no videos, images or audio" in out.stderr and "Traceback" not in out.stderr
