"""Figures for `persona train-voice`.

    python benchmarks/train_voice.py            # the whole verb on the tiny DiT (CPU is fine)
    python benchmarks/train_voice.py --full     # + one update of the real F5TTS_v1_Base architecture
                                                #   (random weights) per recipe: seconds and peak memory

--full needs ~8 GB of RAM on a CPU (it runs a small batch there); on a GPU it uses each recipe's
batch, so the peak memory printed is what that recipe needs on this card.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_run(updates: int) -> None:
    from persona import tiny
    from persona.samples import synthetic_voice_dataset
    from persona.inference.speech import speak
    from persona.train.voice import VoiceSettings, train_voice
    from persona.workspace import Consent, Workspace

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {k: str(tiny.build(k, root / "models")) for k in ("f5-tts", "vocos")}
        ws = Workspace.create(root / "ws", "Bench Mark", consent=Consent(person="B", granted_by="B",
                                                                        date="2025-05-01", scope="benchmark"))
        ws.update("models", models)
        synthetic_voice_dataset(root / "ws" / "datasets" / "voice", clips=24)
        ws.update("datasets", {"voice": "datasets/voice"})
        settings = VoiceSettings(updates=updates, val_every=max(1, updates // 4), batch_frames=1500, val_clips=2,
                                 min_minutes=0.5, learning_rate=1e-3)
        t0 = time.perf_counter()
        summary = train_voice(ws, settings)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        train_voice(ws, settings)
        again = time.perf_counter() - t0
        t0 = time.perf_counter()
        said = speak(ws, "A sentence of about average length for a narration.", root / "s.wav", steps=32)
        print(f"tiny DiT, {summary['plan']['train_clips']} clips, {updates} updates of {settings.batch_frames} frames: "
              f"{first:.1f} s for the whole verb ({first / updates:.2f} s per update incl. data, validation, "
              f"checkpoints, export); re-run with nothing to do {again:.1f} s; "
              f"speak 32 steps {time.perf_counter() - t0:.1f} s for {said['seconds']:.1f} s of audio")
        print(f"validation loss: base {summary['baseline_val_loss']:.4f} -> best {summary['best']['val_loss']:.4f} "
              f"at update {summary['best']['update']}")


def full_step(recipe: str | None, frames: int | None, steps: int) -> None:
    """Updates of the real architecture with a recipe's optimizer, precision and activation recomputation."""
    import torch
    from ema_pytorch import EMA
    from f5_tts.model import CFM, DiT

    from persona.config import resolve_settings
    from persona.train.voice import VoiceSettings
    from persona.models import f5_base_arch
    from persona.models import f5_pretrained_vocab
    from persona.train.voice_trainer import MEL
    from persona.train.voice_data import read_vocab

    s = resolve_settings(VoiceSettings, "voice", recipe)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    frames = frames or s.batch_frames
    vocab = read_vocab(f5_pretrained_vocab())
    arch = {**f5_base_arch(), "checkpoint_activations": s.checkpoint_activations}
    model = CFM(transformer=DiT(**arch, text_num_embeds=len(vocab), mel_dim=100), mel_spec_kwargs=MEL,
                vocab_char_map=vocab).to(device)
    ema = EMA(model, include_online_model=False, update_every=1).to(device)
    if s.optimizer == "adamw8bit" and cuda:
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(model.parameters(), lr=1e-5)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    clip = 750  # 8 s clips, a typical ingest length
    lens = [clip] * (frames // clip) + ([frames % clip] if frames % clip else [])
    mel = torch.randn(len(lens), max(lens), 100, device=device)
    text = ["a sentence of about one hundred characters, which is what eight seconds of speech hold, roughly."] * len(lens)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and s.precision == "bf16" else torch.autocast("cpu", enabled=False)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with autocast:
            loss, _, _ = model(mel, text=text, lens=torch.tensor(lens, device=device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    peak = (torch.cuda.max_memory_allocated() / 2**30) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"F5TTS_v1_Base ({params:.0f} M params) recipe {recipe or 'defaults'} on {device}: {frames} frames per update, "
          f"{min(times):.2f} s per update (best of {steps}), peak {'VRAM' if cuda else 'RSS'} {peak:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--frames", type=int, help="frames per update for --full (default: the recipe's; 400 on a CPU)")
    args = parser.parse_args()
    tiny_run(args.updates)
    if args.full:
        import torch

        if torch.cuda.is_available():
            for recipe in ("f5-12gb", "f5-24gb", "f5-80gb"):
                full_step(recipe, args.frames, steps=3)
                torch.cuda.empty_cache()
        else:
            full_step(None, args.frames or 400, steps=2)


if __name__ == "__main__":
    main()
