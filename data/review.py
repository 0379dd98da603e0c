"""Reviewing a dataset by hand: `persona dataset drop|keep FILE` (and the studio's keep/drop buttons).

A dropped image or voice clip leaves the dataset: its file (and caption) moves to
`<dataset>-review/dropped/`, its manifest entry moves from `manifest.json` to `dropped.json` in the
dataset folder with the reason "dropped by hand", and the files the trainers read are rewritten from
the manifest (images: metadata.jsonl, dataset.toml and the contact sheet; voice: metadata.csv).
`keep` undoes a drop. Trainers see a changed dataset and train again; nothing else is redone.

An image ingest that reuses its selection keeps the drops; one that selects again (new footage or
settings) and every voice ingest write the dataset anew, without them.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, TYPE_CHECKING

from persona.data import crops
from persona.data import images as img
from persona.data import voice_dataset as vd
from persona.errors import PersonaError
from persona.files import read_json, read_json_strict, write_json, write_text
from persona.lock import locked

if TYPE_CHECKING:
    from persona.workspace import Workspace

DROPPED = "dropped.json"
REASON = "dropped by hand"
KINDS = ("images", "voice")


def _dataset(ws: Workspace, kind: str) -> Path:
    folder = getattr(ws.pack.datasets, kind)
    if not folder or not ws.path(folder).is_dir():
        raise PersonaError(f"this workspace has no {kind} dataset yet", file=ws.manifest_path,
                           fix="run `persona ingest` first")
    return ws.path(folder)


def _review_dir(folder: Path) -> Path:
    # beside the dataset, never inside it: any image inside is a sample to Hugging Face's imagefolder
    return folder.with_name(folder.name + "-review") / "dropped"


def locate(ws: Workspace, file: str | Path) -> tuple[str, Path, str]:
    """(kind, dataset folder, the file's path inside it) for a dataset file named relative to the
    workspace (datasets/images/0003.png), to the datasets (images/0003.png) or absolutely."""
    p = Path(file)
    for kind in KINDS:
        folder = ws.pack.datasets.model_dump().get(kind)
        if not folder:
            continue
        root = ws.path(folder).resolve()
        for candidate in (p if p.is_absolute() else ws.root / p, root.parent / p):
            try:
                rel = candidate.resolve().relative_to(root).as_posix()
            except ValueError:
                continue
            return kind, root, rel
    raise PersonaError("is not a file of the image or voice dataset", file=file,
                       fix="name one as listed by `persona dataset list`, e.g. datasets/images/0003.png")


def _manifest(folder: Path) -> list[dict[str, Any]]:
    entries = read_json_strict(folder / "manifest.json", fix="run `persona ingest` again")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "file" in e for e in entries):
        raise PersonaError("is not a list of dataset entries", file=folder / "manifest.json",
                           fix="run `persona ingest` again")
    return entries


def listing(ws: Workspace, kind: str) -> dict[str, Any]:
    """The kept and the dropped entries of a dataset (the manifests, with workspace-relative paths)."""
    folder = _dataset(ws, kind)
    kept = [dict(e, path=ws.relative(folder / e["file"])) for e in _manifest(folder)]
    dropped = [dict(e, path=ws.relative(_review_dir(folder) / e["file"])) for e in read_json(folder / DROPPED, [])]
    return {"kind": kind, "dataset": ws.relative(folder), "kept": kept, "dropped": dropped}


def _companions(kind: str, rel: str) -> list[str]:
    """The files that travel with a dataset entry: an image's caption, a clip alone."""
    return [rel, Path(rel).with_suffix(".txt").as_posix()] if kind == "images" else [rel]


def _move(src_root: Path, dst_root: Path, rels: list[str]) -> None:
    for rel in rels:
        src = src_root / rel
        if src.exists():
            (dst_root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst_root / rel)  # same filesystem: a rename, never half a file


def _rewrite(ws: Workspace, kind: str, folder: Path, manifest: list[dict[str, Any]]) -> None:
    """The files trainers read, from the manifest, as ingest writes them."""
    write_json(folder / "manifest.json", manifest)
    if kind == "images":
        img._trainer_files(folder, manifest, folder)
        crops.contact_sheet([folder / e["file"] for e in manifest],
                            [f"{e['file'][:4]} {e.get('framing', '')}" for e in manifest],
                            ws.path(img.REVIEW) / "contact_sheet.png")
    else:
        write_text(folder / "metadata.csv", vd._metadata([(folder / e["file"], e["text"]) for e in manifest if e.get("text")]))


@locked("dataset drop")
def drop(ws: Workspace, file: str | Path) -> dict[str, Any]:
    """Take one image or voice clip out of its dataset, recorded as "dropped by hand"."""
    kind, folder, rel = locate(ws, file)
    manifest = _manifest(folder)
    entry = next((e for e in manifest if e["file"] == rel), None)
    if entry is None:
        already = any(e["file"] == rel for e in read_json(folder / DROPPED, []))
        raise PersonaError("was already dropped" if already else "is not in the dataset's manifest.json",
                           file=ws.relative(folder / rel),
                           fix=f"`persona dataset keep {ws.relative(folder / rel)}` puts it back" if already
                           else "`persona dataset list` shows the dataset's files")
    if len(manifest) == 1:
        raise PersonaError("is the last one left in the dataset", file=ws.relative(folder / rel),
                           fix="keep at least one, or run `persona ingest` on more footage")
    _move(folder, _review_dir(folder), _companions(kind, rel))
    dropped = [e for e in read_json(folder / DROPPED, []) if e["file"] != rel]
    dropped.append(dict(entry, reason=REASON, dropped_at=dt.datetime.now().astimezone().isoformat(timespec="seconds")))
    write_json(folder / DROPPED, dropped)  # first: a crash after it leaves the entry findable for `keep`
    kept = [e for e in manifest if e["file"] != rel]
    _rewrite(ws, kind, folder, kept)
    return {"kind": kind, "file": ws.relative(folder / rel), "reason": REASON, "kept": len(kept), "dropped": len(dropped)}


@locked("dataset keep")
def keep(ws: Workspace, file: str | Path) -> dict[str, Any]:
    """Put a dropped image or voice clip back into its dataset."""
    kind, folder, rel = locate(ws, file)
    dropped = read_json(folder / DROPPED, [])
    entry = next((e for e in dropped if e["file"] == rel), None)
    if entry is None:
        raise PersonaError("was not dropped", file=ws.relative(folder / rel), fix="nothing to do")
    _move(_review_dir(folder), folder, _companions(kind, rel))
    manifest = [e for e in _manifest(folder) if e["file"] != rel]
    manifest.append({k: v for k, v in entry.items() if k not in ("reason", "dropped_at")})
    manifest.sort(key=lambda e: e["file"])
    _rewrite(ws, kind, folder, manifest)
    rest = [e for e in dropped if e["file"] != rel]
    write_json(folder / DROPPED, rest)
    return {"kind": kind, "file": ws.relative(folder / rel), "kept": len(manifest), "dropped": len(rest)}
