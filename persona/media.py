"""Reading and writing audio and video with PyAV, whose wheel bundles FFmpeg (no system ffmpeg needed)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from persona.errors import PersonaError
from persona.files import atomic_path

VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
AUDIO_EXTS = {".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".aac"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass
class MediaInfo:
    path: Path
    duration: float  # seconds (0 for still images)
    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    video_codec: str = ""
    sample_rate: int = 0


def ffmpeg_logs_off() -> None:
    """Route FFmpeg's logging nowhere, as PyAV's default is.

    Importing torchvision switches PyAV's Python log callback on (av.logging.set_level(ERROR)). FFmpeg's
    own threads (x264's lookahead, frame-threaded decoders, filter slices) then need the GIL to log,
    and an encode or decode that waits for them while the main thread holds it never returns: an
    intermittent hang. Called before every open, it undoes whatever was imported since.
    """
    if av.logging.get_level() is not None:
        av.logging.set_level(None)


def av_open(*args, **kwargs) -> av.container.Container:
    ffmpeg_logs_off()
    return av.open(*args, **kwargs)


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise PersonaError("does not exist", file=path, fix="check the path")
    if path.stat().st_size == 0:
        raise PersonaError("is empty", file=path, fix="re-copy or re-export the file")
    try:
        return av_open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise PersonaError(f"cannot be read as media ({e.__class__.__name__}: {e})", file=path,
                           fix="check it plays in a media player; re-export it as mp4 (H.264) or wav") from None


def probe(path: str | Path) -> MediaInfo:
    path = Path(path)
    with _open(path) as c:
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        duration = 0.0
        if c.duration is not None:
            duration = c.duration / av.time_base
        elif v is not None and v.duration is not None and v.time_base is not None:
            duration = float(v.duration * v.time_base)
        elif a is not None and a.duration is not None and a.time_base is not None:
            duration = float(a.duration * a.time_base)
        info = MediaInfo(path, duration, v is not None, a is not None)
        if v is not None:
            info.width, info.height = v.codec_context.width, v.codec_context.height
            rate = v.average_rate or v.guessed_rate
            info.fps = float(rate) if rate else 0.0
            info.video_codec = v.codec_context.name
        if a is not None:
            info.sample_rate = a.codec_context.sample_rate
    return info


def read_audio(path: str | Path, sr: int = 16000, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """Mono float32 samples at `sr`, decoded and resampled by FFmpeg (works for video files too)."""
    path = Path(path)
    with _open(path) as c:
        if not c.streams.audio:
            raise PersonaError("has no audio track", file=path, fix="use a file with sound, or skip it for the voice dataset")
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        if start > 0:
            c.seek(int(start / stream.time_base), stream=stream)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        decoded_to = start  # seconds in the file up to which the audio decoded
        try:
            for frame in c.decode(stream):
                if first_time is None:
                    first_time = float(frame.time) if frame.time is not None else 0.0
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                if frame.time is not None and frame.sample_rate:
                    decoded_to = float(frame.time) + frame.samples / frame.sample_rate
                if end is not None and frame.time is not None and frame.time > end + 1:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as e:
            # Returning what decoded so far would cut clips and narration short without a word.
            where = f"after {decoded_to:.2f} s" if chunks else "at its start"
            raise PersonaError(f"audio cannot be decoded {where} ({e.__class__.__name__}): the file is damaged",
                               file=path, fix="re-export or re-download it (e.g. as wav), or leave it out") from None
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    offset = int(round(((start - (first_time or 0.0)) if start > 0 else 0.0) * sr))
    audio = audio[max(offset, 0):]
    if end is not None:
        audio = audio[: max(int(round((end - start) * sr)), 0)]
    return audio


def write_audio(path: str | Path, samples: np.ndarray, sr: int) -> Path:
    """Write a wav/flac atomically (16-bit PCM for wav)."""
    import soundfile as sf

    path = Path(path)
    samples = np.asarray(samples, dtype=np.float32)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(samples, -1, 1), sr, subtype="PCM_16" if path.suffix == ".wav" else None,
                 format=path.suffix.lstrip(".").upper())
    return path


def open_video(path: str | Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """The container (close it) and its first video stream; a clear error for anything else."""
    path = Path(path)
    c = _open(path)
    if not c.streams.video:
        what = "an audio file" if c.streams.audio else "a file without video"
        c.close()
        raise PersonaError(f"has no video track ({what})", file=path,
                           fix="pass it as audio for the voice dataset, or use a video file")
    return c, c.streams.video[0]


def iter_frames(path: str | Path, fps: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """(time, RGB uint8 frame) for every frame, or roughly `fps` frames per second when given."""
    c, stream = open_video(path)
    with c:
        stream.thread_type = "AUTO"
        next_t = 0.0
        for frame in c.decode(stream):
            t = float(frame.time or 0.0)
            if fps is not None and t + 1e-6 < next_t:
                continue
            next_t = t + 1.0 / fps if fps else 0.0
            yield t, frame.to_ndarray(format="rgb24")


def read_frames(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames as (N, H, W, 3) uint8 and the frame rate."""
    info = probe(path)
    frames = [f for _, f in iter_frames(path)]
    return np.stack(frames), info.fps


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    audio: np.ndarray | None = None,
    sr: int = 48000,
    metadata: dict[str, str] | None = None,
    crf: int = 18,
    preset: str = "medium",
) -> Path:
    """H.264 (yuv420p) + AAC mp4, written to a temp file and renamed when complete.

    Frames are RGB uint8 arrays of one size (even width and height, as yuv420p requires).
    `metadata` becomes container tags (mp4 keeps arbitrary keys through use_metadata_tags).
    `preset` is x264's speed/size trade-off ("ultrafast" for throwaway test footage).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with av_open(str(tmp), "w", format="mp4", options={"movflags": "+faststart+use_metadata_tags"}) as c:
            for k, v in (metadata or {}).items():
                c.metadata[k] = v
            rate = Fraction(fps).limit_denominator(1001)
            vs = c.add_stream("libx264", rate=rate)
            vs.pix_fmt = "yuv420p"
            vs.options = {"crf": str(crf), "preset": preset}
            as_ = None
            if audio is not None:
                as_ = c.add_stream("aac", rate=sr)
                as_.layout = "mono"
            n = 0
            for frame in frames:
                if n == 0:
                    vs.height, vs.width = frame.shape[:2]
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                vf.pts = n
                vf.time_base = 1 / rate
                for packet in vs.encode(vf):
                    c.mux(packet)
                n += 1
            for packet in vs.encode():
                c.mux(packet)
            if as_ is not None:
                _encode_audio(c, as_, np.asarray(audio, np.float32), sr)
        if n == 0:
            raise PersonaError("no frames to write", file=path)
    return path


def _encode_audio(c: av.container.OutputContainer, stream: av.audio.stream.AudioStream, audio: np.ndarray, sr: int) -> None:
    size = stream.codec_context.frame_size or 1024
    for i in range(0, len(audio), size):
        chunk = audio[i : i + size]  # the aac encoder takes a short last frame
        af = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp", layout="mono")
        af.sample_rate = sr
        af.pts = i
        af.time_base = Fraction(1, sr)
        for packet in stream.encode(af):
            c.mux(packet)
    for packet in stream.encode():
        c.mux(packet)


def stream_durations(path: str | Path) -> dict[str, float]:
    """Duration of each stream kind ("video", "audio") in seconds, as the container records it.

    Container durations honour the mp4 edit list (AAC priming and padding trimmed), which decoding
    whole AAC frames does not; streams without a recorded duration are decoded and measured.
    """
    path = Path(path)
    out: dict[str, float] = {}
    with _open(path) as c:
        for kind, streams in (("video", c.streams.video), ("audio", c.streams.audio)):
            if streams and streams[0].duration is not None and streams[0].time_base is not None:
                out[kind] = float(streams[0].duration * streams[0].time_base)
    for kind in ("video", "audio"):
        if kind in out:
            continue
        with _open(path) as c:
            streams = c.streams.video if kind == "video" else c.streams.audio
            if not streams:
                continue
            s = streams[0]
            start, end = None, 0.0
            for frame in c.decode(s):
                t = float(frame.time or 0.0)
                start = t if start is None else start
                dur = 1.0 / float(s.average_rate or 1) if kind == "video" else frame.samples / frame.sample_rate
                end = max(end, t + dur)
            out[kind] = end - (start or 0.0)
    return out
