"""The video stage: Wan 2.1 animates each keyframe for exactly as long as the scene's narration.

Wan makes at most 81 frames (5 s at 16 fps) per call, so longer scenes take several chunks.
Chaining each chunk on the previous chunk's last frame (what the reference ComfyUI pipeline did)
lets clothes and face drift a little more with every chunk. Here every chunk is anchored to the
scene's keyframe instead (plan.VideoSettings.anchor):

- first-last (default): each chunk runs from the keyframe back to the keyframe with Wan's
  first-last-frame checkpoint, so chunks join seamlessly and nothing drifts; the price is motion
  that returns to the keyframe pose every ~5 s (natural for a presenter, wrong for a long camera move).
- restart: each chunk starts from the keyframe with the image-to-video checkpoint: freer motion,
  no drift, but a visible jump back to the keyframe pose at every chunk boundary.

Chunks are cached one by one, so a render killed inside a long scene resumes at its next chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from persona.comfy_files import WanFiles, resolve_wan
from persona.errors import PersonaError
from persona.files import hash_json, is_fresh, mark_fresh
from persona.inference.memory import Lazy, load_pipeline
from persona.inference.plan import SceneDir, chunk_lengths, scene_seed
from persona.inference.stage import RenderJob, Stage, Tick, model_key, step_callback
from persona.media import read_frames, write_video
from persona.models import locate
from persona.progress import warn

if TYPE_CHECKING:
    from persona.workspace import Workspace


def resolve_model(ws: Workspace, anchor: str) -> tuple[str, Path | WanFiles, str]:
    """(anchor actually used, Wan's diffusers folder or single files, registry key). Each checkpoint
    comes from a folder or the ComfyUI models folder (persona.comfy_files.resolve_wan)."""
    if anchor == "first-last":
        flf = resolve_wan("wan-flf2v", ws.pack.models)
        if flf is not None:
            return anchor, flf, "wan-flf2v"
    i2v = resolve_wan("wan-i2v", ws.pack.models)
    if anchor == "first-last":
        if i2v is None:
            locate("wan-flf2v", models=ws.pack.models)  # raises with the fetch command
        warn("first-last anchoring needs the Wan FLF2V checkpoint (see `persona doctor`); "
             "anchoring every chunk by restarting from the keyframe instead", once=True)
        anchor = "restart"
    return anchor, i2v if i2v is not None else locate("wan-i2v", models=ws.pack.models), "wan-i2v"


def video_prompt(scene: Any) -> str:
    return f"{scene.image_prompt.rstrip('. ')}. {scene.motion_prompt}"


def fit_keyframe(path: Path, size: tuple[int, int]):
    from PIL import Image, ImageOps

    return ImageOps.fit(Image.open(path).convert("RGB"), size, Image.Resampling.LANCZOS)


class VideoStage(Stage):
    """Wan 2.1 animates each keyframe for as long as the scene's narration, chunk by chunk (each chunk
    cached on disk, so a killed render resumes at its next chunk); progress in denoising steps."""

    name, output = "video", "video.mp4"
    files: WanFiles | None = None  # parts from the ComfyUI models folder (subclasses running elsewhere have none)

    def __init__(self, job: RenderJob, scenes: list[SceneDir]):
        self.animated = scenes
        self.anchor, source, self.model = resolve_model(job.ws, job.settings.video.anchor)
        # a folder, or single files from the user's ComfyUI models folder (with or without a folder)
        self.files = source if isinstance(source, WanFiles) else None
        self.path = source if isinstance(source, Path) else self.files.folder
        self.model_id = model_key(*self.files.identity()) if self.files else model_key(self.path)

    def scenes(self, job: RenderJob) -> list[SceneDir]:
        return self.animated

    def frames(self, scene: SceneDir) -> int:
        return scene.record("narration.wav")["frames"]

    def chunks(self, job: RenderJob, scene: SceneDir) -> list[int]:
        return chunk_lengths(self.frames(scene), job.settings.video.chunk_frames, self.anchor)

    def key(self, job: RenderJob, scene: SceneDir) -> str:
        keyframe = scene.record("keyframe.png").get("key")
        v = job.settings.video
        return hash_json(["video", keyframe, video_prompt(scene.scene), self.frames(scene), self.anchor, self.model_id,
                          job.settings.seed, job.settings.video_size(), v.steps, v.guidance, v.chunk_frames,
                          v.negative_prompt, v.max_sequence_length, v.fps])

    def work(self, job: RenderJob, scene: SceneDir) -> float:
        return len(self.chunks(job, scene)) * job.settings.video.steps

    def load(self, job: RenderJob) -> Any:
        from diffusers import WanImageToVideoPipeline  # seconds to import: only when a scene is animated

        if self.files is not None:
            from persona.inference.single_file import load_wan_single_files

            return load_wan_single_files(self.files, job.settings.video.memory)
        return load_pipeline(WanImageToVideoPipeline, self.path, job.settings.video.memory)

    def make(self, job: RenderJob, scene: SceneDir, model: Lazy, tick: Tick) -> dict[str, Any]:
        v, frames, plan = job.settings.video, self.frames(scene), self.chunks(job, scene)
        image = fit_keyframe(scene.path("keyframe.png"), job.settings.video_size())
        scene_key = self.key(job, scene)
        clips = [self._chunk(job, model, scene, j, length, image, scene_key, tick) for j, length in enumerate(plan)]
        joined = np.concatenate(clips)[:frames]
        if len(joined) < frames:
            raise PersonaError(f"scene {scene.label}: Wan returned {len(joined)} frames, {frames} needed",
                               file=scene.path(self.output))
        write_video(scene.path(self.output), joined, v.fps, crf=job.settings.assembly.crf)
        for j in range(len(plan)):
            scene.path(f"video.chunk{j}.mp4").unlink(missing_ok=True)
            scene.path(f"video.chunk{j}.mp4.json").unlink(missing_ok=True)
        return {"frames": len(joined), "chunks": plan, "anchor": self.anchor}

    def _chunk(self, job: RenderJob, wan: Lazy, s: SceneDir, j: int, length: int, image: Any, scene_key: str,
               tick: Tick) -> np.ndarray:
        """Frames of chunk j of a scene (cached on disk); chunks after the first drop their opening
        frame under first-last anchoring (it is the keyframe the previous chunk ended on)."""
        v = job.settings.video
        chunk = s.path(f"video.chunk{j}.mp4")
        key = hash_json([scene_key, j, length])
        if is_fresh(chunk, key):
            tick(v.steps)
        else:
            seed = scene_seed(job.settings.seed, "video", video_prompt(s.scene), j)
            self.animate(job, wan, s, image, length, seed, chunk, tick)
            mark_fresh(chunk, key, seed=seed, frames=length)
        clip, _ = read_frames(chunk)
        return clip if (j == 0 or self.anchor != "first-last") else clip[1:]

    def animate(self, job: RenderJob, wan: Lazy, s: SceneDir, image: Any, length: int, seed: int, chunk: Path,
                tick: Tick) -> None:
        """Write `length` frames of Wan animating `image` to `chunk`."""
        import torch

        v = job.settings.video
        width, height = job.settings.video_size()
        out = wan.get()(image=image, last_image=image if self.anchor == "first-last" else None,
                        prompt=video_prompt(s.scene), negative_prompt=v.negative_prompt, height=height,
                        width=width, num_frames=length, num_inference_steps=v.steps, guidance_scale=v.guidance,
                        max_sequence_length=v.max_sequence_length, output_type="np",
                        callback_on_step_end=step_callback(tick),
                        generator=torch.Generator("cpu").manual_seed(seed)).frames[0]
        write_video(chunk, (np.clip(out, 0, 1) * 255).round().astype(np.uint8), v.fps, crf=12)

    def summary(self, job: RenderJob) -> dict[str, Any]:
        return {"anchor": self.anchor, "model": str(self.path) if self.path else None,
                "single_files": {k: str(p) for k, p in self.files.parts.items()} if self.files else None}
