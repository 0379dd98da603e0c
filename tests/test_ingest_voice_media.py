"""The voice side of ingest on real meeting recordings with ground truth of who speaks when
(AMI excerpts in ../shared/media/speech, RTTM). Skipped when ../shared is absent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from persona.data.voice import VoiceIngestSettings, ingest_voice
from persona.errors import PersonaError
from persona.media import read_audio, write_audio

pytestmark = pytest.mark.media
STEP = 0.01


def turns(rttm: Path, recording: str) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for line in rttm.read_text(encoding="utf-8").splitlines():
        f = line.split()
        if f and f[1] == recording:
            out.setdefault(f[7], []).append((float(f[3]), float(f[3]) + float(f[4])))
    return out


def figures(kept: list[tuple[float, float]], who: dict, target: str, duration: float) -> tuple[float, float, float]:
    """(share of kept seconds where the target speaks alone, share of the target's solo speech in
    runs of 3 s or more that is kept, kept seconds)."""
    t = np.arange(0, duration, STEP)

    def active(spans):
        m = np.zeros(len(t), bool)
        for a, b in spans:
            m |= (t >= a) & (t < b)
        return m

    solo = active(who[target]) & ~active([s for k, v in who.items() if k != target for s in v])
    long = np.zeros(len(t), bool)
    edges = np.flatnonzero(np.diff(np.r_[0, solo.astype(int), 0]))
    for a, b in zip(edges[::2], edges[1::2]):
        if (b - a) * STEP >= 3.0:
            long[a:b] = True
    k = active(kept)
    return float((k & solo).sum() / max(k.sum(), 1)), float((k & long).sum() / max(long.sum(), 1)), float(k.sum() * STEP)


def kept_spans(ws) -> list[tuple[float, float]]:
    manifest = json.loads(ws.path("datasets/voice/manifest.json").read_text())
    return [(e["start"], e["end"]) for e in manifest]


@pytest.mark.parametrize("enroll, search, must_recall", [
    (("trn06", 13.6, 21.7), "trn09", True),
    (("trn09", 6.1, 12.8), "trn06", False),
])
def test_enrolled_speaker_is_found_alone_in_another_meeting(shared_media, make_workspace, tmp_path, enroll, search,
                                                           must_recall):
    ami = shared_media / "speech" / "ami"
    name, a, b = enroll
    clip = write_audio(tmp_path / "enroll.wav", read_audio(ami / f"{name}.wav", 16000, a, b), 16000)
    ws = make_workspace(models=False)
    ingest_voice(ws, [ami / f"{search}.wav"], VoiceIngestSettings(), enroll=[clip])
    purity, recall, seconds = figures(kept_spans(ws), turns(ami / "train.rttm", search), "FEE083", 30.0)
    print(f"\nFEE083 enrolled from {name} {a}-{b} s, searched in {search}: kept {seconds:.1f} s, "
          f"{purity:.0%} of it FEE083 alone; {recall:.0%} of FEE083's solo runs >= 3 s kept")
    assert purity >= 0.9
    if must_recall:
        assert recall >= 0.5


@pytest.mark.parametrize("enroll, search", [(("trn06", 13.6, 21.7), "trn08"), (("trn03", 1.2, 15.0), "trn09")])
def test_a_speaker_absent_from_the_meeting_yields_nothing(shared_media, make_workspace, tmp_path, enroll, search):
    ami = shared_media / "speech" / "ami"
    name, a, b = enroll
    clip = write_audio(tmp_path / "enroll.wav", read_audio(ami / f"{name}.wav", 16000, a, b), 16000)
    with pytest.raises(PersonaError, match="no clip of the target"):
        ingest_voice(make_workspace(models=False), [ami / f"{search}.wav"], VoiceIngestSettings(), enroll=[clip])


def test_most_talkative_speaker_of_a_meeting(shared_media, make_workspace):
    ami = shared_media / "speech" / "ami"
    ws = make_workspace(models=False)
    summary = ingest_voice(ws, [ami / "trn09.wav"], VoiceIngestSettings())
    purity, recall, seconds = figures(kept_spans(ws), turns(ami / "train.rttm", "trn09"), "FEE083", 30.0)
    print(f"\nmost talkative in trn09 (FEE083): kept {seconds:.1f} s, {purity:.0%} FEE083 alone, {recall:.0%} recall")
    assert summary["target"] == "most-talkative" and purity >= 0.9
