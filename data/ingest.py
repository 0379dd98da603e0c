"""`persona ingest`: footage -> the image dataset, the presenter clips and the voice dataset.

The image side runs first: the time spans where the person's face is on screen
(datasets/images/presence.json) tell the voice side whose voice to keep when no enrollment clip
is given, and the presenter side reuses its scan and its choice of person. Each side skips bad
files and goes on; the command fails only when no side produced anything usable (footage without a
presenter stretch is not a failure: the presenter summary says why).
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any, TYPE_CHECKING

from rich.markup import escape

from persona.data.images import ImageSettings, ingest_images
from persona.data.inputs import discover
from persona.data.presenter import PresenterSettings, ingest_presenter
from persona.data.voice import VoiceIngestSettings, ingest_voice
from persona.errors import PersonaError
from persona.lock import locked
from persona.progress import console

if TYPE_CHECKING:
    from persona.workspace import Workspace


@locked("ingest")
def ingest(ws: Workspace, paths: list[Path], *, faces: list[Path] = (), voices: list[Path] = (), images: bool = True,
           voice: bool = True, presenter: bool = True, image_settings: ImageSettings | None = None,
           voice_settings: VoiceIngestSettings | None = None,
           presenter_settings: PresenterSettings | None = None) -> dict[str, Any]:
    if not images and not voice and not presenter:
        raise PersonaError("nothing to do: every side is switched off",
                           fix="drop --images-only, --voice-only, --presenter-only or --no-presenter")
    found = discover(paths)
    if not found:
        raise PersonaError("no videos, images or audio files among the inputs",
                           fix="give files or folders of footage (mp4, mov, mkv, webm, avi; jpg, png; wav, mp3, ...)")
    summary: dict[str, Any] = {"workspace": str(ws.root), "inputs": found.summary(), "images": None, "voice": None,
                               "presenter": None, "failed": {}}
    sides = []
    if images:
        sides.append(("images", lambda: ingest_images(ws, found.videos, found.images, image_settings, faces),
                      found.videos or found.images))
    if presenter:
        # The image side already reported each file's scan problems; they are not repeated.
        sides.append(("presenter", lambda: ingest_presenter(ws, found.videos, found.images, presenter_settings,
                                                            image_settings, faces, report_scan_problems=not images),
                      found.videos))
    if voice:
        sides.append(("voice", lambda: ingest_voice(ws, found.videos + found.audio, voice_settings, enroll=voices),
                      found.videos or found.audio))
    for name, run, inputs in sides:
        if not inputs:
            summary["failed"][name] = f"no inputs for the {name} side"
            continue
        try:
            summary[name] = run()
        except (PersonaError, OSError) as e:
            problem = e if isinstance(e, PersonaError) else _os_problem(e, ws.root)
            summary["failed"][name] = str(problem)
            console.print(f"[red]{name} side failed:[/red] {escape(str(problem))}", markup=True, highlight=False)
    clips = (summary["presenter"] or {}).get("clips")
    presenter_alone = presenter and not images and not voice and summary["presenter"] is not None
    if not summary["images"] and not summary["voice"] and not clips and not presenter_alone:
        problems = "; ".join(f"{k}: {v}" for k, v in summary["failed"].items())
        raise PersonaError(f"no usable dataset resulted ({problems})", fix="see the messages above for each file")
    return summary


def _os_problem(e: OSError, root: Path) -> PersonaError:
    """A failed read or write (a full disk, a permission) as one line naming the file; the other side
    still runs, and what finished is kept for the next run."""
    file = e.filename or root
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(root).free / 2**30
        return PersonaError(f"no space left on the disk ({free:.1f} GB free)", file=file,
                            fix="free disk space, then run the same command again (finished work is kept)")
    return PersonaError(f"cannot be written or read ({e.strerror or e})", file=file,
                        fix="check the disk and the file's permissions, then run the same command again")
