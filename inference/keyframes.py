"""The keyframe stage: FLUX.1-dev with the pack's LoRA draws each scene's opening frame.

On-camera scenes get the trigger token in their prompt and the LoRA at the pack's strength;
other scenes run with the LoRA at strength 0 (exactly the base model), so the likeness does not
leak into b-roll. Seeds come from the scene's prompt and are recorded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from persona.errors import PersonaError
from persona.files import atomic_path, hash_file, hash_json, mark_fresh
from persona.inference.memory import Lazy, load_pipeline
from persona.inference.plan import SceneDir, scene_seed
from persona.models import locate

ADAPTER = "persona"


def keyframe_prompt(image_prompt: str, on_camera: bool, token: str) -> str:
    """Put the trigger token where the script names the presenter (or in front)."""
    if not on_camera or token in image_prompt:
        return image_prompt
    named = re.sub(r"\bthe presenter\b", token, image_prompt, count=1, flags=re.IGNORECASE)
    return named if named != image_prompt else f"{token}, {image_prompt}"


def lora_strength(ws: Any, settings: Any) -> float:
    s = settings.keyframes.lora_strength
    return s if s is not None else ws.pack.lora.strength


def keyframe_key(scene: SceneDir, flux: Path, lora_id: str, strength: float, token: str, settings: Any) -> str:
    k = settings.keyframes
    return hash_json(["keyframe", keyframe_prompt(scene.scene.image_prompt, scene.scene.on_camera, token),
                      scene.scene.on_camera, str(flux), lora_id, strength if scene.scene.on_camera else 0.0,
                      settings.seed, settings.keyframe_size(), k.steps, k.guidance, k.max_sequence_length])


def run(ws: Any, settings: Any, rdir: Any, loads: dict[str, int], progress: Any) -> dict[str, Any]:
    flux = locate("flux", models=ws.pack.models)
    lora = ws.path(ws.pack.lora.path)  # the render's preflight made sure the pack has one
    if not lora.exists():
        raise PersonaError("[lora] path points at a missing file", file=lora, fix="run `persona train-lora` again")
    lora_id = hash_file(lora)
    strength = lora_strength(ws, settings)
    keys = {s.label: keyframe_key(s, flux, lora_id, strength, ws.token, settings) for s in rdir.scenes}
    seeds = {s.label: scene_seed(settings.seed, "keyframe", s.scene.image_prompt) for s in rdir.scenes}
    make, result = rdir.scenes_to_make("keyframe.png", keys)
    progress.advance(len(rdir.scenes) - len(make))
    width, height = settings.keyframe_size()
    k = settings.keyframes

    def load() -> Any:
        from diffusers import FluxPipeline  # seconds to import: only when a keyframe is drawn

        pipe = load_pipeline(FluxPipeline, flux, k.memory)
        pipe.load_lora_weights(str(lora), adapter_name=ADAPTER)
        return pipe

    with Lazy(load, "flux", loads) as flux_pipe:
        for s in make:
            import torch

            out = s.path("keyframe.png")
            prompt = keyframe_prompt(s.scene.image_prompt, s.scene.on_camera, ws.token)
            pipe = flux_pipe.get()
            # Off-camera scenes are b-roll: the likeness must not leak into them.
            pipe.set_adapters([ADAPTER], adapter_weights=[strength if s.scene.on_camera else 0.0])
            image = pipe(prompt, width=width, height=height, num_inference_steps=k.steps, guidance_scale=k.guidance,
                         max_sequence_length=k.max_sequence_length,
                         generator=torch.Generator("cpu").manual_seed(seeds[s.label])).images[0]
            with atomic_path(out) as tmp:
                image.save(tmp, format="PNG")
            mark_fresh(out, keys[s.label], seed=seeds[s.label], prompt=prompt)
            progress.advance(1)
    return {**result, "seeds": seeds, "lora": str(lora), "lora_strength": strength}
