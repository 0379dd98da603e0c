"""A first video right after ingest: no training, narration zero-shot from the voice dataset's
reference clip, on-camera scenes from the person's own footage lip-synced in-process, b-roll from
FLUX without the LoRA. Then the trained parts replace the zero-shot ones, redoing only what they touch."""

import json
import shutil
from pathlib import Path

import pytest

from persona.errors import PersonaError
from persona.files import read_json
from persona.inference.render import render
from persona.media import probe, stream_durations

SCRIPT = {"title": "First video", "scenes": [
    {"narration": "Hello, this is me, before any training.", "image_prompt": "the presenter talking",
     "motion_prompt": "static", "on_camera": True},
    {"narration": "A grid of numbers.", "image_prompt": "a pixel grid", "motion_prompt": "pan", "on_camera": False}]}
FAST = {"finish": {"upscale": "lanczos", "output_height": 144}}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, tiny_models, demo_footage):
    """A workspace after `persona ingest` of the demo footage: datasets, no [voice], no [lora]."""
    import datetime as dt

    from persona.data.images import ImageSettings
    from persona.data.ingest import ingest
    from persona.data.presenter import PresenterSettings
    from persona.data.voice import VoiceIngestSettings
    from persona.workspace import Consent, Workspace

    root = tmp_path_factory.mktemp("first")
    consent = Consent(person="Demo", granted_by="Demo", date=dt.date(2025, 5, 1), scope="tests")
    ws = Workspace.create(root / "ws", "Demo Astronaut", consent=consent)
    # Resemblyzer (real weights) picks the voice, not the random tiny speaker-embedding model; FILM is
    # code, which a pack may not name (finishing interpolates with FFmpeg instead)
    from persona.models import spec

    ws.update("models", {k: str(v) for k, v in tiny_models.items()
                         if k != "speaker-embedding" and not spec(k).runs_code}, replace=True)
    footage = [Path(demo_footage["files"][k]) for k in ("lecture", "interview")]
    summary = ingest(ws, footage, image_settings=ImageSettings(count=4, min_face=96, sample_every=0.5, resolution=512),
                     voice_settings=VoiceIngestSettings(drop_truncated=False, min_asr_logprob=None),
                     presenter_settings=PresenterSettings(min_face=96, count=2, min_seconds=2.0))
    assert summary["presenter"]["clips"] >= 1 and ws.pack.voice is None and ws.pack.lora is None
    script = root / "script.json"
    script.write_text(json.dumps(SCRIPT))
    return ws, script


def test_first_video_needs_no_training(ingested):
    ws, script = ingested
    s = render(ws, None, script_file=script, profile="demo", overrides=FAST, name="first")
    rdir = Path(s["render"])
    record = read_json(rdir / "render.json")
    assert s["zero_shot"] == ["voice", "likeness"] and s["sources"] == {"01": "footage", "02": "b-roll"}
    assert record["stages"]["lipsync"]["synced"] == ["01"] and record["stages"]["lipsync"]["tool"] == "musetalk"
    video = read_json(rdir / "scenes/01/video.mp4.json")
    clip = read_json(ws.path(ws.pack.datasets.presenter) / "manifest.json")[0]
    assert video["source"] == "footage" and video["fps"] == clip["fps"]
    assert len(video["boxes"]) == video["frames"]  # the face of every frame, so lip sync detects nothing
    synced = read_json(rdir / "scenes/01/synced.mp4.json")
    seconds = read_json(rdir / "scenes/01/narration.wav.json")["seconds"]
    assert synced["frames"] == video["frames"] and abs(probe(rdir / "scenes/01/synced.mp4").duration - seconds) < 1 / clip["fps"] + 1e-3
    assert not (rdir / "scenes/01/keyframe.png").exists()  # footage needs no keyframe
    assert s["model_loads"].get("flux") == 1 and s["model_loads"].get("musetalk") == 1
    d = stream_durations(s["final"])
    assert abs(d["video"] - d["audio"]) < 1 / 32
    assert "api_key" not in record["settings"]["script"]  # settings recorded, the API key never
    likeness = record["likeness"]  # the render scored against the references ingest stored
    assert [sc["scene"] for sc in likeness["scenes"]] == ["01", "02"] and (rdir / "likeness.png").exists()
    assert -1 <= likeness["scenes"][0]["speaker_similarity"] <= 1 and likeness["summary"].startswith("likeness")


def test_footage_problems_are_one_line(ingested, tmp_path):
    ws, _ = ingested
    one = dict(SCRIPT, scenes=[dict(SCRIPT["scenes"][0], presenter="generated")])
    path = tmp_path / "generated.json"
    path.write_text(json.dumps(one))
    footage = tmp_path / "footage.json"
    footage.write_text(json.dumps(dict(SCRIPT, scenes=[SCRIPT["scenes"][0]])))
    with pytest.raises(PersonaError, match="no likeness LoRA"):  # to generate on camera, and no LoRA
        render(ws, None, script_file=path, profile="demo", overrides=FAST, name="gen")
    clips = ws.path(ws.pack.datasets.presenter)
    first = read_json(clips / "manifest.json")[0]["file"]
    kept = tmp_path / "kept.mp4"
    shutil.copyfile(clips / first, kept)
    (clips / first).unlink()
    try:
        with pytest.raises(PersonaError, match="presenter clip is missing") as e:
            render(ws, None, script_file=footage, profile="demo", overrides=FAST, name="gone")
        assert "persona ingest" in str(e.value) and first in str(e.value)
    finally:
        shutil.copyfile(kept, clips / first)


def test_trained_parts_replace_zero_shot_ones(ingested, tiny_models):
    from persona import tiny

    ws, script = ingested
    render(ws, None, script_file=script, profile="demo", overrides=FAST, name="swap")
    # a LoRA alone changes nothing here: on camera is footage, and b-roll never uses the likeness
    tiny.random_lora(Path(tiny_models["flux"]), ws.root / "lora" / "tiny.safetensors")
    ws.update("lora", {"path": "lora/tiny.safetensors", "strength": 1.0})
    again = render(ws, None, name="swap", profile="demo", overrides=FAST)
    assert again["zero_shot"] == ["voice"] and again["model_loads"] == {}
    assert all(not v["rendered"] for v in again["stages"].values() if v["rendered"] is not None)
    # a trained voice redoes the narration, and with it every scene's timing
    tiny.fill_pack(ws, tiny_models)
    trained = render(ws, None, name="swap", profile="demo", overrides=FAST)
    assert trained["zero_shot"] == [] and trained["stages"]["narration"]["rendered"] == ["01", "02"]


def test_footage_asked_for_without_clips(pack, tmp_path):
    one = dict(SCRIPT, scenes=[dict(SCRIPT["scenes"][0], presenter="footage")])
    path = tmp_path / "footage.json"
    path.write_text(json.dumps(one))
    with pytest.raises(PersonaError, match="no presenter clips") as e:
        render(pack, None, script_file=path, profile="demo", overrides=FAST)
    assert "script.json" in str(e.value)
