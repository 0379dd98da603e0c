"""The diffusers engine's pipelines from single files in the user's ComfyUI models folder: the
components come from persona.single_file, placed per the render profile like a diffusers folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from persona.comfy_files import FluxFiles, WanFiles
from persona.inference.memory import load_dtype, load_pipeline, place_pipeline
from persona.progress import warn
from persona.single_file import flux_components, wan_components


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


def load_wan_single_files(files: WanFiles, memory: Any) -> Any:
    """A WanImageToVideoPipeline with the parts in `files` from single files, and the rest from its
    diffusers folder when it has one; placed per `memory` like a diffusers folder."""
    from diffusers import WanImageToVideoPipeline

    transformer = files.parts.get("transformer")
    memory = single_file_memory(transformer, memory) if transformer else memory
    components = wan_components(files, load_dtype(memory))
    if files.folder is not None:
        return load_pipeline(WanImageToVideoPipeline, files.folder, memory, **components)
    return place_pipeline(WanImageToVideoPipeline(**components), memory)
