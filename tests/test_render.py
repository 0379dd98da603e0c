"""`persona render` end to end on the tiny models (CPU), with the cache and resume behaviour."""

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persona.errors import PersonaError
from persona.files import read_json
from persona.inference.render import render
from persona.media import av_open, stream_durations
from persona.provenance import verify_video

SCRIPT = Path(__file__).parent / "data" / "three_scenes.json"


# Lanczos to a small frame keeps these tests fast; test_finish.py covers the upscaler model.
FAST = {"finish": {"upscale": "lanczos", "output_height": 144}}


def _render(ws, **kw):
    return render(ws, None, script_file=kw.pop("script_file", SCRIPT), profile="demo",
                  overrides=kw.pop("overrides", FAST), **kw)


@pytest.fixture
def rendered(pack):
    summary = _render(pack, name="talk")
    return pack, summary


def test_three_scenes_end_to_end(rendered):
    ws, summary = rendered
    rdir = Path(summary["render"])
    final = rdir / "final.mp4"
    narrations = [read_json(rdir / f"scenes/{i:02d}/narration.wav.json")["seconds"] for i in (1, 2, 3)]
    d = stream_durations(final)
    assert abs(d["video"] - sum(narrations)) < 0.1 and abs(d["audio"] - sum(narrations)) < 0.1
    srt = (rdir / "final.srt").read_text()
    assert srt.count(" --> ") == 2 + 1 + 3  # one cue per sentence
    with av_open(str(final)) as c:
        assert c.streams.video[0].codec_context.name == "h264" and c.streams.audio[0].codec_context.name == "aac"
        assert c.metadata["ai_generated"] == "true" and c.metadata["persona"] == ws.name
        assert "consent" in c.metadata["comment"] and "granted by" in c.metadata["consent"]
    credentials = verify_video(final)  # signed Content Credentials (C2PA) saying AI-generated, with the consent
    assert credentials["status"] == "valid" and credentials["ai_generated"] and credentials["persona"] == ws.name
    assert credentials["consent"]["granted_by"] == ws.pack.consent.granted_by
    record = read_json(rdir / "render.json")
    assert record["stages"]["assemble"]["content_credentials"]["signed"] is True
    assert record["completed"] and record["model_loads"] == {"f5-tts": 1, "flux": 1, "wan-flf2v": 1, "musetalk": 1,
                                                             "film": 1}
    assert record["stages"]["lipsync"]["synced"] == ["01", "03"] and record["stages"]["lipsync"]["tool"] == "musetalk"
    assert record["stages"]["finish"]["interpolation"] == "film"
    assert record["sources"] == {"01": "generated", "02": "b-roll", "03": "generated"} and record["zero_shot"] == []
    assert record["stages"]["assemble"]["loudness"]["output_lufs"] == pytest.approx(-14, abs=1.0)
    seeds = [s["keyframe_seed"] for s in record["scenes"]]
    assert len(set(seeds)) == 3 and record["scenes"][0]["keyframe_prompt"].startswith(ws.token)
    assert not record["scenes"][1]["keyframe_prompt"].startswith(ws.token)  # off camera: no token


def test_editing_one_scene_redoes_only_that_scene(rendered):
    ws, summary = rendered
    rdir = Path(summary["render"])
    script = json.loads((rdir / "script.json").read_text())
    script["scenes"][1]["narration"] = "Every image is a grid of numbers, one per pixel."
    (rdir / "script.json").write_text(json.dumps(script))
    again = render(ws, None, name="talk", profile="demo", overrides=FAST)  # no topic, no --script: the edited script.json
    st = again["stages"]
    assert st["narration"]["rendered"] == ["02"] and st["narration"]["reused"] == ["01", "03"]
    assert st["keyframes"]["rendered"] == [] and st["video"]["rendered"] == ["02"] and st["finish"]["rendered"] == ["02"]
    assert again["model_loads"] == {"f5-tts": 1, "wan-flf2v": 1, "film": 1}  # no keyframe to draw: FLUX never loaded
    script["scenes"][2]["image_prompt"] = "the presenter in a garden, wide shot"
    (rdir / "script.json").write_text(json.dumps(script))
    st = render(ws, None, name="talk", profile="demo", overrides=FAST)["stages"]
    assert st["narration"]["rendered"] == [] and st["keyframes"]["rendered"] == ["03"]
    assert st["video"]["rendered"] == ["03"]
    # a scene inserted in front moves the others: their work is found and copied, not redone
    script["scenes"].insert(0, script["scenes"][1])
    (rdir / "script.json").write_text(json.dumps(script))
    again = render(ws, None, name="talk", profile="demo", overrides=FAST)
    assert again["model_loads"] == {}
    for stage in ("narration", "keyframes", "video", "finish"):
        assert again["stages"][stage]["moved"] == ["01", "02", "03", "04"] and again["stages"][stage]["rendered"] == []
    assert read_json(rdir / "scenes/04/keyframe.png.json")["copied_from"].endswith("03/keyframe.png")


def test_killed_render_resumes_without_redoing_narration(pack):
    import tomlkit

    from persona.config import recipe_file

    recipe = tomlkit.parse(recipe_file("render", "demo").read_text())
    recipe["finish"].update(FAST["finish"])
    fast = pack.root / "fast.toml"
    fast.write_text(tomlkit.dumps(recipe))
    cmd = [sys.executable, "-m", "persona", "-w", str(pack.root), "render", "--script", str(SCRIPT),
           "--profile", str(fast), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    scenes = pack.root / "renders" / "three_scenes" / "scenes"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if all((scenes / f"{i:02d}" / "narration.wav.json").exists() for i in (1, 2, 3)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the render finished before it could be killed"
    assert not (scenes.parent / "final.mp4").exists()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)["stages"]
    assert st["narration"]["rendered"] == [] and st["narration"]["reused"] == ["01", "02", "03"]
    assert (scenes.parent / "final.mp4").exists()


def test_pack_without_lora_or_voice(make_workspace, pack):
    with pytest.raises(PersonaError, match="neither a trained voice") as e:
        _render(make_workspace(name="Other Person"))
    assert "persona ingest" in str(e.value)
    pack.update("lora", None)  # on-camera scenes to generate need the LoRA, when there is no footage
    with pytest.raises(PersonaError, match="scene 01 is an on-camera scene to generate.*no likeness LoRA") as e:
        _render(pack)
    assert "train-lora" in str(e.value)


def test_consent_is_required(pack):
    pack.update("consent", None)
    with pytest.raises(PersonaError, match="consent"):
        _render(pack)


def test_missing_weights_point_to_doctor(pack, tmp_path):
    pack.update("models", {"flux": str(tmp_path / "nowhere")})
    with pytest.raises(PersonaError, match="does not exist"):
        _render(pack)
    assert (pack.root / "renders/three_scenes/scenes/01/narration.wav").exists()  # finished stage kept


def test_bad_scripts(pack, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"title": "x", "scenes": []}))
    with pytest.raises(PersonaError, match="scenes"):
        _render(pack, script_file=empty)
    with pytest.raises(PersonaError, match="narrates for"):
        render(pack, None, script_file=SCRIPT, profile="demo", overrides={"narration": {"max_scene_seconds": 2}})


def test_disk_full_keeps_finished_stages(pack, monkeypatch):
    import persona.inference.video as video

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(video, "write_video", full)
    with pytest.raises(PersonaError, match="disk is full"):
        _render(pack)
    record = read_json(pack.root / "renders/three_scenes/render.json")
    assert set(record["stages"]) == {"script", "narration", "keyframes"}  # video failed; the rest kept
    assert (pack.root / "renders/three_scenes/scenes/03/keyframe.png").exists()


def test_until_and_9_16(pack):
    s = render(pack, None, script_file=SCRIPT, profile="demo", until="keyframes",
               overrides={"aspect": "9:16"})
    assert s["final"] is None and set(s["stages"]) == {"script", "narration", "keyframes"}
    from PIL import Image

    assert Image.open(Path(s["render"]) / "scenes/01/keyframe.png").size == (64, 128)


def test_a_zipped_pack_unzipped_elsewhere_renders(pack, tiny_models, tmp_path, monkeypatch):
    """The pack's [models] are relative paths to models inside it; zipped without datasets/, cache/,
    runs/ and renders/, unzipped in another folder and rendered from a third: they resolve against
    the workspace, not the current directory."""
    import shutil
    import zipfile

    from persona.models import spec
    from persona.workspace import Workspace

    local = {}
    for key, path in tiny_models.items():
        if not spec(key).runs_code:  # FILM stays in the user's own config (test_trust.py)
            target = pack.root / "models" / key / (path.name if path.is_file() else "")
            shutil.copytree(path if path.is_dir() else path.parent, pack.root / "models" / key)
            local[key] = target.relative_to(pack.root).as_posix()
    pack.update("models", local, replace=True)
    (pack.root / "cache").mkdir(exist_ok=True)
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in pack.root.rglob("*"):
            rel = p.relative_to(pack.root)
            if p.is_file() and rel.parts[0] not in ("datasets", "cache", "runs", "renders"):
                z.write(p, rel.as_posix())
    elsewhere = tmp_path / "unzipped" / "their-pack"
    zipfile.ZipFile(archive).extractall(elsewhere)
    shutil.rmtree(pack.root)  # nothing may still point at the original
    (tmp_path / "somewhere-else").mkdir()
    monkeypatch.chdir(tmp_path / "somewhere-else")
    ws = Workspace(elsewhere)
    assert ws.pack.models["flux"] == str(elsewhere.resolve() / "models" / "flux")
    script = tmp_path / "one.json"
    script.write_text(json.dumps({"title": "t", "scenes": [
        {"narration": "Dr. Lee shows 3.5 pixels.", "image_prompt": "the presenter, close-up",
         "motion_prompt": "slow push-in", "on_camera": True}]}))
    s = render(ws, None, script_file=script, profile="demo", overrides=FAST)
    assert Path(s["final"]).is_file() and Path(s["final"]).is_relative_to(elsewhere.resolve())
