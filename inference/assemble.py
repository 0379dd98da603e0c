"""Assembly: scenes joined into final.mp4 (H.264 + AAC), narration at -14 LUFS, final.srt with one
cue per sentence (optionally burned in), container metadata labelling the video AI-generated with
the persona's name and consent, signed Content Credentials (C2PA) saying the same, and optionally a
visible "AI-generated" mark in one corner."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TYPE_CHECKING

import numpy as np

from persona import provenance
from persona.files import write_text
from persona.inference.speech import SAMPLE_RATE
from persona.media import iter_frames, probe, read_audio, write_video

if TYPE_CHECKING:
    from persona.workspace import Workspace


def srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def global_cues(timings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scene-relative sentence cues shifted onto the final timeline."""
    cues, offset = [], 0.0
    for t in timings:
        for c in t["cues"]:
            cues.append({"text": c["text"], "start": offset + c["start"], "end": offset + c["end"]})
        offset += t["frames"] / t["fps"]
    return cues


def srt(cues: list[dict[str, Any]]) -> str:
    blocks = [f"{i}\n{srt_time(c['start'])} --> {srt_time(c['end'])}\n{c['text']}\n" for i, c in enumerate(cues, 1)]
    return "\n".join(blocks)


def normalise_loudness(audio: np.ndarray, sr: int, target_lufs: float, true_peak_db: float) -> tuple[np.ndarray, dict]:
    """Gain to the target integrated loudness (ITU-R BS.1770 via pyloudnorm), then less gain if the
    peak would pass `true_peak_db` (a plain gain, never a limiter, so speech is not distorted)."""
    import pyloudnorm

    meter = pyloudnorm.Meter(sr)
    before = float(meter.integrated_loudness(audio)) if len(audio) > sr * 0.5 else float("-inf")
    if not np.isfinite(before):
        return audio, {"measured_lufs": None, "output_lufs": None, "gain_db": 0.0}
    gain_db = target_lufs - before
    peak = float(np.abs(audio).max()) or 1e-9
    ceiling = 10 ** (true_peak_db / 20)
    gain_db = min(gain_db, 20 * np.log10(ceiling / peak))
    out = audio * np.float32(10 ** (gain_db / 20))
    return out, {"measured_lufs": round(before, 2), "output_lufs": round(float(meter.integrated_loudness(out)), 2),
                 "gain_db": round(float(gain_db), 2), "peak": round(float(np.abs(out).max()), 4)}


def _subtitle_font(height: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=max(10, height // 18))  # Pillow's bundled FreeType font


def burn_in(frame: np.ndarray, text: str, font: Any) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    w, h = image.size
    lines, line = [], ""
    for word in text.split():  # wrap to ~85 % of the width
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) > 0.85 * w and line:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    step = font.size * 1.25
    y = h - step * len(lines) - h * 0.05
    for ln in lines:
        x = (w - draw.textlength(ln, font=font)) / 2
        draw.text((x, y), ln, font=font, fill="white", stroke_width=max(1, font.size // 12), stroke_fill="black")
        y += step
    return np.asarray(image)


LABEL_TEXT = "AI-generated"


def label_box(size: tuple[int, int], corner: str, font: Any) -> tuple[int, int, int, int]:
    """Where the visible label goes: (left, top, right, bottom) of its backing box, inset from `corner`."""
    from PIL import ImageDraw, Image

    w, h = size
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = draw.textbbox((0, 0), LABEL_TEXT, font=font)
    pad, margin = max(2, font.size // 4), max(2, h // 40)
    bw, bh = right - left + 2 * pad, bottom - top + 2 * pad
    x = margin if corner.endswith("left") else w - margin - bw
    y = margin if corner.startswith("top") else h - margin - bh
    return x, y, x + bw, y + bh


def burn_label(frame: np.ndarray, corner: str, font: Any) -> np.ndarray:
    """A small "AI-generated" mark on a translucent dark box: it stays readable after any re-encode
    or upload that drops the Content Credentials."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    x0, y0, x1, y1 = label_box(image.size, corner, font)
    box = image.crop((x0, y0, x1, y1))
    shade = Image.new("RGB", box.size, (0, 0, 0))
    box = Image.blend(box, shade, 0.55)
    draw = ImageDraw.Draw(box)
    left, top, _, _ = draw.textbbox((0, 0), LABEL_TEXT, font=font)
    pad = max(2, font.size // 4)
    draw.text((pad - left, pad - top), LABEL_TEXT, font=font, fill="white")
    image.paste(box, (x0, y0))
    return np.asarray(image)


def label_font(height: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=max(8, height // 36))


def _frames(videos: list[Path], cues: list[dict[str, Any]], fps: float, burn: bool,
            corner: str | None = None) -> Iterator[np.ndarray]:
    n = 0
    font = mark = None
    for path in videos:
        for _, frame in iter_frames(path):
            if burn:
                t = n / fps
                text = next((c["text"] for c in cues if c["start"] <= t < c["end"]), None)
                if text:
                    font = font or _subtitle_font(frame.shape[0])
                    frame = burn_in(frame, text, font)
            if corner:
                mark = mark or label_font(frame.shape[0])
                frame = burn_label(frame, corner, mark)
            n += 1
            yield frame


def label(ws: Workspace, title: str, consent_reference: bool = False) -> dict[str, str]:
    c = ws.pack.consent
    consent = c.summary() if c else "no consent record"
    if c and c.reference and not consent_reference:  # the record's location only when the user asks
        consent = c.model_copy(update={"reference": None}).summary()
    return {
        "title": title,
        "comment": f"AI-generated video. The likeness and voice of {ws.name} were synthesised with persona; {consent}.",
        "description": f"AI-generated explainer presented by a synthetic likeness of {ws.name}.",
        "ai_generated": "true",
        "persona": ws.name,
        "consent": consent,
        "generator": "persona",
    }


def run(ws: Workspace, settings: Any, rdir: Any, title: str) -> dict[str, Any]:
    """The finished scenes joined with the whole narration into final.mp4, and final.srt."""
    import soxr

    a = settings.assembly
    narration = np.concatenate([read_audio(s.path("narration.wav"), SAMPLE_RATE) for s in rdir.scenes])
    audio = soxr.resample(narration, SAMPLE_RATE, a.audio_rate).astype(np.float32)
    audio, loudness = normalise_loudness(audio, a.audio_rate, a.loudness_lufs, a.true_peak_db)
    videos = [s.path("finished.mp4") for s in rdir.scenes]
    fps = settings.finish.fps  # every finished scene is re-timed to it
    cues = global_cues([s.record("narration.wav") for s in rdir.scenes])
    out = rdir.root / "final.mp4"
    # Encode to a hidden file, then sign it into final.mp4 (itself written to a temp file and renamed):
    # a killed run never leaves an unsigned video under the final name.
    fd, unsigned = tempfile.mkstemp(dir=rdir.root, prefix=".final.", suffix=".unsigned.mp4")
    os.close(fd)
    try:
        write_video(unsigned, _frames(videos, cues, fps, a.burn_subtitles, a.label_corner if a.label else None), fps,
                    audio=audio, sr=a.audio_rate, metadata=label(ws, title, a.consent_reference), crf=a.crf)
        signed = provenance.sign_video(ws, unsigned, out, title, consent_reference=a.consent_reference)
    finally:
        Path(unsigned).unlink(missing_ok=True)
    write_text(rdir.root / "final.srt", srt(cues))
    info = probe(out)
    return {"output": str(out), "subtitles": str(rdir.root / "final.srt"), "cues": len(cues), "fps": fps,
            "size": [info.width, info.height], "seconds": round(info.duration, 3), "loudness": loudness,
            "burned_subtitles": a.burn_subtitles, "label": a.label_corner if a.label else None,
            "content_credentials": signed}
