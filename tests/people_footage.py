"""Footage of three real people, cut together from ../shared/media/footage, with the ground truth of
who is on screen when known by construction.

- interview.mp4: the woman, a cut to the bearded man (the target), a cut to the young man
- kitchen.mp4 (a smaller encode): the young man, then the bearded man, whose first 4 s are the same
  moments as in interview.mp4
- sofa.mp4: only the others
- reference.png: a frame of the bearded man from a moment that is in none of the videos
Downscaled to 432x768 and 10 fps so it builds and scans in seconds.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from persona.media import av_open, write_video

FPS = 10
TARGET = "man"
SOURCES = {"woman": "latentsync_demo1.mp4", "man": "latentsync_demo2.mp4", "youth": "latentsync_demo3.mp4"}
# file -> (width, height), [(who, start in their source, end)]
LAYOUT = {
    "interview.mp4": ((432, 768), [("woman", 0, 4), ("man", 0, 8), ("youth", 0, 4)]),
    "kitchen.mp4": ((384, 682), [("youth", 6, 10), ("man", 4, 16)]),
    "sofa.mp4": ((432, 768), [("youth", 10, 18), ("woman", 4, 10)]),
}
REFERENCE = ("man", 18.5, (540, 960))


def _frames_wanted() -> dict[str, list[tuple[float, tuple[int, int], tuple]]]:
    wanted: dict[str, list] = {who: [] for who in SOURCES}
    for name, (size, parts) in LAYOUT.items():
        for j, (who, a, b) in enumerate(parts):
            wanted[who] += [(a + i / FPS, size, (name, j, i)) for i in range(round((b - a) * FPS))]
    who, t, size = REFERENCE
    wanted[who].append((t, size, ("reference", 0, 0)))
    return wanted


def _decode(media: Path) -> dict[tuple, object]:
    """Each source decoded once; every wanted frame is the first decoded frame at or after its time."""
    got = {}
    for who, wanted in _frames_wanted().items():
        wanted.sort(key=lambda w: w[0])
        with av_open(str(media / SOURCES[who])) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.skip_frame = "NONREF"  # half the decoding; a frame every ~0.1 s is plenty
            k = 0
            for frame in c.decode(stream):
                while k < len(wanted) and wanted[k][0] <= frame.time + 1e-3:
                    _, (w, h), key = wanted[k]
                    got[key] = frame.to_ndarray(format="rgb24", width=w, height=h)
                    k += 1
                if k == len(wanted):
                    break
    return got


def build(media: Path, out: Path) -> dict:
    """Write the videos and the reference photo; return their paths and the ground truth:
    {resolved video path: [(start, end, who, source start), ...]}."""
    out.mkdir(parents=True, exist_ok=True)
    got = _decode(media)
    truth = {}
    for name, (_, parts) in LAYOUT.items():
        frames, spans, t0 = [], [], 0.0
        for j, (who, a, b) in enumerate(parts):
            n = round((b - a) * FPS)
            frames += [got[(name, j, i)] for i in range(n)]
            spans.append((t0, t0 + n / FPS, who, a))
            t0 += n / FPS
        write_video(out / name, frames, FPS, preset="ultrafast")
        truth[str((out / name).resolve())] = spans
    reference = out / "reference.png"
    Image.fromarray(got[("reference", 0, 0)]).save(reference)
    return {"videos": [out / n for n in LAYOUT], "reference": reference, "truth": truth}


def who_at(truth: dict, source: str, t: float) -> tuple[str, float]:
    """Who is on screen at `t` seconds of `source`, and the matching time in their own recording."""
    for a, b, who, start in truth[source]:
        if a - 1e-6 <= t < b - 1e-6:
            return who, start + (t - a)
    raise KeyError(f"{source} has no frame at {t}")


def on_screen(truth: dict, source: str, who: str) -> list[tuple[float, float]]:
    return [(a, b) for a, b, w, _ in truth[source] if w == who]
