"""The diffusers engine's pipelines from single files in the user's ComfyUI models folder: the
components come from persona.single_file, placed per the render profile like a diffusers folder."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from persona.comfy_files import FluxFiles, WanFiles
from persona.inference.memory import load_dtype, load_pipeline, place_pipeline
from persona.progress import warn
from persona.single_file import transformers_model, flux_components, load_wan_transformer


def single_file_memory(transformer: Path, memory: Any) -> Any:
    """The memory profile for a single-file transformer: it loads as stored (nf4 is for diffusers
    folders; a GGUF file is already quantised), which is said once."""
    if memory.quantize != "none" and transformer.suffix.lower() == ".gguf":
        warn(f"{transformer.name} is already quantised (GGUF); the profile's {memory.quantize} is not applied",
             once=True)
        return memory.model_copy(update={"quantize": "none"})
    if memory.quantize == "nf4":
        warn("nf4 applies to diffusers folders; a single file loads as stored (a GGUF file is the quantised "
             "choice)", once=True)
        return memory.model_copy(update={"quantize": "none"})
    return memory


def load_flux_single_files(files: FluxFiles, memory: Any) -> Any:
    """A FluxPipeline made of the single files in `files`, placed per `memory` like a diffusers folder."""
    from diffusers import FluxPipeline

    dtype = load_dtype(memory)
    memory = single_file_memory(files.transformer, memory)
    return place_pipeline(FluxPipeline(**flux_components(files, dtype)), memory)


def load_wan_single_files(folder: Path, files: WanFiles, memory: Any) -> Any:
    """A WanImageToVideoPipeline from the diffusers folder with the parts in `files` (transformer,
    UMT5, CLIP vision) from single files; each takes the folder's own config, so nothing is derived or
    downloaded."""
    import json

    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPVisionModel, UMT5EncoderModel

    transformer = files.parts.get("transformer")
    memory = single_file_memory(transformer, memory) if transformer else memory
    dtype = load_dtype(memory)
    components: dict[str, Any] = {}
    if transformer:
        components["transformer"] = load_wan_transformer(transformer, folder, dtype)
    with tempfile.TemporaryDirectory(prefix="persona-wan-config-") as tmp:
        for name, cls in (("text_encoder", UMT5EncoderModel), ("image_encoder", CLIPVisionModel)):
            if name in files.parts:
                config = json.loads((folder / name / "config.json").read_text())
                components[name] = transformers_model(cls, files.parts[name], config, Path(tmp), name, dtype)
    return load_pipeline(WanImageToVideoPipeline, folder, memory, **components)
