"""The voice dataset from `persona ingest`, checked and written in F5-TTS's training format.

Input: `datasets/voice/` with `manifest.json` (clips with their transcripts; `metadata.csv` is read
when there is no manifest), `wavs/*.wav`, and `reference.wav` + `reference.txt`.
Output: per split, `raw.arrow` (audio_path, text as F5's token list, duration) and `duration.json`,
the files F5's `prepare_csv_wavs` writes, which `f5_tts.model.dataset.CustomDataset` reads.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona.errors import PersonaError
from persona.files import atomic_path, read_json, write_json

# F5's CustomDataset silently swaps a clip outside 0.3-30 s for its neighbour; such clips are
# dropped (and reported) here instead, so the durations used for batching stay true.
F5_MIN_CLIP_S, F5_MAX_CLIP_S = 0.3, 30.0
# F5 takes a reference of up to ~12 s; ingest cuts 5-11 s ones, and a fallback picks one near 8 s.
REFERENCE_RANGE_S = (5.0, 11.0)

INGEST_FIX = ("run `persona ingest` with an ASR model so the clips get transcripts "
              "(`persona doctor` shows whether whisper and align-en are installed)")


@dataclass(frozen=True)
class Clip:
    file: Path
    text: str
    seconds: float


@dataclass
class VoiceData:
    folder: Path
    clips: list[Clip]  # transcribed and usable
    reference: Path
    reference_text: str
    untranscribed: int = 0
    missing: list[str] = field(default_factory=list)
    out_of_range: list[Clip] = field(default_factory=list)
    reference_note: str | None = None

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.clips)


def _duration(path: Path) -> float:
    import soundfile as sf

    try:
        return float(sf.info(str(path)).duration)
    except RuntimeError as e:
        raise PersonaError(f"cannot be read as audio ({e})", file=path, fix="run `persona ingest` again") from None


def _entries(folder: Path) -> list[tuple[Path, str | None]]:
    """(wav, transcript or None) from manifest.json, else metadata.csv."""
    manifest = folder / "manifest.json"
    if manifest.exists():
        entries = read_json(manifest)
        if not isinstance(entries, list):
            raise PersonaError("is not a list of clips", file=manifest, fix="run `persona ingest` again")
        out = []
        for e in entries:
            if not isinstance(e, dict) or not e.get("file"):
                raise PersonaError("has an entry without a 'file'", file=manifest, fix="run `persona ingest` again")
            text = (e.get("text") or "").strip() or None
            out.append((folder / e["file"], text))
        return out
    metadata = folder / "metadata.csv"
    if metadata.exists():
        with open(metadata, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter="|"))
        if not rows or [h.strip() for h in rows[0][:2]] != ["audio_file", "text"]:
            raise PersonaError("must start with the header audio_file|text", file=metadata, fix="run `persona ingest` again")
        return [(folder / r[0].strip(), (r[1].strip() or None) if len(r) > 1 else None) for r in rows[1:] if r]
    raise PersonaError("holds neither manifest.json nor metadata.csv", file=folder, fix="run `persona ingest` first")


def read_voice_dataset(folder: str | Path, max_clip_seconds: float = F5_MAX_CLIP_S) -> VoiceData:
    """The transcribed clips of a voice dataset and its reference clip, or a PersonaError saying why not."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PersonaError("the voice dataset does not exist", file=folder, fix="run `persona ingest` first")
    entries = _entries(folder)
    untranscribed = sum(1 for _, text in entries if text is None)
    missing, clips, out_of_range = [], [], []
    for path, text in entries:
        if text is None:
            continue
        if not path.exists():
            missing.append(str(path))
            continue
        clip = Clip(path.resolve(), text, _duration(path))
        (clips if F5_MIN_CLIP_S <= clip.seconds <= max_clip_seconds else out_of_range).append(clip)
    if not clips:
        if missing:
            raise PersonaError(f"none of its {len(missing)} transcribed clips exist (first: {missing[0]})",
                               file=folder, fix="run `persona ingest` again")
        if untranscribed:
            raise PersonaError(f"has {untranscribed} clips but none with a transcript", file=folder, fix=INGEST_FIX)
        if out_of_range:
            raise PersonaError(f"every transcribed clip is shorter than {F5_MIN_CLIP_S} s or longer than "
                               f"{max_clip_seconds:.0f} s", file=folder, fix="re-run `persona ingest` to cut shorter clips")
        raise PersonaError("holds no clips", file=folder, fix="run `persona ingest` on footage where the person speaks")
    reference, reference_text, note = _reference(folder, clips)
    return VoiceData(folder, clips, reference, reference_text, untranscribed, missing, out_of_range, note)


def _reference(folder: Path, clips: list[Clip]) -> tuple[Path, str, str | None]:
    wav, txt = folder / "reference.wav", folder / "reference.txt"
    if wav.exists() and txt.exists() and txt.read_text(encoding="utf-8").strip():
        return wav.resolve(), txt.read_text(encoding="utf-8").strip(), None
    lo, hi = REFERENCE_RANGE_S
    fitting = [c for c in clips if lo <= c.seconds <= hi]
    if not fitting:
        raise PersonaError(f"has no reference.wav + reference.txt and no transcribed clip of {lo:.0f}-{hi:.0f} s to "
                           "use instead", file=folder, fix="run `persona ingest` again, or add a reference clip and its transcript")
    clip = min(fitting, key=lambda c: abs(c.seconds - 8.0))
    return clip.file, clip.text, f"no reference.wav/reference.txt; using {clip.file.name} as the reference"


# ---- text ---------------------------------------------------------------------------------------
def f5_tokens(text: str) -> list[str]:
    """The token list F5-TTS trains and infers on (its own conversion: characters, pinyin for Chinese)."""
    from f5_tts.model.utils import convert_char_to_pinyin

    return convert_char_to_pinyin([text])[0]


def read_vocab(path: str | Path) -> dict[str, int]:
    from f5_tts.model.utils import get_tokenizer

    vocab, _ = get_tokenizer(str(path), "custom")
    return vocab


def unknown_characters(clips: list[Clip], vocab: dict[str, int]) -> dict[str, int]:
    """Tokens missing from the vocab -> how many clips use them (F5 silently reads them as a space)."""
    counts: Counter[str] = Counter()
    for clip in clips:
        counts.update({t for t in f5_tokens(clip.text) if t not in vocab})
    return dict(counts.most_common())


# ---- split and write ------------------------------------------------------------------------------
def split_clips(clips: list[Clip], val_clips: int, seed: int = 0) -> tuple[list[Clip], list[Clip]]:
    """Hold out up to `val_clips` clips (at most a tenth, at least one) for validation."""
    if len(clips) < 2:
        raise PersonaError(f"only {len(clips)} transcribed clip: training needs one to learn from and one held out "
                           "to choose the best checkpoint", fix="ingest more footage of the person speaking")
    n = max(1, min(val_clips, len(clips) // 10))
    ordered = sorted(clips, key=lambda c: str(c.file))
    held = set(random.Random(seed).sample(range(len(ordered)), n))
    return ([c for i, c in enumerate(ordered) if i not in held], [c for i, c in enumerate(ordered) if i in held])


def write_f5_split(clips: list[Clip], folder: Path) -> Path:
    """raw.arrow + duration.json in `folder`, as F5's prepare_csv_wavs writes them."""
    from datasets.arrow_writer import ArrowWriter

    folder.mkdir(parents=True, exist_ok=True)
    arrow = folder / "raw.arrow"
    with atomic_path(arrow) as tmp:
        with ArrowWriter(path=str(tmp)) as writer:
            for c in clips:
                writer.write({"audio_path": str(c.file), "text": f5_tokens(c.text), "duration": c.seconds})
            writer.finalize()
    write_json(folder / "duration.json", {"duration": [c.seconds for c in clips]})
    return arrow


def load_f5_split(folder: Path, mel: dict[str, Any]):
    """F5's CustomDataset over a split written by `write_f5_split` (built directly: F5's
    load_dataset(dataset_type="CustomDatasetPath") raises UnboundLocalError in 1.1.22)."""
    from datasets import Dataset
    from f5_tts.model.dataset import CustomDataset

    durations = read_json(folder / "duration.json")["duration"]
    return CustomDataset(Dataset.from_file(str(folder / "raw.arrow")), durations=durations, **mel)
