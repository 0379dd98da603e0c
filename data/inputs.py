"""Which of the paths a user gave are videos, still images or audio (folders are searched recursively)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from persona.media import AUDIO_EXTS, IMAGE_EXTS, VIDEO_EXTS
from persona.progress import warn


@dataclass
class Inputs:
    videos: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    audio: list[Path] = field(default_factory=list)
    unknown: list[Path] = field(default_factory=list)  # files with an extension none of the stages reads
    missing: list[Path] = field(default_factory=list)  # paths that do not exist

    def __bool__(self) -> bool:
        return bool(self.videos or self.images or self.audio)

    def summary(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("videos", "images", "audio", "unknown", "missing")}


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def discover(paths: list[Path] | list[str], report: bool = True) -> Inputs:
    """Sort files and folders into videos, images and audio by extension, each file once, in a stable order.

    Unknown and missing paths are collected (and, with report=True, warned about) rather than fatal:
    one stray file in a footage folder should not stop an ingest.
    """
    found = Inputs()
    seen: set[Path] = set()
    kinds = ((VIDEO_EXTS, found.videos), (IMAGE_EXTS, found.images), (AUDIO_EXTS, found.audio))
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            found.missing.append(path)
            continue
        for file in _files_under(path) if path.is_dir() else [path]:
            resolved = file.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            ext = file.suffix.lower()
            target = next((bucket for exts, bucket in kinds if ext in exts), found.unknown)
            target.append(resolved)
    if report:
        _report(found)
    return found


def _names(paths: list[Path], limit: int = 3) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _report(found: Inputs) -> None:
    if found.missing:
        warn(f"{_names(found.missing)}: not found — check the path (skipped)")
    if found.unknown:
        known = " ".join(sorted(VIDEO_EXTS | IMAGE_EXTS | AUDIO_EXTS))
        warn(f"{_names(found.unknown)}: not a video, image or audio file by its extension "
             f"(skipped; readable: {known})")
