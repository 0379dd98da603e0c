"""What train-voice's likeness scoring costs as a share of the training run (issue 16: <= 5 %).

    python benchmarks/voice_likeness_cost.py
    python benchmarks/voice_likeness_cost.py --lines 3 --steps 16     # other scoring settings

How the share is estimated (no GPU here, so the GPU side is counted in DiT work, not seconds):
  * Training and synthesis run the same DiT. A training update over B mel frames costs about three
    forward passes over B frames (forward + backward); a synthesis step of a take of L frames costs
    one forward over 2L frames (classifier-free guidance doubles the batch). Attention is quadratic
    in length, which makes a 14 s take a little dearer per frame than training's few-second clips:
    the estimate ignores that (a few per cent of the DiT's work at these lengths).
  * Per validation the scoring synthesises `lines` held-out lines with both weight sets at `steps`
    steps; a take is the reference prompt (~8 s, ingest cuts 5-11 s) plus the line (~6 s).
  * Between validations the trainer runs `val_every` updates: a twentieth of the run, which is
    `epochs` (50) passes over the data at the recipe's frames per batch (min 300 updates).
  * Speaker similarity (Resemblyzer, on the CPU while the GPU idles) is measured here per second
    of speech; Whisper is assumed at 0.05 s per second of speech on a GPU (faster-whisper
    large-v3 fp16; the ASR is optional) and counted in GPU-seconds at the recipe's update time
    from `benchmarks/train_voice.py --full` figures where known (0.35 s for f5-24gb, assumed).
Both weight sets' validation loss was already computed before scoring existed (EMA) and is cheap
next to synthesis (one forward per clip); the raw weights' loss adds one more and is counted.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FRAMES_PER_SECOND = 93.75
PROMPT_S, LINE_S = 8.0, 6.0
RECIPES = {"f5-12gb": 3200, "f5-24gb": 6400, "f5-80gb": 25600}  # frames per batch (recipes/voice/*.toml)
SECONDS_PER_UPDATE = {"f5-12gb": 0.3, "f5-24gb": 0.35, "f5-80gb": 1.0}  # assumed GPU figures (see above)
WHISPER_S_PER_S = 0.05
VAL_CLIPS, VAL_REPEATS = 8, 4


def resemblyzer_seconds_per_second(repeats: int = 3) -> float:
    """Measured: speaker similarity of a real recording against a reference, per second of speech."""
    import numpy as np

    from persona.likeness import speaker_similarity
    from persona.media import read_audio
    from persona.samples import speech_wav
    from persona.speakers import default_encoder

    encoder = default_encoder()
    wav = read_audio(speech_wav(), 16000)
    reference = np.ones(256, np.float32)
    speaker_similarity(wav, 16000, reference, encoder)  # load the weights once
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        speaker_similarity(wav, 16000, reference, encoder)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / (len(wav) / 16000)


def share(recipe: str, hours: float, lines: int, steps: int, embed_s_per_s: float) -> dict[str, float]:
    from persona.train.voice import VoiceSettings, scoring_interval

    batch = RECIPES[recipe]
    batches_per_epoch = max(1, int(hours * 3600 * FRAMES_PER_SECOND / batch))
    updates = min(max(50 * batches_per_epoch, 300), 30000)
    val_every = max(1, updates // 20)
    train_work = val_every * 3 * batch  # frame-forwards between validations
    take_frames = (PROMPT_S + LINE_S) * FRAMES_PER_SECOND
    synth_work = lines * 2 * steps * 2 * take_frames
    raw_loss_work = VAL_CLIPS * VAL_REPEATS * LINE_S * FRAMES_PER_SECOND  # forward only
    gpu_share = (synth_work + raw_loss_work) / train_work
    speech_s = lines * 2 * LINE_S
    side_s = speech_s * (embed_s_per_s + WHISPER_S_PER_S)  # per validation, in seconds
    side_share = side_s / (val_every * SECONDS_PER_UPDATE[recipe])
    # The trainer scores every `every`-th validation (and the last): 20 validations, so 20 / every + 1.
    every = scoring_interval(VoiceSettings(batch_frames=batch, likeness_clips=lines, likeness_steps=steps), val_every)
    scored = (math.ceil(20 / every) + (20 % every != 0)) / 20
    return {"updates": updates, "val_every": val_every, "every": every, "dit_share": gpu_share * scored,
            "side_share": side_share * scored, "total": (gpu_share + side_share) * scored}


def main() -> None:
    from persona.train.voice import VoiceSettings

    defaults = VoiceSettings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=defaults.likeness_clips)
    ap.add_argument("--steps", type=int, default=defaults.likeness_steps)
    args = ap.parse_args()
    embed = resemblyzer_seconds_per_second()
    print(f"measured: Resemblyzer speaker similarity {embed * 1000:.1f} ms per second of speech (this CPU)")
    print(f"scoring: {args.lines} line(s) x 2 weight sets x {args.steps} steps per validation "
          f"(takes of {PROMPT_S + LINE_S:g} s, guidance doubling the batch)")
    print(f"{'recipe':<9} {'data':>6} {'updates':>8} {'val every':>10} {'scored':>7} {'DiT share':>10} {'ASR+embed':>10} {'total':>7}")
    for recipe in RECIPES:
        for hours in (0.5, 1, 3, 10):
            r = share(recipe, hours, args.lines, args.steps, embed)
            print(f"{recipe:<9} {hours:>5g}h {r['updates']:>8} {r['val_every']:>10} {'1/' + str(r['every']):>7} {r['dit_share']:>9.1%} "
                  f"{r['side_share']:>9.1%} {r['total']:>6.1%}")


if __name__ == "__main__":
    main()
