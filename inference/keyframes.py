"""The keyframe stage: FLUX.1-dev with the pack's LoRA draws each scene's opening frame.

On-camera scenes get the trigger token in their prompt and the LoRA at the pack's strength;
other scenes run with the LoRA at strength 0 (exactly the base model), so the likeness does not
leak into b-roll. Seeds come from the scene's prompt and are recorded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona.errors import PersonaError
from persona.files import atomic_path, hash_file, hash_json
from persona.inference.memory import Lazy, load_pipeline
from persona.inference.plan import RenderSettings, SceneDir, scene_seed
from persona.inference.stage import RenderJob, Stage, Tick, model_key, step_callback
from persona.comfy_files import FluxFiles, resolve_flux
from persona.models import locate

if TYPE_CHECKING:
    from persona.workspace import Workspace

ADAPTER = "persona"


def keyframe_prompt(image_prompt: str, on_camera: bool, token: str) -> str:
    """Put the trigger token where the script names the presenter (or in front)."""
    if not on_camera or token in image_prompt:
        return image_prompt
    named = re.sub(r"\bthe presenter\b", token, image_prompt, count=1, flags=re.IGNORECASE)
    return named if named != image_prompt else f"{token}, {image_prompt}"


def lora_strength(ws: Workspace, settings: RenderSettings) -> float:
    assert ws.pack.lora is not None
    s = settings.keyframes.lora_strength
    return s if s is not None else ws.pack.lora.strength


def _locate_flux(ws: Workspace) -> Path:
    """FLUX in diffusers layout, or the error that also names the ComfyUI way."""
    try:
        return locate("flux", models=ws.pack.models)
    except PersonaError as e:
        raise PersonaError(e.message, file=e.file, fix=f"{e.fix}; or, with ComfyUI's FLUX files, set [models] comfyui "
                                                        '= "/path/to/ComfyUI/models"') from None


class KeyframeStage(Stage):
    """FLUX.1-dev with the pack's LoRA draws each scene's opening frame (progress in denoising steps)."""

    name, output, model = "keyframes", "keyframe.png", "flux"

    def __init__(self, job: RenderJob, scenes: list[SceneDir]):
        # a diffusers folder, or single files from the user's ComfyUI models folder ([models] comfyui)
        self.flux: Path | FluxFiles = resolve_flux(job.ws.pack.models) or _locate_flux(job.ws)
        self.flux_id = model_key(*self.flux.identity()) if isinstance(self.flux, FluxFiles) else model_key(self.flux)
        self.set_lora(job, scenes)

    def set_lora(self, job: RenderJob, scenes: list[SceneDir]) -> None:
        ws = job.ws
        self.drawn = scenes
        # Without a trained LoRA (right after ingest) only b-roll is drawn: FLUX alone, at strength 0
        # anyway; the render's plan sends on-camera scenes to the footage then.
        self.lora = ws.path(ws.pack.lora.path) if ws.pack.lora else None
        if self.lora is not None and not self.lora.exists():
            raise PersonaError("[lora] path points at a missing file", file=self.lora, fix="run `persona train-lora` again")
        self.lora_id = hash_file(self.lora) if self.lora else None
        self.strength = lora_strength(ws, job.settings) if self.lora else 0.0

    def scenes(self, job: RenderJob) -> list[SceneDir]:
        return self.drawn

    def prompt(self, job: RenderJob, scene: SceneDir) -> str:
        return keyframe_prompt(scene.scene.image_prompt, scene.scene.on_camera, job.ws.token)

    def seed(self, job: RenderJob, scene: SceneDir) -> int:
        return scene_seed(job.settings.seed, "keyframe", scene.scene.image_prompt)

    def key(self, job: RenderJob, scene: SceneDir) -> str:
        k, on = job.settings.keyframes, scene.scene.on_camera
        # b-roll runs at strength 0, which is the base model exactly: a new LoRA does not redo it
        return hash_json(["keyframe", self.prompt(job, scene), on, self.flux_id, self.lora_id if on else None,
                          self.strength if on else 0.0, job.settings.seed, job.settings.keyframe_size(), k.steps,
                          k.guidance, k.max_sequence_length])

    def work(self, job: RenderJob, scene: SceneDir) -> float:
        return job.settings.keyframes.steps

    def load(self, job: RenderJob) -> Any:
        from diffusers import FluxPipeline  # seconds to import: only when a keyframe is drawn

        if isinstance(self.flux, FluxFiles):
            from persona.inference.single_file import load_flux_single_files

            pipe = load_flux_single_files(self.flux, job.settings.keyframes.memory)
        else:
            pipe = load_pipeline(FluxPipeline, self.flux, job.settings.keyframes.memory)
        if self.lora is not None:
            pipe.load_lora_weights(str(self.lora), adapter_name=ADAPTER)
        return pipe

    def make(self, job: RenderJob, scene: SceneDir, model: Lazy, tick: Tick) -> dict[str, Any]:
        import torch

        k, (width, height) = job.settings.keyframes, job.settings.keyframe_size()
        pipe, seed, prompt = model.get(), self.seed(job, scene), self.prompt(job, scene)
        if self.lora is not None:  # off-camera scenes are b-roll: the likeness must not leak into them
            pipe.set_adapters([ADAPTER], adapter_weights=[self.strength if scene.scene.on_camera else 0.0])
        image = pipe(prompt, width=width, height=height, num_inference_steps=k.steps, guidance_scale=k.guidance,
                     max_sequence_length=k.max_sequence_length, callback_on_step_end=step_callback(tick),
                     generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        with atomic_path(scene.path(self.output)) as tmp:
            image.save(tmp, format="PNG")
        return {"seed": seed, "prompt": prompt}

    def flux_files(self) -> str:
        """What draws the keyframes, for render.json: the diffusers folder, or the single files."""
        return self.flux.describe() if isinstance(self.flux, FluxFiles) else str(self.flux)

    def summary(self, job: RenderJob) -> dict[str, Any]:
        return {"seeds": {s.label: self.seed(job, s) for s in self.scenes(job)}, "flux": self.flux_files(),
                "lora": str(self.lora) if self.lora else None, "lora_strength": self.strength}
