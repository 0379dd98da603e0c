"""The F5-TTS dataset on disk: clips, metadata.csv, manifest, reference clip and report.

Written into a staging folder that replaces `datasets/voice` only when complete, so a failed or
interrupted run never leaves a half-written dataset behind.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona.files import write_json, write_text
from persona.models import f5_pretrained_vocab
from persona.progress import info, warn

if TYPE_CHECKING:
    from persona.workspace import Workspace
    from persona.data.voice import Candidate, Problems, Source, VoiceIngestSettings



def _ends_in_silence(c: Candidate, tail: float = 0.1) -> bool:
    """The clip closes on at least `tail` seconds of silence (by the VAD, which is more reliable
    at a clip's edge than word alignment)."""
    return c.clip.end - c.clip.speech_end >= tail


def choose_reference(kept: list[Candidate], settings: VoiceIngestSettings) -> tuple[Candidate | None, bool]:
    """The cleanest transcribed clip of 5-11 s that ends in silence, preferring one whose text ends
    in punctuation. Returns (clip, strict) where strict says it also ends in punctuation."""
    fits = [c for c in kept if c.text and settings.reference_min <= c.clip.duration <= settings.reference_max
            and _ends_in_silence(c)]
    rank = lambda c: (c.metrics["snr_db"], c.metrics["speaker_similarity"] or 0.0)  # noqa: E731
    strict = [c for c in fits if re.search(r"[.!?]$", c.text or "")]
    if strict:
        return max(strict, key=rank), True
    return (max(fits, key=rank), False) if fits else (None, False)


def missing_characters(texts: list[str]) -> list[str]:
    """Characters of `texts` that F5-TTS's pretrained vocab (shipped in the f5-tts wheel) lacks."""
    vocab = set(f5_pretrained_vocab().read_text(encoding="utf-8").split("\n"))
    return sorted({ch for t in texts for ch in t} - vocab)


def _metadata(rows: list[tuple[Path, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="|", lineterminator="\n")
    w.writerow(["audio_file", "text"])  # F5-TTS's prepare_csv_wavs reads it back with csv.reader
    for path, text in rows:
        w.writerow([str(path), text])
    return buf.getvalue()


def write_dataset(out: Path, stage: Path, kept: list[Candidate], reference: Candidate | None) -> list[dict[str, Any]]:
    """Number the kept clips into `stage`/wavs and write metadata.csv (absolute paths of their final
    place under `out`), manifest.json and the reference clip."""
    (stage / "wavs").mkdir(parents=True, exist_ok=True)
    manifest, rows = [], []
    for n, c in enumerate(kept, 1):
        name = f"wavs/{n:04d}.wav"
        os.replace(c.wav, stage / name)
        c.wav = stage / name
        entry = {"file": name, "source": str(c.source.path), "start": c.clip.start, "end": c.clip.end,
                 "duration": round(c.clip.duration, 3), "speaker_similarity": c.metrics["speaker_similarity"],
                 "snr_db": c.metrics["snr_db"], "text": c.text,
                 **{k: c.metrics[k] for k in ("loudness_lufs", "bandwidth_hz", "speech_ratio")}}
        manifest.append(entry)
        if c.text:
            rows.append((out / name, c.text))  # absolute, final location
    write_text(stage / "metadata.csv", _metadata(rows))
    write_json(stage / "manifest.json", manifest)
    if reference is not None:
        shutil.copyfile(reference.wav, stage / "reference.wav")
        write_text(stage / "reference.txt", reference.text + "\n")
    return manifest


def _reason_counts(cands: list[Candidate]) -> dict[str, int]:
    return dict(Counter(r["reason"] for c in cands for r in c.reasons))


def nothing_kept(sources: list[Source], cands: list[Candidate]) -> str:
    if not cands:
        return f"no clip of the target speaking alone in {len(sources)} file(s) with speech"
    reasons = _reason_counts(cands)
    return f"all {len(cands)} clips of the target were rejected ({', '.join(f'{k}: {v}' for k, v in reasons.items())})"


def build_report(sources: list[Source], cands: list[Candidate], kept: list[Candidate], manifest: list[dict],
            target: dict, transcription: dict, reference: Candidate | None, strict: bool, problems: Problems,
            settings: VoiceIngestSettings) -> dict[str, Any]:
    texts = [c.text for c in kept if c.text]
    missing = missing_characters(texts)
    by_reason = _reason_counts(cands)
    ref = None
    if reference is not None:
        ref = {"file": "reference.wav", "clip": reference.wav.relative_to(reference.wav.parents[1]).as_posix(),
               "text": reference.text, "duration": round(reference.clip.duration, 3), "ends_in_punctuation": strict}
    return {
        "target": {k: v for k, v in target.items() if k != "profile"},
        "totals": {
            "clips": len(kept), "seconds": round(sum(c.clip.duration for c in kept), 2),
            "transcribed_clips": len(texts), "transcribed_seconds": round(sum(c.clip.duration for c in kept if c.text), 2),
            "untranscribed_clips": len(kept) - len(texts), "rejected_clips": len(cands) - len(kept),
        },
        "sources": [{"file": str(s.path), "seconds": round(s.analysis.duration, 2),
                     "speech_seconds": round(s.analysis.speech_seconds, 2),
                     "voices": s.analysis.n_clusters,
                     "target_similarity": round(s.decision.similarity, 3) if s.decision else None,
                     "target_margin": round(s.decision.margin, 3) if s.decision and s.decision.margin is not None else None,
                     "decision": s.decision.reason if s.decision else None,
                     "clusters": s.decision.ranking if s.decision else [],
                     "target_alone_seconds": round(s.decision.kept_seconds(), 2) if s.decision else 0.0,
                     "clips": sum(1 for c in kept if c.source is s), "problem": s.problem} for s in sources],
        "rejections_by_reason": by_reason,
        "rejected": [{"source": str(c.source.path), "start": c.clip.start, "end": c.clip.end, "reasons": c.reasons,
                      **{k: c.metrics.get(k) for k in ("snr_db", "speaker_similarity")}} for c in cands if c.reasons],
        "vocab": {"missing_characters": missing,
                  "clips_with_missing": sum(1 for t in texts if set(t) & set(missing)),
                  "note": "F5-TTS reads characters missing from its vocab as index 0 (a space)"},
        "transcription": transcription,
        "reference": ref,
        "problems": problems.items,
        "settings": settings.model_dump(),
    }


def tell(report: dict, transcription: dict, out: Path) -> None:
    t = report["totals"]
    info(f"voice: {t['clips']} clips, {t['seconds'] / 60:.1f} min in {out} "
         f"({t['transcribed_clips']} transcribed, {t['rejected_clips']} rejected)")
    if transcription["status"] == "no-model":
        warn(f"clips are untranscribed (no Whisper model): {transcription['fix']}")
    if report["vocab"]["missing_characters"]:
        warn(f"characters missing from F5-TTS's vocab: {''.join(report['vocab']['missing_characters'])!r}")
    if report["reference"] is None and t["transcribed_clips"]:
        warn("no transcribed clip of 5-11 s ending in silence: no reference clip written")


def summary(report: dict, out: Path, ws: Workspace) -> dict[str, Any]:
    t = report["totals"]
    return {
        "dataset": str(out), "metadata": str(out / "metadata.csv"), "target": report["target"]["method"],
        "clips": t["clips"], "seconds": t["seconds"], "transcribed": t["transcribed_clips"],
        "untranscribed": t["untranscribed_clips"], "rejected": t["rejected_clips"],
        "rejections_by_reason": report["rejections_by_reason"],
        "reference": ws.relative(out / "reference.wav") if report["reference"] else None,
        "transcription": report["transcription"]["status"],
        "missing_characters": report["vocab"]["missing_characters"], "problems": report["problems"],
    }
