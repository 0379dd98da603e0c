"""Loading a diffusers pipeline to fit a VRAM profile (see plan.Memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from persona.device import free_memory
from persona.progress import warn


def torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def load_pipeline(cls: Any, path: Path, memory: Any, **components: Any) -> Any:
    """Load `cls` (a diffusers pipeline class) from `path` and place it per `memory`; `components`
    (e.g. a transformer loaded from a single file) replace the folder's own.

    Without CUDA everything runs in float32 on the CPU and offloading is skipped (diffusers' offload
    hooks need an accelerator).
    """
    import diffusers.utils.logging
    import torch

    diffusers.utils.logging.disable_progress_bar()  # diffusers ignores HF_HUB_DISABLE_PROGRESS_BARS
    cuda = torch.cuda.is_available()
    dtype = torch_dtype(memory.dtype) if cuda else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, **components}
    if memory.quantize == "nf4":
        if cuda:
            from diffusers import PipelineQuantizationConfig

            kwargs["quantization_config"] = PipelineQuantizationConfig(
                quant_backend="bitsandbytes_4bit",
                quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": dtype},
                components_to_quantize=["transformer"],
            )
        else:
            warn("nf4 quantisation needs CUDA; loading unquantised on the CPU", once=True)
    return place_pipeline(cls.from_pretrained(str(path), **kwargs), memory)


def load_dtype(memory: Any) -> Any:
    """The dtype a pipeline is loaded in: the profile's on CUDA, float32 on the CPU."""
    import torch

    return torch_dtype(memory.dtype) if torch.cuda.is_available() else torch.float32


def place_pipeline(pipe: Any, memory: Any) -> Any:
    """Cast and place a loaded pipeline per `memory` (fp8 storage, VAE tiling, offloading)."""
    import torch

    cuda = torch.cuda.is_available()
    dtype = load_dtype(memory)
    pipe.set_progress_bar_config(disable=True)
    if memory.quantize == "fp8":
        # Storage in float8, compute in the pipeline dtype; norms and embeddings stay full precision.
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    if memory.vae_tiling and hasattr(pipe.vae, "enable_tiling"):
        pipe.vae.enable_tiling()
    if not cuda:
        return pipe
    if memory.offload == "model":
        pipe.enable_model_cpu_offload()
    elif memory.offload == "sequential":
        pipe.enable_sequential_cpu_offload()
    elif memory.offload == "group":
        pipe.enable_group_offload(onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
                                  offload_type="block_level", num_blocks_per_group=1, use_stream=True)
    else:
        pipe.to("cuda")
    return pipe


class Lazy:
    """A model loaded on first use only (a stage whose outputs are all fresh loads nothing), counted
    in `loads` under `key`, and released by `close()`."""

    def __init__(self, load: Any, key: str, loads: dict[str, int]):
        self._load, self._key, self._loads, self._value = load, key, loads, None

    def get(self) -> Any:
        if self._value is None:
            self._value = self._load()
            self._loads[self._key] = self._loads.get(self._key, 0) + 1
        return self._value

    def close(self) -> None:
        if self._value is not None:
            closer = getattr(self._value, "close", None)
            if callable(closer):
                closer()
            self._value = None
            free_memory()

    def __enter__(self) -> "Lazy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
