"""Finishing a scene: frame interpolation to the output rate, then upscaling to HD.

Wan gives 16 fps at 480p (lip-synced scenes come back from LatentSync at 25 fps). Interpolation
doubles the rate with FILM (recursive midpoints for 4x), or with FFmpeg's motion-compensated
`minterpolate` when no FILM file is configured. The doubled stream is then re-timed to the output
rate against the narration's length, so picture and sound stay in sync through every rate change.
Upscaling runs any single-image super-resolution model spandrel loads (e.g. 4x-LSDIR, an ESRGAN),
in overlapping tiles so memory stays bounded, then resizes to 720p or 1080p; Lanczos when no model
is configured. Everything streams frame by frame: a 90 s HD video never sits in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from persona.device import default_device
from persona.errors import PersonaError
from persona.files import hash_json
from persona.inference.memory import Lazy
from persona.inference.plan import FinishSettings, SceneDir
from persona.inference.stage import RenderJob, Stage, Tick, model_key
from persona.media import ffmpeg_logs_off

if TYPE_CHECKING:
    from persona.workspace import Workspace

FILM_MULTIPLE = 64  # FILM's feature pyramid wants sides divisible by 64


def output_size(aspect: str, short_side: int) -> tuple[int, int]:
    """(width, height), both even (yuv420p)."""
    long_side = int(round(short_side * 16 / 9 / 2)) * 2
    short_side = short_side // 2 * 2
    return (long_side, short_side) if aspect == "16:9" else (short_side, long_side)


# ---- interpolation -------------------------------------------------------------------------------
def _to_tensor(frame: np.ndarray, device: str):
    import torch

    return torch.from_numpy(frame).to(device).permute(2, 0, 1)[None].float() / 255.0


def _to_frame(t) -> np.ndarray:
    return (t[0].clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy()


class Film:
    """FILM from its TorchScript export: model(x0, x1, dt) with (1, 3, H, W) frames in [0, 1]."""

    def __init__(self, path: Path, device: str | None = None):
        import torch

        self.device = device or default_device()
        # TorchScript is a program (it can write files, e.g. with torch.save), so the locator only
        # hands out a FILM path from the user's own configuration or a pack the user trusts.
        try:
            self.model = torch.jit.load(str(path), map_location=self.device).eval()
        except (RuntimeError, ValueError) as e:
            raise PersonaError(f"is not a TorchScript FILM export ({str(e).strip().splitlines()[0][:120]})", file=path,
                               fix="use film_net_fp32.pt from frame-interpolation-pytorch's releases") from None

    def midpoint(self, a, b):
        import torch

        h, w = a.shape[-2:]
        ph, pw = (-h) % FILM_MULTIPLE, (-w) % FILM_MULTIPLE
        pad = (0, pw, 0, ph)
        with torch.no_grad():
            a2 = torch.nn.functional.pad(a, pad, mode="replicate")
            b2 = torch.nn.functional.pad(b, pad, mode="replicate")
            mid = self.model(a2, b2, a2.new_full((1, 1), 0.5))
        return mid[..., :h, :w]

    def between(self, a, b, factor: int) -> list:
        """factor - 1 frames evenly between a and b, by recursive midpoints (the common FILM port
        ignores dt and always returns the midpoint)."""
        if factor == 1:
            return []
        mid = self.midpoint(a, b)
        half = factor // 2
        return [*self.between(a, mid, half), mid, *self.between(mid, b, half)]

    def interpolate(self, frames: Iterable[np.ndarray], factor: int) -> Iterator[np.ndarray]:
        """(N - 1) * factor + 1 frames for N input frames."""
        if factor & (factor - 1):
            raise ValueError(f"FILM interpolation needs a power-of-two factor, not {factor}")
        prev = None
        for frame in frames:
            cur = _to_tensor(frame, self.device)
            if prev is not None:
                for mid in self.between(prev, cur, factor):
                    yield _to_frame(mid)
            yield frame
            prev = cur


def minterpolate(frames: Iterable[np.ndarray], fps: float, factor: int) -> Iterator[np.ndarray]:
    """FFmpeg's motion-compensated interpolation (through PyAV's filter graph)."""
    import av

    ffmpeg_logs_off()
    graph = None
    rate = Fraction(fps).limit_denominator(1001)
    for i, frame in enumerate(frames):
        if graph is None:
            graph = av.filter.Graph()
            src = graph.add_buffer(width=frame.shape[1], height=frame.shape[0], format="rgb24", time_base=1 / rate)
            nodes = [src, graph.add("minterpolate", f"fps={rate * factor}:mi_mode=mci:mc_mode=aobmc:vsbmc=1"),
                     graph.add("format", "rgb24"), graph.add("buffersink")]
            for a, b in zip(nodes, nodes[1:]):
                a.link_to(b)
            graph.configure()
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts, vf.time_base = i, 1 / rate
        graph.push(vf)
        yield from _drain(graph)
    if graph is not None:
        graph.push(None)
        yield from _drain(graph)


def _drain(graph: Any) -> Iterator[np.ndarray]:
    import av

    while True:
        try:
            yield graph.pull().to_ndarray(format="rgb24")
        except (av.BlockingIOError, av.EOFError):
            return


def factor_for(source_fps: float, target_fps: float) -> int:
    """The smallest power of two that lifts source_fps to at least target_fps."""
    return 1 if source_fps >= target_fps else 2 ** math.ceil(math.log2(target_fps / source_fps))


def retime(frames: Iterable[np.ndarray], rate: float, fps: int, count: int) -> Iterator[np.ndarray]:
    """`count` frames at `fps` from a stream at `rate`: output frame k shows the input frame nearest
    to time k / fps (the last frame holds at the end)."""
    it = iter(frames)
    index, current = -1, None
    for k in range(count):
        want = round(k * rate / fps)
        while index < want:
            try:
                current = next(it)
                index += 1
            except StopIteration:
                break
        if current is None:
            raise PersonaError("no frames to re-time")
        yield current


# ---- upscaling -------------------------------------------------------------------------------------
class Upscaler:
    """A spandrel single-image SR model, run in overlapping tiles."""

    def __init__(self, path: Path, tile: int = 256, overlap: int = 16, device: str | None = None):
        import torch
        from spandrel import ImageModelDescriptor, ModelLoader

        self.device = device or default_device()
        loader = ModelLoader(device="cpu")
        if path.suffix == ".safetensors":
            descriptor = loader.load_from_file(str(path))
        else:
            # .pth/.pt/.ckpt: tensors only; a checkpoint file must not be able to run code.
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as e:  # UnpicklingError for anything that is not plain tensors
                raise PersonaError(f"cannot be loaded safely as plain weights ({e.__class__.__name__})", file=path,
                                   fix="use a .safetensors export of the upscaler") from None
            descriptor = loader.load_from_state_dict(state.get("params_ema") or state.get("params") or state)
        if not isinstance(descriptor, ImageModelDescriptor):
            raise PersonaError("is not a single-image super-resolution model", file=path,
                               fix="use an upscaler such as 4x-LSDIR (ESRGAN)")
        half = self.device == "cuda" and descriptor.supports_half
        self.model = descriptor.to(self.device).eval()
        if half:
            self.model.half()
        self.dtype = torch.float16 if half else torch.float32
        self.scale = descriptor.scale
        self.tile, self.overlap = tile, overlap

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """The frame at `scale` times its size."""
        import torch

        x = _to_tensor(frame, self.device).to(self.dtype)
        _, _, h, w = x.shape
        s, t, o = self.scale, self.tile, self.overlap
        out = torch.zeros((1, 3, h * s, w * s), device=self.device, dtype=torch.float32)
        weight = torch.zeros_like(out[:, :1])
        step = max(t - 2 * o, 1)
        with torch.no_grad():
            for y0 in range(0, max(h - 2 * o, 1), step):
                for x0 in range(0, max(w - 2 * o, 1), step):
                    y1, x1 = min(y0 + t, h), min(x0 + t, w)
                    ys, xs = max(y1 - t, 0), max(x1 - t, 0)
                    tile = self.model(x[..., ys:y1, xs:x1]).float()
                    ramp = _feather(y1 - ys, x1 - xs, o, s, self.device)
                    out[..., ys * s:y1 * s, xs * s:x1 * s] += tile * ramp
                    weight[..., ys * s:y1 * s, xs * s:x1 * s] += ramp
        return _to_frame(out / weight.clamp_min(1e-6))


def _feather(h: int, w: int, overlap: int, scale: int, device: str):
    """Blend weights for one upscaled tile: ramps over the overlap so seams average smoothly."""
    import torch

    def ramp(n: int) -> torch.Tensor:
        r = torch.ones(n * scale, device=device)
        k = min(overlap * scale, n * scale // 2)
        if k > 0:
            edge = torch.linspace(0.05, 1.0, k, device=device)
            r[:k], r[-k:] = edge, edge.flip(0)
        return r

    return (ramp(h)[:, None] * ramp(w)[None, :])[None, None]


def resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos to (width, height), cropping to the target aspect first."""
    from PIL import Image, ImageOps

    image = Image.fromarray(frame)
    if image.size == size:
        return frame
    return np.asarray(ImageOps.fit(image, size, Image.Resampling.LANCZOS))


# ---- the stage ----------------------------------------------------------------------------------------
def _pick(ws: Workspace, key: str, choice: str, model_choice: str, fallback: str, fallback_note: str) -> tuple[str, Path | None]:
    """(method, model file) for one finishing step: the model when asked for (it must exist), or
    when `auto` finds it configured; else the fallback, with a warning once."""
    from persona.models import find, locate
    from persona.progress import warn

    if choice == model_choice:
        return choice, locate(key, models=ws.pack.models)
    if choice != "auto":
        return choice, None
    hit = find(key, models=ws.pack.models)
    if hit is not None and not hit.problems:
        return model_choice, hit.path
    warn(f"no {key} model configured (see `persona doctor`): {fallback_note}", once=True)
    return fallback, None


def finish_scene(source: Path, seconds: float, out: Path, method: str, film: Film | None, upscaler: Upscaler | None,
                 size: tuple[int, int], f: FinishSettings, tick: Callable[[float], None] = lambda n: None
                 ) -> dict[str, Any]:
    from persona.media import iter_frames, probe, write_video

    src_fps = probe(source).fps
    factor = 1 if method == "none" else factor_for(src_fps, f.fps)
    frames: Iterable[np.ndarray] = (frame for _, frame in iter_frames(source))
    if factor > 1:
        frames = film.interpolate(frames, factor) if method == "film" else minterpolate(frames, src_fps, factor)
    count = round(seconds * f.fps)
    frames = retime(frames, src_fps * factor, f.fps, count)

    def finished(x: np.ndarray) -> np.ndarray:
        tick(1)
        # A super-resolution model only where the picture is smaller than the output (the person's own
        # footage usually is not): upscaling 4x to shrink again would cost time and add nothing.
        small = x.shape[0] < size[1] or x.shape[1] < size[0]
        return resize(upscaler(x) if upscaler is not None and small else x, size)

    write_video(out, (finished(x) for x in frames), f.fps)
    return {"source_fps": src_fps, "factor": factor, "frames": count}


class FinishStage(Stage):
    """Interpolation to the output rate, then upscaling to HD (progress in output frames)."""

    name, output = "finish", "finished.mp4"

    def __init__(self, job: RenderJob):
        f = job.settings.finish
        self.method, self.film_path = _pick(job.ws, "film", f.interpolation, "film", "minterpolate",
                                            "interpolating with FFmpeg's minterpolate")
        self.upscale, self.upscaler_path = _pick(job.ws, "upscaler", f.upscale, "model", "lanczos",
                                                 "resizing with Lanczos")
        self.size = output_size(job.settings.aspect, f.output_height)
        self.models = model_key(self.film_path, self.upscaler_path)

    def source(self, job: RenderJob, scene: SceneDir) -> Path:
        return scene.path("synced.mp4" if scene.label in job.synced else "video.mp4")

    def seconds(self, scene: SceneDir) -> float:
        return scene.record("narration.wav")["seconds"]

    def key(self, job: RenderJob, scene: SceneDir) -> str:
        source = self.source(job, scene)
        return hash_json(["finish", scene.record(source.name).get("key"), self.seconds(scene), self.method,
                          self.upscale, self.models, self.size, job.settings.finish.model_dump()])

    def work(self, job: RenderJob, scene: SceneDir) -> float:
        return round(self.seconds(scene) * job.settings.finish.fps)

    def load(self, job: RenderJob) -> tuple[Film | None, Upscaler | None]:
        f = job.settings.finish
        film = Film(self.film_path) if self.film_path else None
        if film is not None:
            job.loads["film"] = job.loads.get("film", 0) + 1
        upscaler = Upscaler(self.upscaler_path, f.tile, f.tile_overlap) if self.upscaler_path else None
        if upscaler is not None:
            job.loads["upscaler"] = job.loads.get("upscaler", 0) + 1
        return FinishModels(film, upscaler)

    def make(self, job: RenderJob, scene: SceneDir, model: Lazy, tick: Tick) -> dict[str, Any]:
        source = self.source(job, scene)
        models = model.get() if (self.film_path or self.upscaler_path) else FinishModels(None, None)
        info = finish_scene(source, self.seconds(scene), scene.path(self.output), self.method, models.film,
                            models.upscaler, self.size, job.settings.finish, tick)
        return {"source": source.name, **info}

    def summary(self, job: RenderJob) -> dict[str, Any]:
        f = job.settings.finish
        return {"interpolation": self.method, "upscale": self.upscale,
                "film": str(self.film_path) if self.film_path else None,
                "upscaler": str(self.upscaler_path) if self.upscaler_path else None,
                "fps": f.fps, "size": list(self.size)}


@dataclass
class FinishModels:
    """The finishing models (each optional), released together."""

    film: Film | None
    upscaler: Upscaler | None

    def close(self) -> None:
        self.film = self.upscaler = None
