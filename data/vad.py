"""Voice activity with silero-vad, whose wheel ships its ONNX models (nothing to download).

The batched ("sequence") ONNX model gives one speech probability per 32 ms frame in a handful
of calls; everything else (speech regions, the pauses clips are cut at) is derived from those
probabilities with silero's own state machine, so the model runs once per recording.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
FRAME = 512 / SAMPLE_RATE  # seconds per probability


@functools.cache
def _model():
    import torch

    # Importing silero_vad sets torch's global thread count to 1; keep the caller's setting.
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad

        return load_silero_vad(sequence=True)
    finally:
        torch.set_num_threads(threads)


def speech_probs(wav: np.ndarray) -> np.ndarray:
    """One speech probability per 32 ms frame of 16 kHz mono audio."""
    if len(wav) == 0:
        return np.zeros(0, np.float32)
    return _model().audio_forward(np.ascontiguousarray(wav, np.float32), SAMPLE_RATE).astype(np.float32)


def _timestamps(probs: np.ndarray, **kw) -> list[tuple[float, float]]:
    from silero_vad import get_speech_timestamps_from_probs

    segs = get_speech_timestamps_from_probs(probs.tolist(), sampling_rate=SAMPLE_RATE,
                                           audio_length_samples=len(probs) * 512, **kw)
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in segs]


def speech_regions(probs: np.ndarray, threshold: float = 0.5, min_silence: float = 0.5,
                   min_speech: float = 0.25, pad: float = 0.03) -> list[tuple[float, float]]:
    """Stretches of speech separated by silences of at least `min_silence` seconds."""
    return _timestamps(probs, threshold=threshold, min_silence_duration_ms=int(min_silence * 1000),
                       min_speech_duration_ms=int(min_speech * 1000), speech_pad_ms=int(pad * 1000))


@dataclass
class Pause:
    """A dip in speech probability between two phrases: where a clip may start or end."""

    start: float
    end: float
    depth: float  # 1 - the lowest speech probability inside it

    @property
    def length(self) -> float:
        return self.end - self.start


def phrases(probs: np.ndarray, threshold: float = 0.5) -> tuple[list[tuple[float, float]], list[Pause]]:
    """Speech split at every dip of the speech probability below `threshold`.

    Returns the phrases and the pauses between consecutive phrases (len(phrases) - 1 of them).
    In far-field or reverberant recordings the gaps between words rarely reach silero's
    usual 100 ms of silence, but its probability still dips between words, so every dip
    is a candidate cut; `plan_clips` prefers the longer, deeper ones.
    """
    spans = _timestamps(probs, threshold=threshold, neg_threshold=threshold, min_silence_duration_ms=0,
                        min_speech_duration_ms=60, speech_pad_ms=0)
    pauses = []
    for (_, a_end), (b_start, _) in zip(spans, spans[1:]):
        lo, hi = int(a_end / FRAME), max(int(b_start / FRAME), int(a_end / FRAME) + 1)
        depth = 1.0 - float(probs[lo:hi].min()) if hi > lo else 0.5
        pauses.append(Pause(a_end, b_start, depth))
    return spans, pauses


def speech_fraction(probs: np.ndarray, start: float, end: float, threshold: float = 0.5) -> float:
    lo, hi = int(start / FRAME), max(int(np.ceil(end / FRAME)), int(start / FRAME) + 1)
    part = probs[lo:hi]
    return float((part >= threshold).mean()) if len(part) else 0.0
