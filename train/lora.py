"""`persona train-lora`: a FLUX.1-dev LoRA of the likeness from the image dataset.

Two backends share the settings, the dataset checks, the output format and the pack update:
the native trainer (train/lora_native.py: diffusers + peft + accelerate) and the user's kohya-ss
sd-scripts checkout (train/kohya.py).

The output is one .safetensors file in diffusers' peft layout, `transformer.<module>.lora_A.weight`,
`.lora_B.weight`, plus a `transformer.<module>.alpha` scalar per module. diffusers'
`FluxLoraLoaderMixin.lora_state_dict` reads those alphas as `network_alphas`, and ComfyUI maps
`transformer.*` keys onto its Flux blocks (`flux_to_diffusers`) and reads `<key>.alpha` the same
way, so alpha != rank scales alike in both. kohya's `lora_unet_*` layout was not chosen because
diffusers splits single-block `linear1` with hard-coded FLUX.1 sizes, so it cannot be tested on a
small model. The file's metadata names the base model, rank, alpha, trigger token, steps and a hash
of the dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from persona.config import list_recipes, load_recipe, resolve_settings
from persona.errors import PersonaError
from persona.files import atomic_path, hash_json, is_fresh, mark_fresh, read_json, record_path
from persona.lock import locked
from persona.device import fits, gpu_memory
from persona.models import locate_entry
from persona.progress import info, warn
from persona.workspace import slugify

# Modules that get a LoRA: every linear layer of the double- and single-stream blocks that kohya's
# networks.lora_flux trains, in diffusers' names (ComfyUI maps each of them). The top-level
# `proj_out` and the modulation layers are left alone.
TARGET_MODULES = (
    r".*(transformer_blocks|single_transformer_blocks)\.\d+\."
    r"(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out)"
)

DEFAULT_PROMPTS = [
    "a photo of {token}, portrait, looking at the camera, soft window light",
    "{token} explaining something in front of a whiteboard, half body shot",
]


class LoraSettings(BaseModel):
    """Every knob of train-lora. Recipes (recipes/lora/*.toml) override these defaults."""

    model_config = ConfigDict(extra="forbid")

    vram_gb: int | None = Field(None, description="GPU memory the recipe is planned for; checked before training")
    rank: int = Field(16, ge=1, le=512)
    alpha: float = Field(16.0, gt=0)
    lr: float = Field(1e-4, gt=0)
    steps: int = Field(1500, ge=1)
    bucket_step: int = Field(64, ge=16, description="bucket sides are multiples of this (pixels)")
    resolutions: list[int] = Field(default_factory=lambda: [512], min_length=1)
    batch_size: int = Field(1, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    timestep_sampling: Literal["shift", "sigmoid", "flux_shift"] = "shift"
    discrete_flow_shift: float = Field(3.1582, gt=0)
    sigmoid_scale: float = Field(1.0, gt=0)
    guidance: float = 1.0
    gradient_checkpointing: bool = True
    mixed_precision: Literal["no", "bf16"] = "bf16"
    base_precision: Literal["fp32", "bf16", "fp8", "nf4"] = "bf16"
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    seed: int = 42
    max_text_tokens: int = Field(512, ge=1, le=512)
    sample_every: int = Field(250, ge=0, description="0: only at the end")
    sample_size: int = Field(1024, ge=16)
    sample_steps: int = Field(20, ge=1)
    sample_guidance: float = 3.5
    sample_seeds: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    sample_prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS), min_length=1)
    checkpoint_every: int = Field(250, ge=0, description="0: never")
    keep_checkpoints: int = Field(2, ge=1)
    save_precision: Literal["fp32", "bf16"] = "bf16"
    strength: float = Field(1.0, ge=0, le=2, description="the default strength recorded in persona.toml")
    kohya_blocks_to_swap: int = Field(0, ge=0, le=35)
    kohya_t5xxl: str | None = Field(None, description="T5-XXL as one .safetensors file, for --backend kohya")
    kohya_args: dict[str, Any] = Field(default_factory=dict, description="extra sd-scripts options")

    @field_validator("bucket_step")
    @classmethod
    def _step(cls, step: int) -> int:
        if step % 16:
            raise ValueError(f"{step} is not a multiple of 16")
        return step

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, resolutions: list[int], info: ValidationInfo) -> list[int]:
        step = info.data.get("bucket_step", 64)
        bad = [r for r in resolutions if r <= 0 or r % step]
        if bad:
            raise ValueError(f"{bad} must be positive multiples of bucket_step ({step})")
        return resolutions

    @model_validator(mode="after")
    def _consistent(self) -> "LoraSettings":
        if self.sample_size % 16:
            raise ValueError(f"sample_size {self.sample_size} must be a multiple of 16")
        if self.base_precision == "bf16" and self.mixed_precision != "bf16":
            raise ValueError("base_precision bf16 needs mixed_precision bf16")
        return self

    def trajectory(self) -> dict[str, Any]:
        """The settings that change the trained weights (not how often it samples or saves, nor how a
        step's samples are split into micro-batches: see the native trainer's docstring)."""
        skip = {"sample_every", "sample_size", "sample_steps", "sample_guidance", "sample_seeds", "sample_prompts",
                "checkpoint_every", "keep_checkpoints", "strength", "vram_gb", "save_precision", "batch_size",
                "gradient_accumulation"}
        return self.model_dump(exclude=skip)


def sample_rows(s: LoraSettings, token: str) -> list[str]:
    """Each sample prompt with the trigger token and without it (the token replaced by 'a person')."""
    rows = []
    for p in s.sample_prompts:
        with_token = p.replace("{token}", token) if "{token}" in p else f"{token}, {p}"
        rows += [with_token, p.replace("{token}", "a person") if "{token}" in p else p]
    return rows


# ---- recipes and the GPU -------------------------------------------------------------------------
def gpu_recipes() -> list[tuple[str, int]]:
    """Shipped recipes planned for a GPU, as (name, GB), smallest first."""
    out = []
    for name in list_recipes("lora"):
        values, _ = load_recipe("lora", name)
        if values.get("vram_gb"):
            out.append((name, int(values["vram_gb"])))
    return sorted(out, key=lambda x: x[1])


def fitting_recipe(vram_gb: float) -> str | None:
    """The largest shipped GPU recipe that fits `vram_gb`."""
    fitting = [name for name, need in gpu_recipes() if fits(need, vram_gb)]
    return fitting[-1] if fitting else None


def check_vram(settings: LoraSettings, recipe: str | None, vram_gb: float | None, gpu: str | None = None) -> None:
    """Refuse a recipe planned for more memory than the GPU has, naming one that fits."""
    if settings.vram_gb is None:
        return
    label = f"recipe {recipe}" if recipe else "these settings"
    if vram_gb is None:
        raise PersonaError(f"{label} needs a CUDA GPU with {settings.vram_gb} GB, and none was found",
                           fix="train on a machine with an NVIDIA GPU (12 GB or more); on CPU only "
                               "`--recipe tiny-cpu` with the tiny test models is practical")
    if fits(settings.vram_gb, vram_gb):
        return
    other = fitting_recipe(vram_gb)
    fix = f"use --recipe {other}" if other else (
        f"no shipped recipe fits under {gpu_recipes()[0][1]} GB; try --backend kohya with kohya_blocks_to_swap "
        "in your own recipe")
    raise PersonaError(f"{label} is planned for {settings.vram_gb} GB of GPU memory, and this GPU "
                       f"({gpu or 'CUDA device 0'}) has {vram_gb:.1f} GB", fix=fix)


def resolve(recipe: str | None, overrides: dict[str, Any] | None = None) -> tuple[LoraSettings, str | None]:
    """Settings from the recipe (by default the largest shipped one this GPU fits) and flags."""
    if recipe is None:
        vram, _ = gpu_memory()
        if vram is None:
            raise PersonaError("no CUDA GPU found, so no recipe can be picked for FLUX.1-dev",
                               fix="train on a machine with an NVIDIA GPU (12 GB or more), or pass "
                                   "`--recipe tiny-cpu` to exercise the pipeline on the tiny test models")
        recipe = fitting_recipe(vram)
        if recipe is None:
            raise PersonaError(f"this GPU has {vram:.1f} GB; the smallest recipe needs {gpu_recipes()[0][1]} GB",
                               fix="use a bigger GPU, or --backend kohya with your own recipe (kohya_blocks_to_swap)")
    return resolve_settings(LoraSettings, "lora", recipe, overrides), recipe


# ---- the run -------------------------------------------------------------------------------------
def output_path(ws: Any, settings: LoraSettings) -> Path:
    return ws.root / "lora" / f"{slugify(ws.name)}-flux-r{settings.rank}.safetensors"


def run_dir(ws: Any, key: str) -> Path:
    """Checkpoints, sample grids and kohya's files of one training run (one set of settings + data)."""
    return ws.root / "runs" / "lora" / key[:16]


def is_main_process() -> bool:
    """Under `accelerate launch` / torchrun every process runs this code; only rank 0 talks and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


KOHYA_BUCKET_MULTIPLE = 64  # sd-scripts rejects FLUX bucket_reso_steps that are not multiples of 64


def check_backend(settings: LoraSettings, backend: str) -> None:
    """Settings one backend cannot take, refused before anything is cached or launched."""
    if backend == "kohya" and settings.bucket_step % KOHYA_BUCKET_MULTIPLE:
        raise PersonaError(f"bucket_step {settings.bucket_step} is not a multiple of {KOHYA_BUCKET_MULTIPLE}, "
                           "which sd-scripts needs (its bucket_reso_steps)",
                           fix=f"set bucket_step to {KOHYA_BUCKET_MULTIPLE} or 128 in the recipe, or use --backend native")


@locked("train-lora")
def train_lora(ws: Any, settings: LoraSettings, *, recipe: str | None = None, backend: str = "native",
               resume: bool | None = None, force: bool = False,
               on_step: Callable[..., None] | None = None) -> dict[str, Any] | None:
    """Train (or find up to date) the persona's LoRA and record it in persona.toml's [lora].

    resume: None resumes from a checkpoint of the same run if there is one, True insists on one,
    False starts over. Returns the summary on the main process and None on the others (under
    `accelerate launch`).
    """
    from persona.train import lora_data as data

    ws.require_consent("training")
    check_backend(settings, backend)
    found = locate_entry("flux", models=ws.pack.models)
    base = found.path
    vram, gpu = gpu_memory()
    check_vram(settings, recipe, vram, gpu)
    images = ws.pack.datasets.images
    if images is None:
        raise PersonaError("this workspace has no image dataset yet ([datasets].images is not set)",
                           file=ws.manifest_path, fix="run `persona ingest` first")
    examples, added = data.read_examples(ws.path(images), ws.token)
    if added and is_main_process():
        warn(f"{added} of {len(examples)} captions lacked the trigger token {ws.token}; it was put at their start")
    dhash = data.dataset_hash(examples)
    key = hash_json({"settings": settings.trajectory(), "dataset": dhash, "base": str(base), "backend": backend,
                     "samples_per_step": settings.batch_size * settings.gradient_accumulation * world_size()})
    out = output_path(ws, settings)
    if not force and is_fresh(out, key):
        summary = {**read_json(record_path(out))["summary"], "skipped": True}
        if is_main_process():
            info(f"{ws.relative(out)} is up to date with these settings and this dataset (--force trains again)")
            _record_in_pack(ws, out, summary, settings)
        return summary if is_main_process() else None
    run = run_dir(ws, key)
    if backend == "native":
        from persona.train.lora_native import train_native

        result = train_native(ws, settings, base, examples, run, key, resume, on_step)
    elif backend == "kohya":
        from persona.train.kohya import train_kohya

        result = train_kohya(ws, settings, base, examples, run, resume)
    else:
        raise PersonaError(f"unknown backend {backend!r}", fix="use native or kohya")
    if result is None:
        return None
    meta = {"persona.base_model": found.repo or str(base), "persona.rank": str(settings.rank),
            "persona.alpha": f"{settings.alpha:g}", "persona.trigger_token": ws.token,
            "persona.steps": str(settings.steps), "persona.dataset_hash": dhash, "persona.backend": backend,
            "persona.resolutions": ",".join(map(str, settings.resolutions)), "persona.name": ws.name}
    if "state_dict" in result:
        tensors = diffusers_lora(result.pop("state_dict"), settings.alpha, settings.save_precision)
        write_lora(out, tensors, meta)
    else:
        copy_lora(Path(result.pop("lora_file")), out, meta)
    losses = result.pop("losses", [])
    summary = {"lora": str(out), "backend": backend, "recipe": recipe, "base": meta["persona.base_model"],
               "rank": settings.rank, "alpha": settings.alpha, "steps": settings.steps, "lr": settings.lr,
               "resolutions": settings.resolutions, "images": len(examples), "dataset_hash": dhash,
               "captions_without_token": added, "final_loss": round(losses[-1], 6) if losses else None,
               "mean_loss_last_10": round(sum(losses[-10:]) / len(losses[-10:]), 6) if losses else None,
               "run_dir": str(run), "skipped": False, **result}
    mark_fresh(out, key, summary=summary, losses=losses)
    _record_in_pack(ws, out, summary, settings)
    info(f"wrote {ws.relative(out)} ({settings.steps} steps, rank {settings.rank}); [lora] updated in persona.toml")
    return summary


def _record_in_pack(ws: Any, out: Path, summary: dict[str, Any], settings: LoraSettings) -> None:
    ws.update("lora", {"path": ws.relative(out), "base": summary["base"], "strength": settings.strength,
                       "rank": settings.rank, "alpha": settings.alpha, "steps": settings.steps,
                       "backend": summary["backend"]})


def diffusers_lora(state: dict[str, Any], alpha: float, precision: str) -> dict[str, Any]:
    """peft's state dict (no prefix) -> diffusers' Flux LoRA layout with one alpha per module."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tensors = {f"transformer.{k}": v.to(dtype).contiguous() for k, v in state.items()}
    for module in sorted({k.rsplit(".lora_", 1)[0] for k in state}):
        tensors[f"transformer.{module}.alpha"] = torch.tensor(float(alpha))
    return tensors


def write_lora(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
    except OSError as e:
        raise PersonaError(f"could not write the LoRA ({e.strerror or e}); the checkpoints are kept", file=path,
                           fix="free disk space, then run the same command again (it resumes)") from None


def copy_lora(src: Path, out: Path, metadata: dict[str, str]) -> None:
    """Copy a LoRA made elsewhere (kohya) into the pack, adding persona's metadata to its own."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(src), framework="pt") as f:
        existing = f.metadata() or {}
    write_lora(out, load_file(str(src)), {**existing, **metadata})
