"""The voice side of `persona ingest`: a clean single-speaker dataset for F5-TTS.

footage and audio files -> speech (silero-vad) -> whose voice (enrollment clips, else the voice
heard while the person is on screen, else the most talkative voice) -> clusters within each
recording and only the time where the target speaks alone -> 3-12 s clips cut at pauses ->
quality filters -> transcripts with word times (faster-whisper + whisperx.align) -> the dataset.

Writes `datasets/voice/` (wavs/NNNN.wav at 24 kHz mono, metadata.csv for F5-TTS's
prepare_csv_wavs, manifest.json, report.json, reference.wav + reference.txt) through a staging
folder that replaces the old dataset only when complete, and records [datasets].voice in
persona.toml. Per-file analyses and per-clip transcripts are cached under `cache/ingest/voice/`
(keyed by content hashes and settings), so a re-run redoes only what changed: adding ASR models
later only transcribes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from persona.data import clips as cliplib
from persona.data import diarize, quality, review, vad
from persona.data import voice_dataset as vd
from persona.speakers import SpeakerEncoder, encoder_for, unit
from persona.errors import PersonaError
from persona.files import atomic_path, hash_file, hash_json, read_json, remembered_hash, staged_dir, write_json
from persona import likeness
from persona.lock import locked
from persona.media import probe, read_audio, write_audio
from persona.progress import info, meter, warn

if TYPE_CHECKING:
    from persona.workspace import Workspace

DATASET = "datasets/voice"
PRESENCE = "datasets/images/presence.json"
CACHE = "cache/ingest/voice"
CLIP_RATE = 24000  # F5-TTS's sample rate
ANALYSIS_RATE = 16000
HOLD_SECONDS = 1800  # decoded audio kept in memory between passes, beyond this it is decoded again
TYPOGRAPHIC = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"'})


class VoiceIngestSettings(BaseModel):
    """Settings of the voice side of `persona ingest` (recipe kind `ingest-voice`)."""

    model_config = ConfigDict(extra="forbid")

    min_clip: float = Field(3.0, gt=0, description="shortest clip (s)")
    max_clip: float = Field(12.0, gt=0, description="longest clip (s)")
    edge_silence: float = Field(0.2, ge=0, description="silence kept at each end of a clip, at most (s)")
    max_pause: float = Field(1.0, gt=0, description="longest pause inside a clip (s)")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="silero speech probability")
    pause_threshold: float = Field(0.65, gt=0, lt=1, description="a dip of the speech probability below this "
                                   "is a pause between words, where a clip may be cut")
    cluster_distance: float = Field(0.3, gt=0, lt=2, description="cosine distance that separates speaker clusters")
    target_floor: float | None = Field(None, ge=-1, le=1, description="a voice below this similarity to the profile is "
                                       "never the target's (None: the speaker encoder's own floor)")
    target_margin: float = Field(0.1, ge=0, le=2, description="... and the closest voice must lead the recording's "
                                 "next voice by this much (the only voice: clear the floor by twice this)")
    same_voice: float | None = Field(None, ge=-1, le=1, description="clusters whose centroids are this alike are one "
                                     "voice (None: the speaker encoder's own level)")
    window_similarity: float = Field(0.80, ge=-1, le=1, description="a window is the target's at this similarity to "
                                     "its voice in the recording (lowered, not below 0.7, for a widely varying voice)")
    speaker_margin: float = Field(0.08, ge=0, description="... and this much closer to it than to any other voice")
    min_snr_db: float = 15.0
    max_clipping: float = Field(0.001, ge=0, description="share of samples at full scale")
    min_bandwidth_hz: float = 6000.0
    min_loudness_lufs: float = -45.0
    loudness_lufs: float = Field(-20.0, description="clips are normalised to this integrated loudness")
    min_speech_ratio: float = Field(0.5, ge=0, le=1, description="share of a clip's frames that are speech")
    transcribe: bool = True
    language: str = "en"
    beam_size: int = Field(5, ge=1)
    min_asr_logprob: float | None = Field(-1.0, description="drop clips Whisper is unsure about (None: keep)")
    drop_truncated: bool = Field(True, description="drop clips whose transcript hit the token limit (a looping recogniser)")
    min_chars_per_second: float = 4.0
    max_chars_per_second: float = 30.0
    reference_min: float = 5.0
    reference_max: float = 11.0

    @model_validator(mode="after")
    def _ranges(self) -> "VoiceIngestSettings":
        if self.min_clip >= self.max_clip:
            raise ValueError(f"min_clip ({self.min_clip}) must be below max_clip ({self.max_clip})")
        return self

    def scale(self, encoder: SpeakerEncoder) -> tuple[float, float]:
        """(floor, same_voice) on this encoder's similarity scale."""
        return (encoder.floor if self.target_floor is None else self.target_floor,
                encoder.same_voice if self.same_voice is None else self.same_voice)

    def analysis_key(self) -> dict[str, Any]:
        return {"vad_threshold": self.vad_threshold, "cluster_distance": self.cluster_distance}


# ------------------------------------------------------------------------------------------------
@dataclass
class Source:
    path: Path
    analysis: diarize.Analysis
    decision: diarize.Decision | None = None
    plan: list[cliplib.Clip] = field(default_factory=list)
    problem: str | None = None


@dataclass
class Candidate:
    source: Source
    clip: cliplib.Clip
    wav: Path  # the normalised clip in the staging folder
    metrics: dict[str, Any]
    reasons: list[dict[str, str]] = field(default_factory=list)
    text: str | None = None
    words: list[dict[str, Any]] = field(default_factory=list)


class Problems:
    """Per-file problems: shown as they happen, kept for the report; the other files go on."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, path: Path, problem: str, fix: str = "") -> None:
        self.items.append({"file": str(path), "problem": problem, "fix": fix})
        warn(f"{path}: {problem}" + (f" — {fix}" if fix else ""))


def _load(path: Path, held: dict[Path, np.ndarray]) -> np.ndarray:
    if path in held:
        return held[path]
    audio = read_audio(path, CLIP_RATE)
    if sum(len(a) for a in held.values()) + len(audio) <= HOLD_SECONDS * CLIP_RATE:
        held[path] = audio
    return audio


def _to_analysis_rate(audio: np.ndarray) -> np.ndarray:
    from scipy.signal import resample_poly

    return resample_poly(audio, ANALYSIS_RATE, CLIP_RATE).astype(np.float32)


def _analysis_path(cache: Path, digest: str, settings: VoiceIngestSettings, encoder: SpeakerEncoder) -> Path:
    return cache / "analysis" / f"{hash_json([digest, settings.analysis_key(), encoder.name])}.npz"


def _analyse(path: Path, digest: str, cache: Path, settings: VoiceIngestSettings, encoder: SpeakerEncoder,
             held: dict[Path, np.ndarray]) -> diarize.Analysis:
    store = _analysis_path(cache, digest, settings, encoder)
    if store.exists():
        try:
            with np.load(store) as z:
                return diarize.Analysis(float(z["duration"]), z["probs"], z["starts"], z["embeddings"],
                                                z["labels"], float(z["window"]))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    audio = _load(path, held)
    an = diarize.analyse(_to_analysis_rate(audio), encoder, settings.vad_threshold, settings.cluster_distance)
    with atomic_path(store, suffix=".npz") as tmp:
        np.savez(tmp, duration=an.duration, probs=an.probs, starts=an.starts, embeddings=an.embeddings,
                 labels=an.labels, window=an.window)
    return an


# ------------------------------------------------------------------------------------------------
def _profile_from_enrollment(enroll: list[Path], settings: VoiceIngestSettings, encoder: SpeakerEncoder,
                             problems: Problems) -> dict[str, Any]:
    """One profile from every usable clip: each clip's voice counts once, however long it is, so
    clips from several recordings (microphones, days) average out the channel of each."""
    floor, same_voice = settings.scale(encoder)
    voices, used = [], []
    for path in enroll:
        try:
            wav = read_audio(path, ANALYSIS_RATE)
        except PersonaError as e:
            problems.add(path, f"enrollment clip unusable: {e.message}", e.fix or "")
            continue
        an = diarize.analyse(wav, encoder, settings.vad_threshold, settings.cluster_distance)
        problem = diarize.enrollment_problem(an, same_voice)
        if problem:
            problems.add(path, f"enrollment clip {problem}", "give a clip of the person speaking alone (5-30 s)")
            continue
        voices.append(unit(an.embeddings.mean(0)))
        used.append(path)
    if not voices:
        raise PersonaError("none of the --voice clips can serve as enrollment (see the warnings above)",
                           file=enroll[0] if len(enroll) == 1 else None,
                           fix="give clips of the person speaking alone, or leave out --voice to pick the voice automatically")
    sims = _agreement(np.stack(voices))
    if len(voices) > 1 and sims.min() < floor:
        odd = int(np.argmin(sims))
        raise PersonaError(f"the --voice clips are not all one person: {used[odd].name} is {sims[odd]:.2f} alike to "
                           f"the others (< {floor:g})", file=used[odd],
                           fix="give only clips of the person, or one clip to check which is which")
    return {"method": "enrollment", "profile": unit(np.stack(voices).mean(0)), "files": [str(p) for p in used],
            "clip_agreement": [round(float(x), 3) for x in sims] if len(voices) > 1 else None}


def _agreement(voices: np.ndarray) -> np.ndarray:
    """Each clip's similarity to the mean of the other clips."""
    if len(voices) < 2:
        return np.ones(len(voices))
    return np.array([float(v @ unit(np.delete(voices, i, 0).mean(0))) for i, v in enumerate(voices)])


def _on_screen(ws: Workspace) -> dict[Path, list[tuple[float, float]]]:
    """datasets/images/presence.json: when the person is on screen, per footage file."""
    data = read_json(ws.path(PRESENCE), default=None)
    if not isinstance(data, dict):
        return {}
    return {Path(k).resolve(): [(float(a), float(b)) for a, b in v] for k, v in data.items() if v}


def _profile_from_presence(ws: Workspace, sources: list[Source]) -> dict[str, Any] | None:
    on_screen = _on_screen(ws)
    if not on_screen:
        return None
    parts, used, seconds = [], [], 0.0
    for src in sources:
        intervals = on_screen.get(src.path.resolve())
        if not intervals:
            continue
        chosen = diarize.presence_clusters(src.analysis, intervals)
        for c in chosen:
            members = src.analysis.labels == c
            parts.append(src.analysis.embeddings[members])
            seconds += float(members.sum() * diarize.HOP)
            used.append(str(src.path))
    if not parts:
        warn(f"{ws.path(PRESENCE)}: no voice is mostly heard while the person is on screen; "
             "using the most talkative voice instead")
        return None
    return {"method": "presence", "profile": unit(np.concatenate(parts).mean(0)), "files": used,
            "seconds": round(seconds, 1)}


def _profile(ws: Workspace, sources: list[Source], enroll: list[Path], settings: VoiceIngestSettings,
             encoder: SpeakerEncoder, problems: Problems) -> dict[str, Any]:
    if enroll:
        return _profile_from_enrollment(enroll, settings, encoder, problems)
    found = _profile_from_presence(ws, sources)
    if found:
        return found
    talk = diarize.most_talkative([s.analysis for s in sources], settings.cluster_distance)
    if talk is None:
        raise PersonaError("no speech found in any input", fix="give footage or audio in which the person speaks")
    return {"method": "most-talkative", "profile": talk[0], "seconds": round(talk[1], 1)}


# ------------------------------------------------------------------------------------------------
def _measure(src: Source, clip: cliplib.Clip, raw: np.ndarray, settings: VoiceIngestSettings) -> tuple[dict, list]:
    an, d = src.analysis, src.decision
    inside = diarize.covering(an, clip.speech_start, clip.speech_end)
    m = {
        "snr_db": round(quality.wada_snr(raw), 1),
        "clipping": round(quality.clipping(raw), 5),
        "bandwidth_hz": round(quality.bandwidth(raw, CLIP_RATE)),
        "loudness_lufs": round(quality.loudness(raw, CLIP_RATE), 1),
        "speech_ratio": round(vad.speech_fraction(an.probs, clip.start, clip.end, settings.vad_threshold), 3),
        "speaker_similarity": round(float(d.profile_sim[inside].mean()), 3) if len(inside) else None,
    }
    checks = [
        ("low_snr", m["snr_db"] < settings.min_snr_db, f"SNR {m['snr_db']} dB < {settings.min_snr_db:g}"),
        ("clipping", m["clipping"] > settings.max_clipping, f"{m['clipping']:.2%} of samples at full scale"),
        ("narrow_band", m["bandwidth_hz"] < settings.min_bandwidth_hz,
         f"bandwidth {m['bandwidth_hz']} Hz < {settings.min_bandwidth_hz:g}"),
        ("too_quiet", not m["loudness_lufs"] >= settings.min_loudness_lufs,
         f"loudness {m['loudness_lufs']} LUFS < {settings.min_loudness_lufs:g}"),
        ("little_speech", m["speech_ratio"] < settings.min_speech_ratio,
         f"speech in {m['speech_ratio']:.0%} of the clip < {settings.min_speech_ratio:.0%}"),
    ]
    return m, [{"reason": k, "detail": msg} for k, bad, msg in checks if bad]


def _cut_clips(sources: list[Source], stage: Path, settings: VoiceIngestSettings, held: dict[Path, np.ndarray],
               problems: Problems) -> list[Candidate]:
    out: list[Candidate] = []
    todo = [s for s in sources if s.plan]
    with meter("voice: cutting clips", total=sum(len(s.plan) for s in todo)) as bar:
        for src in todo:
            try:
                audio = _load(src.path, held)
            except PersonaError as e:
                problems.add(src.path, e.message, e.fix or "")
                continue
            for clip in src.plan:
                raw = audio[int(round(clip.start * CLIP_RATE)):int(round(clip.end * CLIP_RATE))]
                metrics, reasons = _measure(src, clip, raw, settings)
                wav = stage / "candidates" / f"{len(out):05d}.wav"
                if not reasons:
                    write_audio(wav, cliplib.normalise_loudness(cliplib.cut(audio, CLIP_RATE, clip), CLIP_RATE,
                                                                settings.loudness_lufs), CLIP_RATE)
                out.append(Candidate(src, clip, wav, metrics, reasons))
                bar.advance(1)
            held.pop(src.path, None)
    return out


# ------------------------------------------------------------------------------------------------
def _asr_models(ws: Workspace) -> tuple[Path | None, Path | None, str | None]:
    from persona.models import locate

    try:
        whisper = locate("whisper", models=ws.pack.models)
    except PersonaError as e:
        return None, None, e.fix
    try:
        align = locate("align-en", models=ws.pack.models)
    except PersonaError as e:
        warn(f"no word alignment: {e.message} — {e.fix}", once=True)
        align = None
    return whisper, align, None


def _model_id(path: Path | None) -> str | None:
    if path is None:
        return None
    sizes = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    return hash_json([str(path), sizes])


def _transcribe(ws: Workspace, cands: list[Candidate], cache: Path, settings: VoiceIngestSettings) -> dict[str, Any]:
    todo = [c for c in cands if not c.reasons]
    if not settings.transcribe:
        return {"status": "disabled"}
    whisper, align, fix = _asr_models(ws)
    if whisper is None:
        return {"status": "no-model", "fix": f"{fix}; then run ingest again: only the transcripts are added"}
    from persona.data.transcribe import TOKENS_PER_SECOND, Transcriber

    key_base = [_model_id(whisper), _model_id(align), settings.language, settings.beam_size, TOKENS_PER_SECOND]
    keys = {id(c): hash_json([hash_file(c.wav), *key_base]) for c in todo}
    store = cache / "transcripts"
    missing = [c for c in todo if not (store / f"{keys[id(c)]}.json").exists()]
    if missing:
        import soundfile as sf

        model = Transcriber(whisper, align, cache / "nltk_data", settings.language, settings.beam_size)
        try:
            with meter("voice: transcribing", total=len(missing)) as bar:
                for c in missing:
                    samples, _ = sf.read(str(c.wav), dtype="float32")
                    t = model(_to_analysis_rate(samples))
                    write_json(store / f"{keys[id(c)]}.json", {"text": t.text, "words": t.words,
                                                               "logprob": t.logprob, "truncated": t.truncated})
                    bar.advance(1)
        finally:
            model.close()
    for c in todo:
        rec = read_json(store / f"{keys[id(c)]}.json", default={})
        _judge_transcript(c, rec, settings)
    rates = {i: len(c.text) / max(_spoken(c), 0.1) for i, c in enumerate(cands) if c.text and not c.reasons}
    for i, why in quality.rate_outliers(rates, settings.min_chars_per_second, settings.max_chars_per_second).items():
        cands[i].reasons.append({"reason": "speaking_rate", "detail": why})
    return {"status": "done", "whisper": str(whisper), "align": str(align) if align else None,
            "transcribed_now": len(missing)}


def _judge_transcript(c: Candidate, rec: dict[str, Any], settings: VoiceIngestSettings) -> None:
    text = " ".join(str(rec.get("text", "")).translate(TYPOGRAPHIC).split())
    c.words = rec.get("words", [])
    c.metrics["asr_logprob"] = round(rec.get("logprob", float("-inf")), 3)
    if not text:
        c.reasons.append({"reason": "no_words", "detail": "no words recognised"})
    elif rec.get("truncated") and settings.drop_truncated:
        c.reasons.append({"reason": "transcript_truncated", "detail": "the recogniser ran out of tokens"})
    elif settings.min_asr_logprob is not None and c.metrics["asr_logprob"] < settings.min_asr_logprob:
        c.reasons.append({"reason": "unsure_transcript",
                          "detail": f"mean token log-probability {c.metrics['asr_logprob']} < {settings.min_asr_logprob:g}"})
    c.text = text or None


def _spoken(c: Candidate) -> float:
    if c.words:
        return c.words[-1]["end"] - c.words[0]["start"]
    return c.clip.speech_end - c.clip.speech_start


# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
@locked("ingest")
def ingest_voice(ws: Workspace, sources: list[Path], settings: VoiceIngestSettings | None = None,
                 enroll: list[Path] | tuple[Path, ...] = ()) -> dict[str, Any]:
    """Build `datasets/voice` from video and audio files; returns a summary (for --json).

    `enroll` are clips of the person speaking alone (`--voice CLIP`). Problems with single files
    are reported and the others go on; a PersonaError is raised only when no usable clip results.
    """
    settings = settings or VoiceIngestSettings()
    sources = list(dict.fromkeys(Path(s).resolve() for s in sources))
    enroll = [Path(e).resolve() for e in enroll]
    if not sources:
        raise PersonaError("no input files for the voice dataset", fix="give video or audio files (mp4, mov, wav, mp3, ...)")
    out, cache = ws.path(DATASET), ws.path(CACHE)
    problems, encoder, held = Problems(), encoder_for(ws.pack.models), {}

    analysed = _analyse_all(sources, cache, settings, encoder, held, problems)
    if not analysed:
        raise PersonaError(f"none of the {len(sources)} input files has usable speech (see the warnings above)",
                           fix="give footage or audio in which the person speaks")
    target = _profile(ws, analysed, enroll, settings, encoder, problems)
    target["encoder"] = encoder.name
    info(f"voice: target from {target['method']}" + (f" ({', '.join(target['files'])})" if target.get("files") else ""))
    for src in analysed:
        _plan(src, target["profile"], settings, encoder, problems)
        if not src.plan:
            held.pop(src.path, None)
    if target["method"] == "enrollment":
        target["presence"] = _check_presence(ws, analysed, settings, encoder)

    by_hand = read_json(out / review.DROPPED, [])
    with staged_dir(out) as stage:
        cands = _cut_clips(analysed, stage, settings, held, problems)
        _leave_out(cands, by_hand)
        transcription = _transcribe(ws, cands, cache, settings)
        kept = [c for c in cands if not c.reasons]
        if not kept:
            raise PersonaError(vd.nothing_kept(analysed, cands), fix="check the warnings above; with --voice, give a "
                               "clip of the person alone; a recipe can relax the filters (see report fields)")
        reference, strict = vd.choose_reference(kept, settings)
        manifest = vd.write_dataset(out, stage, kept, reference)
        report = vd.build_report(analysed, cands, kept, manifest, target, transcription, reference, strict, problems, settings)
        write_json(stage / "report.json", report)
        # The voice the likeness checks compare against (persona.likeness): every kept clip weighs the same.
        likeness.write_reference_voice(stage / "reference_voice.json", [c.wav for c in kept], encoder,
                                       [e["file"] for e in manifest])
        if by_hand:  # what was dropped by hand stays dropped (persona.data.review)
            write_json(stage / review.DROPPED, by_hand)
        shutil.rmtree(stage / "candidates", ignore_errors=True)
    ws.update("datasets", {"voice": DATASET})
    vd.tell(report, transcription, out)
    return vd.summary(report, out, ws)


def _leave_out(cands: list[Candidate], by_hand: list[dict[str, Any]]) -> None:
    """Reject the clips that overlap a clip dropped by hand (the same stretch of the same recording)."""
    spans = [(e.get("source"), e.get("start"), e.get("end")) for e in by_hand]
    for c in cands:
        if any(src == str(c.source.path) and a is not None and b is not None and c.clip.start < b and a < c.clip.end
               for src, a, b in spans):
            c.reasons.append({"reason": "dropped_by_hand", "detail": f"overlaps a clip {review.REASON}"})


def _analyse_all(sources: list[Path], cache: Path, settings: VoiceIngestSettings, encoder: SpeakerEncoder,
                 held: dict[Path, np.ndarray], problems: Problems) -> list[Source]:
    durations: dict[Path, float] = {}
    for path in sources:
        try:
            media = probe(path)
        except PersonaError as e:
            problems.add(path, e.message, e.fix or "")
            continue
        if not media.has_audio:
            problems.add(path, "has no audio track", "it is left out of the voice dataset")
            continue
        durations[path] = media.duration
    analysed = []
    memo = read_json(cache / "hashes.json", {})
    with meter("voice: speech and speakers", total=round(sum(durations.values()), 1)) as bar:
        for path, seconds in durations.items():
            try:
                an = _analyse(path, remembered_hash(path, memo), cache, settings, encoder, held)
            except PersonaError as e:
                problems.add(path, e.message, e.fix or "")
                bar.advance(seconds)
                continue
            bar.advance(seconds, file=path.name)
            if an.speech_seconds < 0.5 or not len(an.starts):
                problems.add(path, "no speech found", "it is left out of the voice dataset")
                held.pop(path, None)
                continue
            analysed.append(Source(path, an))
    write_json(cache / "hashes.json", memo)
    return analysed


def _plan(src: Source, profile: np.ndarray, settings: VoiceIngestSettings, encoder: SpeakerEncoder,
          problems: Problems) -> None:
    an = src.analysis
    floor, same_voice = settings.scale(encoder)
    src.decision = d = diarize.decide(an, profile, floor, settings.target_margin, same_voice,
                                      settings.window_similarity, settings.speaker_margin)
    if not d.clusters:
        src.problem = f"no speech of the target ({d.reason})"
        problems.add(src.path, src.problem)
        return
    spans, pauses = vad.phrases(an.probs, settings.pause_threshold)
    src.plan = cliplib.plan_clips(spans, pauses, d.mask, diarize.RESOLUTION, settings.min_clip, settings.max_clip,
                                  settings.edge_silence, settings.max_pause, duration=an.duration)
    if not src.plan:
        src.problem = (f"the target speaks alone for {d.kept_seconds():.1f} s, but never {settings.min_clip:g} s "
                       "between pauses")
        problems.add(src.path, src.problem)


def _check_presence(ws: Workspace, sources: list[Source], settings: VoiceIngestSettings,
                    encoder: SpeakerEncoder) -> list[dict[str, Any]] | None:
    """Where the image side saw the person on screen, is the voice heard then the enrolled one?
    The enrollment is the person's own word for their voice, so it is followed; a disagreement is
    shown (a wrong clip, or footage where the person listens while someone else talks)."""
    on_screen = _on_screen(ws)
    if not on_screen:
        return None
    _, same_voice = settings.scale(encoder)
    out = []
    for src in sources:
        intervals = on_screen.get(src.path.resolve())
        chosen = diarize.presence_clusters(src.analysis, intervals) if intervals else []
        if not chosen or src.decision is None:
            continue
        groups = diarize.voice_groups(src.analysis, same_voice)
        taken = {int(groups[c]) for c in src.decision.clusters}
        agrees = int(groups[chosen[0]]) in taken
        out.append({"file": str(src.path), "on_screen_cluster": chosen[0], "enrolled_clusters": src.decision.clusters,
                    "agree": agrees})
        if not agrees:
            warn(f"{src.path}: the voice heard while the person is on screen ({PRESENCE}) is not the enrolled voice "
                 f"({'enrolled voice not heard' if not taken else 'another speaker'}); following the --voice enrollment")
    return out
