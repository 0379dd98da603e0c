"""On-camera scenes from the person's own footage: a presenter clip (written by `persona ingest` to
datasets/presenter/) played back and forth for as long as the narration, cropped to the output's
aspect around the face. Lip sync then re-animates only the mouth: identity, head motion and
clothes stay the person's own.

Each turn of the back-and-forth gets a short cross-fade, so the reversal of motion does not snap.
The face box of every output frame goes into the video's record, so lip sync needs no detection.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from persona.errors import PersonaError
from persona.files import hash_file, hash_json, read_json
from persona.inference.memory import Lazy
from persona.inference.plan import SceneDir, frames_for
from persona.inference.stage import RenderJob, Stage, Tick
from persona.media import iter_frames, probe, write_video

if TYPE_CHECKING:
    from persona.workspace import Workspace

FIX = "run `persona ingest` on the footage again to rebuild datasets/presenter"


@dataclass
class Clip:
    path: Path
    fps: float
    size: tuple[int, int]  # width, height
    frames: int
    boxes: list[list[float]]  # the smoothed face box of every frame (x0, y0, x1, y1)
    source: str
    start: float


def clips(ws: Workspace) -> list[Clip]:
    """The pack's presenter clips ([] when ingest found none); a clip deleted or replaced since
    ingest is an error naming it."""
    folder = ws.pack.datasets.presenter
    if not folder:
        return []
    root = ws.path(folder)
    manifest = root / "manifest.json"
    if not manifest.exists():
        return []
    entries = read_json(manifest, None)
    if not isinstance(entries, list):
        raise PersonaError("cannot be read as a presenter clip list", file=manifest, fix=FIX)
    out = []
    for e in entries:
        try:
            clip = Clip(root / e["file"], float(e["fps"]), (int(e["size"][0]), int(e["size"][1])), int(e["frames"]),
                        e["boxes"], e["source"], float(e["start"]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise PersonaError("has an entry persona cannot read", file=manifest, fix=FIX) from None
        if not clip.path.is_file():
            raise PersonaError("presenter clip is missing (deleted after ingest?)", file=clip.path, fix=FIX)
        info = probe(clip.path)
        if (info.width, info.height) != clip.size or abs(info.duration * clip.fps - clip.frames) > 2 \
                or len(clip.boxes) != clip.frames:
            raise PersonaError("presenter clip was changed after ingest (its size or length differs from "
                               "datasets/presenter/manifest.json)", file=clip.path, fix=FIX)
        out.append(clip)
    return out


def assign(scenes: list[SceneDir], available: list[Clip]) -> dict[str, Clip]:
    """A clip for each footage scene: in turn, so consecutive scenes do not repeat one clip."""
    return {s.label: available[k % len(available)] for k, s in enumerate(scenes)} if available else {}


def bounce(k: int, n: int, fade: int) -> tuple[int, int, float]:
    """Output frame k of a clip of n frames played forward, backward, forward, ...: (frame a, frame b,
    weight of b). Consecutive passes overlap by `fade` frames at each turn, where the end of one pass
    is blended into the start of the next (both show the frames near the turn)."""
    if n == 1:
        return 0, 0, 0.0
    fade = max(1, min(fade, n // 3))  # at least the turning frame itself, shown once

    def frame(p: int, i: int) -> int:  # frame i of pass p
        return i if p % 2 == 0 else n - 1 - i

    p, i = divmod(k, n - fade)
    if p > 0 and i < fade:
        return frame(p - 1, i + n - fade), frame(p, i), (i + 1) / (fade + 1)
    return frame(p, i), frame(p, i), 0.0


def crop_box(clip: Clip, aspect: float) -> tuple[int, int, int, int]:
    """The largest window of the clip with the output's aspect (width / height), centred on the
    face's mean position, inside the frame."""
    w, h = clip.size
    cw, ch = (w, int(round(w / aspect))) if w / h <= aspect else (int(round(h * aspect)), h)
    cw, ch = min(cw, w) // 2 * 2, min(ch, h) // 2 * 2
    boxes = np.asarray(clip.boxes, np.float64)
    cx, cy = (boxes[:, 0] + boxes[:, 2]).mean() / 2, (boxes[:, 1] + boxes[:, 3]).mean() / 2
    x0 = int(np.clip(round(cx - cw / 2), 0, w - cw))
    y0 = int(np.clip(round(cy - ch / 2.6), 0, h - ch))  # the face a little above the centre, as framed shots do
    return x0, y0, x0 + cw, y0 + ch


def loop(clip: Clip, count: int, aspect: float, max_height: int, fade: int
         ) -> tuple[Iterator[np.ndarray], list[list[float]], tuple[int, int]]:
    """`count` frames of the clip bounced back and forth, cropped and scaled to at most `max_height`;
    returns the frames (streamed), the face box of each and the output size."""
    from PIL import Image

    x0, y0, x1, y1 = crop_box(clip, aspect)
    scale = min(1.0, max_height / (y1 - y0))
    size = (int(round((x1 - x0) * scale / 2)) * 2, int(round((y1 - y0) * scale / 2)) * 2)
    plan = [bounce(k, clip.frames, fade) for k in range(count)]

    def moved(b: list[float]) -> np.ndarray:
        return (np.asarray(b, np.float64) - [x0, y0, x0, y0]) * scale

    boxes = [[round(float(v), 1) for v in (1 - wt) * moved(clip.boxes[a]) + wt * moved(clip.boxes[b])]
             for a, b, wt in plan]

    def frames() -> Iterator[np.ndarray]:
        # The clip is decoded once and kept (a presenter clip is seconds long; a scene reuses it many times).
        source = [f for _, f in iter_frames(clip.path)]
        if len(source) < clip.frames:
            raise PersonaError(f"presenter clip decodes to {len(source)} frames, {clip.frames} expected",
                               file=clip.path, fix=FIX)

        def fit(frame: np.ndarray) -> np.ndarray:
            window = frame[y0:y1, x0:x1]
            if scale == 1.0:
                return np.ascontiguousarray(window)
            return np.asarray(Image.fromarray(window).resize(size, Image.Resampling.LANCZOS))

        for a, b, wt in plan:
            frame = source[a] if wt == 0 else \
                ((1 - wt) * source[a].astype(np.float32) + wt * source[b].astype(np.float32)).round().astype(np.uint8)
            yield fit(frame)

    return frames(), boxes, size


class FootageStage(Stage):
    """On-camera scenes from presenter clips (progress in frames). No model: the person's own footage."""

    name, output = "footage", "video.mp4"

    def __init__(self, job: RenderJob, scenes: list[SceneDir], available: list[Clip]):
        self.footage = scenes
        self.clip = assign(scenes, available)
        self.ids = {id(c): hash_file(c.path) for c in {id(c): c for c in self.clip.values()}.values()}

    def scenes(self, job: RenderJob) -> list[SceneDir]:
        return self.footage

    def frames(self, job: RenderJob, scene: SceneDir) -> int:
        return frames_for(scene.record("narration.wav")["seconds"], self.clip[scene.label].fps)

    def key(self, job: RenderJob, scene: SceneDir) -> str:
        p, clip = job.settings.presenter, self.clip[scene.label]
        return hash_json(["footage", self.ids[id(clip)], clip.boxes, self.frames(job, scene), job.settings.aspect,
                          p.crossfade, job.settings.finish.output_height, job.settings.assembly.crf])

    def work(self, job: RenderJob, scene: SceneDir) -> float:
        return self.frames(job, scene)

    def make(self, job: RenderJob, scene: SceneDir, model: Lazy, tick: Tick) -> dict[str, Any]:
        clip, count = self.clip[scene.label], self.frames(job, scene)
        w, h = (16, 9) if job.settings.aspect == "16:9" else (9, 16)
        fade = int(round(job.settings.presenter.crossfade * clip.fps))
        frames, boxes, size = loop(clip, count, w / h, job.settings.finish.output_height, fade)

        def counted() -> Iterator[np.ndarray]:
            for f in frames:
                tick(1)
                yield f

        write_video(scene.path(self.output), counted(), clip.fps, crf=job.settings.assembly.crf)
        return {"frames": count, "fps": clip.fps, "source": "footage", "clip": clip.path.name,
                "clip_source": clip.source, "size": list(size), "boxes": boxes}

    def summary(self, job: RenderJob) -> dict[str, Any]:
        return {"footage": {s.label: self.clip[s.label].path.name for s in self.footage}}
