"""The image side of `persona ingest`: real footage of three people, the demo footage, bad inputs,
Florence-2 captions on the tiny model, and the pieces (inputs, framing, captions, presence)."""

from __future__ import annotations

import json
import shutil
import tomllib
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import people_footage as people
from persona.data import crops, select
from persona.data.captions import person_caption
from persona.faces import hamming
from persona.data.images import ImageSettings, ingest_images
from persona.data.inputs import discover
from persona.errors import PersonaError
from persona.media import write_video

# Small footage: faces of 80-120 px, so smaller faces are looked for and more upscaling is allowed.
SMALL = dict(min_face=80, max_upscale=8.0, sample_every=1.0)


def _hopper() -> np.ndarray:
    import matplotlib.cbook

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        return np.asarray(im.convert("RGB"))


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def _save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def _dataset(ws) -> Path:
    return ws.path(ws.pack.datasets.images)


# ---- real footage -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def three_people(shared_media, tmp_path_factory):
    return people.build(shared_media / "footage", tmp_path_factory.mktemp("people"))


@pytest.mark.media
def test_real_footage_selects_only_the_target(three_people, make_workspace):
    ws = make_workspace("Bearded Man", models=False)
    settings = ImageSettings(count=8, **SMALL)
    summary = ingest_images(ws, three_people["videos"], [], settings, faces=[three_people["reference"]])
    truth = three_people["truth"]
    root = _dataset(ws)
    manifest = json.loads((root / "manifest.json").read_text())
    assert summary["images"] == len(manifest) >= 5
    assert summary["person"]["how"] == "reference" and summary["person"]["identities_seen"] >= 3

    # every selected image is of him, and no moment of his footage is used twice (the first 4 s of
    # his part of kitchen.mp4 are the same moments as in interview.mp4, in another encode)
    moments = []
    for e in manifest:
        who, t = people.who_at(truth, e["source"], e["time"])
        assert who == people.TARGET, f"{e['file']} is {who} ({e['source']} at {e['time']} s)"
        moments.append(t)
        assert e["identity_distance"] <= 0.55
    assert all(abs(a - b) >= 0.5 for a, b in combinations(moments, 2)), sorted(moments)
    for a, b in combinations(manifest, 2):
        assert hamming(a["phash"], [b["phash"]])[0] > settings.dedupe_bits

    # the files trainers read
    for e in manifest:
        caption = (root / e["file"]).with_suffix(".txt").read_text().strip()
        assert caption.startswith(ws.token) and caption == e["caption"]
        with Image.open(root / e["file"]) as im:
            assert im.format == "PNG" and min(im.size) == 1024 and im.size[1] % 64 == 0
            assert list(im.size) == e["size"]
    lines = [json.loads(x) for x in (root / "metadata.jsonl").read_text().splitlines()]
    assert [x["file_name"] for x in lines] == [e["file"] for e in manifest]
    assert all(x["text"].startswith(ws.token) for x in lines)
    kohya = tomllib.loads((root / "dataset.toml").read_text())
    assert Path(kohya["datasets"][0]["subsets"][0]["image_dir"]) == root
    assert kohya["general"]["caption_extension"] == ".txt"
    assert set(summary["framing"]) == {"close-up", "head-and-shoulders", "half-body"}
    with Image.open(ws.path("datasets/images-review/contact_sheet.png")) as sheet:  # outside the imagefolder
        assert sheet.width >= 256
    assert summary["contact_sheet"] == "datasets/images-review/contact_sheet.png"
    assert len(list(root.rglob("*.png"))) == len(manifest)  # every image in the folder is a sample
    report = json.loads((root / "report.json").read_text())
    assert report["rejected"][select.OTHER] > 0 and report["rejected"][select.DUPLICATE] > 0
    assert not list(root.parent.glob(".images*"))  # no staging folder left behind

    # presence: when his face is on screen in each video, to a sampling step
    presence = json.loads((root / "presence.json").read_text())
    for source, spans in truth.items():
        expected = people.on_screen(truth, source, people.TARGET)
        got = presence[source]
        assert len(got) == len(expected), (source, got, expected)
        for (a, b), (x, y) in zip(got, expected):
            assert abs(a - x) <= 1.0 and abs(b - y) <= 1.0, (source, got, expected)
    assert any("sofa.mp4" in p and "none of its" in p for p in summary["problems"])

    # without --face: the identity with the most screen time (him: 20 s, the others 16 s and 10 s);
    # nothing is scanned again
    again = ingest_images(ws, three_people["videos"], [], settings)
    assert again["person"]["how"] == "screen time" and "most screen time" in again["person"]["description"]
    assert again["footage"]["scanned_now"] == 0 and not again["reused_selection"]
    for e in json.loads((root / "manifest.json").read_text()):
        assert people.who_at(truth, e["source"], e["time"])[0] == people.TARGET


# ---- demo footage ------------------------------------------------------------------------------
def test_demo_footage_astronaut_not_cameraman(demo_footage, make_workspace):
    ws = make_workspace("Demo Astronaut", models=False)
    files = demo_footage["files"]
    summary = ingest_images(ws, [Path(files["lecture"]), Path(files["interview"])], [],
                            ImageSettings(count=6, min_face=96, sample_every=0.5, max_upscale=4.0))
    root = _dataset(ws)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest and summary["person"]["how"] == "screen time"
    truth = {Path(k).name: v for k, v in demo_footage["persona_on_screen"].items()}
    for e in manifest:
        spans = truth[Path(e["source"]).name]
        assert any(a <= e["time"] < b for a, b in spans), e  # never the cameraman's half of the interview
    presence = {Path(k).name: v for k, v in json.loads((root / "presence.json").read_text()).items()}
    for name, spans in truth.items():
        assert len(presence[name]) == 1
        (a, b), (x, y) = presence[name][0], spans[0]
        assert abs(a - x) <= 0.5 and abs(b - y) <= 0.5, (name, presence[name], spans)
    assert ws.pack.datasets.images == "datasets/images"
    assert summary["captions"] == "token"
    assert any("captions are the token alone" in p for p in summary["problems"])


# ---- bad input ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_media(tmp_path_factory, demo_footage):
    folder = tmp_path_factory.mktemp("bad")
    good = Path(demo_footage["files"]["lecture"])
    data = good.read_bytes()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    (folder / "truncated.mp4").write_bytes(data[: int(len(data) * 0.55)])
    shutil.copy(demo_footage["files"]["speech"], folder / "voice-only.mp4")  # a wav file named .mp4
    ramp = np.linspace(0, 255, 320 * 180 * 3).reshape(180, 320, 3).astype(np.uint8)
    write_video(folder / "no-faces.mp4", [np.roll(ramp, i, axis=1) for i in range(40)], 20, preset="ultrafast")
    _save(_hopper(), folder / "hopper.png")
    _save(_astronaut(), folder / "astronaut.png")
    from skimage import data as skdata

    _save(skdata.coffee(), folder / "coffee.png")
    pair = np.zeros((600, 1024, 3), np.uint8)
    pair[:512, :512], pair[:, 512:] = _astronaut(), _hopper()
    _save(pair, folder / "two-people.png")
    (folder / "notes.txt").write_text("not media")
    return {"folder": folder, "good": good}


def test_bad_files_are_reported_and_the_rest_is_used(bad_media, make_workspace):
    folder = bad_media["folder"]
    ws = make_workspace("Demo Astronaut", models=False)
    bad = ["empty.mp4", "garbage.mp4", "truncated.mp4", "voice-only.mp4", "no-faces.mp4"]
    videos = [bad_media["good"]] + [folder / n for n in bad]
    summary = ingest_images(ws, videos, [], ImageSettings(count=4, min_face=96, sample_every=0.5))
    assert summary["images"] >= 1
    problems = {n: [p for p in summary["problems"] if n in p] for n in bad}
    assert any("is empty" in p for p in problems["empty.mp4"])
    assert any("cannot be read as media" in p for p in problems["garbage.mp4"])
    assert any("truncated" in p and "re-copy" in p for p in problems["truncated.mp4"])
    assert any("has no video track" in p for p in problems["voice-only.mp4"])
    assert any("no face found" in p for p in problems["no-faces.mp4"])
    manifest = json.loads((_dataset(ws) / "manifest.json").read_text())
    assert {Path(e["source"]).name for e in manifest} <= {"lecture.mp4", "truncated.mp4"}


def test_nothing_usable_raises_and_writes_nothing(bad_media, make_workspace):
    folder = bad_media["folder"]
    ws = make_workspace("Demo Astronaut", models=False)
    with pytest.raises(PersonaError, match="none of the footage could be read") as e:
        ingest_images(ws, [folder / "empty.mp4", folder / "garbage.mp4"], [], ImageSettings())
    assert "empty.mp4" in str(e.value) and "garbage.mp4" in str(e.value)
    with pytest.raises(PersonaError, match="no face found in any of the footage"):
        ingest_images(ws, [folder / "no-faces.mp4"], [], ImageSettings())
    assert not ws.path("datasets/images").exists() and ws.pack.datasets.images is None


def test_reference_photo_problems(bad_media, make_workspace):
    folder, good = bad_media["folder"], bad_media["good"]
    ws = make_workspace("Demo Astronaut", models=False)
    settings = ImageSettings(count=2, min_face=96, sample_every=1.0)
    with pytest.raises(PersonaError, match="no --face photo shows exactly one clear face") as e:
        ingest_images(ws, [good], [], settings, faces=[folder / "coffee.png", folder / "two-people.png"])
    assert "coffee.png" in str(e.value) and "no face" in str(e.value)
    assert "two-people.png" in str(e.value) and "2 faces" in str(e.value)
    # a bad reference beside a good one is reported and skipped
    summary = ingest_images(ws, [good], [], settings, faces=[folder / "astronaut.png", folder / "coffee.png"])
    assert summary["images"] >= 1 and any("coffee.png" in p for p in summary["problems"])
    # nobody in the footage matches the reference
    with pytest.raises(PersonaError, match="no frame in the footage matches the --face photos"):
        ingest_images(ws, [good], [], settings, faces=[folder / "hopper.png"])


def test_still_images_are_candidates(bad_media, make_workspace):
    folder = bad_media["folder"]
    ws = make_workspace("Demo Astronaut", models=False)
    summary = ingest_images(ws, [], [folder / "astronaut.png", folder / "hopper.png", folder / "coffee.png"],
                            ImageSettings(count=3, min_face=80, max_upscale=8.0), faces=[folder / "astronaut.png"])
    manifest = json.loads((_dataset(ws) / "manifest.json").read_text())
    assert [Path(e["source"]).name for e in manifest] == ["astronaut.png"] and manifest[0]["time"] is None
    assert any("coffee.png" in p and "no face" in p for p in summary["problems"])


# ---- captions ----------------------------------------------------------------------------------
def test_florence_recaptions_without_redoing_selection(demo_footage, make_workspace, tiny_models):
    ws = make_workspace("Demo Astronaut", models=False)
    footage = [Path(demo_footage["files"]["lecture"])]
    settings = ImageSettings(count=3, min_face=96, sample_every=0.5)
    first = ingest_images(ws, footage, [], settings)
    root = _dataset(ws)
    pngs = {p.name: p.stat().st_mtime_ns for p in root.glob("*.png")}
    assert first["captions"] == "token" and all(
        p.read_text().strip() == ws.token for p in root.glob("*.txt"))

    ws.update("models", {"florence2": str(tiny_models["florence2"])})
    second = ingest_images(ws, footage, [], settings)
    assert second["reused_selection"] and second["footage"]["scanned_now"] == 0
    assert second["captions"].startswith("florence2")
    assert {p.name: p.stat().st_mtime_ns for p in root.glob("*.png")} == pngs
    manifest = json.loads((root / "manifest.json").read_text())
    assert all(e["captioner"] == second["captions"] and e["caption"].startswith(ws.token) for e in manifest)
    assert all(isinstance(e["caption_raw"], str) for e in manifest)
    meta = [json.loads(x)["text"] for x in (root / "metadata.jsonl").read_text().splitlines()]
    assert meta == [e["caption"] for e in manifest]

    # the token changes: captions follow without running the captioner again
    ws.update("token", "AstroPersona")
    third = ingest_images(ws, footage, [], settings)
    assert third["reused_selection"]
    assert all(p.read_text().startswith("AstroPersona") for p in root.glob("*.txt"))


@pytest.mark.parametrize("raw, expected", [
    ("The image shows a man with a beard and a black sweater standing in a kitchen. His eyes are brown.",
     "Tok, a man with a black sweater standing in a kitchen."),
    ("In this image we can see a woman sitting on a sofa.", "Tok, a woman sitting on a sofa."),
    ("A man standing at a whiteboard, smiling.", "Tok, a man standing at a whiteboard, smiling."),
    ("", "Tok"),
])
def test_person_caption(raw, expected):
    assert person_caption(raw, "Tok") == expected


# ---- pieces ------------------------------------------------------------------------------------
def test_discover(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["a/clip.MP4", "a/b/talk.mkv", "a/photo.jpg", "a/b/voice.wav", "a/notes.txt", "a/.hidden.mp4"]:
        (tmp_path / name).write_bytes(b"x")
    found = discover([tmp_path / "a", tmp_path / "a" / "clip.MP4", tmp_path / "missing.mov"], report=False)
    assert [p.name for p in found.videos] == ["talk.mkv", "clip.MP4"]  # sorted by path: a/b/ before a/c
    assert [p.name for p in found.images] == ["photo.jpg"] and [p.name for p in found.audio] == ["voice.wav"]
    assert [p.name for p in found.unknown] == ["notes.txt"] and found.missing == [tmp_path / "missing.mov"]


def test_framing_plans_keep_the_face_inside_and_report_upscaling():
    face = [500.0, 300.0, 740.0, 540.0]  # a 240 px face in a 1920x1080 frame
    options = crops.plans(face, 1920, 1080, 1024, 8.0)
    assert set(options) == {"close-up", "head-and-shoulders"}  # not even 5 face heights fit 1080 px
    for p in options.values():
        x0, y0, x1, y1 = p.box
        assert 0 <= x0 < face[0] and 0 <= y0 < face[1] and face[2] < x1 <= 1920 and face[3] < y1 <= 1080
        assert abs((x1 - x0) / (y1 - y0) - p.size[0] / p.size[1]) < 1e-6 and min(p.size) == 1024
        assert p.upscale == pytest.approx(p.size[1] / (y1 - y0), rel=1e-3)
    assert crops.plans(face, 1920, 1080, 1024, 1.4) == {}  # would need more upscaling than allowed
    assert crops.plan([0, 300, 200, 500], 1920, 1080, crops.FRAMINGS["close-up"], 1024, 8.0) is None  # at the edge
    mix = crops.assign_framings([dict(options)] * 10, {"close-up": 0.5, "head-and-shoulders": 0.5})
    assert mix.count("close-up") == 5


def test_presence_merges_samples_and_stops_at_cuts():
    analysis = {"step": 1.0, "duration": 20.0, "cuts": [10.0],
                "faces": [{"t": t, "emb": i} for i, t in enumerate([0.0, 1.0, 2.0, 9.8, 10.2, 15.0])]}
    identity = select.Identity("reference", np.zeros((1, 2)), np.zeros(6),
                               np.array([True, True, True, True, False, True]), 2, [0])
    assert select.presence(analysis, 0, identity) == [[0.0, 2.5], [9.3, 10.0], [14.5, 15.5]]


def test_settings_validate():
    with pytest.raises(ValueError, match="unknown framing"):
        ImageSettings(framing={"full-body": 1.0})
    with pytest.raises(ValueError, match="multiple of 64"):
        ImageSettings(resolution=1000)
    assert ImageSettings(framing={"close-up": 2, "half-body": 2}).framing == {"close-up": 0.5, "half-body": 0.5}


def test_killed_scan_resumes_where_it_stopped(demo_footage, tmp_path, monkeypatch):
    from persona.data import scan

    videos = [Path(demo_footage["files"]["lecture"]), Path(demo_footage["files"]["interview"])]
    settings = scan.ScanSettings(every=1.0, min_face=96)
    calls = []
    real_run = scan._run
    monkeypatch.setattr(scan, "_run", lambda task: calls.append(task["path"]) or real_run(task))

    def killed_after_first(seconds):
        raise KeyboardInterrupt

    sources = [scan.Source(p, "video") for p in videos]
    scan.prepare(sources, settings, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        scan.run(sources, settings, tmp_path, workers=1, progress=killed_after_first)
    assert calls == [str(videos[0])] and not list(tmp_path.glob("*/analysis.json"))

    sources = [scan.Source(p, "video") for p in videos]
    scan.prepare(sources, settings, tmp_path)
    scan.run(sources, settings, tmp_path, workers=1)
    assert calls == [str(videos[0]), str(videos[1])]  # the finished segment was not scanned again
    assert all(s.analysis["samples"] and s.analysis["faces"] for s in sources)

    sources = [scan.Source(p, "video") for p in videos]
    scan.prepare(sources, settings, tmp_path)
    assert all(s.analysis is not None for s in sources)  # a re-run finds both in the cache


def test_required_florence_missing_fails_before_any_work(demo_footage, make_workspace):
    ws = make_workspace("Demo Astronaut", models=False)
    with pytest.raises(PersonaError, match="florence2"):
        ingest_images(ws, [Path(demo_footage["files"]["lecture"])], [], ImageSettings(captions="florence2"))
    assert not ws.path("cache").exists() and not ws.path("datasets/images").exists()


def test_contact_sheet_outside_the_dataset_and_a_corrupt_manifest_is_an_error(bad_media, make_workspace):
    folder = bad_media["folder"]
    ws = make_workspace("Demo Astronaut", models=False)
    stills = [folder / "astronaut.png", folder / "hopper.png"]
    settings = ImageSettings(count=2, min_face=80, max_upscale=8.0)
    summary = ingest_images(ws, [], stills, settings, faces=[folder / "astronaut.png"])
    root = _dataset(ws)
    assert ws.path(summary["contact_sheet"]).is_file() and not ws.path(summary["contact_sheet"]).is_relative_to(root)
    assert sorted(p.name for p in root.rglob("*.png")) == [e["file"] for e in json.loads((root / "manifest.json").read_text())]
    (root / "manifest.json").write_text('[{"file": "0001.png", "cap')  # cut short
    with pytest.raises(PersonaError) as e:
        ingest_images(ws, [], stills, settings, faces=[folder / "astronaut.png"])
    line = str(e.value)
    assert line.startswith(f"{root / 'manifest.json'}: is not valid JSON") and "ingest again" in line
