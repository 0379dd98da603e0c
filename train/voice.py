"""`persona train-voice`: fine-tune F5-TTS (v1 Base) on the person's voice dataset and export it to the pack.

Steps: check the dataset (transcripts, amount, characters outside the vocab), write the train and
held-out splits in F5's format, plan the hyperparameters from the data and the recipe, train with
resume (train/voice_trainer.py), hearing held-out lines at every validation (train/voice_likeness.py),
then export the checkpoint and weight set (EMA or raw) that sounds most like the person (`pick =
"likeness"`), or the EMA weights with the lowest validation loss (`pick = "loss"`).

Run folders (caches, outside the pack), named by what they were made from so no run deletes another's
work: runs/voice/data-<split key>/{train,val}/raw.arrow and runs/voice/<run key>/{checkpoints/model_N.pt,
checkpoints/best.safetensors, checkpoints/picked.safetensors, run.json, likeness.json, likeness.png}. Export: voice/{model.safetensors, vocab.txt,
model_config.json (only for a non-v1-Base architecture), ref.wav, ref.txt, training.json} and [voice].
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from persona import models as model_registry
from persona.device import default_device, gpu_memory, largest_fitting
from persona.errors import PersonaError
from persona.files import atomic_path, hash_file, hash_json, is_fresh, mark_fresh, write_json, write_text
from persona.lock import locked
from persona.progress import info, warn
from persona.train.voice_data import (
    F5_MAX_CLIP_S,
    VoiceData,
    load_f5_split,
    read_voice_dataset,
    split_clips,
    unknown_characters,
    write_f5_split,
)
from persona.train.voice_trainer import (
    MEL,
    SAMPLE_RATE,
    Base,
    Run,
    Trainer,
    check_vocab,
    find_base,
    known_notices,
    quiet,
    export_tensors,
    picked_as,
    read_weights,
    sampler_for,
    save_picked,
)
from persona.train.voice_likeness import held_out_lines, make_judge, plot, write_record

if TYPE_CHECKING:
    from persona.workspace import Workspace

FRAMES_PER_SECOND = SAMPLE_RATE / MEL["hop_length"]  # 93.75 mel frames per second of audio
RECIPES_GB = (12, 24, 80)  # the shipped recipes recipes/voice/f5-<N>gb.toml, by the GPU memory they plan for
# F5's fine-tune default: lr 1e-5 at 3200 frames per batch; other batch sizes scale it by the square root.
REFERENCE_LR, REFERENCE_FRAMES = 1e-5, 3200


class VoiceSettings(BaseModel):
    """`persona train-voice` settings; recipes (recipes/voice/*.toml) and flags override the defaults."""

    model_config = ConfigDict(extra="forbid")

    batch_frames: int = Field(3200, ge=100, description="mel frames per batch (93.75 per second of audio); fitted to VRAM")
    max_samples: int = Field(64, ge=1, description="most clips in one batch")
    grad_accum: int = Field(1, ge=1, description="batches per update")
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    precision: Literal["bf16", "fp32"] = Field("bf16", description="autocast on CUDA; the CPU always runs fp32")
    checkpoint_activations: bool = Field(False, description="recompute activations: less VRAM, ~30% slower")
    learning_rate: float | None = Field(None, gt=0, description="default: 1e-5 x sqrt(frames per update / 3200)")
    epochs: float = Field(50, gt=0, description="passes over the training clips; sets the total updates")
    updates: int | None = Field(None, ge=2, description="total updates (overrides epochs)")
    min_updates: int = Field(300, ge=2)
    max_updates: int = Field(30000, ge=2)
    warmup: float = Field(0.05, ge=0, lt=1, description="warmup as a fraction of the total updates")
    max_grad_norm: float = Field(1.0, ge=0)
    val_clips: int = Field(8, ge=1, description="clips held out for validation (at most a tenth)")
    val_every: int | None = Field(None, ge=1, description="updates between validations (default: a twentieth of the run)")
    val_repeats: int = Field(4, ge=1, description="noise draws per held-out clip; the same draws every time")
    keep_last: int = Field(2, ge=1, description="training checkpoints kept besides the best")
    # Below a few minutes the held-out set is a few seconds, too little for validation loss to tell
    # checkpoints apart, and F5-TTS already clones a voice from the reference clip alone.
    min_minutes: float = Field(5.0, ge=0, description="refuse less transcribed speech than this")
    num_workers: int = Field(2, ge=0, description="data loader processes")
    seed: int = 0
    # Which checkpoint to export: "likeness" hears held-out lines with the EMA and the raw weights at
    # every validation and keeps the one closest to the reference voice (WER weighed in when Whisper
    # is found); "loss" keeps the EMA weights with the lowest validation loss (the behaviour before).
    pick: Literal["likeness", "loss"] = "likeness"
    # F5's sway sampling keeps 8 steps intelligible. How often to score is set by the plan to stay
    # within LIKENESS_BUDGET of the run (see scoring_interval).
    likeness_clips: int = Field(2, ge=0, le=16, description="held-out lines said at each scored validation (0: no scoring)")
    likeness_steps: int = Field(8, ge=1, le=64, description="flow-matching steps per line (32 for `persona speak`)")
    likeness_every: int | None = Field(None, ge=1, description="validations between scorings (default: as often as "
                                                               "keeps scoring within 4 % of the run)")
    wer_weight: float = Field(0.5, ge=0, description="similarity a word error rate of 1.0 costs in the pick")


@dataclass
class Plan:
    """Hyperparameters scaled to the dataset and the recipe."""

    train_clips: int
    val_clips: int
    train_minutes: float
    batch_frames: int
    grad_accum: int
    batches_per_epoch: int
    total_updates: int
    warmup_updates: int
    learning_rate: float
    val_every: int
    likeness_every: int
    epochs: float
    device: str
    precision: str
    optimizer: str

    def trajectory(self) -> dict[str, Any]:
        """What determines the weights (a change starts training over); val_every etc. do not."""
        return {k: v for k, v in asdict(self).items() if k not in ("val_every", "likeness_every", "epochs", "device")}


# Scoring's share of a run, in DiT frame-passes (benchmarks/voice_likeness_cost.py has the figures): a
# take is the ~8 s reference prompt plus a ~6 s line at 93.75 mel frames a second, synthesised with
# classifier-free guidance (a doubled batch) by both weight sets; a training update is about three
# passes (forward and backward) over its frames. Speaker embedding and Whisper add up to 1.5x the
# synthesis on the benchmark's figures, hence 2.5. Counted in work, not seconds, so the schedule is
# the same on every resume.
LIKENESS_BUDGET = 0.04
TAKE_FRAMES = 14 * 93.75


def scoring_interval(s: VoiceSettings, val_every: int) -> int:
    """Validations between likeness scorings, so that scoring stays within LIKENESS_BUDGET of the run."""
    if s.likeness_every or not s.likeness_clips:
        return s.likeness_every or 1
    scoring = 2.5 * s.likeness_clips * 2 * s.likeness_steps * 2 * TAKE_FRAMES
    training = val_every * 3 * s.batch_frames * s.grad_accum
    return max(1, math.ceil(scoring / (LIKENESS_BUDGET * training) - 1e-9))


def plan_training(s: VoiceSettings, batches_per_epoch: int, train_seconds: float, train_clips: int, val_clips: int,
                  device: str) -> Plan:
    updates_per_epoch = max(1, batches_per_epoch // s.grad_accum)
    total = s.updates or min(max(round(s.epochs * updates_per_epoch), s.min_updates), s.max_updates)
    warmup = min(max(1, round(s.warmup * total)), total - 1)
    frames = s.batch_frames * s.grad_accum
    lr = s.learning_rate or REFERENCE_LR * math.sqrt(frames / REFERENCE_FRAMES)
    cuda = device.startswith("cuda")
    val_every = s.val_every or max(1, total // 20)
    return Plan(
        train_clips=train_clips, val_clips=val_clips, train_minutes=round(train_seconds / 60, 2),
        batch_frames=s.batch_frames, grad_accum=s.grad_accum, batches_per_epoch=batches_per_epoch,
        total_updates=total, warmup_updates=warmup, learning_rate=float(f"{lr:.3g}"),
        val_every=val_every, likeness_every=scoring_interval(s, val_every), epochs=round(total / updates_per_epoch, 2), device=device,
        precision=s.precision if cuda else "fp32", optimizer=s.optimizer if cuda else "adamw",
    )


def auto_recipe() -> str | None:
    """The largest shipped recipe this machine's GPU fits, or None on a CPU (plain defaults)."""
    have, _ = gpu_memory()
    if have is None:
        return None
    gb = largest_fitting(list(RECIPES_GB), have)
    return f"f5-{gb or 12}gb"


# ---- the verb ----------------------------------------------------------------------------------

def _check_amount(data: VoiceData, s: VoiceSettings) -> None:
    minutes = data.seconds / 60
    if minutes < s.min_minutes:
        raise PersonaError(
            f"only {minutes:.1f} min of transcribed speech ({len(data.clips)} clips); fine-tuning needs at least "
            f"{s.min_minutes:g} min", file=data.folder,
            fix="ingest more footage of the person speaking (an hour is good), or lower --min-minutes")
    if minutes < 60:
        warn(f"{minutes:.1f} min of transcribed speech: fine-tuning works best with an hour or more")


def _report_data(data: VoiceData, unknown: dict[str, int], max_clip_s: float) -> None:
    if data.reference_note:
        warn(data.reference_note)
    if data.untranscribed:
        info(f"{data.untranscribed} clips without a transcript are left out")
    if data.missing:
        warn(f"{len(data.missing)} clips in the manifest are missing on disk (first: {data.missing[0]})")
    if data.out_of_range:
        warn(f"{len(data.out_of_range)} clips shorter than 0.3 s or longer than {max_clip_s:.1f} s are left out")
    if unknown:
        shown = ", ".join(f"{c!r} ({n} clips)" for c, n in list(unknown.items())[:12])
        warn(f"characters outside the F5-TTS vocab are read as a space: {shown}; "
             "spell them out in the transcripts (numbers as words, no symbols) for a closer voice")


def prepare(data: VoiceData, vocab_path: Path, runs: Path, s: VoiceSettings) -> tuple[Path, Path, dict[str, Any]]:
    """The train/val split in F5's format under runs/data-<key> (redone only when the clips change)."""
    train, val = split_clips(data.clips, s.val_clips, s.seed)
    key = hash_json({"train": [(str(c.file), c.text, c.seconds) for c in train],
                     "val": [(str(c.file), c.text, c.seconds) for c in val], "vocab": hash_file(vocab_path)})
    out = runs / f"data-{key[:16]}"
    arrow = out / "val" / "raw.arrow"
    if not is_fresh(arrow, key):
        with quiet():
            write_f5_split(train, out / "train")
            write_f5_split(val, out / "val")
        shutil.copyfile(vocab_path, out / "vocab.txt")
        mark_fresh(arrow, key, train=len(train), val=[c.file.name for c in val])
    summary = {"train_clips": len(train), "val_clips": len(val), "train_seconds": round(sum(c.seconds for c in train), 2),
               "val_seconds": round(sum(c.seconds for c in val), 2), "key": key}
    return out / "train", out / "val", summary


@locked("train-voice")
def train_voice(ws: Workspace, settings: VoiceSettings | None = None, *, base: str | Path | None = None,
                restart: bool = False, stop_at: int | None = None, recipe: str | None = None) -> dict[str, Any]:
    """`persona train-voice`: fine-tune, pick the checkpoint by likeness (or loss), export it to the pack."""
    t0 = time.perf_counter()
    s = settings or VoiceSettings()
    ws.require_consent("training")
    data, f5, weights, vocab, unknown = _check_inputs(ws, s, base)
    run, train_set, val_set, split = _set_up_run(ws, data, f5, s, restart)
    plan = run.plan
    info(f"plan: {plan.total_updates} updates (~{plan.epochs:g} epochs of {plan.train_minutes:g} min, "
         f"{plan.train_clips} clips; {plan.val_clips} held out), {plan.batch_frames} frames x {plan.grad_accum} per update, "
         f"lr {plan.learning_rate:g} after {plan.warmup_updates} warmup updates, validation every {plan.val_every}, "
         f"{plan.device} {plan.precision}" + (f", recipe {recipe}" if recipe else ""))
    if plan.device == "cpu" and f5.arch == model_registry.f5_base_arch():
        warn("no CUDA GPU: F5TTS_v1_Base trains at about a minute per small update on a CPU; use a GPU")

    judge, scoring = _judge(ws, data, s, plan.device)
    info(f"likeness: {scoring}")
    if judge is None and s.pick == "likeness":
        warn(f"the voice is picked by validation loss: {scoring}")
    trainer = Trainer(run, f5, vocab, weights, s, judge)
    del weights
    start = trainer.resume()
    end = min(plan.total_updates, stop_at) if stop_at else plan.total_updates
    if start >= plan.total_updates:
        info(f"already trained ({start} updates); nothing to redo")
    elif start:
        info(f"resuming from update {start} of {plan.total_updates}")
    if start < end:
        trainer.train(train_set, _val_batches(val_set, s), end)

    summary: dict[str, Any] = {
        "workspace": str(ws.root), "recipe": recipe, "resumed_from": start, "update": trainer.update,
        "total_updates": plan.total_updates, "finished": trainer.update >= plan.total_updates, "plan": asdict(plan),
        "data": {**{k: v for k, v in split.items() if k != "key"}, "untranscribed": data.untranscribed,
                 "left_out": len(data.out_of_range) + len(data.missing), "unknown_characters": unknown},
        "baseline_val_loss": trainer.history[0]["val_loss"] if trainer.history else None,
        "best": trainer.best_entry(), "checkpoints": str(run.checkpoints), "run_dir": str(run.folder),
    }
    choice = trainer.choice(s.pick)
    config = judge.config() if judge is not None else None
    trainer.judge = judge = None  # frees the vocoder before the export
    if trainer.history:
        write_record(run.folder, trainer.history, config, choice, scoring)
        summary["likeness_plot"] = str(plot(trainer.history, choice, run.folder / "likeness.png"))
    if summary["finished"]:
        choice = _exportable(run, choice, trainer.best_entry())
        summary["choice"] = choice
        summary["voice"] = export_voice(ws, run, f5, data, trainer.history, choice)
        if choice:
            info(f"chose {choice['reason']}; plot: {ws.relative(run.folder / 'likeness.png')}")
        base_loss, best = summary["baseline_val_loss"], summary["best"]
        if best and base_loss is not None and best["val_loss"] >= base_loss:
            warn(f"fine-tuning did not lower the validation loss ({best['val_loss']:.4g} vs the base's {base_loss:.4g}); "
                 "more data or a lower --lr may help")
    else:
        info(f"paused at update {trainer.update} of {plan.total_updates}; run `persona train-voice` again to continue")
    # all validations' scoring, this session's and earlier ones' (the training seconds are this session's)
    summary["likeness_seconds"] = round(sum(h.get("likeness_seconds", 0.0) for h in trainer.history), 2)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _judge(ws: Workspace, data: VoiceData, s: VoiceSettings, device: str) -> tuple[Any, str]:
    """The likeness judge for this run (or None) and a line saying what it scores."""
    if s.likeness_clips == 0:
        return None, "scoring is off (likeness_clips = 0)"
    _, val = split_clips(data.clips, s.val_clips, s.seed)  # the held-out clips `prepare` wrote
    lines = held_out_lines(val, s.likeness_clips)
    return make_judge(ws, lines, data.reference, data.reference_text, device, s.likeness_steps, s.seed)


def _exportable(run: Run, choice: dict[str, Any] | None, best: dict[str, Any] | None) -> dict[str, Any] | None:
    """The choice, with the file that holds its weights ("source"). The trainer keeps the best-so-far
    likeness pick in picked.safetensors; only if the scoring changed mid-run (Whisper added or
    removed) can the final pick be weights no longer kept: then they are rebuilt from their
    checkpoint when it is still there, else the loss pick is exported and the reason says why."""
    if choice is None:
        return None
    want = (choice["update"], choice["weights"])
    if choice["pick"] == "loss":
        return {**choice, "source": run.best.name}
    if picked_as(run.picked) == want:
        return {**choice, "source": run.picked.name}
    kept = run.checkpoints / f"model_{choice['update']}.pt"
    if kept.exists():
        import torch

        state = torch.load(kept, map_location="cpu", weights_only=True)
        save_picked(run.picked, export_tensors(state, choice["weights"]), choice["update"], choice["weights"])
        return {**choice, "source": run.picked.name}
    warn(f"the weights of update {choice['update']} ({choice['weights']}) are no longer kept; exporting the "
         "lowest-loss EMA weights instead")
    return {**(best or {}), "weights": "ema", "pick": "loss", "fallback": True, "source": run.best.name,
            "reason": f"{choice['reason']}; but those weights were not kept (the scoring changed mid-run), so the "
                      f"lowest validation loss (update {best and best['update']}, EMA) was exported"}


def _check_inputs(ws: Workspace, s: VoiceSettings, base: str | Path | None) -> tuple[VoiceData, Base, dict, dict, dict]:
    """Everything that can be wrong with the inputs, found before any training starts."""
    if not ws.pack.datasets.voice:
        raise PersonaError("[datasets] voice is not set: there is no voice dataset yet", file=ws.manifest_path,
                           fix="run `persona ingest` first")
    max_clip_s = min(F5_MAX_CLIP_S, s.batch_frames / FRAMES_PER_SECOND)
    data = read_voice_dataset(ws.path(ws.pack.datasets.voice), max_clip_seconds=max_clip_s)
    _check_amount(data, s)
    f5 = find_base(ws.pack.models, base)
    model_registry.locate("vocos", models=ws.pack.models)  # `persona speak` needs it: fail now, not after training
    weights = read_weights(f5.checkpoint)
    vocab = check_vocab(f5, weights)
    unknown = unknown_characters(data.clips, vocab)
    _report_data(data, unknown, max_clip_s)
    return data, f5, weights, vocab, unknown


def _set_up_run(ws: Workspace, data: VoiceData, f5: Base, s: VoiceSettings, restart: bool) -> tuple[Run, Any, Any, dict]:
    """The prepared splits, the plan, and the run folder keyed by everything that shapes the weights."""
    runs = ws.root / "runs" / "voice"
    train_dir, val_dir, split = prepare(data, f5.vocab, runs, s)
    with quiet():
        train_set, val_set = load_f5_split(train_dir, MEL), load_f5_split(val_dir, MEL)
    batches = len(sampler_for(train_set, s.batch_frames, s.max_samples, s.seed))
    plan = plan_training(s, batches, split["train_seconds"], split["train_clips"], split["val_clips"], default_device())
    stat = f5.checkpoint.stat()
    key = hash_json({"data": split["key"], "plan": plan.trajectory(), "seed": s.seed, "max_samples": s.max_samples,
                     "warmup": s.warmup, "grad_norm": s.max_grad_norm,
                     "base": [str(f5.checkpoint), stat.st_size, stat.st_mtime_ns]})
    run = Run(runs / key[:16], plan, key)
    if restart:
        shutil.rmtree(run.checkpoints, ignore_errors=True)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    return run, train_set, val_set, split


def _val_batches(val_set: Any, s: VoiceSettings) -> list[dict[str, Any]]:
    from f5_tts.model.dataset import collate_fn

    sampler = sampler_for(val_set, s.batch_frames, s.max_samples, None)
    with known_notices():
        return [collate_fn([val_set[i] for i in idx]) for idx in sampler]


# ---- export -------------------------------------------------------------------------------------
def export_voice(ws: Workspace, run: Run, base: Base, data: VoiceData, history: list[dict[str, Any]],
                 choice: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chosen weights (by likeness: EMA or raw; by loss: the best EMA weights), the vocab, the
    reference clip and its transcript, into voice/ and [voice] (what `persona speak` loads)."""
    from persona.media import read_audio, write_audio

    source = run.checkpoints / choice["source"] if choice and choice.get("source") else run.best
    if not source.exists():
        raise PersonaError("no best checkpoint to export", file=source, fix="run `persona train-voice --restart`")
    out = ws.root / "voice"
    model = out / "model.safetensors"
    key = hash_json({"best": hash_file(source), "vocab": hash_file(base.vocab), "arch": base.arch,
                     "ref": hash_file(data.reference), "ref_text": data.reference_text,
                     "choice": choice and {k: choice.get(k) for k in ("update", "weights", "pick", "reason")}})
    if not is_fresh(model, key):
        with atomic_path(model) as tmp:
            shutil.copyfile(source, tmp)
        shutil.copyfile(base.vocab, out / "vocab.txt")
        sidecar = out / "model_config.json"
        if base.arch != model_registry.f5_base_arch():
            write_json(sidecar, {"backbone": "DiT", "arch": base.arch})
        else:
            sidecar.unlink(missing_ok=True)
        write_audio(out / "ref.wav", read_audio(data.reference, SAMPLE_RATE), SAMPLE_RATE)
        write_text(out / "ref.txt", data.reference_text + "\n")
        best = min((h for h in history if h["update"] > 0), key=lambda h: h["val_loss"])
        write_json(out / "training.json", {"base": base.name, "best": best, "choice": choice, "history": history,
                                           "plan": asdict(run.plan), "run_dir": ws.relative(run.folder)})
        mark_fresh(model, key, best_update=best["update"])
    values = {"checkpoint": ws.relative(model), "vocab": ws.relative(out / "vocab.txt"),
              "reference_audio": ws.relative(out / "ref.wav"), "reference_text": data.reference_text, "base": base.name}
    ws.update("voice", values, replace=True)
    info(f"exported the voice to {out} and [voice] in {ws.manifest_path.name}")
    return values
