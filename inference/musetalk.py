"""In-process lip sync with MuseTalk 1.5: the mouth of a face video re-drawn to follow a narration.

MuseTalk (TMElyralab/MuseTalk, MIT code, weights usable commercially) is three stock networks:
a diffusers `UNet2DConditionModel` (`musetalkV15/musetalk.json` + `unet.pth`), the sd-vae-ft-mse
`AutoencoderKL` and the Whisper-tiny encoder. Per video frame it takes a 256x256 crop of the lower
face region, encodes it twice with the VAE (once with its lower half blacked out, once whole as the
reference), concatenates the two latents into 8 channels and makes ONE UNet call at timestep 0,
conditioned on the Whisper features around that frame's time; the decoded crop's mouth region is
blended back into the frame. No denoising loop, so it runs in real time on a GPU.

What this module does differently from upstream's scripts, and why:
- Faces come from the dlib detector and 68 landmarks the project already ships (persona.faces),
  not mmpose/DWPose + S3FD; the iBUG-68 layout is the same, so upstream's V1.5 crop rule applies
  unchanged. Crops are smoothed over time and short detection gaps bridged.
- The blend mask is a fixed feathered lower-face shape inside the crop box instead of a BiSeNet
  face parse (another model download); nothing outside the crop box is ever written, so those
  pixels stay bit-identical to the input.
- Audio windows are placed by each frame's time at the video's real frame rate (upstream assumes
  whole-number fps and mis-centres the window below 25 fps), with the 0.2 s window it was trained on.
- Frames stream: the video is decoded once to track the face and once to render; only when the
  narration is longer than the video (it is then played back and forth) are the frames spooled to
  a scratch file on disk for random access. The video is never held in memory whole.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from persona.errors import PersonaError
from persona.faces import Box
from persona.media import iter_frames, probe, read_audio, write_video

FACE_SIZE = 256  # MuseTalk's crop size (a 32x32 latent)
AUDIO_RATE = 16000  # Whisper's sample rate
FEATURE_RATE = 50  # Whisper encoder outputs per second of audio
SEGMENT_SECONDS = 30  # Whisper's fixed input length
# Upstream conditions each frame on 10 encoder steps (0.2 s): 2 frames before and 2 after at 25 fps
# (audio_padding_length_left/right = 2), i.e. 4 steps (80 ms) before the frame's own time.
WINDOW = 10
WINDOW_BEFORE = 4
UNET_DIR = "musetalkV15"


# ---- loading ---------------------------------------------------------------------------------
def _unet_files(unet: Path) -> tuple[Path, Path]:
    """musetalk.json and unet.pth from the repo folder, its musetalkV15/ folder, or unet.pth itself."""
    unet = Path(unet)
    folder = unet.parent if unet.is_file() else unet / UNET_DIR if (unet / UNET_DIR).is_dir() else unet
    config, weights = folder / "musetalk.json", unet if unet.is_file() else folder / "unet.pth"
    for f in (config, weights):
        if not f.exists():
            raise PersonaError("MuseTalk file is missing", file=f,
                               fix="hf download TMElyralab/MuseTalk --include 'musetalkV15/*'; `persona doctor` lists every model")
    return config, weights


def load_unet(unet: Path) -> torch.nn.Module:
    """The stock diffusers UNet built from musetalk.json, with unet.pth loaded as tensors only."""
    from diffusers import UNet2DConditionModel

    config_path, weights = _unet_files(unet)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PersonaError(f"is not valid JSON ({e})", file=config_path, fix="download it again") from None
    model = UNet2DConditionModel.from_config(config)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise PersonaError("holds code as well as weights, so it is refused", file=weights,
                           fix="use the unet.pth published in TMElyralab/MuseTalk (musetalkV15/unet.pth)") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise PersonaError(f"cannot be read as a weights file ({e.__class__.__name__})", file=weights,
                           fix="download it again: hf download TMElyralab/MuseTalk --include 'musetalkV15/*'") from None
    if not isinstance(state, dict):
        raise PersonaError("is not a state dict", file=weights, fix="use musetalkV15/unet.pth from TMElyralab/MuseTalk")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise PersonaError(f"does not match {config_path.name} ({first})", file=weights,
                           fix="keep musetalk.json and unet.pth from the same MuseTalk release") from None
    return model.eval().requires_grad_(False)


def _cast(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    # .half()/.float() rather than .to(dtype): diffusers' .to warns on every dtype cast
    model = model.to(device)
    return {torch.float16: model.half, torch.bfloat16: model.bfloat16}.get(dtype, model.float)()


def positional_encoding(length: int, dim: int) -> torch.Tensor:
    """The sinusoidal position code (Vaswani et al.) MuseTalk adds to the audio features: sines in
    even channels, cosines in odd ones; (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    code = torch.zeros(length, dim)
    code[:, 0::2] = torch.sin(position * rate)
    code[:, 1::2] = torch.cos(position * rate)
    return code


# ---- faces -----------------------------------------------------------------------------------
def crop_from_landmarks(lm: np.ndarray, margin: float) -> Box:
    """MuseTalk V1.5's face crop from iBUG-68 landmarks: the landmarks' width; from the chin up to as
    far above the mid-nose point (landmark 29) as the chin is below it, so the nose sits on the
    crop's middle line and the masked lower half holds the mouth and jaw; plus a margin under the
    chin (upstream's `extra_margin`, 10 px on its ~250 px training faces: a fraction here)."""
    mid, chin = float(lm[29, 1]), float(lm[:, 1].max())
    top = mid - (chin - mid)
    return float(lm[:, 0].min()), top, float(lm[:, 0].max()), chin + margin * (chin - top)


def smooth_boxes(raw: list[Box | None], fps: float, smooth_seconds: float, gap_seconds: float) -> list[Box | None]:
    """Boxes steadied over time: gaps up to `gap_seconds` between two found faces are bridged by
    linear interpolation, then centres and sizes of each run of faces get a Gaussian filter."""
    from scipy.ndimage import gaussian_filter1d

    n = len(raw)
    have = np.array([b is not None for b in raw])
    xywh = np.full((n, 4), np.nan)
    for i, b in enumerate(raw):
        if b is not None:
            xywh[i] = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1])
    found = np.flatnonzero(have)
    max_gap = int(round(gap_seconds * fps))
    for a, b in zip(found[:-1], found[1:]):
        if 1 < b - a <= max_gap + 1:
            t = (np.arange(a + 1, b) - a)[:, None] / (b - a)
            xywh[a + 1:b] = xywh[a] + t * (xywh[b] - xywh[a])
            have[a + 1:b] = True
    sigma = smooth_seconds * fps
    out: list[Box | None] = [None] * n
    edges = np.flatnonzero(np.diff(np.concatenate([[0], have.astype(np.int8), [0]])))
    for start, stop in zip(edges[0::2], edges[1::2]):
        run = xywh[start:stop]
        if sigma > 0 and stop - start > 1:
            run = gaussian_filter1d(run, sigma, axis=0, mode="nearest")
        for i, (cx, cy, w, h) in enumerate(run, start):
            out[i] = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    return out


def pixel_box(box: Box, width: int, height: int, min_size: int = 16) -> tuple[int, int, int, int] | None:
    """A box rounded to whole pixels and clipped to the frame; None when too little of it is left."""
    x0, y0 = max(0, int(round(box[0]))), max(0, int(round(box[1])))
    x1, y1 = min(width, int(round(box[2]))), min(height, int(round(box[3])))
    return (x0, y0, x1, y1) if x1 - x0 >= min_size and y1 - y0 >= min_size else None


def blend_mask(size: int = FACE_SIZE) -> np.ndarray:
    """The feathered lower-face mask (size x size, 0-255) in crop coordinates.

    Upstream blends with a BiSeNet face parse ("jaw" mode: skin below the nose, lips, chin). A fixed
    shape does nearly as well because the V1.5 crop is itself landmark-aligned (nose on the middle
    line, jaw at the sides, chin at the bottom): a half ellipse from just below the nose to the chin,
    blurred, and ramped to zero at the crop's border so the pasted crop leaves no seam.
    """
    from scipy.ndimage import gaussian_filter

    v, u = (np.mgrid[0:size, 0:size] + 0.5) / size
    inside = (((u - 0.5) / 0.36) ** 2 + ((v - 0.6) / 0.34) ** 2 <= 1.0) & (v >= 0.57)
    soft = gaussian_filter(inside.astype(np.float32), sigma=0.03 * size)
    ramp = np.clip(np.minimum.reduce([u, 1 - u, v, 1 - v]) / 0.05, 0, 1)
    return np.round(soft * ramp * 255).astype(np.uint8)


# ---- frame access ----------------------------------------------------------------------------
def bounce(i: int, n: int) -> int:
    """Source frame for output frame i when n frames play forward, backward, forward, ... without
    repeating the turning frames (so the loop has no visible stall)."""
    if n <= 1:
        return 0
    period = 2 * n - 2
    j = i % period
    return j if j < n else period - j


def frames_for(seconds: float, fps: float) -> int:
    """Frames a narration of `seconds` needs at `fps` (rounded up, as the render plan does)."""
    return max(1, math.ceil(round(seconds * fps, 6)))


@dataclass
class Job:
    """One lip-sync run, planned: the face per source frame, the audio, and how many frames to make."""

    video: Path
    audio: Path
    fps: float
    width: int
    height: int
    source_frames: int  # frames of the video read (all of them when it is shorter than the narration)
    frames: int  # output frames: the narration's length at the video's fps
    crops: list[tuple[int, int, int, int] | None]  # per source frame: the MuseTalk crop box, or no face
    samples: np.ndarray  # the narration, 16 kHz mono
    reference: np.ndarray | None = None  # a fixed 256x256 reference crop, when one was chosen
    faces_found: int = 0
    faces_missing: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def looped(self) -> bool:
        return self.frames > self.source_frames


# ---- the lip syncer --------------------------------------------------------------------------
class MuseTalk:
    """MuseTalk 1.5 lip sync, in-process. Load once, `sync` many videos, then `close`."""

    name = "musetalk"

    def __init__(self, unet: Path, vae: Path, whisper: Path, device: str | None = None, batch_size: int = 8,
                 dtype: torch.dtype | None = None, extra_margin: float = 0.04, smooth_seconds: float = 0.08,
                 gap_seconds: float = 0.5, detect_every: int = 5, detect_long_side: int = 960,
                 reference_frame: int | None = None):
        from diffusers import AutoencoderKL
        from transformers import WhisperFeatureExtractor, WhisperModel

        from persona.device import default_device

        self.device = torch.device(device or default_device())
        # fp16 on a GPU as upstream runs it; CPUs have no fast half precision
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.batch_size = max(1, int(batch_size))
        self.extra_margin, self.smooth_seconds, self.gap_seconds = extra_margin, smooth_seconds, gap_seconds
        self.detect_every, self.detect_long_side = max(1, int(detect_every)), detect_long_side
        self.reference_frame = reference_frame
        self.unet = _cast(load_unet(Path(unet)), self.device, self.dtype)
        self.vae = _cast(AutoencoderKL.from_pretrained(str(vae)).eval().requires_grad_(False), self.device, self.dtype)
        whisper_model = WhisperModel.from_pretrained(str(whisper))
        self.whisper = whisper_model.get_encoder().eval().requires_grad_(False).to(self.device, self.dtype)
        del whisper_model  # the decoder is not needed
        self.features = WhisperFeatureExtractor.from_pretrained(str(whisper))
        self.scale = float(self.vae.config.scaling_factor)
        layers = self.whisper.config.encoder_layers + 1  # the embeddings' output and every layer's
        dim = self.whisper.config.d_model
        if dim != self.unet.config.cross_attention_dim:
            raise PersonaError(f"the Whisper encoder gives {dim}-d features, the UNet expects "
                               f"{self.unet.config.cross_attention_dim}", file=Path(whisper),
                               fix="use openai/whisper-tiny with MuseTalk")
        self.position = positional_encoding(WINDOW * layers, dim).to(self.device, self.dtype)
        self.mask = blend_mask()
        self.timestep = torch.zeros(1, device=self.device, dtype=torch.long)

    @classmethod
    def from_models(cls, models: dict[str, str] | None = None, **kw: Any) -> "MuseTalk":
        """Locate the three models ([models] table, $PERSONA_*, the HF cache); a PersonaError with the
        fetch command when one is missing."""
        from persona.models import locate

        return cls(locate("musetalk", models=models), locate("sd-vae", models=models),
                   locate("whisper-tiny", models=models), **kw)

    def close(self) -> None:
        from persona.device import free_memory

        for name in ("unet", "vae", "whisper"):
            if hasattr(self, name):
                delattr(self, name)
        free_memory()

    # ---- planning ----
    def track(self, video: Path, boxes: list[Box | None] | None = None,
              limit: int | None = None) -> tuple[list[tuple[int, int, int, int] | None], dict[str, Any]]:
        """The MuseTalk crop box per frame of `video` (None where no face), smoothed over time; only
        the first `limit` frames when given.

        `boxes` (one face box per frame in persona.faces' detector convention, or None) skips
        detection; landmarks are still fitted inside each box, which is cheap.
        """
        from persona.faces import backend

        info = probe(video)
        faces = backend("dlib")
        raw: list[Box | None] = []
        held: Box | None = None
        reference = None
        whole = True
        for i, (_, frame) in enumerate(iter_frames(video)):
            if limit is not None and i >= max(limit, (self.reference_frame or 0) + 1):
                whole = False
                break
            if boxes is not None:
                if i >= len(boxes):
                    raise PersonaError(f"the face boxes cover {len(boxes)} frames but the video has more", file=video,
                                       fix="pass one box (or None) per video frame")
                held = boxes[i]
            elif i % self.detect_every == 0:
                held = self._detect(faces, frame)
            raw.append(crop_from_landmarks(faces.landmarks(frame, held), self.extra_margin) if held is not None else None)
            if self.reference_frame == i and raw[-1] is not None:
                box = pixel_box(raw[-1], frame.shape[1], frame.shape[0])
                reference = self._crop(frame, box) if box is not None else None
        if not raw:
            raise PersonaError("has no video frames", file=video, fix="re-export the clip")
        if boxes is not None and whole and len(boxes) != len(raw):
            raise PersonaError(f"the face boxes cover {len(boxes)} frames but the video has {len(raw)}", file=video,
                               fix="pass one box (or None) per video frame")
        if self.reference_frame is not None and reference is None:
            raise PersonaError(f"reference frame {self.reference_frame} shows no face", file=video,
                               fix="choose a frame where the face is visible, or none")
        smooth = smooth_boxes(raw, info.fps, self.smooth_seconds, self.gap_seconds)
        crops = [pixel_box(b, info.width, info.height) if b is not None else None for b in smooth]
        return crops, {"fps": info.fps, "width": info.width, "height": info.height, "reference": reference,
                       "detected": sum(b is not None for b in raw)}

    def _detect(self, faces: Any, frame: np.ndarray) -> Box | None:
        """The largest face, found on a copy scaled to `detect_long_side` (the HOG detector's cost
        grows with pixels, and presenter faces are large)."""
        h, w = frame.shape[:2]
        s = min(1.0, self.detect_long_side / max(h, w))
        small = frame if s == 1.0 else np.asarray(Image.fromarray(frame).resize((round(w * s), round(h * s)), Image.BILINEAR))
        found = faces.detect(small)
        if not found:
            return None
        x0, y0, x1, y1 = max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).box
        return (x0 / s, y0 / s, x1 / s, y1 / s)

    def prepare(self, video: Path, audio: Path, boxes: list[Box | None] | None = None) -> Job:
        video, audio = Path(video), Path(audio)
        samples = read_audio(audio, AUDIO_RATE)
        if len(samples) == 0:
            raise PersonaError("the narration is empty", file=audio, fix="render the narration again")
        fps = probe(video).fps
        if not fps:
            raise PersonaError("has no frame rate", file=video, fix="re-export it as mp4 (H.264)")
        frames = frames_for(len(samples) / AUDIO_RATE, fps)
        # Frames past the narration's end are not tracked, except the few that steady the last crops.
        beyond = math.ceil((self.gap_seconds + 3 * self.smooth_seconds) * fps) + 1
        crops, info = self.track(video, boxes, limit=frames + beyond)
        return Job(video, audio, fps, info["width"], info["height"], len(crops), frames, crops, samples,
                   info["reference"], extra={"detected": info["detected"]})

    # ---- audio ----
    @torch.inference_mode()
    def audio_features(self, samples: np.ndarray) -> torch.Tensor:
        """Whisper encoder states of every layer, (steps, layers, dim), 50 steps per second."""
        per = SEGMENT_SECONDS * AUDIO_RATE
        chunks = []
        for start in range(0, len(samples), per):
            mel = self.features(samples[start:start + per], sampling_rate=AUDIO_RATE, return_tensors="pt").input_features
            states = self.whisper(mel.to(self.device, self.dtype), output_hidden_states=True).hidden_states
            chunks.append(torch.stack(states, dim=2)[0])
        steps = int(len(samples) / AUDIO_RATE * FEATURE_RATE)
        return torch.cat(chunks)[:steps]

    def audio_windows(self, features: torch.Tensor, frames: list[int], fps: float) -> torch.Tensor:
        """The UNet's audio condition for output frames: (batch, WINDOW * layers, dim), position-coded."""
        # a frame's window starts WINDOW_BEFORE steps before its time: index math.floor(t * 50) in the padded
        # features, whose first WINDOW_BEFORE steps are silence
        starts = [math.floor(i * FEATURE_RATE / fps + 1e-6) for i in frames]
        right = max(0, max(starts) + WINDOW - WINDOW_BEFORE - len(features))
        padded = torch.nn.functional.pad(features, (0, 0, 0, 0, WINDOW_BEFORE, right))  # silence beyond the ends
        windows = torch.stack([padded[s:s + WINDOW] for s in starts])  # (batch, WINDOW, layers, dim)
        return windows.flatten(1, 2) + self.position

    # ---- pictures ----
    @staticmethod
    def _crop(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, x1, y1 = box
        return np.asarray(Image.fromarray(frame[y0:y1, x0:x1]).resize((FACE_SIZE, FACE_SIZE), Image.LANCZOS))

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        # the distribution's mean, not a sample (upstream's training does the same): reruns are identical
        return self.vae.encode(images).latent_dist.mode() * self.scale

    @torch.inference_mode()
    def generate(self, crops: np.ndarray, references: np.ndarray, audio: torch.Tensor) -> np.ndarray:
        """New 256x256 faces (uint8) for crops (b, 256, 256, 3), references like them, audio windows."""
        x = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1
        ref = torch.from_numpy(references).to(self.device).permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1
        masked = x.clone()
        masked[:, :, FACE_SIZE // 2:] = -1  # the lower half, black: the model draws mouth and jaw there
        latents = torch.cat([self._latents(masked), self._latents(ref)], dim=1)
        predicted = self.unet(latents, self.timestep, encoder_hidden_states=audio).sample
        image = self.vae.decode(predicted / self.scale).sample
        return ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    def paste(self, frame: np.ndarray, face: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """`frame` with the mouth region of `face` blended in; only pixels inside `box` are written."""
        x0, y0, x1, y1 = box
        size = (x1 - x0, y1 - y0)
        face = np.asarray(Image.fromarray(face).resize(size, Image.LANCZOS), np.uint16)
        m = np.asarray(Image.fromarray(self.mask).resize(size, Image.BILINEAR), np.uint16)[..., None]
        out = frame.copy()
        region = out[y0:y1, x0:x1].astype(np.uint16)
        # integer blend: where the mask is 0 the original value comes back exactly
        out[y0:y1, x0:x1] = ((region * (255 - m) + face * m + 127) // 255).astype(np.uint8)
        return out

    # ---- running ----
    def _source(self, job: Job, scratch: Path | None) -> Iterator[np.ndarray]:
        """The source frame for each output frame, in order."""
        if not job.looped:
            for i, (_, frame) in enumerate(iter_frames(job.video)):
                if i >= job.frames:
                    return
                yield frame
            return
        # Played back and forth: spool the decoded frames to disk once for random access.
        folder = Path(tempfile.mkdtemp(prefix=".musetalk-", dir=scratch))
        try:
            spool = np.lib.format.open_memmap(folder / "frames.npy", mode="w+", dtype=np.uint8,
                                              shape=(job.source_frames, job.height, job.width, 3))
            for i, (_, frame) in enumerate(iter_frames(job.video)):
                if i < job.source_frames:
                    spool[i] = frame
            spool.flush()
            for i in range(job.frames):
                yield np.array(spool[bounce(i, job.source_frames)])
            del spool
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def render(self, job: Job, progress: Callable[[int], None] | None = None,
               scratch: Path | None = None) -> Iterator[np.ndarray]:
        """The lip-synced frames of `job`, in order, `batch_size` at a time through the networks."""
        features = self.audio_features(job.samples)
        batch: list[tuple[int, np.ndarray, tuple[int, int, int, int] | None]] = []
        source = self._source(job, scratch)
        for i, frame in enumerate(source):
            batch.append((i, frame, job.crops[bounce(i, job.source_frames)]))
            if len(batch) == self.batch_size:
                yield from self._flush(job, batch, features, progress)
                batch = []
        if batch:
            yield from self._flush(job, batch, features, progress)

    def _flush(self, job: Job, batch: list, features: torch.Tensor,
               progress: Callable[[int], None] | None) -> list[np.ndarray]:
        done = self._run_batch(job, batch, features)
        if progress is not None:
            progress(len(batch))
        return done

    def _run_batch(self, job: Job, batch: list, features: torch.Tensor) -> list[np.ndarray]:
        faces = [(i, frame, box) for i, frame, box in batch if box is not None]
        job.faces_missing += len(batch) - len(faces)
        job.faces_found += len(faces)
        if not faces:
            return [frame for _, frame, _ in batch]
        crops = np.stack([self._crop(frame, box) for _, frame, box in faces])
        refs = crops if job.reference is None else np.broadcast_to(job.reference, crops.shape).copy()
        audio = self.audio_windows(features, [i for i, _, _ in faces], job.fps)
        new = dict(zip([i for i, _, _ in faces], self.generate(crops, refs, audio)))
        return [self.paste(frame, new[i], box) if box is not None else frame for i, frame, box in batch]

    def sync(self, video: Path, audio: Path, out: Path, *, boxes: list[Box | None] | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Write `out`: the video's frames with the mouth driven by `audio`, as many frames as the
        narration needs at the video's frame rate (the video is cut, or played back and forth), with
        the narration as its audio track (AAC). Atomic: `out` appears only when complete."""
        import time

        t0 = time.perf_counter()
        job = self.prepare(video, audio, boxes)
        rate = probe(audio).sample_rate or AUDIO_RATE
        sound = read_audio(audio, rate)
        out = Path(out)
        write_video(out, self.render(job, progress, scratch=out.parent), job.fps, audio=sound, sr=rate)
        return {"frames": job.frames, "fps": job.fps, "faces_found": job.faces_found,
                "faces_missing": job.faces_missing, "source_frames": job.source_frames, "looped": job.looped,
                "seconds": round(len(job.samples) / AUDIO_RATE, 3), "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."), "batch_size": self.batch_size,
                "seconds_taken": round(time.perf_counter() - t0, 3)}
