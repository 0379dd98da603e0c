"""Transcripts with word times: faster-whisper for the text, whisperx.align (wav2vec2 CTC) for
the words. Clips are already cut at speech, so whisperx's own VAD (which downloads or needs
unsafe checkpoint loading) is never used.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from persona.device import default_device

SAMPLE_RATE = 16000
# Bounds Whisper's output to the clip's length, as real speech stays well under it (a part of the
# transcript cache's key: changing it redoes the transcripts)
TOKENS_PER_SECOND = 10.0
PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


def ensure_punkt(cache: Path) -> None:
    """whisperx.align splits sentences with NLTK's Punkt and downloads `punkt_tab` when it is
    missing, which fails offline. Word times do not depend on sentence splitting, so when the real
    resource is absent an untrained Punkt (empty parameter files) under `cache` stands in."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    folder = cache / "tokenizers" / "punkt_tab" / "english"
    folder.mkdir(parents=True, exist_ok=True)
    for name in PUNKT_FILES:
        (folder / name).touch()
    if str(cache) not in nltk.data.path:
        nltk.data.path.append(str(cache))


@dataclass
class Transcript:
    text: str
    words: list[dict[str, Any]]  # {"word", "start", "end", "score"} in seconds from the clip start
    logprob: float  # faster-whisper's mean token log-probability
    truncated: bool  # the decoder hit max_new_tokens: words may be missing


class Transcriber:
    """Load once, transcribe many clips (16 kHz mono)."""

    def __init__(self, whisper: Path, align: Path | None, nltk_dir: Path, language: str = "en",
                 beam_size: int = 5):
        from faster_whisper import WhisperModel

        device = default_device()

        self.language, self.beam_size = language, beam_size
        self.model = WhisperModel(str(whisper), device=device, compute_type="default",
                                  cpu_threads=0, num_workers=1)
        self.align_model = self.align_meta = None
        self.device = device
        if align is not None:
            import whisperx

            ensure_punkt(nltk_dir)
            with _quiet():
                self.align_model, self.align_meta = whisperx.load_align_model(language, device, model_name=str(align))

    def __call__(self, wav: np.ndarray) -> Transcript:
        duration = len(wav) / SAMPLE_RATE
        # Always bound the decoder: a confused model would otherwise repeat itself up to the
        # context limit.
        limit = int(8 + TOKENS_PER_SECOND * duration)
        with _quiet():
            segments, _ = self.model.transcribe(
                np.ascontiguousarray(wav, np.float32), language=self.language, beam_size=self.beam_size,
                vad_filter=False, without_timestamps=True, condition_on_previous_text=False,
                max_new_tokens=limit, temperature=0.0)
            segments = list(segments)
        text = " ".join(s.text.strip() for s in segments).strip()
        n_tokens = sum(len(s.tokens) for s in segments)
        logprob = float(np.mean([s.avg_logprob for s in segments])) if segments else float("-inf")
        words = self._align(wav, text, duration) if text else []
        return Transcript(text, words, logprob, n_tokens >= limit)

    def _align(self, wav: np.ndarray, text: str, duration: float) -> list[dict[str, Any]]:
        if self.align_model is None:
            return []
        import whisperx

        with _quiet():
            out = whisperx.align([{"start": 0.0, "end": duration, "text": text}], self.align_model, self.align_meta,
                                 np.ascontiguousarray(wav, np.float32), self.device)
        words = []
        for w in out.get("word_segments", []):
            if "start" in w and "end" in w:
                words.append({"word": w["word"], "start": round(float(w["start"]), 3), "end": round(float(w["end"]), 3),
                              "score": round(float(w.get("score", 0.0)), 3)})
        return words

    def close(self) -> None:
        import gc

        del self.model, self.align_model
        gc.collect()


@contextlib.contextmanager
def _quiet():
    """whisperx prints and logs per segment; persona shows its own progress."""
    loggers = [logging.getLogger(n) for n in ("whisperx", "faster_whisper")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
