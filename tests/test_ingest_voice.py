"""The voice side of `persona ingest`: speech, whose voice, clips, filters, transcripts, the dataset.

Voices come from recordings that ship in the f5-tts wheel (five different speakers, so these tests
run anywhere); the real-meeting tests in test_ingest_voice_media.py use ../shared/media.
"""

from __future__ import annotations

import csv
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from persona.samples import speech_wav
import soundfile as sf

from persona.data import clips as cliplib
from persona.data import diarize, quality, vad
from persona.data.voice import VoiceIngestSettings, ingest_voice
from persona.data.voice_dataset import missing_characters
from persona.errors import PersonaError
from persona.files import write_json
from persona.media import probe, read_audio, write_audio, write_video

SR = 24000
EXAMPLES = Path(str(files("f5_tts").joinpath("infer/examples")))
VOICES = {"town": "multi/town.flac", "main": "multi/main.flac", "country": "multi/country.flac",
          "en": "basic/basic_ref_en.wav", "zh": "basic/basic_ref_zh.wav"}


def voice(name: str, sr: int = SR) -> np.ndarray:
    return read_audio(EXAMPLES / VOICES[name], sr)


def montage(folder: Path, name: str, parts: list[str], gap: float = 0.7) -> tuple[Path, dict[str, list]]:
    """A recording of several voices one after another; returns it and who speaks when."""
    audio, truth, t = [], {}, 0.0
    for p in parts:
        x = voice(p)
        audio += [x, np.zeros(int(gap * SR), np.float32)]
        truth.setdefault(p, []).append((t, t + len(x) / SR))
        t += len(x) / SR + gap
    return write_audio(folder / name, np.concatenate(audio), SR), truth


def inside(entries: list[dict], spans: list[tuple[float, float]], slack: float = 0.25) -> bool:
    return all(any(a - slack <= e["start"] and e["end"] <= b + slack for a, b in spans) for e in entries)


def dataset(ws) -> tuple[list[dict], dict, list[list[str]]]:
    root = ws.path("datasets/voice")
    manifest = json.loads((root / "manifest.json").read_text())
    report = json.loads((root / "report.json").read_text())
    with open(root / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="|"))
    return manifest, report, rows


@pytest.fixture(scope="module")
def interview(tmp_path_factory) -> tuple[Path, dict]:
    """Four voices taking turns; `main` is the person."""
    return montage(tmp_path_factory.mktemp("interview"), "interview.wav", ["town", "main", "country", "en", "main"])


@pytest.fixture(scope="module")
def enroll_main(tmp_path_factory) -> Path:
    return write_audio(tmp_path_factory.mktemp("enroll") / "main.wav", voice("main")[: int(3.5 * SR)], SR)


# ------------------------------------------------------------------------------------------------
# building blocks
def test_vad_finds_speech_and_the_pause_between_phrases():
    x = voice("en", 16000)  # "Some call me nature, | others call me mother nature."
    probs = vad.speech_probs(x)
    assert len(probs) == pytest.approx(len(x) / 512, abs=1)
    regions = vad.speech_regions(probs)
    assert regions and regions[0][0] > 0.3 and regions[-1][1] <= len(x) / 16000 + vad.FRAME
    spans, pauses = vad.phrases(probs, 0.65)
    assert len(pauses) == len(spans) - 1
    longest = max(pauses, key=lambda p: p.length)
    assert longest.length > 0.5 and 2.0 < longest.start < 3.0  # the comma after "nature"
    assert vad.speech_fraction(probs, 0, len(x) / 16000) > 0.5


def test_quality_measures():
    rng = np.random.default_rng(0)
    x = voice("en")
    for snr in (10, 20):
        noise = rng.standard_normal(len(x)).astype(np.float32)
        noise *= np.sqrt(np.mean(x ** 2) / np.mean(noise ** 2)) * 10 ** (-snr / 20)
        assert abs(quality.wada_snr(x + noise) - snr) < 6
    assert quality.wada_snr(x) > 30 and quality.wada_snr(rng.standard_normal(SR)) < 0
    assert quality.clipping(np.clip(x * 20, -1, 1)) > 0.01 and quality.clipping(x) == 0
    assert quality.bandwidth(x, SR) > 10000
    narrow = read_audio(EXAMPLES / VOICES["en"], 8000)  # telephone band, back at 24 kHz
    from scipy.signal import resample_poly

    assert quality.bandwidth(resample_poly(narrow, 3, 1), SR) < 4500
    louder = cliplib.normalise_loudness(x * 0.1, SR, -20.0)
    assert quality.loudness(louder, SR) == pytest.approx(-20.0, abs=0.5)
    assert quality.rate_outliers({0: 14.0, 1: 2.0, 2: 50.0}, 4, 30).keys() == {1, 2}


def test_clusters_and_enrollment_checks():
    from persona.speakers import default_encoder

    enc = default_encoder()
    two = np.concatenate([voice("en", 16000), voice("zh", 16000)])
    an = diarize.analyse(two, enc, 0.5, 0.3)
    assert an.n_clusters >= 2 and np.bincount(an.labels)[0] == np.bincount(an.labels).max()
    assert "several voices" in diarize.enrollment_problem(an, enc.same_voice)
    assert diarize.enrollment_problem(diarize.analyse(voice("town", 16000), enc, 0.5, 0.3), enc.same_voice) is None
    silent = diarize.analyse(np.zeros(16000 * 3, np.float32), enc, 0.5, 0.3)
    assert "0.0 s of speech" in diarize.enrollment_problem(silent, enc.same_voice)


def test_plan_clips_cuts_only_at_pauses_and_skips_unclean_phrases():
    spans = [(0.5, 2.0), (2.1, 4.0), (4.5, 6.0), (6.05, 9.0), (9.4, 10.0), (12.0, 17.0)]
    pauses = [vad.Pause(a[1], b[0], 0.9) for a, b in zip(spans, spans[1:])]
    mask = np.ones(2000, bool)
    mask[470:520] = False  # someone else inside the third phrase
    out = cliplib.plan_clips(spans, pauses, mask, 0.01, 3.0, 12.0, 0.2, duration=20.0)
    starts, ends = {a for a, _ in spans}, {b for _, b in spans}
    assert out
    for c in out:
        assert 3.0 <= c.duration <= 12.0 and c.speech_start in starts and c.speech_end in ends
        assert not (c.start < 5.2 and c.end > 4.7)  # never over the unclean phrase
        assert c.start <= c.speech_start - 0.02 and c.end >= c.speech_end  # silence kept at the ends
    assert not any(c.speech_start < 10.5 < c.speech_end for c in out)  # the 2 s pause is never inside a clip


def test_settings_are_checked():
    with pytest.raises(ValueError, match="min_clip"):
        VoiceIngestSettings(min_clip=12, max_clip=3)
    with pytest.raises(ValueError):
        VoiceIngestSettings(min_clipp=3)


def test_missing_characters_against_f5_vocab():
    assert missing_characters(["Hello, world!", "It's 5 o'clock."]) == []
    assert missing_characters(["I ♥ naïve cafés 😀"]) == ["♥", "😀"]
    assert "|" in missing_characters(["a|b"])


# ------------------------------------------------------------------------------------------------
# the whole voice side
def test_enrollment_keeps_only_the_person(make_workspace, interview, enroll_main):
    src, truth = interview
    ws = make_workspace(models=False)
    summary = ingest_voice(ws, [src], VoiceIngestSettings(), enroll=[enroll_main])
    manifest, report, rows = dataset(ws)
    assert summary["target"] == "enrollment" and report["target"]["files"] == [str(enroll_main)]
    assert manifest and inside(manifest, truth["main"])
    assert summary["clips"] == len(manifest) and summary["seconds"] == pytest.approx(sum(e["duration"] for e in manifest), abs=0.05)
    for e in manifest:
        wav = ws.path("datasets/voice") / e["file"]
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert info.duration == pytest.approx(e["end"] - e["start"], abs=0.01) and 3.0 <= info.duration <= 12.0
        assert e["text"] is None and e["speaker_similarity"] > 0.8 and e["snr_db"] > 15
        assert e["source"] == str(src)
    # no ASR model: clips kept untranscribed, metadata has only its header, the fix is given
    assert rows == [["audio_file", "text"]]
    assert summary["transcription"] == "no-model" and "hf download" in report["transcription"]["fix"]
    assert ws.pack.datasets.voice == "datasets/voice"
    assert not list(ws.path("datasets").glob(".voice*"))  # no staging folder left


def test_presence_picks_the_voice_heard_on_screen(make_workspace, interview):
    src, truth = interview
    ws = make_workspace(models=False)
    write_json(ws.path("datasets/images/presence.json"), {str(src.resolve()): [list(s) for s in truth["country"]]})
    summary = ingest_voice(ws, [src], VoiceIngestSettings())
    manifest, report, _ = dataset(ws)
    assert summary["target"] == "presence" and report["target"]["files"] == [str(src.resolve())]
    assert manifest and inside(manifest, truth["country"])


def test_most_talkative_voice_without_other_hints(make_workspace, tmp_path):
    src, truth = montage(tmp_path, "talk.wav", ["town", "en", "town", "main"])
    ws = make_workspace(models=False)
    summary = ingest_voice(ws, [src], VoiceIngestSettings())
    manifest, _, _ = dataset(ws)
    assert summary["target"] == "most-talkative"
    assert manifest and inside(manifest, truth["town"])


def test_bad_inputs_are_named_and_the_rest_goes_on(make_workspace, interview, enroll_main, tmp_path):
    src, truth = interview
    silent = write_audio(tmp_path / "silence.wav", np.zeros(SR * 4, np.float32), SR)
    mute = write_video(tmp_path / "mute.mp4", [np.zeros((64, 64, 3), np.uint8)] * 10, 25)
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    two_voices = write_audio(tmp_path / "two.wav", np.concatenate([voice("en"), voice("zh")]), SR)
    ws = make_workspace(models=False)
    summary = ingest_voice(ws, [silent, mute, corrupt, src, tmp_path / "missing.wav"], VoiceIngestSettings(),
                           enroll=[two_voices, enroll_main])
    problems = {Path(p["file"]).name: p["problem"] for p in summary["problems"]}
    assert "no speech" in problems["silence.wav"]
    assert "no audio track" in problems["mute.mp4"]
    assert "cannot be read" in problems["corrupt.mp3"] or "decoded" in problems["corrupt.mp3"]
    assert "does not exist" in problems["missing.wav"]
    assert "several voices" in problems["two.wav"]
    manifest, report, _ = dataset(ws)
    assert manifest and inside(manifest, truth["main"]) and report["problems"] == summary["problems"]


def test_nothing_usable_raises_and_writes_nothing(make_workspace, interview, tmp_path):
    src, _ = interview
    silent = write_audio(tmp_path / "silence.wav", np.zeros(SR * 4, np.float32), SR)
    ws = make_workspace(models=False)
    with pytest.raises(PersonaError, match="none of the 1 input files"):
        ingest_voice(ws, [silent], VoiceIngestSettings())
    two_voices = write_audio(tmp_path / "two.wav", np.concatenate([voice("en"), voice("zh")]), SR)
    with pytest.raises(PersonaError, match="--voice") as e:
        ingest_voice(ws, [src], VoiceIngestSettings(), enroll=[two_voices])
    assert e.value.file == two_voices
    alone = write_audio(tmp_path / "zh.wav", voice("zh"), SR)  # a voice never heard in the interview
    with pytest.raises(PersonaError, match="no clip of the target"):
        ingest_voice(ws, [src], VoiceIngestSettings(), enroll=[alone])
    assert not ws.path("datasets").exists() or not any(ws.path("datasets").iterdir())
    assert ws.pack.datasets.voice is None


# ------------------------------------------------------------------------------------------------
# transcripts on the tiny Whisper and alignment models
def test_transcripts_are_added_on_a_rerun_and_cached(make_workspace, tiny_models, interview, enroll_main, capfd):
    src, truth = interview
    ws = make_workspace(models=False)
    first = ingest_voice(ws, [src], VoiceIngestSettings(), enroll=[enroll_main])
    analysis = sorted(ws.path("cache/ingest/voice/analysis").glob("*.npz"))
    stamps = [p.stat().st_mtime_ns for p in analysis]
    assert first["transcribed"] == 0 and first["untranscribed"] > 0

    ws.update("models", {"whisper": str(tiny_models["whisper"]), "align-en": str(tiny_models["align-en"])})
    settings = VoiceIngestSettings(min_asr_logprob=None)  # a random-weight model is never sure of anything
    second = ingest_voice(ws, [src], settings, enroll=[enroll_main])
    manifest, report, rows = dataset(ws)
    assert [p.stat().st_mtime_ns for p in analysis] == stamps  # the analysis was not redone
    assert report["transcription"]["status"] == "done" and report["transcription"]["transcribed_now"] > 0
    assert second["transcribed"] == len([e for e in manifest if e["text"]]) > 0
    assert rows[0] == ["audio_file", "text"] and len(rows) == second["transcribed"] + 1
    for path, text in rows[1:]:
        assert Path(path).is_absolute() and Path(path).exists() and text
        assert Path(path).parent == ws.path("datasets/voice/wavs")
    assert inside(manifest, truth["main"])
    transcripts = list(ws.path("cache/ingest/voice/transcripts").glob("*.json"))
    words = json.loads(transcripts[0].read_text())["words"]
    assert words and all(0 <= w["start"] <= w["end"] for w in words)

    third = ingest_voice(ws, [src], settings, enroll=[enroll_main])
    _, report3, rows3 = dataset(ws)
    assert report3["transcription"]["transcribed_now"] == 0 and rows3 == rows and third["clips"] == second["clips"]
    assert capfd.readouterr().out == ""  # stdout stays free for --json summaries


def test_reference_clip_is_5_to_11_s_with_its_transcript(make_workspace, tiny_models, tmp_path):
    src, _ = montage(tmp_path, "town.wav", ["town", "town"], gap=1.5)
    ws = make_workspace()
    summary = ingest_voice(ws, [src], VoiceIngestSettings(min_asr_logprob=None, max_chars_per_second=1000))
    manifest, report, _ = dataset(ws)
    ref = report["reference"]
    assert summary["reference"] == "datasets/voice/reference.wav" and ref is not None
    entry = next(e for e in manifest if e["file"] == ref["clip"])
    assert 5.0 <= entry["duration"] <= 11.0
    root = ws.path("datasets/voice")
    assert (root / "reference.txt").read_text().strip() == entry["text"] == ref["text"]
    assert (root / "reference.wav").read_bytes() == (root / entry["file"]).read_bytes()


def test_demo_footage(make_workspace, demo_footage):
    """The demo's videos and speech: the same recording (the f5-tts example) in every file."""
    ws = make_workspace()
    on_screen = {str(Path(demo_footage["files"][k]).resolve()): v
                 for k, v in (("lecture", demo_footage["persona_on_screen"]["lecture.mp4"]),
                              ("interview", demo_footage["persona_on_screen"]["interview.mp4"]))}
    write_json(ws.path("datasets/images/presence.json"), on_screen)
    sources = [Path(p) for p in demo_footage["files"].values()]
    summary = ingest_voice(ws, sources, VoiceIngestSettings(min_asr_logprob=None))
    manifest, report, rows = dataset(ws)
    assert summary["target"] == "presence"
    assert {Path(e["source"]).name for e in manifest} == {"lecture.mp4", "interview.mp4", "speech.wav"}
    sentence = probe(speech_wav()).duration  # the persona says it twice per file, with pauses between
    for e in manifest:
        assert 3.0 <= e["duration"] <= 12.0 and 0 <= e["start"] < e["end"] <= probe(e["source"]).duration + 0.01
        assert e["duration"] > 0.75 * sentence  # a whole sentence, cut at the pauses around it
        assert e["text"]
    assert len(rows) == len(manifest) + 1
    assert probe(ws.path("datasets/voice") / manifest[0]["file"]).sample_rate == SR


# ------------------------------------------------------------------------------------------------
# whose voice: several enrollment clips, enrollment against presence
def test_enrollment_clips_combine_and_must_be_one_person(make_workspace, interview, tmp_path):
    src, truth = interview
    main = voice("main")
    halves = [write_audio(tmp_path / f"main{i}.wav", x, SR) for i, x in enumerate(np.array_split(main, 2))]
    ws = make_workspace(models=False)
    ingest_voice(ws, [src], VoiceIngestSettings(), enroll=halves)
    manifest, report, _ = dataset(ws)
    assert report["target"]["files"] == [str(h) for h in halves] and len(report["target"]["clip_agreement"]) == 2
    assert manifest and inside(manifest, truth["main"])
    (source,) = report["sources"]
    assert source["decision"].startswith("voice similarity") and source["target_margin"] >= 0.1
    assert [c["role"] for c in source["clusters"]].count("target") >= 1
    assert {"cluster", "similarity", "margin", "role", "seconds"} <= set(source["clusters"][0])
    town = write_audio(tmp_path / "town.wav", voice("town"), SR)
    with pytest.raises(PersonaError, match="not all one person") as e:
        ingest_voice(make_workspace("Other", models=False), [src], VoiceIngestSettings(), enroll=[halves[0], town])
    assert e.value.file in (halves[0], town)


def test_enrollment_wins_over_presence_with_a_warning(make_workspace, interview, enroll_main, capfd):
    src, truth = interview
    ws = make_workspace(models=False)
    write_json(ws.path("datasets/images/presence.json"), {str(src.resolve()): [list(s) for s in truth["country"]]})
    summary = ingest_voice(ws, [src], VoiceIngestSettings(), enroll=[enroll_main])
    manifest, report, _ = dataset(ws)
    assert summary["target"] == "enrollment" and manifest and inside(manifest, truth["main"])
    assert report["target"]["presence"] == [{"file": str(src), "on_screen_cluster": report["target"]["presence"][0]["on_screen_cluster"],
                                             "enrolled_clusters": report["target"]["presence"][0]["enrolled_clusters"],
                                             "agree": False}]
    assert "following the --voice enrollment" in capfd.readouterr().err


# ------------------------------------------------------------------------------------------------
# the optional speaker encoder (pyannote/WeSpeaker ResNet), on its tiny random-weight build
def test_speaker_embedding_checkpoint_loads_safely_and_embeds(tiny_models, tmp_path):
    import torch

    from persona.speakers import WeSpeaker, encoder_for

    path = tiny_models["speaker-embedding"]
    enc = encoder_for({"speaker-embedding": str(path)})
    assert isinstance(enc, WeSpeaker) and enc.model.embed_dim == 32 and enc.feat_dim == 80
    assert type(encoder_for({})).__name__ == "Resemblyzer"  # nothing located: the built-in encoder
    wav = voice("town", 16000)
    starts = np.arange(0, len(wav) / 16000 - enc.window, 0.4)
    emb = enc.embed_windows(wav, starts)
    assert emb.shape == (len(starts), 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # one pass over the speech gives each window what the window alone would (up to edge effects)
    alone = enc.embed_windows(wav, starts[5:6])
    assert float(alone[0] @ emb[5]) > 0.95 and not np.allclose(emb[0], emb[-1])
    # the same tensors as safetensors load the same network
    from safetensors.torch import save_file

    state = torch.load(path / "pytorch_model.bin", weights_only=False)["state_dict"]  # our own file, in a test
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    again = WeSpeaker(tmp_path / "model.safetensors").embed_windows(wav, starts)
    assert np.allclose(again, emb, atol=1e-5)


class Payload:  # a class no checkpoint should be able to make torch.load construct
    def __reduce__(self):
        return (print, ("ran code while loading",))


def test_speaker_embedding_refuses_pickled_code(tmp_path, capfd):
    import torch

    from persona.speakers import WeSpeaker

    torch.save({"state_dict": {}, "hook": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(PersonaError, match="cannot read safely|read safely") as e:
        WeSpeaker(tmp_path)
    assert e.value.file == tmp_path / "pytorch_model.bin" and "ran code" not in capfd.readouterr().out


def test_ingest_uses_the_speaker_embedding_model_when_configured(make_workspace, tiny_models, tmp_path):
    src, _ = montage(tmp_path, "talk.wav", ["town", "town", "town"])
    ws = make_workspace(models=False)
    ws.update("models", {"speaker-embedding": str(tiny_models["speaker-embedding"])})
    try:
        ingest_voice(ws, [src], VoiceIngestSettings())
    except PersonaError:
        pass  # random weights decide nothing useful; what matters is which encoder analysed the file
    report = ws.path("datasets/voice/report.json")
    analysis = list(ws.path("cache/ingest/voice/analysis").glob("*.npz"))
    assert len(analysis) == 1
    with np.load(analysis[0]) as z:
        assert z["embeddings"].shape[1] == 32  # the tiny WeSpeaker's size, not Resemblyzer's 256
    if report.exists():
        assert json.loads(report.read_text())["target"]["encoder"].startswith("wespeaker:")
