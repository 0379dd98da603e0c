"""`--backend kohya`: the same recipe run by the user's kohya-ss sd-scripts checkout.

sd-scripts is not on PyPI and cannot be copied here, so persona writes its two input files and runs
it as a subprocess in the checkout: a dataset TOML (`--dataset_config`: one `[[datasets]]` per
training resolution, kohya's own aspect-ratio buckets) and an arguments TOML (`--config_file`,
which `train_util.read_config_from_file` flattens section by section into the command-line
options), started as `accelerate launch flux_train_network.py --config_file ARGS.toml`. Option
names follow sd-scripts' `flux_train_network.py`, `library/train_util.py`,
`library/flux_train_utils.py`, `library/config_util.py` and `docs/flux_train_network.md`.

kohya loads FLUX.1 from single files: the transformer from `flux1-dev.safetensors` (or the diffusers
shards), the autoencoder from BFL's `ae.safetensors` (diffusers' `vae/` has other key names, which
its loader would silently skip), CLIP-L from `text_encoder/model.safetensors` and T5-XXL from ONE
file; diffusers' T5 is sharded, so the shards are joined once into the cache (or `kohya_t5xxl`
names a file such as ComfyUI's `t5xxl_fp16.safetensors`). With FLUX from a ComfyUI models folder
(`persona.train.flux_base`) its files are given to sd-scripts as they are (`comfy_model_files` says
which it cannot read). kohya has no NF4: recipes that use NF4
natively run with `--fp8_base` and their `kohya_blocks_to_swap`, as kohya's docs advise for 12 GB.

Its LoRA keeps kohya's `lora_unet_*` key names (ComfyUI reads them natively; diffusers converts
them for the full-size FLUX.1) and gets persona's metadata added.

With `--pick likeness` its sample images (`output/sample/NAME_STEP_INDEX_TIME_SEED.png`, one per
line of the prompt file, as `flux_train_utils.sample_image_inference` names them) are scored after
the run, and the step LoRA files (`NAME-stepNNNNNNNN.safetensors`) are all kept until the pick is
made (no `save_last_n_steps`; the resumable states are still pruned), so the candidates are the
steps that are both sampled and saved. There is no strength sweep: the model is not in this process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TYPE_CHECKING

from persona.comfy_files import FluxFiles, tensor_shapes
from persona.errors import PersonaError
from persona.files import atomic_path, stat_key, write_json, write_text
from persona.models import locate, model_identity
from persona.progress import info, meter, track, warn
from persona.train.lora import LoraSettings, Scorer, sample_rows

if TYPE_CHECKING:
    from persona.train.flux_base import FluxBase
    from persona.workspace import Workspace

OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "adafactor": "Adafactor"}
STEP_STATE = re.compile(r"-step(\d{8})-state$")
SAMPLE_NAME = re.compile(r"_(\d{6})_(\d{2})_\d{14}(?:_\d+)?\.png$")
PROGRESS = re.compile(r"steps:\s+\d+%.*?\|\s*(\d+)/(\d+)\s*\[([^\]]*)\]")


def model_files(base: Path | FluxFiles, s: LoraSettings, cache: Path) -> dict[str, str]:
    """The single files sd-scripts loads FLUX.1 from (see the module docstring): a diffusers folder's,
    or the ComfyUI models folder's."""
    if isinstance(base, FluxFiles):
        return comfy_model_files(base, s, cache)
    transformer = next((p for p in (base / "flux1-dev.safetensors",
                                    base / "transformer" / "diffusion_pytorch_model-00001-of-00003.safetensors",
                                    base / "transformer" / "diffusion_pytorch_model.safetensors") if p.exists()), None)
    ae, clip = base / "ae.safetensors", base / "text_encoder" / "model.safetensors"
    fetch = f"`hf download black-forest-labs/FLUX.1-dev ae.safetensors flux1-dev.safetensors` (into the folder {base})"
    if transformer is None or not ae.exists():
        raise PersonaError("sd-scripts needs FLUX.1-dev's BFL-format files ae.safetensors and flux1-dev.safetensors",
                           file=base, fix=f"fetch them with {fetch}")
    if not clip.exists():
        raise PersonaError("CLIP-L weights text_encoder/model.safetensors are missing", file=base,
                           fix="fetch the complete model; `persona doctor` shows the command")
    return {"pretrained_model_name_or_path": str(transformer), "ae": str(ae), "clip_l": str(clip),
            "t5xxl": str(t5_file(base, s, cache))}


def t5_file(base: Path, s: LoraSettings, cache: Path) -> Path:
    if s.kohya_t5xxl:
        path = Path(s.kohya_t5xxl).expanduser()
        if not path.is_file():
            raise PersonaError("kohya_t5xxl does not exist", file=path, fix="point it at a T5-XXL .safetensors file")
        return path
    folder = base / "text_encoder_2"
    single = folder / "model.safetensors"
    if single.exists():
        return single
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    if not shards:
        raise PersonaError("T5-XXL weights are missing", file=folder, fix="fetch the complete model (`persona doctor`)")
    return join_shards(shards, cache / f"t5xxl-{stat_key(shards, folder)[:12]}.safetensors")


def comfy_model_files(files: FluxFiles, s: LoraSettings, cache: Path) -> dict[str, str]:
    """ComfyUI's FLUX files as sd-scripts reads them (library/flux_utils.py). Its loaders fill
    models with `load_state_dict(strict=False)`, so a file they cannot read would train on random
    weights without a word; those are refused, or rewritten once into the cache:
    - the transformer: BFL names, `model.diffusion_model.` stripped, any dtype (fp8 included) cast on
      load; a GGUF (refused before this) or a scaled fp8 file (its scales would be ignored) is not read;
    - the VAE: only BFL's ae.safetensors names (diffusers' `encoder.down_blocks.*` would be skipped);
    - CLIP-L: transformers' CLIPTextModel names with `text_model.`, which is how ComfyUI's clip_l holds it;
    - T5-XXL: Hugging Face names as ComfyUI's t5xxl_fp16 (or `kohya_t5xxl`); a scaled fp8 T5 or CLIP
      (t5xxl_fp8_e4m3fn_scaled) is multiplied out into an fp16 file in the cache, once."""
    from persona.single_file import is_scaled_fp8
    from persona.train.flux_base import gguf_refusal

    if files.transformer.suffix.lower() == ".gguf":
        raise gguf_refusal(files.transformer, files.transformer.parent.parent)
    if is_scaled_fp8(tensor_shapes(files.transformer)):
        raise PersonaError("is a scaled fp8 FLUX transformer; sd-scripts would ignore its scales", file=files.transformer,
                           fix="put flux1-dev.safetensors (bf16, or plain fp8 e4m3fn) in diffusion_models/, "
                               "or use --backend native")
    if "encoder.down.0.block.0.conv1.weight" not in tensor_shapes(files.vae):
        raise PersonaError("sd-scripts reads the FLUX VAE only in BFL's ae.safetensors layout (encoder.down.N.block.M), "
                           "and this file has diffusers' names", file=files.vae,
                           fix="put BFL's ae.safetensors (black-forest-labs/FLUX.1-dev) in vae/, or use --backend native")
    t5 = Path(s.kohya_t5xxl).expanduser() if s.kohya_t5xxl else files.t5
    if not t5.is_file():
        raise PersonaError("kohya_t5xxl does not exist", file=t5, fix="point it at a T5-XXL .safetensors file")
    return {"pretrained_model_name_or_path": str(files.transformer), "ae": str(files.vae),
            "clip_l": str(unscaled(files.clip_l, cache)), "t5xxl": str(unscaled(t5, cache))}


def unscaled(file: Path, cache: Path) -> Path:
    """`file` itself, or for ComfyUI's scaled fp8 layout its weights multiplied out into an fp16 copy
    in the cache (sd-scripts' loaders would read the fp8 values without their scales)."""
    from persona.single_file import dequantized, is_scaled_fp8

    if not is_scaled_fp8(tensor_shapes(file)):
        return file
    out = cache / f"{file.stem}-unscaled-{model_identity(file)[:12]}.safetensors"
    if out.exists():
        return out
    import torch
    from safetensors.torch import save_file

    warn(f"multiplying out the scaled fp8 weights of {file.name} into {out} for sd-scripts (once)")
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in dequantized(file, torch.float16).items()}, str(tmp))
    return out


def join_shards(shards: list[Path], out: Path) -> Path:
    """One .safetensors from a sharded checkpoint (sd-scripts' T5 loader reads a single file)."""
    if out.exists():
        return out
    from safetensors import safe_open
    from safetensors.torch import save_file

    warn(f"joining {len(shards)} T5-XXL shards into {out} for sd-scripts (once; about 10 GB)")
    tensors = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp))
    return out


# ---- the two TOML files --------------------------------------------------------------------------
def dataset_config(image_dir: Path, s: LoraSettings) -> dict[str, Any]:
    """kohya's dataset TOML: one dataset per training resolution (its multi-resolution recipe)."""
    return {
        "general": {"caption_extension": ".txt", "shuffle_caption": False, "enable_bucket": True,
                    "bucket_no_upscale": False, "bucket_reso_steps": s.bucket_step},
        "datasets": [
            {"resolution": r, "batch_size": s.batch_size, "min_bucket_reso": max(s.bucket_step, r // 2),
             "max_bucket_reso": 2 * r, "subsets": [{"image_dir": str(image_dir), "num_repeats": 1}]}
            for r in s.resolutions
        ],
    }


def arguments(s: LoraSettings, files: dict[str, str], dataset_toml: Path, out_dir: Path, name: str,
              prompts: Path, resume_state: Path | None, keep_models: bool = False) -> dict[str, Any]:
    """kohya's arguments TOML, section by section (sections are only for reading; kohya flattens them).
    keep_models: keep every step's LoRA file (the candidates of --pick likeness)."""
    fp8 = s.base_precision in ("fp8", "nf4")
    optimizer_args = [f"weight_decay={s.weight_decay}"]
    if s.optimizer == "adafactor":
        optimizer_args += ["relative_step=False", "scale_parameter=False", "warmup_init=False"]
    training: dict[str, Any] = {
        "dataset_config": str(dataset_toml), "max_train_steps": s.steps, "seed": s.seed,
        "mixed_precision": s.mixed_precision, "gradient_checkpointing": s.gradient_checkpointing,
        "gradient_accumulation_steps": s.gradient_accumulation, "sdpa": True, "fp8_base": fp8,
        "cache_latents": True, "cache_latents_to_disk": True, "cache_text_encoder_outputs": True,
        "cache_text_encoder_outputs_to_disk": True, "max_data_loader_n_workers": 1,
        "persistent_data_loader_workers": True,
    }
    if s.kohya_blocks_to_swap:
        training["blocks_to_swap"] = s.kohya_blocks_to_swap
    saving: dict[str, Any] = {"output_dir": str(out_dir), "output_name": name, "save_model_as": "safetensors",
                              "save_precision": s.save_precision if s.save_precision != "fp32" else "float",
                              "save_state": True}
    if s.checkpoint_every:
        saving["save_every_n_steps"] = s.checkpoint_every
        if not keep_models:
            saving["save_last_n_steps"] = s.checkpoint_every * s.keep_checkpoints
        saving["save_last_n_steps_state"] = s.checkpoint_every * s.keep_checkpoints
    if resume_state is not None:
        saving["resume"] = str(resume_state)
    config = {
        "model": {**files, "t5xxl_max_token_length": s.max_text_tokens},
        "network": {"network_module": "networks.lora_flux", "network_dim": s.rank, "network_alpha": s.alpha,
                    "network_train_unet_only": True},
        "flux": {"guidance_scale": s.guidance, "timestep_sampling": s.timestep_sampling,
                 "discrete_flow_shift": s.discrete_flow_shift, "sigmoid_scale": s.sigmoid_scale,
                 "model_prediction_type": "raw"},
        "optimizer": {"optimizer_type": OPTIMIZERS[s.optimizer], "learning_rate": s.lr,
                      "optimizer_args": optimizer_args, "lr_scheduler": s.lr_scheduler,
                      "lr_warmup_steps": s.warmup_steps, "max_grad_norm": s.max_grad_norm},
        "training": training,
        "saving": saving,
        "sampling": {"sample_prompts": str(prompts), "sample_every_n_steps": s.sample_every} if s.sample_every else {},
        "extra": dict(s.kohya_args),
    }
    if s.lora_dropout:
        config["network"]["network_dropout"] = s.lora_dropout
    return {k: v for k, v in config.items() if v}


def sample_prompts(rows: list[str], s: LoraSettings) -> str:
    """kohya's prompt file: one line per image, options after ` --` (train_util.line_to_prompt_dict)."""
    return "".join(f"{row} --w {s.sample_size} --h {s.sample_size} --d {seed} --s {s.sample_steps} "
                   f"--g {s.sample_guidance}\n" for row in rows for seed in s.sample_seeds)


def python_for(repo: Path) -> str:
    """sd-scripts usually lives in its own virtual environment (its pinned diffusers/transformers)."""
    if os.environ.get("PERSONA_SD_SCRIPTS_PYTHON"):
        return os.environ["PERSONA_SD_SCRIPTS_PYTHON"]
    for venv in ("venv", ".venv"):
        candidate = repo / venv / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    return sys.executable


def command(python: str, args_toml: Path, s: LoraSettings) -> list[str]:
    return [python, "-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "1",
            "--mixed_precision", s.mixed_precision, "flux_train_network.py", "--config_file", str(args_toml)]


# ---- running it ----------------------------------------------------------------------------------
def parse_progress(line: str) -> dict[str, Any] | None:
    """kohya's tqdm line `steps:  40%|████  | 4/10 [00:08<00:12, 2.01s/it, avr_loss=0.412]` as numbers."""
    m = PROGRESS.search(line)
    if not m:
        return None
    rate = loss = None
    if r := re.search(r"([\d.]+)(it/s|s/it)", m.group(3)):
        rate = float(r.group(1)) if r.group(2) == "it/s" else 1.0 / max(float(r.group(1)), 1e-9)
    if found := re.search(r"avr_loss=([-+\d.eE]+)", m.group(3)):
        loss = float(found.group(1))
    return {"done": int(m.group(1)), "total": int(m.group(2)), "steps_per_s": rate, "loss": loss}


def stream(cmd: list[str], cwd: Path, on_line: Callable[[str], None]) -> int:
    """Run without a shell, reading stdout+stderr as they come; tqdm redraws with '\\r', so both
    '\\r' and '\\n' end a line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
        assert proc.stdout is not None
        buf = b""
        while chunk := proc.stdout.read1(4096):
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for raw in lines:
                if raw.strip():
                    on_line(raw.decode("utf-8", "replace"))
        if buf.strip():
            on_line(buf.decode("utf-8", "replace"))
        return proc.wait()


def first_error(lines: list[str]) -> str:
    """The trainer's own error, not accelerate's CalledProcessError that follows it."""
    errors = [ln for ln in lines if re.search(r"\w(Error|Exception)\b|^error", ln) and "CalledProcessError" not in ln]
    return (errors or [ln for ln in lines if ln.strip()] or ["no output"])[-1]


def latest_state(out_dir: Path) -> Path | None:
    states = sorted((p for p in out_dir.glob("*-step*-state") if STEP_STATE.search(p.name)),
                    key=lambda p: int(STEP_STATE.search(p.name).group(1)))
    return states[-1] if states else None


def prepare(ws: Workspace, s: LoraSettings, base: Path | FluxFiles, examples: list, run: Path, resume: bool | None,
            rows: list[str], keep_models: bool = False) -> dict[str, Any]:
    """Write everything sd-scripts needs under run/kohya/; returns the paths and the command line."""
    repo = locate("sd-scripts", models=ws.pack.models)
    work = run / "kohya"
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    # kohya reads the .txt beside each image; linking the images and writing the captions here gives
    # it the same captions as the native trainer (trigger token added where ingest's lacked it).
    for e in examples:
        link = images / e.image.name
        if not link.exists():
            link.symlink_to(e.image.resolve())
        write_text(link.with_suffix(".txt"), e.caption + "\n")
    out_dir = work / "output"
    name = "persona-lora"
    state = latest_state(out_dir)
    if resume is True and state is None:
        raise PersonaError("nothing to resume: sd-scripts saved no state for this run", file=out_dir,
                           fix="run without --resume to start training")
    state = state if resume is not False else None
    if s.base_precision == "nf4":
        swap = f" and {s.kohya_blocks_to_swap} blocks swapped to the CPU" if s.kohya_blocks_to_swap else ""
        warn(f"sd-scripts has no NF4: it trains with fp8 base weights{swap}", once=True)
    files = model_files(base, s, ws.root / "cache" / "lora" / "kohya")
    dataset_toml, args_toml, prompts = work / "dataset.toml", work / "args.toml", work / "sample_prompts.txt"
    import tomlkit

    write_text(dataset_toml, tomlkit.dumps(dataset_config(images, s)))
    write_text(prompts, sample_prompts(rows, s))
    write_text(args_toml, tomlkit.dumps(arguments(s, files, dataset_toml, out_dir, name, prompts, state, keep_models)))
    cmd = command(python_for(repo), args_toml, s)
    return {"repo": repo, "cmd": cmd, "out_dir": out_dir, "name": name, "lora": out_dir / f"{name}.safetensors",
            "resume": state,
            "dataset_toml": dataset_toml, "args_toml": args_toml}


def train_kohya(ws: Workspace, s: LoraSettings, base: FluxBase, examples: list, run: Path,
                resume: bool | None, scorer: Scorer | None = None) -> dict[str, Any]:
    job = prepare(ws, s, base.source, examples, run, resume, sample_rows(s, ws.token), keep_models=scorer is not None)
    if job["resume"] is not None:
        info(f"resuming sd-scripts from {job['resume'].name}; --restart starts over")
    info(f"running sd-scripts in {job['repo']}: {' '.join(job['cmd'])}")
    losses: list[float] = []
    tail: list[str] = []
    t0 = time.perf_counter()
    with meter("train-lora (kohya)", s.steps) as bar:
        def on_line(line: str) -> None:
            p = parse_progress(line)
            if p is None:
                tail.append(line)
                del tail[:-40]
                return
            done = s.steps - p["total"] + p["done"]  # a resumed run counts from its first new step
            if p["loss"] is not None and (not losses or done > len(losses)):
                losses.append(p["loss"])
            bar.update(done, loss=p["loss"] or float("nan"), **{"steps/s": p["steps_per_s"] or 0.0})

        rc = stream(job["cmd"], job["repo"], on_line)
    if rc != 0:
        last = first_error(tail)
        write_text(run / "kohya" / "last-output.txt", "\n".join(tail) + "\n")
        raise PersonaError(f"sd-scripts failed (exit {rc}): {last.strip()[:300]}",
                           file=run / "kohya" / "last-output.txt",
                           fix="read the log; check the checkout's environment (`accelerate`, its requirements)")
    if not job["lora"].exists():
        raise PersonaError("sd-scripts finished without writing the LoRA", file=job["out_dir"],
                           fix="read its output above")
    samples = sorted(str(p) for p in (job["out_dir"] / "sample").glob("*.png"))
    seconds = time.perf_counter() - t0
    write_json(run / "kohya" / "losses.json", losses)
    lora, record = job["lora"], None
    if scorer is not None:
        lora, record = pick(scorer, job["out_dir"], job["name"], s)
    return {"lora_file": str(lora), "losses": losses, **({"likeness": record} if record else {}),
            "samples": samples, "seconds": round(seconds, 2),
            "resumed_from": int(STEP_STATE.search(job["resume"].name).group(1)) if job["resume"] else None,
            "command": job["cmd"], "dataset_toml": str(job["dataset_toml"]), "args_toml": str(job["args_toml"])}


# ---- --pick likeness -------------------------------------------------------------------------------
def sample_grids(folder: Path, name: str, rows: int, seeds: int) -> dict[int, list[list[Any]]]:
    """kohya's sample images as grids per step: image i of a step is prompt-file line i, that is row
    i // seeds, seed i % seeds (see `sample_prompts`). A step missing an image is left out; of
    several images of one line (a resumed run draws them again) the newest is used."""
    import numpy as np
    from PIL import Image

    found: dict[int, dict[int, Path]] = {}
    for p in sorted(folder.glob(f"{name}_*.png")):  # the timestamp sorts: later files replace earlier
        if m := SAMPLE_NAME.search(p.name):
            found.setdefault(int(m.group(1)), {})[int(m.group(2))] = p
    grids = {}
    for step, images in found.items():
        if all(i in images for i in range(rows * seeds)):
            cells = [np.asarray(Image.open(images[i]).convert("RGB")) for i in range(rows * seeds)]
            grids[step] = [cells[r * seeds:(r + 1) * seeds] for r in range(rows)]
    return grids


def pick(scorer: Scorer, out_dir: Path, name: str, s: LoraSettings) -> tuple[Path, dict[str, Any]]:
    """Score the run's sample grids, pick among the steps that have a LoRA file, drop the others."""
    def model(step: int) -> Path:
        return out_dir / (f"{name}.safetensors" if step == s.steps else f"{name}-step{step:08d}.safetensors")

    grids = sample_grids(out_dir / "sample", name, len(scorer.rows), len(s.sample_seeds))
    for step in track(sorted(grids), "scoring kohya's samples"):
        scorer.score(step, grids[step])
        if step > 0 and not model(step).exists():
            scorer.gone.add(step)  # sampled but not saved (sample_every and checkpoint_every differ)
    chosen = scorer.choose()
    record = scorer.record(chosen, [], no_sweep="kohya backend: no strength sweep (its model is not in this "
                                                f"process); kept the recipe's strength {s.strength:g}")
    for old in out_dir.glob(f"{name}-step*.safetensors"):
        if old != model(chosen["step"]):
            old.unlink(missing_ok=True)  # the choice is made: only the chosen step's file is still needed
    return model(chosen["step"]), record
