"""Sparse, fast decoding of long footage with PyAV.

Decoding dominates the cost of looking at a few frames per second of 1080p video, so:
- only reference frames are decoded (`skip_frame = "NONREF"`): the frames nothing else depends on
  (most B-frames, about half of a typical HEVC or H.264 stream) are never decoded. Skipping every
  B-frame ("BIDIR") would be faster but corrupts later frames of streams whose P-frames reference
  B-frames, which x264 and x265 both produce.
- the scan skips the in-loop deblocking filter (`skip_loop_filter`), 15% of HEVC decoding time.
  Its frames differ from exact ones by 41-54 dB PSNR (measured over 10 s GOPs of the shared footage):
  enough for detection, landmarks and identity, but block edges inflate a sharpness measure about
  twofold, so sharpness is measured again on the exactly decoded frames that are kept.
- where keyframes are at least as dense as the sampling interval (phones, cameras and most web
  video put one every 0.5-2 s), only keyframes are decoded (`skip_frame = "NONKEY"`), which costs a
  small fraction of decoding the reference frames.
- a file is split at keyframes into segments that separate processes decode independently.
- a tiny luma thumbnail of every decoded frame (a strided view of the Y plane, no conversion) finds
  shot cuts, so each shot gets a sample even when it is shorter than the sampling interval.
Frames chosen for the dataset are decoded again later at full quality (`grab`), by their pts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from persona.errors import PersonaError
from persona.media import open_video

# Formats whose first plane is 8-bit luma, read without any conversion for the cut detector.
_Y8_FORMATS = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}
CUT_HIST = 0.45  # half the L1 distance between 32-bin luma histograms of consecutive decoded frames
CUT_BLOCKS = 28.0  # mean absolute difference of 8x8 block means (0-255)
SETTLE = 0.2  # seconds after a cut before the new shot's first sample (skips dissolves and flashes)


@dataclass
class VideoLayout:
    path: Path
    duration: float
    width: int  # upright size (rotation applied)
    height: int
    fps: float
    keyframes: list[float]
    rotation: int = 0

    def keyframe_interval(self) -> float:
        """The typical (median) gap between keyframes; the whole duration when there is one keyframe."""
        gaps = np.diff(self.keyframes)
        return float(np.median(gaps)) if len(gaps) else self.duration


def layout(path: Path) -> VideoLayout:
    """Size, duration and keyframe times: packets are read, not decoded (but the first frame, for its
    display rotation)."""
    container, stream = open_video(path)
    keyframes: list[float] = []
    last = 0.0
    with container:
        tb = stream.time_base
        rotation = _first_frame_rotation(container, stream)
        try:
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                t = float(packet.pts * tb)
                last = max(last, t)
                if packet.is_keyframe:
                    keyframes.append(t)
        except av.error.FFmpegError:
            pass  # a damaged tail: what was read before it still counts, decoding reports the damage
        w, h = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 25.0
        duration = float(stream.duration * tb) if stream.duration else (
            container.duration / av.time_base if container.duration else last + 1 / fps)
    if rotation % 180:
        w, h = h, w
    if not keyframes:
        raise PersonaError("has no readable video frames", file=path, fix="re-copy or re-export the file")
    return VideoLayout(path, duration, w, h, fps, sorted(set(keyframes)), rotation)


def _first_frame_rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    decoding = container.decode(stream)
    try:
        frame = next(decoding)
    except (StopIteration, av.error.FFmpegError):
        return 0
    finally:
        # Closed here, not left to the garbage collector: a half-consumed decoder finalised later, at
        # an arbitrary point, can block the process.
        decoding.close()
        container.seek(0, stream=stream)
    return int(getattr(frame, "rotation", 0) or 0)


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply the display rotation phones record (degrees counterclockwise, as PyAV reports it)."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def plan_segments(keyframes: list[float], duration: float, length: float) -> list[tuple[float, float]]:
    """Split at keyframes into pieces of at least `length` seconds; the last one runs to the end."""
    starts = [keyframes[0]]
    for k in keyframes[1:]:
        if k - starts[-1] >= length and duration - k >= length / 3:
            starts.append(k)
    return [(s, e) for s, e in zip(starts, starts[1:] + [math.inf])]


def thumb(frame: av.VideoFrame) -> np.ndarray:
    """A ~64-pixel luma thumbnail; for 8-bit planar formats a strided view of the Y plane (microseconds)."""
    if frame.format.name in _Y8_FORMATS:
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)[:, : frame.width]
        step = max(1, max(frame.height, frame.width) // 64)
        return y[::step, ::step].astype(np.float32)
    w, h = (64, max(2, 64 * frame.height // frame.width)) if frame.width >= frame.height else \
        (max(2, 64 * frame.width // frame.height), 64)
    return frame.to_ndarray(format="gray", width=w, height=h).astype(np.float32)


def is_cut(a: np.ndarray, b: np.ndarray) -> bool:
    """A shot cut between two thumbnails: the luma histogram or the coarse layout changes abruptly.

    Histograms ignore motion; 8x8 block means catch cuts between shots of similar brightness.
    """
    ha = np.bincount((a // 8).astype(np.intp).ravel(), minlength=32) / a.size
    hb = np.bincount((b // 8).astype(np.intp).ravel(), minlength=32) / b.size
    if 0.5 * np.abs(ha - hb).sum() > CUT_HIST:
        return True
    return float(np.abs(_blocks(a) - _blocks(b)).mean()) > CUT_BLOCKS


def _blocks(t: np.ndarray, n: int = 8) -> np.ndarray:
    h, w = (t.shape[0] // n) * n, (t.shape[1] // n) * n
    return t[:h, :w].reshape(n, h // n, n, w // n).mean(axis=(1, 3))


@dataclass
class Segment:
    """Sampled frames of [start, end) of one video: every `every` seconds and once per shot.

    With keyframes_only, only keyframes are decoded and cuts are looked for between consecutive
    keyframes (encoders also place keyframes at scene cuts, so a cut is usually one of them).
    """

    path: Path
    start: float
    end: float
    every: float
    keyframes_only: bool = False
    cuts: list[float] = field(default_factory=list)
    last_time: float = 0.0  # the last decoded frame's time
    decoded: int = 0
    error: str | None = None

    def __iter__(self) -> Iterator[av.VideoFrame]:
        container, stream = open_video(self.path)
        with container:
            stream.thread_type = "SLICE"  # frame threads would only add latency: processes use the cores
            stream.codec_context.thread_count = 1
            stream.codec_context.skip_frame = "NONKEY" if self.keyframes_only else "NONREF"
            stream.codec_context.options = {"skip_loop_filter": "all"}
            if self.start > 0:
                container.seek(int(self.start / stream.time_base), stream=stream)
            decoding = container.decode(stream)
            try:
                yield from self._sample(decoding)
            finally:
                decoding.close()

    def _sample(self, frames: Iterator[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        previous: np.ndarray | None = None
        next_sample = self.start
        try:
            for frame in frames:
                t = float(frame.time) if frame.time is not None else self.last_time
                if t < self.start - 1e-3:
                    continue
                if t >= self.end:
                    break
                self.decoded += 1
                self.last_time = t
                small = thumb(frame)
                if previous is not None and is_cut(previous, small):
                    self.cuts.append(t)
                    next_sample = t if self.keyframes_only else t + SETTLE
                previous = small
                if t + 1e-6 >= next_sample:
                    next_sample = t + self.every
                    yield frame
        except av.error.FFmpegError as e:
            self.error = f"{e.__class__.__name__}: {e}"


def grab(path: Path, pts: list[int], keyframes: list[float], rotation: int = 0) -> dict[int, np.ndarray]:
    """Full-resolution RGB frames by pts, decoding forward and seeking only past a keyframe."""
    out: dict[int, np.ndarray] = {}
    wanted = sorted(set(pts))
    if not wanted:
        return out
    container, stream = open_video(path)
    with container:
        stream.thread_type = "SLICE"
        stream.codec_context.skip_frame = "NONREF"  # the sampled frames are reference frames
        tb = stream.time_base
        position = -math.inf
        decoding: Iterator[av.VideoFrame] | None = None
        try:
            for target in wanted:
                t = float(target * tb)
                if decoding is None or any(position < k <= t for k in keyframes):
                    if decoding is not None:
                        decoding.close()
                    container.seek(target, stream=stream)
                    decoding = container.decode(stream)
                for frame in decoding:
                    if frame.pts is None:
                        continue
                    position = float(frame.pts * tb)
                    if frame.pts >= target:
                        if frame.pts == target:
                            out[target] = upright(frame.to_ndarray(format="rgb24"), rotation)
                        break
        except av.error.FFmpegError:
            pass  # what was decoded before the damage is returned; the caller replaces the rest
        finally:
            if decoding is not None:
                decoding.close()
    return out
