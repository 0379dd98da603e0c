"""The native FLUX.1 LoRA trainer: diffusers' FluxTransformer2DModel with a peft LoRA, run by accelerate.

The objective is rectified flow as Flux LoRA trainers use it (kohya's `--model_prediction_type raw`):
noisy = (1 - t) x + t ε, the transformer predicts ε - x, the loss is the MSE; t is drawn as
sigmoid(N(0, 1)) and optionally shifted (`shift`: t·s / (1 + (s - 1)·t), `flux_shift`: by the
image's token count as FLUX.1-dev's sampler does); the guidance input is 1.0 for dev.

Base weights are stored as the recipe says: fp32 (CPU), bf16, fp8 (diffusers' layerwise casting:
fp8 storage, each layer upcast for its forward pass, as kohya's `--fp8_base`) or NF4 (bitsandbytes
4-bit, QLoRA, as diffusers' own Flux QLoRA scripts). The 12 GB recipe uses NF4: fp8 halves
FLUX.1's 24 GB of bf16 weights to 12 GB, which alone fills the card, while NF4 takes ~6.7 GB and
bitsandbytes' 4-bit layers pass gradients to their inputs, which is all a LoRA needs.

Determinism, so that a resumed or data-parallel run equals an uninterrupted single-process one:
the order of batches is a function of (seed, epoch), the noise and timestep of each sample a
function of (seed, step, position in the step's batch). Every optimizer step sees the same
`batch_size × processes × gradient_accumulation` samples however they are split across processes.
Checkpoints hold the LoRA weights, the optimizer, the scheduler, the step, the losses so far and
every process's RNG state (used by LoRA dropout).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, TYPE_CHECKING

import torch

from persona.errors import PersonaError
from persona.files import atomic_path, hash_json, staged_dir, write_json
from persona.models import load_weights
from persona.progress import info, meter, warn
from persona.train import lora_data as data
from persona.train.flux_base import FluxBase
from persona.train.lora import TARGET_MODULES, LoraSettings, Scorer, sample_rows

if TYPE_CHECKING:
    from persona.workspace import Workspace


def train_native(ws: Workspace, s: LoraSettings, base: FluxBase, examples: list[data.Example], run: Path, key: str,
                 resume: bool | None, on_step: Callable[..., None] | None = None,
                 scorer: Scorer | None = None) -> dict[str, Any] | None:
    """Train; with a `scorer` (main process, --pick likeness) score every sample grid, then return the
    weights of the step it picks and the strength sweep's record under "likeness"."""
    from accelerate import Accelerator

    cpu = not torch.cuda.is_available()
    if cpu and (s.base_precision == "nf4" or s.optimizer == "adamw8bit"):
        what = "NF4 base weights" if s.base_precision == "nf4" else "8-bit AdamW"
        raise PersonaError(f"{what} needs a CUDA GPU (bitsandbytes)",
                           fix="train on a GPU, or use base_precision fp32/fp8 and optimizer adamw")
    with stdout_to_stderr():  # gloo prints "[Gloo] Rank 0 is connected ..." on stdout, kept for --json
        # Mixed precision is applied with torch.autocast below rather than by accelerate, whose
        # process-wide state cannot change precision between two trainings in one process.
        acc = Accelerator(cpu=cpu, mixed_precision="no")
        acc.wait_for_everyone()
    compute = torch.bfloat16 if s.mixed_precision == "bf16" else torch.float32
    d = prepare_data(acc, ws, s, base, examples, compute)

    model = load_transformer(base, s, acc.device, compute)
    guidance_embeds = model.config.guidance_embeds
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(s, params)
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler(s.lr_scheduler, optimizer, num_warmup_steps=s.warmup_steps, num_training_steps=s.steps)
    start, losses = restore_or_start(acc, s, run / "checkpoints", resume, model, optimizer, scheduler)
    # The scheduler is stepped by hand once per optimizer step: accelerate's wrapper would step it
    # once per process, tying the schedule to the number of processes.
    model, optimizer = acc.prepare(model, optimizer)

    group = s.batch_size * acc.num_processes * s.gradient_accumulation
    plan = Plan(d["items"], group, s.seed)
    run_info = {"processes": acc.num_processes, "samples_per_step": group, "items": len(d["items"]),
                "buckets": sorted({f"{w}x{h}" for w, h in (it.bucket for it in d["items"])})}
    say = info if acc.is_main_process else (lambda *_: None)
    say(f"training {s.steps} steps on {len(examples)} images ({len(d['items'])} image×resolution items, buckets "
        f"{', '.join(run_info['buckets'])}), {acc.num_processes} process(es), {group} samples per step")
    sampler = Sampler(base, s, d["cache"], d["rows"], d["text_id"], acc, run / "samples", compute) \
        if acc.is_main_process else None
    samples = [sampler.grid(model, 0)] if sampler and s.sample_every and start == 0 else []
    if scorer is not None:
        scorer.resume(start)
        if samples:
            scorer.score(0, samples[0])

    t0 = time.perf_counter()
    with (meter("train-lora", s.steps, completed=start) if acc.is_main_process else contextlib.nullcontext()) as bar:
        for step in range(start + 1, s.steps + 1):
            loss = train_step(model, optimizer, scheduler, acc, s, plan.batch(step - 1), d, guidance_embeds,
                              step - 1, compute, params)
            losses.append(loss)
            rate = (step - start) / (time.perf_counter() - t0)
            if bar is not None:
                bar.advance(1, loss=loss, **{"steps/s": rate})
            if s.checkpoint_every and step % s.checkpoint_every == 0 and step < s.steps:
                save_checkpoint(acc, run / "checkpoints", step, model, optimizer, scheduler, losses, key,
                                s.keep_checkpoints)
            if sampler and ((s.sample_every and step % s.sample_every == 0) or step == s.steps):
                samples.append(sampler.grid(model, step))
                if scorer is not None:
                    scorer.score(step, samples[-1])
                    scorer.keep(step, lora_state(acc.unwrap_model(model)))
            acc.wait_for_everyone()
            if on_step is not None:
                on_step(step=step, loss=loss)
    seconds = time.perf_counter() - t0
    state = lora_state(acc.unwrap_model(model))
    record = None
    if scorer is not None and sampler is not None:
        record = pick_and_sweep(scorer, sampler, model, state, s)
        if record["chosen_step"] != s.steps:
            state = scorer.weights(record["chosen_step"])
    acc.wait_for_everyone()
    main = acc.is_main_process
    acc.end_training()
    if not main:
        return None
    return {"state_dict": state, "losses": losses, "samples": samples, "resumed_from": start or None,
            "seconds": round(seconds, 2), "steps_per_s": round((s.steps - start) / max(seconds, 1e-9), 3), **run_info,
            **({"likeness": record} if record else {})}


def pick_and_sweep(scorer: Scorer, sampler: "Sampler", model, final: dict[str, torch.Tensor],
                   s: LoraSettings) -> dict[str, Any]:
    """The step to export by likeness, then its strength: the LoRA's B matrices scaled by the
    strength give exactly the adapter weight that `set_adapters(..., [strength])` applies at render
    time (the LoRA's output is B·A·x·alpha/rank), so the sweep needs no second adapter."""
    import numpy as np
    from peft import set_peft_model_state_dict

    pick = scorer.choose()
    if pick.get("fallback"):
        return scorer.record(pick, [])
    weights = final if pick["step"] == s.steps else scorer.weights(pick["step"])
    net = sampler.acc.unwrap_model(model)

    def draw(strength: float, seeds: list[int]) -> list[list[np.ndarray]]:
        scaled = {k: v * strength if ".lora_B." in k else v for k, v in weights.items()}
        set_peft_model_state_dict(net, {k: v.to(sampler.acc.device) for k, v in scaled.items()})
        images = sampler.images(model, seeds)
        n = len(seeds)
        return [[np.asarray(im) for im in images[r * n:(r + 1) * n]] for r in range(len(sampler.rows))]

    return scorer.record(pick, scorer.sweep(pick["step"], draw))


def prepare_data(acc, ws: Workspace, s: LoraSettings, base: FluxBase, examples: list[data.Example],
                 compute: torch.dtype) -> dict[str, Any]:
    """Fill the latent and text-embedding caches (the main process first, the others then find them)."""
    step = 2 * base.vae_scale()  # latents are packed in 2x2 patches
    if s.bucket_step % step:
        raise PersonaError(f"bucket_step {s.bucket_step} must be a multiple of {step} for this VAE",
                           fix="change bucket_step (and resolutions) in the recipe")
    cache = data.Cache(ws.root / "cache" / "lora")
    vae_id = hash_json([*base.component_ids("vae"), str(compute)])
    items = data.make_items(examples, s.resolutions, s.bucket_step, vae_id)
    text_id = hash_json([*base.component_ids("text"), str(compute)])
    rows = sample_rows(s, ws.token)
    prompts = {data.text_key(t, text_id, s.max_text_tokens): t for t in [e.caption for e in examples] + rows}
    with acc.main_process_first():
        data.encode_texts(base, prompts, cache, s.max_text_tokens, acc.device, compute)
        data.encode_latents(base, examples, items, cache, acc.device, compute)
    text_keys = [data.text_key(examples[it.example].caption, text_id, s.max_text_tokens) for it in items]
    return {"cache": cache, "items": items, "text_keys": text_keys, "rows": rows, "text_id": text_id}


def restore_or_start(acc, s: LoraSettings, ckpts: Path, resume: bool | None, model, optimizer,
                     scheduler) -> tuple[int, list[float]]:
    """(first step, losses so far): from the latest checkpoint, or from step 0 with fresh RNG states."""
    latest = latest_checkpoint(ckpts)
    if resume is True and latest is None:
        raise PersonaError("nothing to resume: no checkpoint of a run with these settings and this dataset",
                           file=ckpts, fix="run without --resume to start training")
    if latest is not None and resume is not False:
        start, losses = load_checkpoint(latest, model, optimizer, scheduler, acc.process_index)
        if acc.is_main_process:
            info(f"resuming from step {start} ({latest}); --restart starts over")
        return start, losses
    if acc.is_main_process and ckpts.exists():
        shutil.rmtree(ckpts)
    torch.manual_seed(s.seed + 1 + acc.process_index)  # for LoRA dropout; each process its own
    random.seed(s.seed + 1 + acc.process_index)
    return 0, []


def autocast(acc, s: LoraSettings):
    return torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=s.mixed_precision == "bf16")


@contextlib.contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 to stderr for a while: C++ libraries write there past Python's sys.stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# ---- the model -----------------------------------------------------------------------------------
def load_transformer(base: FluxBase, s: LoraSettings, device: torch.device, compute: torch.dtype):
    """The base transformer stored as the recipe says (from a diffusers folder or a single file alike)
    with a fresh LoRA on it."""
    from peft import LoraConfig

    quantization = None
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(s.base_precision, compute)
    if s.base_precision == "nf4":
        from diffusers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    model = base.load("transformer", dtype, quantization_config=quantization)
    model.requires_grad_(False)
    if s.base_precision == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if s.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    # the LoRA's initial weights: the same in every process and every run, however the base was loaded
    torch.manual_seed(s.seed)
    model.add_adapter(LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.lora_dropout,
                                 init_lora_weights="gaussian", target_modules=TARGET_MODULES))
    for p in model.parameters():  # the LoRA trains in fp32 whatever the base weights are stored in
        if p.requires_grad:
            p.data = p.data.float()
    if s.base_precision == "fp8":
        # diffusers skips the LoRA layers, norms and embeddings by default; those stay in full precision.
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)
    if s.base_precision != "nf4":  # bitsandbytes already placed the 4-bit weights on the GPU
        model.to(device)
    model.train()
    return model


def make_optimizer(s: LoraSettings, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if s.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # A fixed learning rate (kohya's recommended Adafactor settings for Flux).
        return Adafactor(params, lr=s.lr, relative_step=False, scale_parameter=False, warmup_init=False,
                         weight_decay=s.weight_decay)
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)


def lora_state(model) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in get_peft_model_state_dict(model).items()}


# ---- batches, noise and one step -----------------------------------------------------------------
class Plan:
    """Which items each optimizer step trains on: per epoch, items are shuffled within their
    bucket, cut into groups of `group` (wrapping around to fill the last one), and the groups shuffled."""

    def __init__(self, items: list[data.Item], group: int, seed: int):
        self.group, self.seed = group, seed
        self.buckets: dict[tuple[int, int], list[int]] = {}
        for i, it in enumerate(items):
            self.buckets.setdefault(it.bucket, []).append(i)
        self.per_epoch = sum(math.ceil(len(v) / group) for v in self.buckets.values())
        self._epoch: tuple[int, list[list[int]]] | None = None

    def batch(self, step: int) -> list[int]:
        epoch, index = divmod(step, self.per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self._groups(epoch))
        return self._epoch[1][index]

    def _groups(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        groups = []
        for bucket in sorted(self.buckets):
            members = self.buckets[bucket]
            order = [members[i] for i in torch.randperm(len(members), generator=g).tolist()]
            for c in range(math.ceil(len(order) / self.group)):
                groups.append([order[(c * self.group + j) % len(order)] for j in range(self.group)])
        return [groups[i] for i in torch.randperm(len(groups), generator=g).tolist()]


def draw(s: LoraSettings, step: int, position: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, float]:
    """Noise and timestep of one sample, from its own generator (see the module docstring)."""
    g = torch.Generator().manual_seed((s.seed * 1_000_003 + step) * 4099 + position)
    noise = torch.randn(shape, generator=g)
    t = torch.sigmoid(torch.randn((), generator=g) * s.sigmoid_scale).item()
    if s.timestep_sampling == "shift":
        t = t * s.discrete_flow_shift / (1 + (s.discrete_flow_shift - 1) * t)
    elif s.timestep_sampling == "flux_shift":
        tokens = (shape[-2] // 2) * (shape[-1] // 2)
        mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
        t = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    return noise, t


def load_batch(cache: data.Cache, items: list[data.Item], indices: list[int], text_keys: list[str]):
    latents = torch.stack([data.load_cached(cache.latent(items[i].latent_key))["latent"] for i in indices])
    texts = [data.load_cached(cache.text(k)) for k in text_keys]
    return (latents, torch.stack([t["prompt_embeds"] for t in texts]),
            torch.stack([t["pooled_prompt_embeds"] for t in texts]))


def flux_forward(model, noisy: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor,
                 guidance: float | None) -> torch.Tensor:
    """The transformer's prediction for latents (B, C, H, W), in the packed (B, H/2·W/2, 4C) layout."""
    from diffusers import FluxPipeline

    b, c, h, w = noisy.shape
    packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
    txt_ids = torch.zeros(embeds.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
    g = torch.full((b,), guidance, device=noisy.device, dtype=noisy.dtype) if guidance is not None else None
    return model(hidden_states=packed, timestep=t, guidance=g, pooled_projections=pooled, encoder_hidden_states=embeds,
                 txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]


def train_step(model, optimizer, scheduler, acc, s: LoraSettings, group: list[int], d: dict[str, Any],
               guidance_embeds: bool, step: int, dtype: torch.dtype, params) -> float:
    """One optimizer step on this process's share of `group` (see Plan); returns the mean loss."""
    from diffusers import FluxPipeline

    losses = []
    for m in range(s.gradient_accumulation):
        first = (m * acc.num_processes + acc.process_index) * s.batch_size
        positions = list(range(first, first + s.batch_size))
        indices = [group[j] for j in positions]
        latents, embeds, pooled = load_batch(d["cache"], d["items"], indices, [d["text_keys"][i] for i in indices])
        draws = [draw(s, step, j, tuple(latents.shape[1:])) for j in positions]
        noise = torch.stack([x[0] for x in draws])
        t = torch.tensor([x[1] for x in draws]).view(-1, 1, 1, 1)
        noisy = ((1 - t) * latents + t * noise).to(acc.device, dtype)
        b, c, h, w = latents.shape
        target = FluxPipeline._pack_latents(noise - latents, b, c, h, w).to(acc.device, torch.float32)
        sync = acc.no_sync(model) if m < s.gradient_accumulation - 1 else contextlib.nullcontext()
        with sync, autocast(acc, s):
            pred = flux_forward(model, noisy, t.view(-1).to(acc.device, dtype), embeds.to(acc.device, dtype),
                                pooled.to(acc.device, dtype), s.guidance if guidance_embeds else None)
            loss = torch.nn.functional.mse_loss(pred.float(), target)
            acc.backward(loss / s.gradient_accumulation)
        losses.append(loss.detach())
    if s.max_grad_norm > 0:
        acc.clip_grad_norm_(params, s.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return acc.reduce(torch.stack(losses).mean(), reduction="mean").item()


# ---- checkpoints ---------------------------------------------------------------------------------
def latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob("step-*") if (p / "trainer.pt").exists()) if folder.is_dir() else []
    return done[-1] if done else None


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def save_checkpoint(acc, folder: Path, step: int, model, optimizer, scheduler, losses: list[float], key: str,
                    keep: int) -> None:
    """Write the checkpoint beside the final name and rename it into place, so a full disk or a kill
    leaves the previous checkpoint as the latest complete one."""
    from accelerate.utils import broadcast_object_list, gather_object
    from safetensors.torch import save_file

    rng = gather_object([_rng_state()])
    error: list[str | None] = [None]
    if acc.is_main_process:
        final = folder / f"step-{step:06d}"
        try:
            with staged_dir(final) as tmp:
                save_file(lora_state(acc.unwrap_model(model)), str(tmp / "lora.safetensors"))
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save({"step": step, "scheduler": scheduler.state_dict(), "losses": list(losses), "rng": rng,
                            "key": key}, tmp / "trainer.pt")
        except OSError as e:
            error = [e.strerror or str(e)]
        else:
            for old in sorted(p for p in folder.glob("step-*") if p != final)[:-keep + 1 or None]:
                shutil.rmtree(old, ignore_errors=True)
    error = broadcast_object_list(error)
    if error[0]:
        previous = latest_checkpoint(folder)
        kept = f"the checkpoint at {previous.name} is intact" if previous else "no earlier checkpoint exists"
        raise PersonaError(f"could not write the checkpoint of step {step} ({error[0]}); {kept}", file=folder,
                           fix="free disk space, then run the same command again to resume")


def load_checkpoint(path: Path, model, optimizer, scheduler, rank: int) -> tuple[int, list[float]]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(path / "lora.safetensors")))
    if getattr(result, "unexpected_keys", None):
        raise PersonaError(f"checkpoint does not match the model ({len(result.unexpected_keys)} unexpected keys)",
                           file=path, fix="start over with --restart")
    optimizer.load_state_dict(load_weights(path / "optimizer.pt"))
    state = load_weights(path / "trainer.pt")
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    if rank < len(rng):
        torch.set_rng_state(rng[rank]["torch"])
        random.setstate(rng[rank]["python"])
        if torch.cuda.is_available() and rng[rank]["cuda"]:
            torch.cuda.set_rng_state_all(rng[rank]["cuda"])
    else:
        warn("this checkpoint was made with fewer processes; the extra processes start with fresh random states")
    return int(state["step"]), list(state["losses"])


# ---- sample grids --------------------------------------------------------------------------------
class Sampler:
    """Draws a grid (rows: prompts with and without the token; columns: fixed seeds) with the LoRA as
    trained so far, from text embeddings cached before the encoders were released."""

    def __init__(self, base: FluxBase, s: LoraSettings, cache: data.Cache, rows: list[str], text_id: str, acc, folder: Path,
                 dtype: torch.dtype):
        self.base, self.s, self.cache, self.rows, self.acc = base, s, cache, rows, acc
        self.folder, self.dtype = folder, dtype
        self.keys = [data.text_key(r, text_id, s.max_text_tokens) for r in rows]
        self._vae = self._scheduler = None

    def grid(self, model, step: int) -> str:
        from PIL import Image

        images = self.images(model, self.s.sample_seeds)
        size = self.s.sample_size
        cols = len(self.s.sample_seeds)
        sheet = Image.new("RGB", (cols * size, len(self.rows) * size), "white")
        for i, im in enumerate(images):
            sheet.paste(im, ((i % cols) * size, (i // cols) * size))
        out = self.folder / f"step-{step:06d}.png"
        with atomic_path(out) as tmp:
            sheet.save(tmp, format="PNG")
        write_json(out.with_suffix(".json"),
                   {"step": step, "rows": self.rows, "seeds": self.s.sample_seeds, "size": size})
        return str(out)

    def images(self, model, seeds: list[int]) -> list:
        """One PIL image per (row, seed), row by row, with the LoRA as it is now."""
        from diffusers import FluxPipeline

        if self._vae is None:
            self._vae = self.base.load("vae", self.dtype)
            self._vae.to(self.acc.device).eval()
            self._scheduler = self.base.load("scheduler")
        net = self.acc.unwrap_model(model)
        pipe = FluxPipeline(scheduler=self._scheduler, vae=self._vae, transformer=net, text_encoder=None, tokenizer=None,
                            text_encoder_2=None, tokenizer_2=None)
        pipe.set_progress_bar_config(disable=True)
        size, images = self.s.sample_size, []
        net.eval()
        try:
            with autocast(self.acc, self.s):
                for key in self.keys:
                    text = {k: v[None].to(self.acc.device, self.dtype)
                            for k, v in data.load_cached(self.cache.text(key)).items()}
                    for seed in seeds:
                        images.append(pipe(prompt_embeds=text["prompt_embeds"],
                                           pooled_prompt_embeds=text["pooled_prompt_embeds"],
                                           height=size, width=size, num_inference_steps=self.s.sample_steps,
                                           guidance_scale=self.s.sample_guidance, output_type="pil",
                                           generator=torch.Generator("cpu").manual_seed(seed)).images[0])
        finally:
            net.train()
        return images
