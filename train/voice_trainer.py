"""F5-TTS pieces for fine-tuning: the pretrained base, safe weight loading, and the training loop.

The loop is our own over F5's pieces (CFM/DiT, CustomDataset, DynamicBatchSampler, collate_fn,
ema_pytorch's EMA, AdamW with F5's warmup + linear decay) rather than `f5_tts.model.Trainer`, because
the Trainer counts in whole epochs with a fixed warmup, has no validation pass to pick the best
checkpoint, reports through tqdm/wandb, and writes checkpoints in place (a kill mid-write leaves a
broken file). Checkpoints keep F5's layout (`model_N.pt`: model_state_dict, optimizer_state_dict,
ema_model_state_dict, scheduler_state_dict, update), so F5's own tools read them.

Every update reseeds the noise from (seed, update) and batches come in a fixed order per epoch, so
a run that is stopped and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona import models as model_registry
from persona.errors import PersonaError
from persona.files import atomic_path, write_json
from persona.progress import info, meter, warn
from persona.train.voice_data import read_vocab

if TYPE_CHECKING:
    from persona.train.voice import Plan, VoiceSettings
    from persona.train.voice_likeness import Judge

SAMPLE_RATE, HOP = 24000, 256
MEL = dict(n_fft=1024, hop_length=HOP, win_length=1024, n_mel_channels=100, target_sample_rate=SAMPLE_RATE,
           mel_spec_type="vocos")
BASE_FILE = model_registry.F5_BASE_FILE
EMBEDDING_KEY = "transformer.text_embed.text_embed.weight"


# ---- the base model -------------------------------------------------------------------------------
@dataclass
class Base:
    checkpoint: Path
    vocab: Path
    arch: dict[str, Any]
    name: str  # recorded as [voice].base


def find_base(models: dict[str, str], explicit: str | Path | None = None) -> Base:
    """The pretrained checkpoint (an F5-TTS snapshot folder or a checkpoint file), its vocab and architecture."""
    checkpoint, vocab, name = model_registry.f5_base_files(models, explicit)
    return Base(checkpoint, vocab, model_registry.f5_arch(checkpoint), name)


def read_weights(path: Path) -> dict[str, Any]:
    """A checkpoint's (EMA) weights without the `ema_model.` prefix. Only safetensors or
    torch.load(weights_only=True): a checkpoint file cannot run code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = model_registry.load_weights(path)
        if not isinstance(state, dict):
            raise PersonaError("is not a checkpoint (no state dict)", file=path, fix="use an F5-TTS checkpoint")
        state = state.get("ema_model_state_dict") or state.get("model_state_dict") or state
    return {k.removeprefix("ema_model."): v for k, v in state.items()
            if k not in ("initted", "step", "update") and not k.startswith(("mel_spec.", "ema_model.mel_spec."))}


def check_vocab(base: Base, weights: dict[str, Any]) -> dict[str, int]:
    """The vocab, if its size is the one the checkpoint's text embedding was trained with (row 0 of
    the embedding is F5's filler token); a mismatch would break loading or scramble the text."""
    vocab = read_vocab(base.vocab)
    if EMBEDDING_KEY in weights and weights[EMBEDDING_KEY].shape[0] - 1 != len(vocab):
        raise PersonaError(f"the vocab {base.vocab} has {len(vocab)} tokens but the checkpoint was trained with "
                           f"{weights[EMBEDDING_KEY].shape[0] - 1}", file=base.checkpoint,
                           fix="use the vocab.txt that came with the checkpoint (F5TTS_v1_Base's has 2545)")
    return vocab


def build_model(base: Base, vocab: dict[str, int], weights: dict[str, Any], checkpoint_activations: bool = False):
    """F5's CFM + DiT with the base weights loaded (strictly: a mismatch is an error, not a silent partial load)."""
    from f5_tts.model import CFM, DiT

    arch = {**base.arch, "checkpoint_activations": checkpoint_activations}
    model = CFM(transformer=DiT(**arch, text_num_embeds=len(vocab), mel_dim=MEL["n_mel_channels"]),
                mel_spec_kwargs=MEL, vocab_char_map=vocab)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise PersonaError(f"does not fit the DiT architecture {base.arch} ({str(e).splitlines()[0][:200]})",
                           file=base.checkpoint, fix="use an F5TTS_v1_Base checkpoint, or put its model_config.json beside it") from None
    return model


# ---- the run ------------------------------------------------------------------------------------
class _BatchStream:
    """Index batches from global batch `start` on, epoch after epoch, each epoch in the sampler's
    seeded order, so a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, sampler: Any, start: int):
        self.sampler, self.start = sampler, start

    def __iter__(self):
        n = len(self.sampler)
        epoch, offset = divmod(self.start, n)
        while True:
            self.sampler.set_epoch(epoch)
            yield from list(self.sampler)[offset:]
            epoch, offset = epoch + 1, 0


def _seed(seed: int, step: int) -> None:
    import torch

    value = (seed * 1_000_003 + step) % 2**63
    torch.manual_seed(value)
    random.seed(value)  # CFM draws its condition-dropout with the random module


@contextlib.contextmanager
def quiet():
    """F5 and datasets print progress to stdout/stderr (tqdm); persona shows its own."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def known_notices():
    """Silence two upstream notices that need no action: torchaudio.load (F5's CustomDataset reads
    audio with it) changing in 2.9 (persona pins 2.8), and SequentialLR passing an epoch to the
    schedulers it chains. Data-loader workers inherit the filters."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="In 2.9, this function's implementation", category=UserWarning)
        warnings.filterwarnings("ignore", message="The epoch parameter in `scheduler.step", category=UserWarning)
        yield


def sampler_for(dataset: Any, batch_frames: int, max_samples: int, seed: int | None):
    from f5_tts.model.dataset import DynamicBatchSampler
    from torch.utils.data import SequentialSampler

    with quiet():
        return DynamicBatchSampler(SequentialSampler(dataset), batch_frames, max_samples=max_samples,
                                   random_seed=seed, drop_residual=False)


def validation_loss(model: Any, batches: list[dict[str, Any]], seed: int, repeats: int, device: str, autocast: Any) -> float:
    """Mean flow-matching loss on the held-out clips with classifier-free dropout off and the same
    noise, times and masks at every call, so checkpoints are compared on equal terms."""
    import torch

    was_training, drops = model.training, (model.audio_drop_prob, model.cond_drop_prob)
    model.eval()
    model.audio_drop_prob = model.cond_drop_prob = 0.0
    losses = []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.startswith("cuda") else []):
            for r in range(repeats):
                for i, batch in enumerate(batches):
                    _seed(seed + 7919 * (r + 1), i)
                    with autocast():
                        loss, _, _ = model(batch["mel"].permute(0, 2, 1).to(device), text=batch["text"],
                                           lens=batch["mel_lengths"].to(device))
                    losses.append(float(loss))
    finally:
        model.audio_drop_prob, model.cond_drop_prob = drops
        model.train(was_training)
    return sum(losses) / len(losses)


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in folder.glob("model_*.pt") if (m := re.fullmatch(r"model_(\d+)\.pt", p.name))]
    return sorted(found)


def _save_best(path: Path, ema_state: dict[str, Any], update: int, val_loss: float) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous().cpu() for k, v in ema_state.items()
             if k.startswith("ema_model.") and not k.startswith("ema_model.mel_spec.")}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"update": str(update), "val_loss": repr(val_loss)})


def _best_update(path: Path) -> int | None:
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return int((f.metadata() or {}).get("update", -1))


def export_tensors(state: dict[str, Any], weights: str) -> dict[str, Any]:
    """A checkpoint's EMA or raw weights under the EMA key names (`ema_model.*`), so every reader of
    the export (F5's load_checkpoint(use_ema=True), `persona speak`) loads either unchanged."""
    if weights == "ema":
        items = ((k, v) for k, v in state["ema_model_state_dict"].items() if k.startswith("ema_model."))
    else:
        items = ((f"ema_model.{k}", v) for k, v in state["model_state_dict"].items())
    return {k: v.detach().float().contiguous().cpu() for k, v in items if not k.startswith("ema_model.mel_spec.")}


def save_picked(path: Path, tensors: dict[str, Any], update: int, weights: str) -> None:
    from safetensors.torch import save_file

    # One metadata key: safetensors writes its metadata map in no fixed order, and the same weights
    # should make the same bytes (the export's freshness key hashes them).
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"picked": json.dumps({"update": update, "weights": weights})})


def picked_as(path: Path) -> tuple[int, str] | None:
    """(update, weights) that picked.safetensors holds, or None."""
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("picked", "{}"))
    return int(meta.get("update", -1)), str(meta.get("weights", ""))


@dataclass
class Run:
    folder: Path
    plan: Plan
    key: str

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.safetensors"

    @property
    def picked(self) -> Path:
        """The weights the likeness pick chose so far (EMA or raw), kept like `best` for the export."""
        return self.checkpoints / "picked.safetensors"


class Trainer:
    """Model, EMA, optimizer and schedule for one run; checkpoints, resume and validation."""

    def __init__(self, run: Run, base: Base, vocab: dict[str, int], weights: dict[str, Any], settings: VoiceSettings,
                 judge: Judge | None = None):
        import torch
        from ema_pytorch import EMA
        from torch.optim.lr_scheduler import LinearLR, SequentialLR

        self.run, self.settings, self.plan, self.judge = run, settings, run.plan, judge
        self.device = run.plan.device
        self.model = build_model(base, vocab, weights, settings.checkpoint_activations).to(self.device)
        # A fresh EMA (step 0), not the pretrained one's 1.25M steps that would pin its decay at
        # 0.9999 so the export barely moves off the base. It copies the weights through warmup, then
        # averages every update over a window growing as updates^(2/3) (~160 at 2000): F5's
        # update_every=10 and 100-step delay suit pretraining, not a run of a few thousand updates.
        self.ema = EMA(self.model, include_online_model=False, update_every=1,
                       update_after_step=self.plan.warmup_updates).to(self.device)
        if self.plan.optimizer == "adamw8bit":
            import bitsandbytes as bnb

            self.optimizer = bnb.optim.AdamW8bit(self.model.parameters(), lr=self.plan.learning_rate)
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.plan.learning_rate,
                                               fused=self.device.startswith("cuda"))
        warm, total = self.plan.warmup_updates, self.plan.total_updates
        self.scheduler = SequentialLR(self.optimizer, milestones=[warm], schedulers=[
            LinearLR(self.optimizer, start_factor=1e-8, end_factor=1.0, total_iters=warm),
            LinearLR(self.optimizer, start_factor=1.0, end_factor=1e-8, total_iters=total - warm)])
        self.update = 0
        self.history: list[dict[str, Any]] = []

    def autocast(self):
        import torch

        bf16 = self.plan.precision == "bf16" and self.device.startswith("cuda")
        return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    # -- checkpoints --
    def resume(self) -> int:
        """Load the newest readable checkpoint; returns the update it was saved at (0 when none)."""
        import torch

        for update, path in reversed(_checkpoints(self.run.checkpoints)):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # a file cut short by a crash outside atomic writes, or not ours
                warn(f"{path.name} cannot be read ({e.__class__.__name__}); trying an older checkpoint")
                continue
            if state.get("run_key") != self.run.key:
                info("starting over: the data, base model or settings changed since the last run")
                for _, stale in _checkpoints(self.run.checkpoints):
                    stale.unlink()
                self.run.best.unlink(missing_ok=True)
                return 0
            self.model.load_state_dict(state["model_state_dict"])
            self.ema.load_state_dict(state["ema_model_state_dict"])
            self.optimizer.load_state_dict(state["optimizer_state_dict"])
            self.scheduler.load_state_dict(state["scheduler_state_dict"])
            self.update, self.history = int(state["update"]), list(state.get("history", []))
            self._repair_best(state)
            return self.update
        return 0

    def _repair_best(self, state: dict[str, Any]) -> None:
        """A crash between writing model_N.pt and best.safetensors leaves the best behind; redo it."""
        best = self.best_entry()
        if best and best["update"] == self.update and _best_update(self.run.best) != best["update"]:
            _save_best(self.run.best, state["ema_model_state_dict"], best["update"], best["val_loss"])
        choice = self.choice("likeness")
        if choice and choice.get("pick") == "likeness" and choice["update"] == self.update \
                and picked_as(self.run.picked) != (self.update, choice["weights"]):
            save_picked(self.run.picked, export_tensors(state, choice["weights"]), self.update, choice["weights"])

    def save(self) -> Path:
        import torch

        path = self.run.checkpoints / f"model_{self.update}.pt"
        checkpoint = dict(model_state_dict=self.model.state_dict(), optimizer_state_dict=self.optimizer.state_dict(),
                          ema_model_state_dict=self.ema.state_dict(), scheduler_state_dict=self.scheduler.state_dict(),
                          update=self.update, history=self.history, run_key=self.run.key)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
        for _, old in _checkpoints(self.run.checkpoints)[: -self.settings.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def best_entry(self) -> dict[str, Any] | None:
        trained = [h for h in self.history if h["update"] > 0 and h.get("val_loss") is not None]
        return min(trained, key=lambda h: h["val_loss"]) if trained else None

    def choice(self, pick: str) -> dict[str, Any] | None:
        """The (update, weights) `pick` ("likeness" or "loss") chooses from the history so far."""
        from persona.train.voice_likeness import candidates, pick_voice

        return pick_voice(candidates(self.history), pick, self.settings.wer_weight)

    # -- validation --
    def validate(self, val_batches: list[dict[str, Any]], train_loss: float | None) -> dict[str, Any]:
        loss = validation_loss(self.ema.ema_model, val_batches, self.settings.seed, self.settings.val_repeats,
                               self.device, self.autocast)
        entry = {"update": self.update, "val_loss": round(loss, 6),
                 "train_loss": None if train_loss is None else round(train_loss, 6),
                 "lr": float(f"{self.scheduler.get_last_lr()[0]:.4g}")}
        scored = self.update == 0 or self.update == self.plan.total_updates or \
            (self.update // self.plan.val_every) % self.plan.likeness_every == 0
        if self.judge is not None and scored:
            # Both weight sets are heard (at update 0 they are the base's, heard once); the raw ones
            # get their own loss for the tie-break.
            models = {"ema": self.ema.ema_model}
            if self.update > 0:
                models["raw"] = self.model
                entry["raw_val_loss"] = round(validation_loss(self.model, val_batches, self.settings.seed,
                                                              self.settings.val_repeats, self.device, self.autocast), 6)
            started = time.perf_counter()
            entry["likeness"] = self.judge.score(models, self.autocast)
            entry["likeness_seconds"] = round(time.perf_counter() - started, 3)  # what scoring costs (not a score)
        self.history.append(entry)
        return entry

    def checkpoint(self, validated: bool) -> None:
        """model_N.pt first, then best.safetensors if this is the best so far, then run.json."""
        self.save()
        best = self.best_entry()
        if validated and best is not None and best["update"] == self.update:
            _save_best(self.run.best, self.ema.state_dict(), self.update, best["val_loss"])
        choice = self.choice("likeness") if validated and self.judge is not None else None
        if choice and choice.get("pick") == "likeness" and choice["update"] == self.update:
            state = {"ema_model_state_dict": self.ema.state_dict(), "model_state_dict": self.model.state_dict()}
            save_picked(self.run.picked, export_tensors(state, choice["weights"]), self.update, choice["weights"])
        write_json(self.run.folder / "run.json", {"key": self.run.key, "plan": asdict(self.plan),
                                                  "history": self.history, "best": best})

    # -- training --
    def train(self, train_set: Any, val_batches: list[dict[str, Any]], end: int) -> None:
        import torch
        from f5_tts.model.dataset import collate_fn
        from torch.utils.data import DataLoader

        s, plan = self.settings, self.plan
        if not self.history:
            self.validate(val_batches, None)  # the base model's loss: what fine-tuning has to beat
        sampler = sampler_for(train_set, s.batch_frames, s.max_samples, s.seed)
        loader = DataLoader(train_set, batch_sampler=_BatchStream(sampler, self.update * s.grad_accum),
                            collate_fn=collate_fn, num_workers=s.num_workers, pin_memory=self.device.startswith("cuda"))
        losses: list[float] = []
        self.model.train()
        with known_notices(), meter("train-voice", total=plan.total_updates, completed=self.update) as bar:
            batches = iter(loader)
            while self.update < end:
                for micro in range(s.grad_accum):
                    batch = next(batches)
                    _seed(s.seed, self.update * s.grad_accum + micro)
                    with self.autocast():
                        loss, _, _ = self.model(batch["mel"].permute(0, 2, 1).to(self.device), text=batch["text"],
                                                lens=batch["mel_lengths"].to(self.device))
                    (loss / s.grad_accum).backward()
                    last = loss.item()
                    losses.append(last)
                if s.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.ema.update()
                self.update += 1
                due = self.update % plan.val_every == 0 or self.update == plan.total_updates
                if due:
                    self.validate(val_batches, sum(losses) / len(losses))
                    losses = []
                if due or self.update == end:
                    self.checkpoint(validated=due)
                best = self.best_entry()
                bar.advance(1, loss=last, **({"best_val": best["val_loss"]} if best else {}))
        del batches
