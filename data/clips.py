"""Clips for voice training: 3-12 s, cut only at pauses, a little silence kept at both ends,
loudness-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from persona.data.vad import Pause

EDGE_MARGIN = 0.05  # seconds at each phrase edge not required to be target-clean (VAD edges are fuzzy)


@dataclass
class Clip:
    start: float  # seconds in the source, silence margins included
    end: float
    speech_start: float  # first and last speech inside
    speech_end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def _good(span: tuple[float, float], mask: np.ndarray, resolution: float) -> bool:
    a, b = span[0] + EDGE_MARGIN, span[1] - EDGE_MARGIN
    lo, hi = int(a / resolution), int(np.ceil(b / resolution))
    return hi > lo and hi <= len(mask) and bool(mask[lo:hi].all())


def _quality(pause: Pause | None) -> float:
    """How good a cut point is: a long, deep pause scores 1, a brief dip between words less."""
    if pause is None:
        return 1.0
    return min(1.0, pause.length / 0.15) * pause.depth


def plan_clips(spans: list[tuple[float, float]], pauses: list[Pause], mask: np.ndarray, resolution: float,
               min_clip: float, max_clip: float, edge_silence: float, max_pause: float = 1.0,
               duration: float | None = None) -> list[Clip]:
    """Group consecutive target-clean phrases into clips, choosing cut points to keep the most
    speech with the best pauses (dynamic programming over each run of clean phrases).

    `spans` are the phrases and `pauses` the gaps between them (vad.phrases); `mask` marks the
    frames where the target speaks alone. A clip never contains a phrase that is not clean, nor a
    pause longer than `max_pause`.
    """
    clips: list[Clip] = []
    good = [_good(s, mask, resolution) for s in spans]
    run: list[int] = []
    for i in range(len(spans) + 1):
        breaks = i == len(spans) or not good[i] or (run and pauses[i - 1].length > max_pause)
        if breaks and run:
            clips += _best_split(run, spans, pauses, min_clip, max_clip, edge_silence, duration)
            run = []
        if i < len(spans) and good[i]:
            run.append(i)
    return clips


def _edges(i: int, j: int, spans, pauses, edge: float, duration: float | None) -> tuple[float, float]:
    before = pauses[i - 1].length if i > 0 else spans[i][0]
    after = pauses[j].length if j < len(pauses) else ((duration - spans[j][1]) if duration else edge * 2)
    return spans[i][0] - min(edge, before / 2), spans[j][1] + min(edge, after / 2)


def _best_split(run: list[int], spans, pauses, min_clip, max_clip, edge, duration) -> list[Clip]:
    n = len(run)
    best = [0.0] * (n + 1)  # best score using run[k:]
    choice: list[int | None] = [None] * (n + 1)  # end index (exclusive) of the clip starting at k, None: skip k
    for k in range(n - 1, -1, -1):
        best[k], choice[k] = best[k + 1], None
        for m in range(k + 1, n + 1):
            i, j = run[k], run[m - 1]
            start, end = _edges(i, j, spans, pauses, edge, duration)
            length = end - start
            if length > max_clip:
                break
            if length < min_clip:
                continue
            q_in = _quality(pauses[i - 1] if i > 0 else None)
            q_out = _quality(pauses[j] if j < len(pauses) else None)
            score = length - 0.5 * (2 - q_in - q_out) + best[m]
            if score > best[k]:
                best[k], choice[k] = score, m
    out, k = [], 0
    while k < n:
        m = choice[k]
        if m is None:
            k += 1
            continue
        i, j = run[k], run[m - 1]
        start, end = _edges(i, j, spans, pauses, edge, duration)
        out.append(Clip(round(start, 3), round(end, 3), spans[i][0], spans[j][1]))
        k = m
    return out


def cut(audio: np.ndarray, sr: int, clip: Clip, fade: float = 0.01) -> np.ndarray:
    """The clip's samples, with 10 ms fades so a cut in a brief pause does not click."""
    x = audio[int(round(clip.start * sr)):int(round(clip.end * sr))].astype(np.float32).copy()
    n = min(int(fade * sr), len(x) // 2)
    if n:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def normalise_loudness(x: np.ndarray, sr: int, target_lufs: float, peak: float = 0.89) -> np.ndarray:
    """Integrated loudness (ITU-R BS.1770 via pyloudnorm) set to `target_lufs`, then scaled down
    if needed so no sample exceeds `peak` (-1 dBFS)."""
    import pyloudnorm

    loudness = pyloudnorm.Meter(sr).integrated_loudness(x.astype(np.float64))
    if np.isfinite(loudness):
        x = x * np.float32(10 ** ((target_lufs - loudness) / 20))
    top = float(np.abs(x).max()) if len(x) else 0.0
    if top > peak:
        x = x * np.float32(peak / top)
    return x.astype(np.float32)
