"""Clip quality measures that need no model weights: SNR, clipping, bandwidth, loudness, speech
ratio, and speaking-rate outliers once transcribed."""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _wada_table() -> tuple[np.ndarray, np.ndarray]:
    """G(SNR) for WADA-SNR (Kim & Stern, Interspeech 2008): clean speech amplitudes follow a
    Gamma distribution of shape 0.4 and noise is Gaussian; G = ln E|z| - E ln|z| of their sum rises
    with the SNR. The paper's table is a simulation of exactly this model, so it is recomputed here
    (fixed seed) rather than copied; no maintained package on PyPI provides WADA-SNR."""
    rng = np.random.default_rng(0)
    n = 200_000
    speech = rng.gamma(0.4, 1.0, n) * rng.choice([-1.0, 1.0], n)
    speech /= np.sqrt(np.mean(speech ** 2))
    noise = rng.standard_normal(n)
    snrs = np.arange(-20.0, 101.0)
    gs = []
    for snr in snrs:
        z = np.abs(speech + noise * 10 ** (-snr / 20))
        gs.append(np.log(z.mean()) - np.log(np.maximum(z, 1e-20)).mean())
    return np.maximum.accumulate(np.asarray(gs)), snrs


def wada_snr(x: np.ndarray) -> float:
    """Estimated signal-to-noise ratio of speech `x` in dB (WADA-SNR), clamped to [-20, 100]."""
    z = np.abs(np.asarray(x, np.float64))
    z = z[z > 1e-7]  # digital silence (padding) is no noise, and its log would dominate G
    if len(z) < 100:
        return -20.0
    z = z / z.max()
    g = float(np.log(z.mean()) - np.log(z).mean())
    table_g, snrs = _wada_table()
    return float(np.interp(g, table_g, snrs))


def clipping(x: np.ndarray, level: float = 0.999) -> float:
    """Share of samples at (or over) full scale."""
    return float((np.abs(x) >= level).mean()) if len(x) else 0.0


def bandwidth(x: np.ndarray, sr: int, floor_db: float = 50.0) -> float:
    """Highest frequency (Hz) whose long-term level is within `floor_db` of the spectrum's peak:
    material that was once narrowband (telephone, 16 kHz recordings) shows a low value."""
    from scipy.signal import welch

    if len(x) < 256:
        return 0.0
    f, p = welch(x, sr, nperseg=min(1024, len(x)))
    db = 10 * np.log10(p + 1e-20)
    above = np.flatnonzero(db >= db.max() - floor_db)
    return float(f[above[-1]]) if len(above) else 0.0


def loudness(x: np.ndarray, sr: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770 via pyloudnorm); -inf for silence."""
    import pyloudnorm

    if len(x) < int(0.4 * sr):
        return float("-inf")
    return float(pyloudnorm.Meter(sr).integrated_loudness(np.asarray(x, np.float64)))


def rate_outliers(rates: dict[int, float], low: float, high: float, spread: float = 1.8) -> dict[int, str]:
    """Clips whose characters per second are implausible: outside [low, high], or, with enough
    clips to judge, more than `spread` times off the median (a transcript missing or inventing words)."""
    out: dict[int, str] = {}
    values = np.asarray(list(rates.values()))
    median = float(np.median(values)) if len(values) >= 8 else None
    for k, r in rates.items():
        if r < low or r > high:
            out[k] = f"speaking rate {r:.1f} chars/s outside [{low:g}, {high:g}]"
        elif median and (r > median * spread or r < median / spread):
            out[k] = f"speaking rate {r:.1f} chars/s far from the median {median:.1f}"
    return out
