"""Speech in the persona's voice: the pack's fine-tuned F5-TTS checkpoint, run through f5-tts's own
inference code with a local vocoder and the stored reference transcript, so nothing is downloaded
or transcribed at run time.

The pack's [voice] section names the checkpoint (EMA weights as .safetensors), its vocab, and a
reference clip with its transcript. The DiT architecture is read from `model_config.json` beside
the checkpoint when present (tiny test models, smaller variants), else it is F5TTS_v1_Base's.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TYPE_CHECKING

import numpy as np

from persona.device import default_device, free_memory
from persona.errors import PersonaError
from persona.models import f5_arch, f5_base_files, locate
from persona.vocoder import VOCOS_PARTS, load_vocos  # noqa: F401  (moved to the core: train-voice speaks too)

if TYPE_CHECKING:
    from persona.workspace import Workspace

SAMPLE_RATE = 24000

def reference_text_for_f5(text: str) -> str:
    """F5-TTS expects the reference transcript to end in punctuation and a space (as its own
    preprocessing makes it); the generated text is aligned after it."""
    text = text.strip()
    if not re.search(r"[.!?。！？]$", text):
        text += "."
    return text + " "


@contextlib.contextmanager
def quiet_stdout():
    """f5-tts prints progress to stdout; keep stdout clean for --json summaries."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@dataclass
class VoiceFiles:
    checkpoint: Path
    vocab: Path
    reference_audio: Path
    reference_text: str
    vocoder: Path

    @classmethod
    def from_workspace(cls, ws: Workspace) -> "VoiceFiles":
        v = ws.pack.voice
        if v is None:
            raise PersonaError("this persona has no trained voice ([voice] is missing)", file=ws.manifest_path,
                               fix="run `persona train-voice` first")
        out = cls(ws.path(v.checkpoint), ws.path(v.vocab), ws.path(v.reference_audio), v.reference_text,
                  locate("vocos", models=ws.pack.models))
        for name in ("checkpoint", "vocab", "reference_audio"):
            if not getattr(out, name).exists():
                raise PersonaError(f"[voice] {name} points at a missing file", file=getattr(out, name),
                                   fix="run `persona train-voice` again, or fix the path in persona.toml")
        return out


    @classmethod
    def zero_shot(cls, ws: Workspace) -> "VoiceFiles":
        """F5-TTS v1 Base speaking in the voice of the voice dataset's reference clip, with no
        training: what a pack can narrate with right after `persona ingest`."""
        folder = ws.pack.datasets.voice
        if not folder:
            raise PersonaError("this persona has neither a trained voice ([voice]) nor a voice dataset to speak "
                               "zero-shot from", file=ws.manifest_path,
                               fix="run `persona ingest` on footage or audio of the person (then, for the best "
                                   "likeness, `persona train-voice`)")
        root = ws.path(folder)
        audio, text = root / "reference.wav", root / "reference.txt"
        for f in (audio, text):
            if not f.is_file():
                raise PersonaError("the voice dataset has no reference clip to speak zero-shot from", file=f,
                                   fix="run `persona ingest` again")
        transcript = text.read_text(encoding="utf-8").strip()
        if not transcript:
            raise PersonaError("the reference clip has no transcript, which zero-shot F5-TTS needs", file=text,
                               fix="add a Whisper model (`persona doctor` says how) and run `persona ingest` again, "
                                   "or write what the clip says into this file")
        checkpoint, vocab, _ = f5_base_files(ws.pack.models)
        return cls(checkpoint, vocab, audio, transcript, locate("vocos", models=ws.pack.models))


class Voice:
    """A loaded voice. Load once, say many things, then `close()` to free the device."""

    def __init__(self, files_: VoiceFiles, device: str | None = None):
        from f5_tts.infer.utils_infer import load_model
        from f5_tts.model import DiT

        self.files = files_
        self.device = device or default_device()
        vocab_size = sum(1 for _ in open(files_.vocab, encoding="utf-8"))
        with quiet_stdout():
            try:
                self.model = load_model(DiT, f5_arch(files_.checkpoint), str(files_.checkpoint),
                                        vocab_file=str(files_.vocab), device=self.device)
            except pickle.UnpicklingError:  # f5-tts loads .pt with weights_only=True; its advice is unsafe
                raise PersonaError("refused: not a plain weights file (it holds pickled objects)",
                                   file=files_.checkpoint, fix="use a .safetensors checkpoint") from None
            except RuntimeError as e:
                if "size mismatch" in str(e):
                    raise PersonaError(f"the checkpoint does not match its vocab ({vocab_size} tokens)",
                                       file=files_.checkpoint, fix="export the voice again with `persona train-voice`") from None
                raise
            self.vocoder = load_vocos(files_.vocoder, self.device)
        self.ref_text = reference_text_for_f5(files_.reference_text)

    @classmethod
    def from_workspace(cls, ws: Workspace, device: str | None = None) -> "Voice":
        return cls(VoiceFiles.from_workspace(ws), device)

    def say(self, text: str, seed: int = 0, steps: int = 32, speed: float = 1.0) -> np.ndarray:
        """Mono float32 samples at 24 kHz."""
        import torch
        from f5_tts.infer.utils_infer import infer_process

        text = text.strip()
        if not text:
            raise PersonaError("nothing to say: the text is empty", fix="give some text")
        torch.manual_seed(seed)
        with quiet_stdout():
            wav, sr, _ = infer_process(str(self.files.reference_audio), self.ref_text, text, self.model, self.vocoder,
                                       device=self.device, nfe_step=steps, speed=speed, show_info=lambda *a: None,
                                       progress=None)
        if sr != SAMPLE_RATE:
            raise PersonaError(f"unexpected sample rate {sr} from F5-TTS", file=self.files.checkpoint)
        return np.asarray(wav, dtype=np.float32)

    def close(self) -> None:
        del self.model, self.vocoder
        free_memory()


def speak(ws: Workspace, text: str, out: Path, seed: int = 0, steps: int = 32, speed: float = 1.0) -> dict[str, Any]:
    """`persona speak`: write `text` in the persona's voice to `out` (wav): the trained one, else
    zero-shot from the voice dataset's reference clip (as a render narrates before any training)."""
    from persona.media import write_audio

    ws.require_consent("speaking in")
    trained = ws.pack.voice is not None
    voice = Voice(VoiceFiles.from_workspace(ws) if trained else VoiceFiles.zero_shot(ws))
    try:
        wav = voice.say(text, seed=seed, steps=steps, speed=speed)
    finally:
        voice.close()
    write_audio(out, wav, SAMPLE_RATE)
    return {"output": str(out), "seconds": round(len(wav) / SAMPLE_RATE, 3), "sample_rate": SAMPLE_RATE,
            "characters": len(text), "seed": seed, "steps": steps, "zero_shot": not trained}
