"""Listening to train-voice's checkpoints: which one sounds most like the person, and says the words.

F5-TTS users report that validation loss does not follow what they hear, and that the raw weights
sometimes beat the EMA ones. So at every validation a `Judge` makes both weight sets say a few
held-out clips' texts (in the clip's own length, prompted by the dataset's reference clip, with
fixed noise, so every checkpoint is heard on equal terms), then scores:

- speaker similarity of each take to the reference voice ingest stored (`persona.likeness`);
- word error rate of what an ASR model hears against the text, when the user has Whisper
  (`[models] whisper`, faster-whisper).

`pick_voice` is a pure function of those recorded scores; the scores are stored in the run's
history as computed (and that history is in every checkpoint), so a resumed run picks exactly as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TYPE_CHECKING

import numpy as np

from persona.files import atomic_path, write_json

if TYPE_CHECKING:
    from persona.workspace import Workspace

SAMPLE_RATE, HOP = 24000, 256  # F5-TTS's mel: 24 kHz, 93.75 frames per second
TARGET_RMS = 0.1  # F5's inference raises a quieter prompt to this level (and the output back down)
CFG_STRENGTH, SWAY = 2.0, -1.0  # F5's inference defaults
# Similarities closer than this are a tie (then WER, then loss decide): cosine scores of a few
# seconds of speech move by about this much with the noise draw alone.
TIE = 1e-3
WEIGHTS = ("ema", "raw")


@dataclass(frozen=True)
class Line:
    """A held-out clip to say: its transcript and length."""

    text: str
    seconds: float


def held_out_lines(clips: Iterable[Any], count: int) -> list[Line]:
    """Up to `count` held-out clips (objects with .text and .seconds) with words, in a fixed order."""
    lines = [Line(c.text.strip(), round(float(c.seconds), 3)) for c in clips if _words(c.text)]
    return sorted(lines, key=lambda line: (line.text, line.seconds))[:count]


# ---- word error rate ----------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    """Lower-case words without punctuation (apostrophes kept): how WER compares text."""
    return re.findall(r"[\w']+", text.lower())


def word_errors(reference: list[str], heard: list[str]) -> int:
    """Substitutions + deletions + insertions turning `reference` into `heard` (word-level
    Levenshtein). Written here because jiwer is not among persona's dependencies and this is the
    whole of what WER needs: one dynamic-programming row over a few dozen words."""
    row = list(range(len(heard) + 1))
    for i, r in enumerate(reference, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(heard, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def word_error_rate(references: list[str], heard: list[str]) -> float:
    """Corpus WER: all word errors over all reference words (as jiwer computes it for lists)."""
    ref = [_words(t) for t in references]
    total = sum(len(r) for r in ref)
    return sum(word_errors(r, _words(h)) for r, h in zip(ref, heard)) / max(total, 1)


# ---- the judge ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    logger = logging.getLogger("faster_whisper")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


# Whisper large-v3 takes ~3 GB of GPU memory: on a card this size or larger it stays loaded between
# validations (reloading it each time would cost more than the scoring itself); on a smaller one it
# is loaded per validation and freed, so training keeps the memory.
KEEP_ASR_GIB = 40


class Judge:
    """Says the held-out lines with a model and scores the takes. The vocoder stays loaded (tens of
    MB); the ASR model stays loaded on a CPU or a large GPU, else it is loaded per validation."""

    def __init__(self, lines: list[Line], prompt_wav: np.ndarray, prompt_text: str, voice: np.ndarray,
                 encoder: Any, vocoder: Any, asr: Path | None, device: str, steps: int, seed: int):
        self.lines, self.voice, self.encoder, self.vocoder = lines, voice, encoder, vocoder
        self.asr, self.device, self.steps, self.seed = asr, device, steps, seed
        self._asr_model: Any = None
        wav = np.asarray(prompt_wav, np.float32).reshape(-1)
        rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) if len(wav) else 0.0
        self.gain = TARGET_RMS / rms if 0 < rms < TARGET_RMS else 1.0
        self.prompt = wav * self.gain
        # F5 aligns the new text after the prompt's transcript, which must end in punctuation and a
        # space, as its own preprocessing (and `persona speak`) makes it.
        text = prompt_text.strip()
        self.prompt_text = (text if re.search(r"[.!?。！？]$", text) else text + ".") + " "

    def config(self) -> dict[str, Any]:
        """What the scores depend on besides the weights (recorded beside them)."""
        return {"lines": [asdict(line) for line in self.lines], "steps": self.steps, "seed": self.seed,
                "encoder": self.encoder.name, "asr": str(self.asr) if self.asr else None}

    def say(self, model: Any, line: Line, index: int, autocast: Callable[[], Any]) -> np.ndarray:
        """`line` in `model`'s voice (24 kHz mono), as long as the real clip, with fixed noise."""
        import torch
        from f5_tts.model.utils import convert_char_to_pinyin

        was_training = model.training
        cond = torch.from_numpy(self.prompt)[None].to(self.device)
        prompt_frames = len(self.prompt) // HOP
        frames = prompt_frames + max(1, round(line.seconds * SAMPLE_RATE / HOP))
        devices = [self.device] if self.device.startswith("cuda") else []
        try:
            # CFM.sample seeds the global generator: fork it so training's random stream is untouched
            with torch.random.fork_rng(devices=devices), torch.inference_mode(), autocast():
                mel, _ = model.sample(cond=cond, text=convert_char_to_pinyin([self.prompt_text + line.text]),
                                      duration=frames, steps=self.steps, cfg_strength=CFG_STRENGTH,
                                      sway_sampling_coef=SWAY, seed=self.seed + index)
                mel = mel.float()[:, prompt_frames:, :].permute(0, 2, 1)
                wav = self.vocoder.decode(mel).float().squeeze().cpu().numpy()
        finally:
            model.train(was_training)  # sample() switches the model to eval
            # sampling leaves a thread-local text cache on the DiT, which F5 keeps off training models
            # so they stay deep-copyable (EMA); the raw model goes on training
            model.transformer.__dict__.pop("_cache_local", None)
        return np.asarray(wav, np.float32).reshape(-1) / self.gain

    def score(self, models: dict[str, Any], autocast: Callable[[], Any]) -> dict[str, dict[str, Any]]:
        """{weights name: {speaker_similarity, wer, clips [{similarity, heard?}]}} for each model."""
        from persona.likeness import speaker_similarity

        takes = {name: [self.say(m, line, i, autocast) for i, line in enumerate(self.lines)]
                 for name, m in models.items()}
        heard = self._transcribe(takes) if self.asr else {}
        out = {}
        for name, wavs in takes.items():
            sims = [round(speaker_similarity(w, SAMPLE_RATE, self.voice, self.encoder), 4) if len(w) else -1.0
                    for w in wavs]
            clips: list[dict[str, Any]] = [{"similarity": s} for s in sims]
            wer = None
            if name in heard:
                for c, text in zip(clips, heard[name]):
                    c["heard"] = text
                wer = round(word_error_rate([line.text for line in self.lines], heard[name]), 4)
            out[name] = {"speaker_similarity": round(float(np.mean(sims)), 4), "wer": wer, "clips": clips}
        return out

    def _transcribe(self, takes: dict[str, list[np.ndarray]]) -> dict[str, list[str]]:
        """What Whisper hears in each take. faster-whisper directly (the ingest's transcriber lives
        in persona.data, which a trainer may not import), greedy and bounded like ingest's."""
        from faster_whisper import WhisperModel
        from scipy.signal import resample_poly

        from persona.device import gpu_memory

        device = "cuda" if self.device.startswith("cuda") else "cpu"
        model = self._asr_model
        if model is None:
            with _quiet():
                model = WhisperModel(str(self.asr), device=device, compute_type="default", cpu_threads=0, num_workers=1)
        have, _ = gpu_memory()
        keep = device == "cpu" or (have or 0) >= KEEP_ASR_GIB
        try:
            out: dict[str, list[str]] = {}
            for name, wavs in takes.items():
                texts = []
                for wav in wavs:
                    audio = resample_poly(wav, 2, 3).astype(np.float32)  # 24 kHz -> Whisper's 16 kHz
                    limit = int(8 + 10 * len(audio) / 16000)  # a confused model would repeat itself
                    with _quiet():
                        segments, _ = model.transcribe(audio, language="en", beam_size=1, vad_filter=False,
                                                       without_timestamps=True, condition_on_previous_text=False,
                                                       max_new_tokens=limit, temperature=0.0)
                        texts.append(" ".join(s.text.strip() for s in segments).strip())
                out[name] = texts
            return out
        finally:
            self._asr_model = model if keep else None
            del model


def make_judge(ws: Workspace, lines: list[Line], prompt: Path, prompt_text: str, device: str, steps: int,
               seed: int) -> tuple[Judge | None, str]:
    """A Judge for this workspace, or None and why not (no reference voice, no lines). The second
    value says what is scored, for the log."""
    from persona.likeness import pack_reference_voice
    from persona.media import read_audio
    from persona.models import find, locate
    from persona.vocoder import load_vocos

    voice, encoder, why = pack_reference_voice(ws)
    if voice is None:
        return None, why or "no reference voice"
    if not lines:
        return None, "no held-out clip with a transcript to say"
    found = find("whisper", models=ws.pack.models)
    asr = found.path if found is not None and not found.problems else None
    vocoder = load_vocos(locate("vocos", models=ws.pack.models), device)
    judge = Judge(lines, read_audio(prompt, SAMPLE_RATE), prompt_text, voice, encoder, vocoder, asr, device, steps, seed)
    what = (f"{len(lines)} held-out line(s) said with the EMA and the raw weights at every validation, scored by "
            f"speaker similarity ({encoder.name})" + (" and word error rate (Whisper)" if asr else
                                                      "; no Whisper model, so no word error rate"))
    return judge, what


# ---- picking ------------------------------------------------------------------------------------
def candidates(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (update, weights) pair the history scored, base model (update 0) left out."""
    out = []
    for h in history:
        if not isinstance(h.get("update"), int) or h["update"] <= 0:
            continue
        scores = h.get("likeness") or {}
        for weights in WEIGHTS:
            s = scores.get(weights)
            loss = h.get("val_loss") if weights == "ema" else h.get("raw_val_loss")
            if weights == "raw" and s is None:
                continue  # unscored raw weights: only the EMA ones are a candidate, as before scoring
            out.append({"update": h["update"], "weights": weights, "val_loss": loss,
                        "speaker_similarity": (s or {}).get("speaker_similarity"), "wer": (s or {}).get("wer")})
    return out


def _lowest_loss(cands: list[dict[str, Any]]) -> dict[str, Any] | None:
    ema = [c for c in cands if c["weights"] == "ema" and c["val_loss"] is not None]
    return min(ema, key=lambda c: (c["val_loss"], c["update"])) if ema else None


def pick_voice(cands: list[dict[str, Any]], pick: str = "likeness", wer_weight: float = 0.5) -> dict[str, Any] | None:
    """The (update, weights) to export, with the reason.

    pick="loss": the EMA weights with the lowest validation loss (persona's behaviour before scoring).
    pick="likeness": the highest speaker similarity minus `wer_weight` x WER (WER only when every
    scored candidate has one; 0.5 makes 10 % more misheard words cost 0.05 similarity), compared in
    steps of TIE; on a tie the lower WER, then the lower validation loss, then the earlier update,
    then EMA before raw.
    Without any scores it falls back to the loss, and says so.
    """
    lowest = _lowest_loss(cands)
    scored = [c for c in cands if c["speaker_similarity"] is not None]
    if pick == "loss" or not scored:
        if lowest is None:
            return None
        why = ("--pick loss" if pick == "loss" else "no likeness scores (see above), so")
        return {**lowest, "pick": "loss", "fallback": pick != "loss",
                "reason": f"update {lowest['update']}, EMA weights: {why} the lowest validation loss "
                          f"({lowest['val_loss']:.4g})"}
    use_wer = all(c["wer"] is not None for c in scored)

    def objective(c: dict[str, Any]) -> float:
        return c["speaker_similarity"] - (wer_weight * c["wer"] if use_wer else 0.0)

    def rank(c: dict[str, Any]) -> tuple:
        # Objectives are compared in steps of TIE (a total order, unlike "within TIE of the best", so
        # the pick among the first N validations never changes the pick among them later: the
        # trainer keeps only the weights of the best so far).
        loss = float("inf") if c["val_loss"] is None else c["val_loss"]
        return (-round(objective(c) / TIE), c["wer"] if use_wer else 0.0, loss, c["update"], WEIGHTS.index(c["weights"]))

    chosen = min(scored, key=rank)
    near = [c for c in scored if rank(c)[0] == rank(chosen)[0]]
    why = f"update {chosen['update']}, {chosen['weights'].upper() if chosen['weights'] == 'ema' else 'raw'} weights: " \
          f"speaker similarity {chosen['speaker_similarity']:.3f}"
    if use_wer:
        why += f", word error rate {chosen['wer']:.0%}"
    if chosen["val_loss"] is not None:
        why += f", validation loss {chosen['val_loss']:.4g}"
    why += f"; the best of {len(scored)} scored (update, weights) pairs"
    if len(near) > 1:
        why += f" ({len(near)} tied within {TIE:g}: " + ("word error rate, then " if use_wer else "") + "loss decided)"
    if lowest is not None and (lowest["update"], lowest["weights"]) != (chosen["update"], chosen["weights"]):
        match = next(c for c in cands if (c["update"], c["weights"]) == (lowest["update"], "ema"))
        if match["speaker_similarity"] is not None:
            why += (f"; --pick loss would export update {lowest['update']} (EMA weights), which scored "
                    f"{match['speaker_similarity']:.3f}" + (f" / {match['wer']:.0%}" if use_wer else ""))
    return {**chosen, "pick": "likeness", "reason": why}


# ---- the record and the plot --------------------------------------------------------------------
def write_record(folder: Path, history: list[dict[str, Any]], config: dict[str, Any] | None,
                 choice: dict[str, Any] | None, note: str) -> Path:
    """runs/voice/<run>/likeness.json: what was scored and how, every score, the choice."""
    base = next((h.get("likeness", {}).get("ema") for h in history if h.get("update") == 0), None)
    return write_json(folder / "likeness.json", {
        "scoring": note, "judge": config, "baseline": base, "candidates": candidates(history),
        "validations": [{k: h.get(k) for k in ("update", "val_loss", "raw_val_loss", "likeness")} for h in history],
        "choice": choice})


def plot(history: list[dict[str, Any]], choice: dict[str, Any] | None, path: Path) -> Path:
    """likeness.png: speaker similarity (and WER) of the EMA and raw weights per validation, beside
    the validation loss, with the chosen update marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    fig, (sim_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=100)
    wer_ax = None
    for weights, colour in zip(WEIGHTS, ("tab:blue", "tab:orange")):
        pts = [(h["update"], h["likeness"][weights]) for h in history
               if isinstance(h.get("likeness"), dict) and h["likeness"].get(weights)]
        if not pts:
            continue
        sim_ax.plot([u for u, _ in pts], [s["speaker_similarity"] for _, s in pts], "o-", ms=4, color=colour,
                    label=f"{weights} similarity")
        wers = [(u, s["wer"]) for u, s in pts if s.get("wer") is not None]
        if wers:
            wer_ax = wer_ax or sim_ax.twinx()
            wer_ax.plot(*zip(*[(u, 100 * w) for u, w in wers]), "s:", ms=3, color=colour, alpha=0.6,
                        label=f"{weights} WER")
    sim_ax.set_xlabel("update")
    sim_ax.set_ylabel("speaker similarity (higher is closer)")
    if wer_ax is not None:
        wer_ax.set_ylabel("word error rate (%)")
    loss = [(h["update"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if loss:
        loss_ax.plot(*zip(*loss), "o-", ms=4, color="tab:blue", label="EMA validation loss")
    raw = [(h["update"], h["raw_val_loss"]) for h in history if h.get("raw_val_loss") is not None]
    if raw:
        loss_ax.plot(*zip(*raw), "o-", ms=4, color="tab:orange", label="raw validation loss")
    loss_ax.set_xlabel("update")
    loss_ax.set_ylabel("validation loss")
    for ax in (sim_ax, loss_ax):
        if choice is not None:
            ax.axvline(choice["update"], color="tab:green", lw=1.5,
                       label=f"chosen: update {choice['update']} ({choice['weights']})")
    handles, labels = sim_ax.get_legend_handles_labels()
    if wer_ax is not None:
        h2, l2 = wer_ax.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        sim_ax.legend(handles, labels, fontsize=7, loc="lower right")
    if loss:
        loss_ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path

