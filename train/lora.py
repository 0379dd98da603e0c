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
from typing import Any, Callable, Literal, TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from persona.config import list_recipes, load_recipe, resolve_settings
from persona.errors import PersonaError
from persona.files import atomic_path, hash_json, is_fresh, mark_fresh, read_json, record_path, write_json
from persona.lock import locked
from persona.device import fits, gpu_memory
from persona.progress import info, warn
from persona.workspace import slugify

if TYPE_CHECKING:
    from persona.workspace import Workspace

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
    strength: float = Field(1.0, ge=0, le=2, description="the strength recorded in persona.toml with --pick last "
                                                         "(or when likeness cannot choose)")
    pick_tolerance: float = Field(0.03, ge=0, description="--pick likeness exports the earliest sampled step whose "
                                                          "score is within this of the best (identity distance units)")
    leak_weight: float = Field(0.25, ge=0, description="score = identity distance + leak_weight x share of "
                                                       "token-less samples that look like the person")
    sweep_strengths: list[float] = Field(default_factory=lambda: [0.6, 0.8, 1.0, 1.2], min_length=1,
                                         description="strengths tried on the chosen step (--pick likeness)")
    sweep_seeds: int = Field(1, ge=1, description="how many of sample_seeds the strength sweep draws per prompt row")
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
        if any(not 0 <= x <= 2 for x in self.sweep_strengths):
            raise ValueError(f"sweep_strengths {self.sweep_strengths} must lie in 0..2 (persona.toml's strength range)")
        return self

    def trajectory(self) -> dict[str, Any]:
        """The settings that change the trained weights (not how often it samples or saves, nor how a
        step's samples are split into micro-batches: see the native trainer's docstring)."""
        skip = {"sample_every", "sample_size", "sample_steps", "sample_guidance", "sample_seeds", "sample_prompts",
                "checkpoint_every", "keep_checkpoints", "strength", "vram_gb", "save_precision", "batch_size",
                "gradient_accumulation", "pick_tolerance", "leak_weight", "sweep_strengths", "sweep_seeds"}
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
def output_path(ws: Workspace, settings: LoraSettings) -> Path:
    return ws.root / "lora" / f"{slugify(ws.name)}-flux-r{settings.rank}.safetensors"


def run_dir(ws: Workspace, key: str) -> Path:
    """Checkpoints, sample grids and kohya's files of one training run (one set of settings + data)."""
    return ws.root / "runs" / "lora" / key[:16]


def is_main_process() -> bool:
    """Under `accelerate launch` / torchrun every process runs this code; only rank 0 talks and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---- picking the step and strength by likeness ------------------------------------------------------
def read_reference(ws: Workspace, images: str) -> tuple[dict[str, Any] | None, str | None]:
    """The reference face ingest stored beside the image dataset, or why there is none."""
    path = ws.path(images) / "reference_face.json"
    record = read_json(path, None)
    if record is None or not record.get("embedding"):
        return None, (f"there is no reference face ({ws.relative(path)}: the dataset was ingested before likeness "
                      "scoring existed; `persona ingest` again writes it)")
    return record, None


class Scorer:
    """Scores each sample grid against the reference face as it is drawn, through `persona.likeness`,
    and keeps the LoRA weights of every step that may still be picked (`runs/lora/<run>/likeness/`).

    Scores are stored per step as they are computed, so a resumed run reuses them and ends with the
    same choice. Candidate weights are the LoRA alone (no optimizer), saved at sample steps whatever
    `checkpoint_every` and `keep_checkpoints` say, and dropped as soon as a better step puts them
    beyond the tolerance (`persona.likeness.within_reach`).
    """

    def __init__(self, run: Path, reference: dict[str, Any], rows: list[str], token: str, s: LoraSettings):
        import numpy as np

        self.folder, self.rows, self.s = run / "likeness", rows, s
        self.reference = np.asarray(reference["embedding"], np.float32)
        self.backend = reference.get("backend", "dlib")
        self.match = reference.get("match_distance")
        self.with_token = [token in r for r in rows]
        # A stored score is reused only for the same grid (sample settings are not part of the run key).
        self.id = hash_json({"rows": rows, "seeds": s.sample_seeds, "size": s.sample_size, "steps": s.sample_steps,
                             "guidance": s.sample_guidance, "reference": reference["embedding"],
                             "backend": self.backend})
        self.scores: dict[int, dict[str, Any]] = {}
        self.gone: set[int] = set()  # scored before a resume, weights since dropped: never the pick
        self.unscored: list[int] = []  # sampled before a resume without a stored score: not candidates

    def _stored(self, name: str) -> dict[str, Any] | None:
        stored = read_json(self.folder / f"{name}.json", None)
        return stored["score"] if stored and stored.get("id") == self.id else None

    def resume(self, start: int) -> None:
        """Load the stored scores of the steps sampled up to `start` (the checkpoint resumed from).
        A step whose weights were dropped was beyond reach of a better one, which is still kept, so
        leaving it out of the candidates changes nothing: the pick equals an uninterrupted run's."""
        for step in range(0, start + 1):
            if (self.s.sample_every and step % self.s.sample_every == 0) or step == self.s.steps:
                if (score := self._stored(f"step-{step:06d}")) is not None:
                    self.scores[step] = score
                    if step > 0 and not (self.folder / f"step-{step:06d}.safetensors").exists():
                        self.gone.add(step)
                elif step > 0:
                    self.unscored.append(step)

    def score(self, step: int, grid: str | Path | list[list[Any]]) -> dict[str, Any]:
        """`grid`: the sample grid's PNG, or its images as rows of RGB arrays."""
        import numpy as np
        from PIL import Image

        from persona import likeness as lk

        score = self._stored(f"step-{step:06d}")
        if score is None:
            if isinstance(grid, list):
                cells = grid
            else:
                sheet = np.asarray(Image.open(grid).convert("RGB"))
                cells = lk.grid_cells(sheet, len(self.rows), len(self.s.sample_seeds))
            score = lk.score_cells(cells, self.with_token, self.reference, self.backend, self.match)
            write_json(self.folder / f"step-{step:06d}.json", {"id": self.id, "step": step, "score": score})
        self.scores[step] = score
        self.gone.discard(step)
        return score

    def candidates(self) -> dict[int, dict[str, Any]]:
        # step 0 is the base model: nothing to export
        return {k: v for k, v in self.scores.items() if k > 0 and k not in self.gone}

    def keep(self, step: int, state: dict[str, Any]) -> None:
        """Save `step`'s LoRA weights if it may be picked; drop those that no longer may."""
        from safetensors.torch import save_file

        from persona import likeness as lk

        reach = lk.within_reach(self.candidates(), self.s.pick_tolerance, self.s.leak_weight)
        if step in reach:
            with atomic_path(self.folder / f"step-{step:06d}.safetensors") as tmp:
                save_file(state, str(tmp))
        for old in self.folder.glob("step-*.safetensors"):
            if int(old.stem.split("-")[1]) not in reach:
                old.unlink(missing_ok=True)

    def choose(self) -> dict[str, Any]:
        from persona import likeness as lk

        return lk.pick_checkpoint(self.candidates(), self.s.steps, self.s.pick_tolerance, self.s.leak_weight)

    def weights(self, step: int) -> dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(str(self.folder / f"step-{step:06d}.safetensors"))

    def sweep(self, step: int, draw: Callable[[float, list[int]], list[list[Any]]]) -> list[dict[str, Any]]:
        """Score `step` at each of sweep_strengths: every prompt row, the first sweep_seeds seeds.
        `draw(strength, seeds)` returns the images (rows of RGB arrays); strength 1.0 is the step's
        own sample grid, already scored."""
        from persona import likeness as lk
        from persona.progress import track

        seeds = self.s.sample_seeds[: self.s.sweep_seeds]
        out = []
        for strength in track(self.s.sweep_strengths, f"strength sweep (step {step})"):
            name = f"sweep-step-{step:06d}-strength-{strength:g}-seeds-{len(seeds)}"
            score = self._stored(name)
            if score is None and strength == 1.0 and step in self.scores:
                dist = [row[: len(seeds)] for row in self.scores[step]["distances"]]
                match = self.match or lk.fx.backend(self.backend).match_distance
                score = lk.summarise_distances(dist, self.with_token, match)
            if score is None:
                score = lk.score_cells(draw(strength, seeds), self.with_token, self.reference, self.backend, self.match)
                write_json(self.folder / f"{name}.json", {"id": self.id, "score": score})
            out.append({"strength": strength, **score})
        return out

    def record(self, pick: dict[str, Any], sweep: list[dict[str, Any]], no_sweep: str | None = None) -> dict[str, Any]:
        from persona import likeness as lk

        strength = lk.pick_strength(sweep, self.s.leak_weight, self.s.strength) if sweep else {
            "strength": self.s.strength,
            "reason": no_sweep or f"no strength sweep: kept the recipe's strength {self.s.strength:g}"}
        reason = pick["reason"]
        if self.unscored:
            reason += (f" (steps {', '.join(map(str, self.unscored))} were sampled before scoring was on, by --pick last "
                       "or before the reference face existed, and are not candidates: --restart scores every step)")
        return {"pick": "likeness", "match_distance": self.match or lk.fx.backend(self.backend).match_distance,
                "tolerance": self.s.pick_tolerance, "leak_weight": self.s.leak_weight, "rows": self.rows,
                "seeds": self.s.sample_seeds, "steps": [{"step": k, **v} for k, v in sorted(self.scores.items())],
                "unscored": self.unscored,
                "chosen_step": pick["step"], "best_step": pick.get("best_step"), "step_reason": reason,
                "fallback": bool(pick.get("fallback")), "sweep": sweep, "strength": strength["strength"],
                "strength_reason": strength["reason"]}


def fallback_record(s: LoraSettings, pick: str, no_reference: str | None) -> dict[str, Any]:
    """likeness.json when nothing was scored: the last step at the recipe's strength, and why."""
    if pick == "last":
        why = f"--pick last: exported the last step ({s.steps})"
    else:
        why = f"{no_reference}; exported the last step ({s.steps})"
    return {"pick": pick, "steps": [], "sweep": [], "chosen_step": s.steps, "step_reason": why,
            "fallback": pick != "last", "strength": s.strength,
            "strength_reason": f"kept the recipe's strength {s.strength:g}"}


def write_record(run: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write likeness.json (and likeness.png when anything was scored); the summary's `pick`."""
    from persona import likeness as lk

    path = write_json(run / "likeness.json", record)
    out = {"method": record["pick"], "step": record["chosen_step"], "strength": record["strength"],
           "fallback": record.get("fallback", False), "reason": [record["step_reason"], record["strength_reason"]],
           "likeness": str(path)}
    if record["steps"]:
        out["plot"] = str(lk.plot_training(record, run / "likeness.png"))
    return out


KOHYA_BUCKET_MULTIPLE = 64  # sd-scripts rejects FLUX bucket_reso_steps that are not multiples of 64


def check_backend(settings: LoraSettings, backend: str) -> None:
    """Settings one backend cannot take, refused before anything is cached or launched."""
    if backend == "kohya" and settings.bucket_step % KOHYA_BUCKET_MULTIPLE:
        raise PersonaError(f"bucket_step {settings.bucket_step} is not a multiple of {KOHYA_BUCKET_MULTIPLE}, "
                           "which sd-scripts needs (its bucket_reso_steps)",
                           fix=f"set bucket_step to {KOHYA_BUCKET_MULTIPLE} or 128 in the recipe, or use --backend native")


@locked("train-lora")
def train_lora(ws: Workspace, settings: LoraSettings, *, recipe: str | None = None, backend: str = "native",
               resume: bool | None = None, force: bool = False, pick: Literal["likeness", "last"] = "likeness",
               on_step: Callable[..., None] | None = None) -> dict[str, Any] | None:
    """Train (or find up to date) the persona's LoRA and record it in persona.toml's [lora].

    resume: None resumes from a checkpoint of the same run if there is one, True insists on one,
    False starts over. pick: "likeness" exports the sampled step that looks most like the person
    and records the best strength (see `Scorer`), "last" the final step at the recipe's strength.
    Returns the summary on the main process and None on the others (under `accelerate launch`).
    """
    from persona.train import lora_data as data
    from persona.train.flux_base import flux_base

    ws.require_consent("training")
    check_backend(settings, backend)
    base = flux_base(ws.pack.models)  # a diffusers folder, or ComfyUI's single files; a GGUF is refused here
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
    key = hash_json({"settings": settings.trajectory(), "dataset": dhash, "base": base.identity(), "backend": backend,
                     "samples_per_step": settings.batch_size * settings.gradient_accumulation * world_size()})
    out = output_path(ws, settings)
    reference, no_reference = read_reference(ws, images)
    # The run (its folder and checkpoints) depends on the trajectory; the exported file also on the pick.
    out_key = hash_json({"run": key, "pick": pick, **({
        "reference": reference and reference["embedding"], "tolerance": settings.pick_tolerance,
        "leak_weight": settings.leak_weight, "strengths": settings.sweep_strengths, "sweep_seeds": settings.sweep_seeds,
    } if pick == "likeness" else {})})
    if not force and is_fresh(out, out_key):
        summary = {**read_json(record_path(out))["summary"], "skipped": True}
        if is_main_process():
            info(f"{ws.relative(out)} is up to date with these settings and this dataset (--force trains again)")
            _record_in_pack(ws, out, summary, settings)
        return summary if is_main_process() else None
    run = run_dir(ws, key)
    scorer = Scorer(run, reference, sample_rows(settings, ws.token), ws.token, settings) \
        if pick == "likeness" and reference is not None and is_main_process() else None
    if backend == "native":
        from persona.train.lora_native import train_native

        result = train_native(ws, settings, base, examples, run, key, resume, on_step, scorer)
    elif backend == "kohya":
        from persona.train.kohya import train_kohya

        result = train_kohya(ws, settings, base, examples, run, resume, scorer)
    else:
        raise PersonaError(f"unknown backend {backend!r}", fix="use native or kohya")
    if result is None:
        return None
    record = result.pop("likeness", None) or fallback_record(settings, pick, no_reference)
    chosen_step = record.get("chosen_step", settings.steps)
    meta = {"persona.base_model": base.name, "persona.rank": str(settings.rank),
            "persona.alpha": f"{settings.alpha:g}", "persona.trigger_token": ws.token,
            "persona.steps": str(chosen_step), "persona.dataset_hash": dhash, "persona.backend": backend,
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
               "run_dir": str(run), "skipped": False, **result,
               "pick": write_record(run, record)}
    mark_fresh(out, out_key, summary=summary, losses=losses)
    _record_in_pack(ws, out, summary, settings)
    info(f"wrote {ws.relative(out)} (step {chosen_step} of {settings.steps}, rank {settings.rank}, strength "
         f"{summary['pick']['strength']:g}); [lora] updated in persona.toml")
    for line in summary["pick"]["reason"]:
        info(f"  {line}")
    return summary


def _record_in_pack(ws: Workspace, out: Path, summary: dict[str, Any], settings: LoraSettings) -> None:
    chosen = summary.get("pick") or {}
    ws.update("lora", {"path": ws.relative(out), "base": summary["base"],
                       "strength": chosen.get("strength", settings.strength), "rank": settings.rank,
                       "alpha": settings.alpha, "steps": chosen.get("step", settings.steps),
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
