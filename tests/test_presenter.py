"""The presenter side of `persona ingest` on real footage of three people (../shared/media/footage),
cut together with the ground truth of who is on screen when (tests/people_footage.py), plus a
split-screen variant where another person appears beside the target without leaving the shot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import people_footage as people
from persona import faces as fx
from persona.data.images import ImageSettings
from persona.data.ingest import ingest
from persona.data.presenter import CROWD, OTHER, SMALL, PresenterSettings, ingest_presenter
from persona.media import av_open, iter_frames, probe, write_video

# The test footage is 432x768 at 10 fps: faces of 80-120 px instead of 250-300 px.
SCAN = ImageSettings(min_face=80, sample_every=1.0)
SMALL_FACES = dict(min_face=80, min_seconds=3.0, max_yaw=0.5)
FRAME = 1 / people.FPS
# duo.mp4: the target alone, then beside the woman (split screen, his half continuing his shot), then alone
DUO = [(0.0, 4.0, "man"), (4.0, 6.0, "man+woman"), (6.0, 10.5, "man")]


def _duo(media: Path, out: Path) -> Path:
    """His recording from 2 s (where he faces the camera throughout), with her face on the right half
    from 4 s to 6 s (his half continues his shot)."""
    def frames(name: str, start: float, seconds: float) -> list[np.ndarray]:
        got = []
        for t, rgb in iter_frames(media / name, fps=people.FPS):
            if t + 1e-3 >= start and len(got) < round(seconds * people.FPS):
                got.append(np.asarray(_resize(rgb, (432, 768))))
        return got

    him = frames(people.SOURCES["man"], 2.0, 10.5)
    her = frames(people.SOURCES["woman"], 0.0, 2.0)
    video = []
    for i, f in enumerate(him):
        j = i - 4 * people.FPS
        if 0 <= j < len(her):
            f = f.copy()
            f[:, :216] = f[:, 108:324]  # his face (centred) moves to the left half ...
            f[:, 216:] = her[j][:, 108:324]  # ... and hers fills the right half
        video.append(f)
    path = out / "duo.mp4"
    write_video(path, video, people.FPS, preset="ultrafast")
    return path


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def footage(shared_media, tmp_path_factory):
    out = tmp_path_factory.mktemp("presenter-footage")
    built = people.build(shared_media / "footage", out)
    built["duo"] = _duo(shared_media / "footage", out)
    return built


def _alone_spans(footage: dict, source: str) -> list[tuple[float, float]]:
    if source.endswith("duo.mp4"):
        return [(a, b) for a, b, who in DUO if who == people.TARGET]
    return people.on_screen(footage["truth"], source, people.TARGET)


@pytest.mark.media
def test_clips_only_where_the_target_is_alone_and_facing(footage, make_workspace):
    ws = make_workspace("Bearded Man", models=False)
    videos = footage["videos"] + [footage["duo"]]
    settings = PresenterSettings(**SMALL_FACES)
    summary = ingest_presenter(ws, videos, [], settings, SCAN, faces=[footage["reference"]])
    root = ws.path("datasets/presenter")
    manifest = json.loads((root / "manifest.json").read_text())
    report = json.loads((root / "report.json").read_text())
    assert summary["clips"] == len(manifest) >= 3 and not summary["reused"]
    assert ws.pack.datasets.presenter == "datasets/presenter"
    by_file: dict[str, list[dict]] = {}
    for e in manifest:
        by_file.setdefault(Path(e["source"]).name, []).append(e)
        # inside one stretch where he is alone on screen: never across a cut, never beside someone
        spans = _alone_spans(footage, e["source"])
        inside = any(a - FRAME / 2 <= e["start"] and e["end"] <= b + FRAME / 2 for a, b in spans)
        assert inside, (e["source"], e["start"], e["end"], spans)
        assert e["end"] - e["start"] >= settings.min_seconds - 1e-6
        assert e["fps"] == people.FPS and abs(e["frames"] - (e["end"] - e["start"]) * people.FPS) < 0.5
        assert e["yaw"]["max"] <= settings.max_yaw + 0.1 and e["sharpness"] >= settings.min_sharpness

    # the others' footage gives nothing; where a cut or another face bounds a clip, the manifest
    # places the edge within two frames of the truth
    assert "sofa.mp4" not in by_file
    assert {"kitchen.mp4", "duo.mp4"} <= set(by_file)
    assert any(abs(e["start"] - 4.0) <= 2 * FRAME for e in by_file["kitchen.mp4"])  # the cut to him
    duo = sorted(by_file["duo.mp4"], key=lambda e: e["start"])
    assert abs(duo[0]["end"] - 4.0) <= 2 * FRAME  # she appears
    assert any(abs(e["start"] - 6.0) <= 2 * FRAME for e in duo[1:])  # she is gone
    reasons = {r["reason"] for r in report["rejected_spans"] if r["source"].endswith("duo.mp4")}
    assert CROWD in reasons
    sofa = next(f for f in report["files"] if f["source"].endswith("sofa.mp4"))
    assert sofa["clips"] == 0 and set(sofa["rejected"]) == {OTHER}

    # the clips: no audio, the source frame rate, a smoothed box on his face on every frame
    backend = fx.backend("dlib")
    for e in manifest:
        clip = root / e["file"]
        with av_open(str(clip)) as c:
            assert not c.streams.audio and len(c.streams.video) == 1
        info = probe(clip)
        assert info.fps == pytest.approx(e["fps"]) and [info.width, info.height] == e["size"]
        decoded = [rgb for _, rgb in iter_frames(clip)]
        assert len(decoded) == e["frames"] == len(e["boxes"])
        for i in (0, len(decoded) // 2, len(decoded) - 1):
            found = backend.detect(decoded[i], 1)
            assert found, f"{e['file']} frame {i}: no face"
            x0, y0, x1, y1 = max(found, key=lambda f: f.height).box
            bx0, by0, bx1, by1 = e["boxes"][i]
            cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
            assert x0 <= cx <= x1 and y0 <= cy <= y1, (e["file"], i, e["boxes"][i], (x0, y0, x1, y1))
            assert 0.6 <= (by1 - by0) / (y1 - y0) <= 1.6
        steps = np.abs(np.diff(np.array(e["boxes"]), axis=0)).max()
        assert steps < 0.2 * (e["boxes"][0][3] - e["boxes"][0][1])  # smooth: no jumps between frames (10 fps)
    assert (root / "review" / "strip.png").is_file()
    assert not list(root.parent.glob(".presenter*"))  # no staging folder left

    # a re-run reuses everything: no clip is written again
    stamps = {p.name: p.stat().st_mtime_ns for p in root.iterdir() if p.is_file()}
    again = ingest_presenter(ws, videos, [], settings, SCAN, faces=[footage["reference"]])
    assert again["reused"] and again["clips"] == summary["clips"]
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir() if p.is_file()} == stamps


@pytest.mark.media
def test_no_usable_stretch_is_an_answer_not_a_failure(footage, make_workspace):
    sofa = next(v for v in footage["videos"] if v.name == "sofa.mp4")
    kitchen = next(v for v in footage["videos"] if v.name == "kitchen.mp4")

    # only other people: presenter-only ingest succeeds with no clips and says why
    ws = make_workspace("Bearded Man", models=False)
    out = subprocess.run([sys.executable, "-m", "persona", "-w", str(ws.root), "ingest", str(sofa),
                          "--face", str(footage["reference"]), "--presenter-only", "--json"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["images"] is None and summary["voice"] is None and summary["failed"] == {}
    assert summary["presenter"]["clips"] == 0 and "not in the footage" in summary["presenter"]["why"]
    assert "no presenter clips" in out.stderr

    # only faces smaller than min_face: no clips, the reason counted per file
    ws = make_workspace("Bearded Man Two", models=False)
    result = ingest(ws, [kitchen], faces=[footage["reference"]], images=False, voice=False,
                    image_settings=SCAN, presenter_settings=PresenterSettings(min_face=140))
    p = result["presenter"]
    assert p["clips"] == 0 and SMALL in p["why"] and p["files"][str(kitchen.resolve())]["rejected"][SMALL] > 0
    assert ws.pack.datasets.presenter is None
