"""Reviewing a dataset by hand: `persona dataset drop|keep FILE` (and the studio's keep/drop buttons).

A dropped image or voice clip leaves the dataset: its file (and caption) moves to
`<dataset>-review/dropped/`, its manifest entry moves from `manifest.json` to `dropped.json` in the
dataset folder with the reason "dropped by hand", and the files the trainers read are rewritten from
the manifest (images: metadata.jsonl, dataset.toml and the contact sheet; voice: metadata.csv).
`keep` undoes a drop. Trainers see a changed dataset and train again; nothing else is redone.

Drops outlast a new selection: an image ingest that selects again (new footage or settings) leaves
out every frame within the dedupe distance of a dropped one (the same moment, however often it
recurs), and a voice ingest every clip overlapping a dropped one's stretch of its source; both carry
`dropped.json` into the new dataset, so `keep` still works. The reference the likeness checks use
(reference_face.json, reference_voice.json) is recomputed without what was dropped, from the
per-entry embeddings ingest stored in it.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, TYPE_CHECKING

from persona.data import crops, select
from persona.data import voice_dataset as vd
from persona.errors import PersonaError
from persona import likeness
from persona.files import read_json, read_json_strict, write_json, write_text
from persona.lock import locked

if TYPE_CHECKING:
    from persona.workspace import Workspace

DROPPED = "dropped.json"
REASON = select.BY_HAND
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


def locate(ws: Workspace, file: str | Path) -> tuple[str, Path, str, bool]:
    """(kind, dataset folder, the file's path inside it, whether it names a dropped file's place in the
    review folder) for a file named relative to the workspace (datasets/images/0003.png, or a dropped
    one's datasets/images-review/dropped/0003.png as `persona dataset list` shows it), to the datasets
    (images/0003.png) or absolutely."""
    p = Path(file)
    for kind in KINDS:
        folder = ws.pack.datasets.model_dump().get(kind)
        if not folder:
            continue
        root = ws.path(folder).resolve()
        for base, in_review in ((root, False), (_review_dir(root), True)):
            for candidate in (p if p.is_absolute() else ws.root / p, root.parent / p):
                try:
                    return kind, root, candidate.resolve().relative_to(base.resolve()).as_posix(), in_review
                except ValueError:
                    continue
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
    dropped = [dict(e, path=ws.relative(_review_dir(folder) / e.get("review_file", e["file"])))
               for e in read_json(folder / DROPPED, [])]
    return {"kind": kind, "dataset": ws.relative(folder), "kept": kept, "dropped": dropped}


def _move(src_root: Path, src: str, dst_root: Path, dst: str, kind: str) -> None:
    """Move a dataset file, and an image's caption with it, renamed from `src` to `dst`."""
    pairs = [(src, dst)] + ([(Path(src).with_suffix(".txt").as_posix(), Path(dst).with_suffix(".txt").as_posix())]
                            if kind == "images" else [])
    for a, b in pairs:
        if (src_root / a).exists():
            (dst_root / b).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src_root / a, dst_root / b)  # same filesystem: a rename, never half a file


def _free_name(root: Path, rel: str, taken: set[str]) -> str:
    """`rel` if nothing in `root` (or `taken`) has that name, else the next free number in its folder:
    a dataset selected again since a drop reuses its numbers."""
    p = Path(rel)
    if not (root / rel).exists() and rel not in taken:
        return rel
    n = 1
    while True:
        candidate = (p.parent / f"{n:04d}{p.suffix}").as_posix()
        if not (root / candidate).exists() and candidate not in taken:
            return candidate
        n += 1


def _rewrite(ws: Workspace, kind: str, folder: Path, manifest: list[dict[str, Any]]) -> None:
    """The files trainers read, from the manifest, as ingest writes them."""
    from persona.data import images as img  # images reads this module's record of drops when it selects

    write_json(folder / "manifest.json", manifest)
    if kind == "images":
        img._trainer_files(folder, manifest, folder)
        crops.contact_sheet([folder / e["file"] for e in manifest],
                            [f"{e['file'][:4]} {e.get('framing', '')}" for e in manifest],
                            ws.path(img.REVIEW) / "contact_sheet.png")
    else:
        write_text(folder / "metadata.csv", vd._metadata([(folder / e["file"], e["text"]) for e in manifest if e.get("text")]))
    _update_reference(kind, folder, manifest)


REFERENCE = {"images": "reference_face.json", "voice": "reference_voice.json"}


def _reference(folder: Path, kind: str) -> dict[str, Any] | None:
    """The dataset's likeness reference, when it holds each entry's embedding (`files`); an older
    dataset without them keeps its reference as it is."""
    record = read_json(folder / REFERENCE[kind], None)
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


def _update_reference(kind: str, folder: Path, manifest: list[dict[str, Any]]) -> None:
    """The likeness reference from the kept entries' stored embeddings alone (nothing re-embedded)."""
    record = _reference(folder, kind)
    if record is None:
        return
    have = {e["file"]: record["files"][e["file"]] for e in manifest if e["file"] in record["files"]}
    if not have:
        return
    if kind == "images":
        likeness.write_reference_face(folder / REFERENCE[kind], list(have.values()), record.get("backend", "dlib"),
                                      list(have))
    else:
        likeness.write_voice_record(folder / REFERENCE[kind], record["encoder"], list(have.values()), list(have))


@locked("dataset drop")
def drop(ws: Workspace, file: str | Path) -> dict[str, Any]:
    """Take one image or voice clip out of its dataset, recorded as "dropped by hand"."""
    kind, folder, rel, in_review = locate(ws, file)
    if in_review:
        raise PersonaError("was already dropped", file=file, fix=f"`persona dataset keep {file}` puts it back")
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
    review = _review_dir(folder)
    dropped = read_json(folder / DROPPED, [])
    as_name = _free_name(review, rel, {e.get("review_file", e["file"]) for e in dropped})
    _move(folder, rel, review, as_name, kind)
    embedding = ((_reference(folder, kind) or {}).get("files") or {}).get(rel)
    dropped.append(dict(entry, reason=REASON, dropped_at=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                        review_file=as_name, **({"embedding": embedding} if embedding else {})))
    write_json(folder / DROPPED, dropped)  # first: a crash after it leaves the entry findable for `keep`
    kept = [e for e in manifest if e["file"] != rel]
    _rewrite(ws, kind, folder, kept)
    return {"kind": kind, "file": ws.relative(folder / rel), "reason": REASON, "kept": len(kept), "dropped": len(dropped)}


@locked("dataset keep")
def keep(ws: Workspace, file: str | Path) -> dict[str, Any]:
    """Put a dropped image or voice clip back into its dataset."""
    kind, folder, rel, in_review = locate(ws, file)
    dropped = read_json(folder / DROPPED, [])
    entry = next((e for e in dropped if (e.get("review_file", e["file"]) if in_review else e["file"]) == rel), None)
    if entry is None:
        raise PersonaError("was not dropped", file=ws.relative(folder / rel), fix="nothing to do")
    manifest = _manifest(folder)
    back = _free_name(folder, entry["file"], {e["file"] for e in manifest})
    _move(_review_dir(folder), entry.get("review_file", rel), folder, back, kind)
    record = _reference(folder, kind)
    if record is not None and entry.get("embedding"):
        write_json(folder / REFERENCE[kind], dict(record, files={**record["files"], back: entry["embedding"]}))
    manifest.append({k: v for k, v in entry.items() if k not in ("reason", "dropped_at", "review_file", "embedding")}
                    | {"file": back})
    manifest.sort(key=lambda e: e["file"])
    _rewrite(ws, kind, folder, manifest)
    rest = [e for e in dropped if e is not entry]
    write_json(folder / DROPPED, rest)
    return {"kind": kind, "file": ws.relative(folder / back), "kept": len(manifest), "dropped": len(rest)}
