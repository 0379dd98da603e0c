"""The narration stage: each scene's sentences in the persona's voice, timed for subtitles.

Sentences are synthesised one at a time (F5-TTS takes up to ~20 s per call, and per-sentence
timing gives one subtitle cue per sentence), joined with short pauses, and padded to a whole number
of video frames so that picture and sound of every scene end together.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from persona.files import hash_file, hash_json, mark_fresh
from persona.inference.memory import Lazy
from persona.inference.plan import SceneDir, frames_for, scene_seed
from persona.inference.speech import SAMPLE_RATE, Voice, VoiceFiles
from persona.media import write_audio


def voice_identity(files: VoiceFiles) -> str:
    return hash_json([hash_file(files.checkpoint), hash_file(files.reference_audio), files.reference_text])


def narration_key(scene: SceneDir, voice_id: str, settings: Any) -> str:
    n = settings.narration
    return hash_json(["narration", scene.scene.narration, voice_id, settings.seed, n.model_dump(),
                      settings.video.fps])


def speak_scene(voice: Voice, scene: SceneDir, settings: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    n = settings.narration
    silence = lambda s: np.zeros(int(round(s * SAMPLE_RATE)), np.float32)  # noqa: E731
    parts, cues, t = [silence(n.lead_in)], [], n.lead_in
    sentences = scene.scene.sentences()
    for i, sentence in enumerate(sentences):
        wav = voice.say(sentence, seed=scene_seed(settings.seed, "narration", sentence), steps=n.steps, speed=n.speed)
        cues.append({"text": sentence, "start": round(t, 3), "end": round(t + len(wav) / SAMPLE_RATE, 3)})
        parts.append(wav)
        t += len(wav) / SAMPLE_RATE
        if i < len(sentences) - 1:
            parts.append(silence(n.sentence_pause))
            t += n.sentence_pause
    parts.append(silence(n.tail))
    audio = np.concatenate(parts)
    # Pad to whole video frames: 24 kHz / 16 fps = 1500 samples per frame, so this is exact.
    frames = frames_for(len(audio) / SAMPLE_RATE, settings.video.fps)
    audio = np.pad(audio, (0, int(round(frames * SAMPLE_RATE / settings.video.fps)) - len(audio)))
    return audio, cues


def timing(scene: SceneDir) -> dict[str, Any]:
    """seconds, frames, fps and subtitle cues of a narrated scene."""
    return scene.record("narration.wav")


def run(voice_files: VoiceFiles, settings: Any, rdir: Any, loads: dict[str, int], progress: Any) -> dict[str, Any]:
    """Narrate every scene whose narration is stale; returns {rendered, moved, reused, seconds}."""
    voice_id = voice_identity(voice_files)
    keys = {s.label: narration_key(s, voice_id, settings) for s in rdir.scenes}
    make, result = rdir.scenes_to_make("narration.wav", keys)
    progress.advance(len(rdir.scenes) - len(make))
    with Lazy(lambda: Voice(voice_files), "f5-tts", loads) as voice:
        for s in make:
            audio, cues = speak_scene(voice.get(), s, settings)
            seconds = len(audio) / SAMPLE_RATE
            write_audio(s.path("narration.wav"), audio, SAMPLE_RATE)
            # The record holds the timing later stages need: frames for the video, cues for subtitles.
            mark_fresh(s.path("narration.wav"), keys[s.label], seconds=seconds, fps=settings.video.fps, cues=cues,
                       frames=frames_for(seconds, settings.video.fps))
            progress.advance(1)
    return {**result, "seconds": [timing(s)["seconds"] for s in rdir.scenes]}
