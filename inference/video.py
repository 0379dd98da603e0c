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
from typing import Any

import numpy as np

from persona.errors import PersonaError
from persona.files import hash_json, is_fresh, mark_fresh
from persona.inference.memory import Lazy, load_pipeline
from persona.inference.plan import SceneDir, chunk_lengths, scene_seed
from persona.media import read_frames, write_video
from persona.models import find, locate
from persona.progress import warn


def resolve_model(ws: Any, anchor: str) -> tuple[str, Path, str]:
    """(anchor actually used, checkpoint folder, registry key)."""
    if anchor == "first-last":
        flf = find("wan-flf2v", models=ws.pack.models)
        if flf is not None and not flf.problems:
            return anchor, flf.path, "wan-flf2v"
        if find("wan-i2v", models=ws.pack.models) is None:
            locate("wan-flf2v", models=ws.pack.models)  # raises with the fetch command
        warn("first-last anchoring needs the Wan FLF2V checkpoint (see `persona doctor`); "
             "anchoring every chunk by restarting from the keyframe instead", once=True)
        anchor = "restart"
    return anchor, locate("wan-i2v", models=ws.pack.models), "wan-i2v"


def video_prompt(scene: Any) -> str:
    return f"{scene.image_prompt.rstrip('. ')}. {scene.motion_prompt}"


def video_key(s: SceneDir, frames: int, anchor: str, model: Path, settings: Any) -> str:
    keyframe = s.record("keyframe.png").get("key")
    v = settings.video
    return hash_json(["video", keyframe, video_prompt(s.scene), frames, anchor, str(model), settings.seed,
                      settings.video_size(), v.steps, v.guidance, v.chunk_frames, v.negative_prompt,
                      v.max_sequence_length, v.fps])


def fit_keyframe(path: Path, size: tuple[int, int]):
    from PIL import Image, ImageOps

    return ImageOps.fit(Image.open(path).convert("RGB"), size, Image.Resampling.LANCZOS)


def _chunk(wan: Lazy, s: SceneDir, j: int, length: int, image: Any, scene_key: str, anchor: str,
           settings: Any) -> np.ndarray:
    """Frames of chunk j of a scene (cached on disk, so a killed render resumes at the next chunk);
    chunks after the first drop their opening frame under first-last anchoring (it is the keyframe
    the previous chunk ended on)."""
    import torch

    v = settings.video
    chunk = s.path(f"video.chunk{j}.mp4")
    key = hash_json([scene_key, j, length])
    if not is_fresh(chunk, key):
        width, height = settings.video_size()
        seed = scene_seed(settings.seed, "video", video_prompt(s.scene), j)
        out = wan.get()(image=image, last_image=image if anchor == "first-last" else None, prompt=video_prompt(s.scene),
                        negative_prompt=v.negative_prompt, height=height, width=width, num_frames=length,
                        num_inference_steps=v.steps, guidance_scale=v.guidance,
                        max_sequence_length=v.max_sequence_length, output_type="np",
                        generator=torch.Generator("cpu").manual_seed(seed)).frames[0]
        write_video(chunk, (np.clip(out, 0, 1) * 255).round().astype(np.uint8), v.fps, crf=12)
        mark_fresh(chunk, key, seed=seed, frames=length)
    clip, _ = read_frames(chunk)
    return clip if (j == 0 or anchor != "first-last") else clip[1:]


def run(ws: Any, settings: Any, rdir: Any, loads: dict[str, int], progress: Any) -> dict[str, Any]:
    v = settings.video
    anchor, model, model_key = resolve_model(ws, v.anchor)
    frames = {s.label: s.record("narration.wav")["frames"] for s in rdir.scenes}
    keys = {s.label: video_key(s, frames[s.label], anchor, model, settings) for s in rdir.scenes}
    make, result = rdir.scenes_to_make("video.mp4", keys)
    width, height = settings.video_size()
    plans = {s.label: chunk_lengths(frames[s.label], v.chunk_frames, anchor) for s in make}
    progress.update(0, total=sum(len(p) for p in plans.values()) or 1)  # counted in Wan calls

    def load() -> Any:
        from diffusers import WanImageToVideoPipeline  # seconds to import: only when a scene is animated

        return load_pipeline(WanImageToVideoPipeline, model, v.memory)

    with Lazy(load, model_key, loads) as wan:
        for s in make:
            image = fit_keyframe(s.path("keyframe.png"), (width, height))
            clips = []
            for j, length in enumerate(plans[s.label]):
                clips.append(_chunk(wan, s, j, length, image, keys[s.label], anchor, settings))
                progress.advance(1)
            joined = np.concatenate(clips)[: frames[s.label]]
            if len(joined) < frames[s.label]:
                raise PersonaError(f"scene {s.label}: Wan returned {len(joined)} frames, {frames[s.label]} needed",
                                   file=s.path("video.mp4"))
            write_video(s.path("video.mp4"), joined, v.fps, crf=settings.assembly.crf)
            mark_fresh(s.path("video.mp4"), keys[s.label], frames=len(joined), chunks=plans[s.label], anchor=anchor)
            for j in range(len(plans[s.label])):
                s.path(f"video.chunk{j}.mp4").unlink(missing_ok=True)
                s.path(f"video.chunk{j}.mp4.json").unlink(missing_ok=True)
    return {**result, "anchor": anchor, "model": str(model), "chunks": plans}
