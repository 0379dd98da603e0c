"""MuseTalk lip sync with the tiny random-weight models on real footage (or the demo footage when
../shared/media is absent): what changes in a frame, how many frames come out, sound against
picture at several frame rates, and a weights file that holds code."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from persona.errors import PersonaError
from persona.media import iter_frames, probe, read_audio, stream_durations, write_audio, write_video

CLIP_SECONDS = 0.8
WIDTH = 360  # real footage is 1080x1920: a third keeps the face above the detector's 80 px


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from persona import tiny

    return tiny.build_all(tmp_path_factory.mktemp("tiny-musetalk"), ["musetalk", "sd-vae", "whisper-tiny"])


@pytest.fixture(scope="module")
def syncer(models):
    from persona.inference.musetalk import MuseTalk

    mt = MuseTalk(models["musetalk"], models["sd-vae"], models["whisper-tiny"], device="cpu", batch_size=4)
    yield mt
    mt.close()


@pytest.fixture(scope="module")
def face_frames(tmp_path_factory) -> list[np.ndarray]:
    """The first CLIP_SECONDS of a real talking-head video, downscaled; the demo footage without it."""
    shared = Path(os.environ.get("PERSONA_SHARED_MEDIA", Path(__file__).resolve().parents[2] / "shared" / "media"))
    real = shared / "footage" / "latentsync_demo1.mp4"
    if real.exists():
        source, fps = real, probe(real).fps
    else:
        from persona.demo import make_footage

        source = Path(make_footage(tmp_path_factory.mktemp("demo"))["files"]["lecture"])
        fps = probe(source).fps
    frames = []
    for _, frame in iter_frames(source):
        if len(frames) >= round(CLIP_SECONDS * fps):
            break
        h, w = frame.shape[:2]
        frames.append(np.asarray(Image.fromarray(frame).resize((WIDTH, round(h * WIDTH / w / 2) * 2), Image.BILINEAR)))
    return frames


def clip(folder: Path, frames: list[np.ndarray], fps: float) -> Path:
    return write_video(folder / f"clip-{fps:g}.mp4", frames, fps, preset="ultrafast")


def narration(folder: Path, seconds: float, sr: int = 24000) -> Path:
    """Real speech (the f5-tts example recording), cut or repeated to `seconds`."""
    from persona.samples import speech_wav

    speech = read_audio(speech_wav(), sr)
    samples = np.resize(speech, int(round(seconds * sr)))
    return write_audio(folder / f"narration-{seconds:g}.wav", samples, sr)


@pytest.mark.slow
def test_only_the_lower_face_changes(syncer, face_frames, tmp_path):
    video = clip(tmp_path, face_frames, 25)
    job = syncer.prepare(video, narration(tmp_path, CLIP_SECONDS - 0.2))
    assert job.frames == math.ceil(round((CLIP_SECONDS - 0.2) * 25, 6)) and not job.looped
    source = [f for _, f in iter_frames(video)]
    changed = 0
    for i, out in enumerate(syncer.render(job)):
        before, box = source[i], job.crops[i]
        assert out.shape == before.shape and out.dtype == np.uint8
        diff = np.any(out != before, axis=2)
        if box is None:
            assert not diff.any()
            continue
        x0, y0, x1, y1 = box
        inside = np.zeros_like(diff)
        inside[y0:y1, x0:x1] = True
        assert not (diff & ~inside).any(), f"frame {i}: pixels outside the face box changed"
        rows = np.flatnonzero(diff.any(axis=1))
        if rows.size:
            changed += 1
            # the crop's middle line is the nose: nothing above it (and a little below) may move
            assert rows.min() >= y0 + 0.45 * (y1 - y0), f"frame {i}: changes above the lower face"
            assert rows.max() < y1
    assert job.faces_found > 0.8 * job.frames, "the detector lost the face in real footage"
    assert changed >= job.faces_found - 1
    assert job.faces_found + job.faces_missing == job.frames


@pytest.mark.slow
@pytest.mark.parametrize("fps", [16, 25, 30])
def test_frames_follow_the_narration_at_any_frame_rate(syncer, face_frames, tmp_path, fps):
    video = clip(tmp_path, face_frames, fps)
    seconds = 2 * CLIP_SECONDS + 0.13  # longer than the video: it is played back and forth
    audio = narration(tmp_path, seconds)
    out = tmp_path / "synced.mp4"
    steps: list[int] = []
    summary = syncer.sync(video, audio, out, progress=steps.append)
    want = math.ceil(round(seconds * fps, 6))
    assert summary["frames"] == want and summary["looped"]
    assert sum(steps) == want
    assert summary["faces_found"] + summary["faces_missing"] == want
    assert sum(1 for _ in iter_frames(out)) == want
    info = probe(out)
    assert abs(info.fps - fps) < 1e-3 and (info.width, info.height) == face_frames[0].shape[1::-1]
    durations = stream_durations(out)
    assert abs(durations["video"] - durations["audio"]) <= 1 / fps
    assert abs(durations["audio"] - seconds) < 0.05
    assert not list(tmp_path.glob(".musetalk-*")), "the frame spool was left behind"


@pytest.mark.slow
def test_a_longer_video_is_cut_to_the_narration(syncer, face_frames, tmp_path):
    video = clip(tmp_path, face_frames, 30)
    summary = syncer.sync(video, narration(tmp_path, 0.5), tmp_path / "short.mp4")
    assert summary["frames"] == 15 and not summary["looped"]
    assert sum(1 for _ in iter_frames(tmp_path / "short.mp4")) == 15


def test_given_boxes_skip_detection(syncer, face_frames, tmp_path):
    from persona.faces import backend

    video = clip(tmp_path, face_frames[:12], 25)
    audio = narration(tmp_path, 0.4)
    detector = backend("dlib")
    boxes = []
    for _, frame in iter_frames(video):
        found = detector.detect(frame)
        boxes.append(found[0].box if found else None)
    with_boxes = syncer.prepare(video, audio, boxes=boxes)
    detected = syncer.prepare(video, audio)
    assert sum(b is not None for b in with_boxes.crops) == sum(b is not None for b in detected.crops) > 0
    # No face given anywhere: every frame passes through untouched and is counted as missing.
    empty = syncer.prepare(video, audio, boxes=[None] * len(boxes))
    source = [f for _, f in iter_frames(video)]
    assert all(np.array_equal(a, b) for a, b in zip(syncer.render(empty), source))
    assert empty.faces_missing == empty.frames == 10 and empty.faces_found == 0
    with pytest.raises(PersonaError, match="face boxes cover 3 frames"):
        syncer.prepare(video, audio, boxes=boxes[:3])


def test_a_chosen_reference_frame(models, face_frames, tmp_path):
    from persona.inference.musetalk import FACE_SIZE, MuseTalk

    video = clip(tmp_path, face_frames[:8], 25)
    audio = narration(tmp_path, 0.2)
    mt = MuseTalk(models["musetalk"], models["sd-vae"], models["whisper-tiny"], device="cpu", reference_frame=6)
    try:
        job = mt.prepare(video, audio)  # the narration needs 5 frames; the reference is frame 6
        assert job.reference is not None and job.reference.shape == (FACE_SIZE, FACE_SIZE, 3)
        out = list(mt.render(job))
        assert len(out) == 5 and job.faces_found == 5
        with pytest.raises(PersonaError, match="reference frame 6 shows no face"):
            mt.prepare(video, audio, boxes=[None] * 8)
    finally:
        mt.close()


def test_audio_windows_follow_frame_times(syncer):
    from persona.inference.musetalk import FEATURE_RATE, WINDOW, WINDOW_BEFORE

    layers, dim = syncer.position.shape[0] // WINDOW, syncer.position.shape[1]
    steps = 120
    features = torch.arange(1, steps + 1, dtype=torch.float32)[:, None, None].expand(steps, layers, dim)
    for fps in (16, 25, 29.97, 30):
        frames = list(range(0, int(steps / FEATURE_RATE * fps)))
        windows = (syncer.audio_windows(features, frames, fps) - syncer.position)[:, ::layers, 0]
        for i, w in zip(frames, windows):
            first = math.floor(i * FEATURE_RATE / fps + 1e-6) - WINDOW_BEFORE  # feature index, 0-based
            want = [k + 1 if 0 <= k < steps else 0 for k in range(first, first + WINDOW)]  # silence beyond the ends
            assert w.round().int().tolist() == want, (fps, i)


def test_boxes_are_smoothed_and_short_gaps_bridged():
    from persona.inference.musetalk import bounce, smooth_boxes

    raw = [(100.0 + (i % 2) * 4, 50.0, 200.0, 150.0) for i in range(10)] + [None] * 3 + [(120.0, 50.0, 220.0, 150.0)] * 5
    raw += [None] * 30 + [(0.0, 0.0, 50.0, 50.0)]
    out = smooth_boxes(raw, fps=25, smooth_seconds=0.08, gap_seconds=0.2)
    assert all(b is not None for b in out[:18])  # a 3-frame gap is bridged ...
    assert all(b is None for b in out[18:48]) and out[48] is not None  # ... a 30-frame one is not
    jitter = np.std([b[0] for b in out[2:8]])
    assert jitter < np.std([b[0] for b in raw[2:8]]) / 2
    assert [bounce(i, 4) for i in range(9)] == [0, 1, 2, 3, 2, 1, 0, 1, 2]


def test_weights_holding_code_are_refused(models, tmp_path):
    from persona.inference.musetalk import load_unet

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = tmp_path / "musetalkV15"
    folder.mkdir()
    (folder / "musetalk.json").write_bytes((models["musetalk"] / "musetalkV15" / "musetalk.json").read_bytes())
    torch.save({"conv_in.weight": Payload()}, folder / "unet.pth", pickle_module=pickle)
    with pytest.raises(PersonaError) as e:
        load_unet(tmp_path)
    message = str(e.value)
    assert not marker.exists(), "unpickling ran the file's code"
    assert "unet.pth" in message and "\n" not in message and "weights_only" not in message


def test_models_are_located_or_their_fetch_command_given(models, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    from persona.inference.musetalk import MuseTalk

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty"))
    for key in ("PERSONA_MUSETALK", "PERSONA_SD_VAE", "PERSONA_WHISPER_TINY"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(PersonaError, match="hf download TMElyralab/MuseTalk --include 'musetalkV15/musetalk.json'"):
        MuseTalk.from_models({})
    with pytest.raises(PersonaError, match="hf download openai/whisper-tiny"):
        MuseTalk.from_models({"musetalk": str(models["musetalk"]), "sd-vae": str(models["sd-vae"])})
    mt = MuseTalk.from_models({k: str(v) for k, v in models.items()}, device="cpu")
    assert mt.name == "musetalk" and mt.dtype == torch.float32
    mt.close()
