"""Render settings, VRAM profiles, the render folder, and what each stage's output depends on.

`renders/NAME/` holds script.json, scenes/NN/{narration.wav, keyframe.png,
video.mp4, ...}, final.mp4, final.srt and render.json. Every scene artifact has a `<file>.json`
record with the hash of its inputs (persona.files.is_fresh / mark_fresh): a re-render redoes only
what changed, and a killed render resumes. Seeds come from the scene's own content, so editing or
inserting one scene leaves the others' seeds (and outputs) alone.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from persona.device import gpu_memory, largest_fitting
from persona.errors import PersonaError
from persona.inference.comfyui import ComfyUISettings
from persona.files import atomic_path, hash_json, is_fresh, mark_fresh, read_json, record_path
from persona.inference.script import Scene, ScriptSettings

PROFILES_GB = (12, 16, 24, 48, 80)
STAGES = ("script", "narration", "keyframes", "video", "lipsync", "finish", "assemble")


class Memory(BaseModel):
    """How a diffusion pipeline fits in VRAM (ignored on CPU, where everything stays in RAM)."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # model: whole components move to the GPU in turn; group: blocks stream in (CUDA streams);
    # sequential: leaf by leaf (slowest, least VRAM)
    offload: Literal["none", "model", "group", "sequential"] = "none"
    # fp8: weights stored in float8 and upcast per layer (halves VRAM, runs anywhere);
    # nf4: bitsandbytes 4-bit at load time (quarter VRAM, CUDA only)
    quantize: Literal["none", "fp8", "nf4"] = "none"
    vae_tiling: bool = False


class NarrationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = 32
    speed: float = 1.0
    sentence_pause: float = 0.25  # silence between sentences of a scene (s)
    lead_in: float = 0.25  # silence before the first sentence of a scene (s)
    tail: float = 0.45  # silence after the last sentence (s)
    max_scene_seconds: float = 30.0
    max_total_seconds: float = 240.0


class KeyframeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = 1024  # for 16:9; swapped for 9:16
    height: int = 576
    steps: int = 28
    guidance: float = 3.5
    max_sequence_length: int = 512
    lora_strength: float | None = None  # None: the pack's [lora].strength
    memory: Memory = Field(default_factory=Memory)


class VideoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = 832  # Wan 2.1 480P, 16:9; swapped for 9:16
    height: int = 480
    fps: int = 16
    steps: int = 30
    guidance: float = 5.0
    chunk_frames: int = Field(default=81, ge=5)  # Wan's longest clip; 4k+1
    # first-last: every chunk runs keyframe -> keyframe (FLF2V checkpoint): no drift, seamless joins,
    #   motion returns to the keyframe pose every chunk;
    # restart: every chunk starts from the keyframe (I2V checkpoint): no drift, freer motion, a visible
    #   jump back to the keyframe pose at each chunk boundary.
    anchor: Literal["first-last", "restart"] = "first-last"
    negative_prompt: str = ("blurry, distorted face, deformed hands, extra fingers, flicker, jitter, text, "
                            "watermark, static frame, low quality")
    max_sequence_length: int = 512
    memory: Memory = Field(default_factory=Memory)


class AssemblySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loudness_lufs: float = -14.0
    true_peak_db: float = -1.0
    burn_subtitles: bool = False
    crf: int = 18
    audio_rate: int = 48000
    label: bool = False  # burn a small "AI-generated" mark into the picture (for platforms that strip metadata)
    label_corner: Literal["top-left", "top-right", "bottom-left", "bottom-right"] = "top-right"
    consent_reference: bool = False  # put the consent record's path/URL into the Content Credentials


class LipsyncSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # musetalk: in-process (MuseTalk 1.5 weights, `persona doctor`); latentsync: the user's checkout
    backend: Literal["musetalk", "latentsync"] = "musetalk"
    batch_size: int = Field(default=8, ge=1)  # musetalk: frames per UNet call
    steps: int = 20
    guidance: float = 1.5
    deepcache: bool = True
    # relative to the checkout; None picks configs/unet/stage2_512.yaml (1.6) or stage2.yaml (1.5)
    unet_config: str | None = None
    checkpoint: str = "checkpoints/latentsync_unet.pt"
    python: str | None = None  # LatentSync's interpreter; None: $PERSONA_LATENTSYNC_PYTHON or <checkout>/.venv
    timeout_seconds: float = 3600


class FinishSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fps: int = Field(default=32, ge=1)
    interpolation: Literal["auto", "film", "minterpolate", "none"] = "auto"  # auto: FILM if configured
    output_height: int = Field(default=1080, ge=16)  # the short side: 720 or 1080 for HD
    upscale: Literal["auto", "model", "lanczos"] = "auto"  # auto: the [models] upscaler if configured
    tile: int = Field(default=256, ge=16)
    tile_overlap: int = Field(default=16, ge=0)


class PresenterSettings(BaseModel):
    """Where on-camera scenes come from (a scene's own `presenter` field in script.json overrides `source`)."""

    model_config = ConfigDict(extra="forbid")

    # footage: a presenter clip of the person (datasets/presenter), looped and lip-synced;
    # generated: a FLUX keyframe with the LoRA, animated by Wan, then lip-synced;
    # talking: the keyframe made to speak the narration by an audio-driven video model (Wan2.2-S2V or
    #   HuMo; the ComfyUI engine only), with no separate lip-sync pass; auto: footage when the pack has clips
    source: Literal["auto", "footage", "generated", "talking"] = "auto"
    talking_model: Literal["s2v", "humo"] = "s2v"
    crossfade: float = Field(default=0.2, ge=0, le=2)  # seconds blended at each turn of a looped clip


class RenderSettings(BaseModel):
    """Everything a render depends on besides the pack and the script; recipes/render/*.toml override it."""

    model_config = ConfigDict(extra="forbid")

    # diffusers: FLUX and Wan in this process; comfyui: keyframes and video on the ComfyUI servers in
    # [comfyui] urls (or --comfyui-url, PERSONA_COMFYUI_URL), with their own models and GPUs
    engine: Literal["diffusers", "comfyui"] = "diffusers"
    comfyui: ComfyUISettings = Field(default_factory=ComfyUISettings)
    profile: str = "auto"  # what the recipe was written for (informational)
    aspect: Literal["16:9", "9:16"] = "16:9"
    seed: int = 0
    script: ScriptSettings = Field(default_factory=ScriptSettings)
    narration: NarrationSettings = Field(default_factory=NarrationSettings)
    keyframes: KeyframeSettings = Field(default_factory=KeyframeSettings)
    video: VideoSettings = Field(default_factory=VideoSettings)
    presenter: PresenterSettings = Field(default_factory=PresenterSettings)
    lipsync: LipsyncSettings = Field(default_factory=LipsyncSettings)
    finish: FinishSettings = Field(default_factory=FinishSettings)
    assembly: AssemblySettings = Field(default_factory=AssemblySettings)

    def keyframe_size(self) -> tuple[int, int]:
        w, h = self.keyframes.width, self.keyframes.height
        return (w, h) if self.aspect == "16:9" else (h, w)

    def video_size(self) -> tuple[int, int]:
        w, h = self.video.width, self.video.height
        return (w, h) if self.aspect == "16:9" else (h, w)


def detect_profile() -> str:
    """The largest shipped VRAM profile that fits the GPU (else the smallest), or 'cpu'."""
    have, _ = gpu_memory()
    if have is None:
        return "cpu"
    return f"{largest_fitting(list(PROFILES_GB), have) or PROFILES_GB[0]}gb"


def check_profile(settings: RenderSettings) -> None:
    """Refuse, before any work, a GPU profile this machine cannot run (no CUDA, or too little memory):
    otherwise it fails minutes later, inside FLUX or Wan, with a low-level error."""
    import re

    match = re.fullmatch(r"(\d+)gb", settings.profile)
    if not match:
        return
    need = int(match.group(1))
    have, gpu = gpu_memory()
    if have is None:
        raise PersonaError(f"render profile {settings.profile} needs a CUDA GPU with {need} GB, and none was found",
                           fix="render on a machine with an NVIDIA GPU, or pass --profile cpu (practical only with "
                               "the tiny test models)")
    if largest_fitting([need], have) is None:
        raise PersonaError(f"render profile {settings.profile} is planned for {need} GB of GPU memory, and this GPU "
                           f"({gpu}) has {have:.1f} GB", fix=f"use --profile {detect_profile()} (or --profile auto)")


def scene_seed(base: int, *content: Any) -> int:
    return (base + int(hash_json(content)[:8], 16)) % (2**31)


def frames_for(seconds: float, fps: int) -> int:
    import math

    return max(1, math.ceil(round(seconds * fps, 6)))


def chunk_lengths(frames: int, chunk_frames: int, anchor: str) -> list[int]:
    """Wan clip lengths (each 4k+1, at most chunk_frames) that cover `frames` once joined.

    With first-last anchoring, neighbouring chunks share their boundary frame (the keyframe), so each
    chunk after the first adds length - 1 new frames.
    """
    import math

    longest = (chunk_frames - 1) // 4 * 4 + 1
    if anchor == "first-last":
        count = max(1, math.ceil((frames - 1) / (longest - 1)))
        new = math.ceil((frames - 1) / count / 4) * 4  # new frames per chunk, a multiple of 4
        return [max(new, 4) + 1] * count
    count = max(1, math.ceil(frames / longest))
    per = math.ceil(frames / count)
    return [math.ceil((per - 1) / 4) * 4 + 1] * count


@dataclass
class SceneDir:
    index: int
    scene: Scene
    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / name

    def record(self, name: str) -> dict[str, Any]:
        """What the stage that made `name` recorded beside it (its inputs hash under "key"); {} if nothing."""
        return read_json(record_path(self.path(name)), {})

    @property
    def label(self) -> str:
        return f"{self.index + 1:02d}"


@dataclass
class RenderDir:
    root: Path
    scenes: list[SceneDir] = field(default_factory=list)

    @property
    def script(self) -> Path:
        return self.root / "script.json"

    @property
    def record(self) -> Path:
        return self.root / "render.json"

    def scenes_to_make(self, filename: str, keys: dict[str, str], scenes: list[SceneDir] | None = None
                       ) -> tuple[list[SceneDir], dict[str, list[str]]]:
        """Of `scenes` (default: all), the ones whose `filename` must be made now, and which were
        "reused" (fresh), "moved" (made earlier under another scene number, before a scene was
        inserted or deleted, and copied into place) and are to be "rendered". `keys` holds each
        scene's inputs hash."""
        scenes = self.scenes if scenes is None else scenes
        stale = [s for s in scenes if not is_fresh(s.path(filename), keys[s.label])]
        # Set aside copies first: putting one in place may overwrite another that is wanted elsewhere.
        # The stash is private to this run, so a second command never deletes the first one's copies.
        stash = Path(tempfile.mkdtemp(prefix=".reuse-", dir=self.root))
        found: dict[str, tuple[Path, dict[str, Any]]] = {}
        wanted = {keys[s.label] for s in stale}
        for rec in sorted(self.root.glob(f"scenes/*/{filename}.json")):
            record = read_json(rec) or {}
            key, src = record.get("key"), rec.with_name(filename)
            if key in wanted and key not in found and src.exists():
                kept = stash / f"{key}{src.suffix}"
                shutil.copyfile(src, kept)
                info = {k: v for k, v in record.items() if k not in ("key", "copied_from")}
                found[key] = (kept, {**info, "copied_from": str(src)})
        make, moved = [], []
        try:
            for s in stale:
                key = keys[s.label]
                if key not in found:
                    make.append(s)
                    continue
                kept, info = found[key]
                with atomic_path(s.path(filename)) as tmp:
                    shutil.copyfile(kept, tmp)
                mark_fresh(s.path(filename), key, **info)
                moved.append(s.label)
        finally:
            shutil.rmtree(stash, ignore_errors=True)
        return make, {"reused": [s.label for s in scenes if s not in stale], "moved": moved,
                      "rendered": [s.label for s in make]}
