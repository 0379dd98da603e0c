"""Likeness scores on real footage and speech from ../shared/media (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from persona import faces as fx
from persona import likeness as lk
from persona.files import read_json, write_json
from persona.media import iter_frames, probe, read_audio, write_audio, write_video

MAN, WOMAN = "latentsync_demo2.mp4", "latentsync_demo1.mp4"  # one person each (media README)
SR = 16000


def _frames(path: Path, start: float, end: float, fps: float | None = None, side: int = 640) -> list[np.ndarray]:
    out = []
    for t, rgb in iter_frames(path, fps):
        if t >= end:
            break
        if t >= start:
            out.append(lk._small(rgb, side))
    return out


def _embeddings(frames: list[np.ndarray]) -> np.ndarray:
    be = fx.backend("dlib")
    out = []
    for rgb in frames:
        face = lk.main_face(rgb, be)
        assert face is not None
        out.append(be.embed(rgb, face))
    return np.array(out)


@pytest.fixture(scope="module")
def footage(shared_media) -> Path:
    return shared_media / "footage"


def test_reference_face_ignores_outliers():
    rng = np.random.default_rng(0)
    emb = rng.normal(0, 0.01, (10, 128)).astype(np.float32)
    emb[0] += 5.0  # one wrong face
    assert np.abs(lk.reference_face(emb)).max() < 0.05
    assert np.abs(emb.mean(0)).max() > 0.4  # the plain mean is pulled away


def test_person_within_threshold_and_another_above(footage):
    man = _frames(footage / MAN, 0, 20, fps=1)
    reference = lk.reference_face(_embeddings(man[:10]))  # the first 10 s
    later = lk.face_distances(man[12:16], reference)  # other moments of him
    other = lk.face_distances(_frames(footage / WOMAN, 0, 4, fps=1), reference)
    match = fx.backend("dlib").match_distance
    assert all(d is not None and d < match for d in later), later
    assert all(d is not None and d > match for d in other), other
    blank = np.full((480, 270, 3), 128, np.uint8)
    assert lk.face_distances([blank], reference) == [None]


def test_speaker_similarity_ranks_the_person_above_another(shared_media):
    ami = shared_media / "speech" / "ami"
    # FEE083 alone in one meeting (train.rttm) is the reference; her voice in another meeting should
    # rank above FEE087's.
    trn06 = read_audio(ami / "trn06.wav", SR)
    enrol = np.concatenate([trn06[0: int(3.5 * SR)], trn06[int(18 * SR): int(21.7 * SR)], trn06[int(22.4 * SR):]])
    reference = lk.voice_embedding(enrol, SR)
    person = read_audio(ami / "trn09.wav", SR, 6.1, 12.8)
    other = read_audio(ami / "trn08.wav", SR, 12.0, 19.6)
    same, different = lk.speaker_similarity(person, SR, reference), lk.speaker_similarity(other, SR, reference)
    assert -1 <= different < same <= 1, (same, different)
    # a different sample rate goes through the same resampling
    at_48k = read_audio(ami / "trn09.wav", 48000, 6.1, 12.8)
    assert lk.speaker_similarity(at_48k, 48000, reference) == pytest.approx(same, abs=0.03)


def test_sync_check_prefers_the_mouth_that_moves_with_the_audio(footage):
    frames = _frames(footage / MAN, 0, 8)
    fps = probe(footage / MAN).fps
    wav = read_audio(footage / MAN, SR)[: 8 * SR]
    blocks = wav.reshape(-1, SR)  # the same speech, its seconds in another order
    shuffled = blocks[np.random.default_rng(0).permutation(len(blocks))].reshape(-1)
    real, other = lk.sync_check(frames, fps, wav, SR), lk.sync_check(frames, fps, shuffled, SR)
    assert real["correlation"] > other["correlation"] + 0.1, (real, other)
    assert abs(real["lag"]) <= lk.MAX_LAG + 1e-6


def test_render_report_scores_scenes_and_plots(footage, make_workspace):
    ws = make_workspace()
    man = _frames(footage / MAN, 0, 20, fps=1, side=480)
    lk.write_reference_face(ws.path(lk.REFERENCE_FACE), _embeddings(man[10:]))
    voice = read_audio(footage / MAN, SR)
    write_json(ws.path(lk.REFERENCE_VOICE), {"encoder": "resemblyzer", "clips": 1,
                                             "embedding": lk.voice_embedding(voice[10 * SR:], SR).tolist()})
    root = ws.root / "renders" / "demo"
    # scene 01: his own footage, lip synced to its own audio; scene 02: a generated scene of someone else
    s1, s2 = root / "scenes" / "01", root / "scenes" / "02"
    s1.mkdir(parents=True)
    s2.mkdir(parents=True)
    fps = probe(footage / MAN).fps
    talk = _frames(footage / MAN, 0, 4, side=480)
    talk = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in talk]
    write_video(s1 / "finished.mp4", talk, fps, preset="ultrafast")
    write_video(s1 / "synced.mp4", talk, fps, preset="ultrafast")
    write_audio(s1 / "narration.wav", voice[: 4 * SR], SR)
    woman = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in _frames(footage / WOMAN, 0, 3, fps=5, side=480)]
    write_video(s2 / "finished.mp4", woman, 5, preset="ultrafast")
    Image.fromarray(woman[0]).save(s2 / "keyframe.png")
    write_audio(s2 / "narration.wav", read_audio(footage / WOMAN, SR)[: 3 * SR], SR)
    write_json(root / "render.json", {"sources": {"01": "footage", "02": "generated"}})

    report = lk.render_report(ws, root)
    print("\n" + report["summary"])

    match = report["match_distance"]
    one, two = report["scenes"]
    assert one["source"] == "footage" and two["source"] == "generated"
    assert one["frames"] and all(d is not None and d < match for _, d in one["frames"])
    assert two["keyframe_distance"] > match and two["worst_distance"] > match
    assert "keyframe_distance" not in one
    assert 0 < one["speaker_similarity"] <= 1 and -1 <= two["speaker_similarity"] <= 1
    assert one["speaker_similarity"] > two["speaker_similarity"]
    assert -1 <= one["sync"]["correlation"] <= 1 and abs(one["sync"]["lag"]) <= lk.MAX_LAG + 1e-6
    assert "sync" not in two
    assert report["worst"]["scene"] == "02" and report["worst"]["second"] >= one["seconds"]
    assert "scene 02" in report["summary"] and "ABOVE" in report["summary"]
    png = Image.open(root / "likeness.png")
    assert png.size[0] > 500 and report["plot"] == "likeness.png"


def test_render_report_without_references_is_skipped(make_workspace):
    ws = make_workspace()
    report = lk.render_report(ws, ws.root / "renders" / "none")
    assert set(report) == {"skipped"} and "persona ingest" in report["skipped"]


def test_ingest_stores_the_reference_face(shared_media, make_workspace, tmp_path):
    import people_footage as people

    from persona.data.images import ImageSettings, ingest_images

    built = people.build(shared_media / "footage", tmp_path / "people")
    ws = make_workspace("Bearded Man", models=False)
    ingest_images(ws, built["videos"], [], ImageSettings(count=6, min_face=80, max_upscale=8.0, sample_every=1.0),
                  faces=[built["reference"]])
    record = read_json(ws.path(lk.REFERENCE_FACE))
    assert record["backend"] == "dlib" and record["faces"] >= 5 and len(record["embedding"]) == 128
    reference = np.asarray(record["embedding"], np.float32)
    him = np.asarray(Image.open(built["reference"]).convert("RGB"))  # a moment in none of the videos
    [d] = lk.face_distances([him], reference)
    assert d is not None and d < record["match_distance"]


def test_ingest_stores_the_reference_voice(shared_media, make_workspace):
    from persona.data.voice import VoiceIngestSettings, ingest_voice

    ami = shared_media / "speech" / "ami"
    ws = make_workspace(models=False)
    ingest_voice(ws, [ami / "trn09.wav"], VoiceIngestSettings())  # FEE083 talks most
    record = read_json(ws.path(lk.REFERENCE_VOICE))
    kept = len(list(ws.path("datasets/voice/wavs").glob("*.wav")))
    assert record["clips"] == kept > 0 and record["encoder"].startswith("resemblyzer")
    reference = np.asarray(record["embedding"], np.float32)
    assert np.linalg.norm(reference) == pytest.approx(1.0, abs=1e-3)
    her = lk.speaker_similarity(read_audio(ami / "trn06.wav", SR, 18.0, 21.7), SR, reference)  # another meeting
    other = lk.speaker_similarity(read_audio(ami / "trn08.wav", SR, 12.0, 19.6), SR, reference)  # FEE087
    assert her > other, (her, other)
