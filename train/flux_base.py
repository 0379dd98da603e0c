"""Where train-lora takes FLUX.1 from, by the render's rule (`persona.comfy_files.resolve_flux`): a
diffusers folder the user chose, else the single files of the ComfyUI models folder ([models]
comfyui), else the Hugging Face cache.

`FluxBase.load(part)` is the one place that turns either source into a model part; the single-file
side is persona.single_file's (configs derived from the tensors, nothing downloaded), the same code
the render's keyframes use. A GGUF transformer is refused: its weights are quantised blocks that
diffusers dequantises on the fly for inference, and persona's trainer (like sd-scripts) does not
train on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from persona.comfy_files import FLUX_PARTS, FluxFiles, comfy_models, flux_files, resolve_flux, tensor_shapes
from persona.errors import PersonaError
from persona.files import hash_json, stat_key
from persona.models import find, locate_entry, model_identity
from persona.progress import warn

Part = Literal["transformer", "vae", "text", "scheduler"]
# FluxPipeline's components each part is made of ("text": the encoders and their tokenizers)
COMPONENTS: dict[str, tuple[str, ...]] = {"transformer": ("transformer",), "vae": ("vae",), "scheduler": ("scheduler",),
                                          "text": ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")}


@dataclass(frozen=True)
class FluxBase:
    """FLUX.1 for training: a diffusers folder, or single files (`FluxFiles`). `name` is what the LoRA's
    `persona.base_model` metadata says (the Hub repo or folder; the transformer's file name)."""

    source: Path | FluxFiles
    name: str

    @property
    def files(self) -> FluxFiles | None:
        return self.source if isinstance(self.source, FluxFiles) else None

    def identity(self) -> str:
        """For the run key: a folder by its path (the key runs had before single files existed); single
        files by what they are (name, size, small files' contents), so another file is another run."""
        if self.files is None:
            return str(self.source)
        return hash_json([model_identity(p) for p in self.files.identity()])

    def component_ids(self, part: Part) -> list[str]:
        """Identify the files a cached latent or text embedding was made from: a folder's component
        folders by their files' names, sizes and times (as before single files); single files by
        `model_identity`."""
        if self.files is None:
            folders = [self.source / c for c in COMPONENTS[part]]
            return [stat_key(sorted(p for p in f.rglob("*") if p.is_file()), f) for f in folders]
        paths = {"vae": [self.files.vae], "transformer": [self.files.transformer], "scheduler": [],
                 "text": [self.files.clip_l, self.files.t5, self.files.clip_tokenizer, self.files.t5_tokenizer]}
        return ["single-file", *(model_identity(p) for p in paths[part])]

    def vae_scale(self) -> int:
        """Pixels per latent cell (8 for FLUX.1): 2 ** (levels - 1) of the VAE."""
        if self.files is None:
            levels = len(json.loads((self.source / "vae" / "config.json").read_text())["block_out_channels"])
        else:
            from persona.single_file import vae_config

            levels = len(vae_config(tensor_shapes(self.files.vae))["block_out_channels"])
        return 2 ** (levels - 1)

    def load(self, part: Part, dtype: Any = None, quantization_config: Any = None) -> Any:
        """The FluxTransformer2DModel, the AutoencoderKL, the scheduler, or (part "text") a FluxPipeline
        holding only the text encoders and tokenizers (for `encode_prompt`)."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

        if self.files is not None:
            from persona.single_file import flux_components

            parts = flux_components(self.files, dtype, only=COMPONENTS[part], quantization_config=quantization_config)
            return FluxPipeline(transformer=None, vae=None, scheduler=None, **parts) if part == "text" else parts[part]
        folder = str(self.source)
        if part == "text":
            return FluxPipeline.from_pretrained(folder, transformer=None, vae=None, dtype=dtype)
        if part == "scheduler":
            return FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
        cls = FluxTransformer2DModel if part == "transformer" else AutoencoderKL
        kwargs = {"quantization_config": quantization_config} if quantization_config is not None else {}
        return cls.from_pretrained(folder, subfolder=part, dtype=dtype, **kwargs)


def gguf_refusal(transformer: Path, models: Path | None) -> PersonaError:
    where = models / "diffusion_models" if models else "ComfyUI's models/diffusion_models/"
    return PersonaError("is a GGUF (quantised) FLUX transformer, which a LoRA cannot be trained on", file=transformer,
                        fix=f"put the safetensors flux1-dev (flux1-dev.safetensors) in {where}, or set [models] flux "
                            "to a diffusers FLUX.1-dev folder")


def flux_base(models: dict[str, str] | None) -> FluxBase:
    """FLUX for train-lora by the render's rule, or a PersonaError that says how to get it. When the
    ComfyUI folder's transformer is a GGUF that was not chosen by hand, a safetensors FLUX
    transformer beside it is used instead (said once); with none, the GGUF is refused."""
    source = resolve_flux(models)
    if isinstance(source, FluxFiles):
        if source.transformer.suffix.lower() == ".gguf":
            source = _trainable(source, models)
        return FluxBase(source, source.transformer.name)
    try:
        found = locate_entry("flux", models=models)
    except PersonaError as e:
        raise PersonaError(e.message, file=e.file, fix=f"{e.fix}; or, with ComfyUI's FLUX files, set [models] comfyui "
                                                        '= "/path/to/ComfyUI/models"') from None
    return FluxBase(found.path, found.repo or str(found.path))


def _trainable(files: FluxFiles, models: dict[str, str] | None) -> FluxFiles:
    from dataclasses import replace

    comfy = comfy_models(models)
    chosen = find("flux", models=models)
    if comfy is None or (chosen is not None and chosen.path == files.transformer):  # named in [models] flux
        raise gguf_refusal(files.transformer, comfy.models if comfy else None)
    try:
        other = comfy.pick(replace(FLUX_PARTS["transformer"], gguf=False))
    except PersonaError:
        raise gguf_refusal(files.transformer, comfy.models) from None
    warn(f"training on {other.name}: {files.transformer.name} is a GGUF, which cannot be trained on", once=True)
    return flux_files(comfy, other)
