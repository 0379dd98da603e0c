"""The narration stage: each scene's sentences in the persona's voice, timed for subtitles.

Sentences are synthesised one at a time (F5-TTS takes up to ~20 s per call, and per-sentence
timing gives one subtitle cue per sentence), joined with short pauses, and padded to a whole number
of video frames so that picture and sound of every scene end together.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from persona.files import hash_file, hash_json
from persona.inference.memory import Lazy
from persona.inference.plan import RenderSettings, SceneDir, frames_for, scene_seed
from persona.inference.speech import SAMPLE_RATE, Voice, VoiceFiles
from persona.inference.stage import RenderJob, Stage, Tick
from persona.media import write_audio
from persona.models import model_identity


def voice_identity(files: VoiceFiles) -> str:
    """The voice by content: a retrained checkpoint has the same name and size as the old one."""
    return hash_json([hash_file(files.checkpoint), hash_file(files.reference_audio), files.reference_text,
                      model_identity(files.vocoder)])


def speak_scene(voice: Voice, scene: SceneDir, settings: RenderSettings, tick: Tick = lambda n: None
                ) -> tuple[np.ndarray, list[dict[str, Any]]]:
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
        tick(1)
    parts.append(silence(n.tail))
    audio = np.concatenate(parts)
    # Pad to whole video frames: 24 kHz / 16 fps = 1500 samples per frame, so this is exact.
    frames = frames_for(len(audio) / SAMPLE_RATE, settings.video.fps)
    audio = np.pad(audio, (0, int(round(frames * SAMPLE_RATE / settings.video.fps)) - len(audio)))
    return audio, cues


def timing(scene: SceneDir) -> dict[str, Any]:
    """seconds, frames, fps and subtitle cues of a narrated scene."""
    return scene.record("narration.wav")


class NarrationStage(Stage):
    """Every scene's narration in the pack's voice, one sentence at a time (progress in sentences)."""

    name, output, model = "narration", "narration.wav", "f5-tts"

    def __init__(self, voice: VoiceFiles):
        self.voice = voice
        self.voice_id = voice_identity(voice)

    def key(self, job: RenderJob, scene: SceneDir) -> str:
        n = job.settings.narration
        return hash_json(["narration", scene.scene.narration, self.voice_id, job.settings.seed, n.model_dump(),
                          job.settings.video.fps])

    def work(self, job: RenderJob, scene: SceneDir) -> float:
        return len(scene.scene.sentences())

    def load(self, job: RenderJob) -> Voice:
        return Voice(self.voice)

    def make(self, job: RenderJob, scene: SceneDir, model: Lazy, tick: Tick) -> dict[str, Any]:
        audio, cues = speak_scene(model.get(), scene, job.settings, tick)
        seconds = len(audio) / SAMPLE_RATE
        write_audio(scene.path(self.output), audio, SAMPLE_RATE)
        fps = job.settings.video.fps
        # The record holds the timing later stages need: frames for the video, cues for subtitles.
        return {"seconds": seconds, "fps": fps, "cues": cues, "frames": frames_for(seconds, fps)}

    def summary(self, job: RenderJob) -> dict[str, Any]:
        return {"seconds": [timing(s)["seconds"] for s in job.scenes]}
