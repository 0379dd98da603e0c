"""Framing: where to cut close-ups, head-and-shoulders and half-body crops, and the contact sheet.

Person-LoRA guides for Flux ask for a mix of framings so the likeness is learnt at every scale a
prompt may ask for. Each framing has a bucket (an aspect ratio the trainers accept, 1024 on the short
side, sides multiples of 64) and a size relative to the face box, with the face placed where
portraits put it. A crop may shrink to fit the frame down to a minimum, never cuts the face, and
records how much it had to be upscaled to reach the bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from persona.files import atomic_path


@dataclass(frozen=True)
class Framing:
    name: str
    aspect: float  # width / height
    span: float  # crop height in face-box heights
    min_span: float  # the tightest crop that still reads as this framing
    face_y: float  # the face-box centre's height in the crop, from the top (0-1)


FRAMINGS = {f.name: f for f in (
    Framing("close-up", 1.0, 2.3, 1.9, 0.56),
    Framing("head-and-shoulders", 0.8, 3.6, 2.9, 0.40),
    Framing("half-body", 2 / 3, 6.5, 5.0, 0.26),
)}
FACE_MARGIN = 0.1  # the face box grown by this much on each side must lie inside the crop


@dataclass(frozen=True)
class CropPlan:
    framing: str
    box: tuple[float, float, float, float]  # in source pixels
    size: tuple[int, int]  # output width, height
    upscale: float  # output pixels per source pixel (above 1: upscaled)


def bucket(framing: Framing, short_side: int) -> tuple[int, int]:
    """(width, height): `short_side` wide, height rounded to a multiple of 64."""
    return short_side, int(round(short_side / framing.aspect / 64) * 64)


def plan(face: tuple[float, float, float, float] | list[float], frame_w: int, frame_h: int, framing: Framing,
         short_side: int, max_upscale: float) -> CropPlan | None:
    """The crop of `framing` around `face` in a frame of that size, or None when the frame cannot hold it."""
    x0, y0, x1, y1 = face
    fh = y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    crop_h = framing.span * fh
    crop_h = min(crop_h, frame_h, frame_w / framing.aspect)
    if crop_h < framing.min_span * fh:
        return None
    crop_w = crop_h * framing.aspect
    left = min(max(cx - crop_w / 2, 0.0), frame_w - crop_w)
    top = min(max(cy - framing.face_y * crop_h, 0.0), frame_h - crop_h)
    mx, my = (x1 - x0) * FACE_MARGIN, fh * FACE_MARGIN
    if x0 - mx < left or x1 + mx > left + crop_w or y0 - my < top or y1 + my > top + crop_h:
        return None
    size = bucket(framing, short_side)
    upscale = size[1] / crop_h
    if upscale > max_upscale:
        return None
    return CropPlan(framing.name, (left, top, left + crop_w, top + crop_h), size, round(upscale, 3))


def plans(face: list[float], frame_w: int, frame_h: int, short_side: int, max_upscale: float) -> dict[str, CropPlan]:
    out = {}
    for framing in FRAMINGS.values():
        p = plan(face, frame_w, frame_h, framing, short_side, max_upscale)
        if p is not None:
            out[framing.name] = p
    return out


def assign_framings(options: list[dict[str, CropPlan]], mix: dict[str, float]) -> list[str]:
    """One framing per chosen frame, as close to the wanted mix as the frames allow.

    Frames with the fewest options choose first, each taking the framing furthest below its share.
    """
    n = len(options)
    want = {k: v * n for k, v in mix.items()}
    got = dict.fromkeys(mix, 0)
    chosen = [""] * n
    for i in sorted(range(n), key=lambda i: len(options[i])):
        names = [k for k in options[i] if k in want] or list(options[i])
        pick = max(names, key=lambda k: want.get(k, 0) - got.get(k, 0))
        chosen[i] = pick
        got[pick] = got.get(pick, 0) + 1
    return chosen


def render(rgb: np.ndarray, p: CropPlan) -> Image.Image:
    """Cut and resize in one resampling step (Lanczos)."""
    return Image.fromarray(rgb).resize(p.size, Image.Resampling.LANCZOS, box=p.box)


def contact_sheet(images: list[Path], labels: list[str], out: Path, cell: int = 256) -> Path:
    """A grid of the chosen images, each labelled, to review the dataset at a glance."""
    thumbs = []
    for path in images:
        with Image.open(path) as im:
            im.thumbnail((cell, cell))
            thumbs.append(im.convert("RGB"))
    return labelled_grid(thumbs, labels, out, per_row=max(1, math.ceil(math.sqrt(len(images) * 1.3))),
                         cell=(cell, cell))


def labelled_grid(cells: list[Image.Image], labels: list[str], out: Path, per_row: int,
                  cell: tuple[int, int] | None = None) -> Path:
    """Cells centred in a dark grid, a label under each (the review sheets of images and clips)."""
    w, h = cell or (max((c.width for c in cells), default=1), max((c.height for c in cells), default=1))
    rows = max(1, math.ceil(len(cells) / per_row))
    sheet = Image.new("RGB", (per_row * w, rows * (h + 18)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (im, label) in enumerate(zip(cells, labels)):
        x, y = (i % per_row) * w, (i // per_row) * (h + 18)
        sheet.paste(im, (x + (w - im.width) // 2, y))
        draw.text((x + 4, y + h + 3), label, fill=(230, 230, 230))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
