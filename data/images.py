"""The image side of `persona ingest`: raw footage in, a captioned likeness dataset out.

    footage ─scan─> faces per sampled frame (cached) ─identify─> the person ─filter─> candidates
      ─dedupe─> distinct moments ─order_by_variety─> ─extract+verify─> crops ─caption─> dataset

Written to `<workspace>/datasets/images/`: NNNN.png + NNNN.txt (kohya layout), dataset.toml (kohya
dataset config), metadata.jsonl (Hugging Face imagefolder), manifest.json (one entry per image),
presence.json (when the person is on screen in each video), report.json (why candidates were
rejected). The contact sheet goes beside it, to `datasets/images-review/contact_sheet.png`: any image
inside the dataset folder, even in a subfolder, is a sample to Hugging Face's imagefolder (datasets
<= 3.3 then fails on the sheet's missing metadata row). The folder is built beside the old one and
swapped in whole, so a killed run never leaves a mix.
"""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TYPE_CHECKING

import numpy as np
import tomlkit
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from persona.data import captions as cap
from persona.data import crops, frames, review, scan, select
from persona import faces as fx
from persona import likeness
from persona.errors import PersonaError
from persona.files import (hash_file, hash_json, is_fresh, mark_fresh, read_json, read_json_strict, staged_dir,
                           write_json, write_text)
from persona.lock import locked
from persona.progress import info, meter, track, warn

if TYPE_CHECKING:
    from persona.workspace import Workspace

DATASET = "datasets/images"
REVIEW = "datasets/images-review"  # outside the dataset folder: see the module docstring
CACHE = "cache/ingest/images"
SELECTION_VERSION = 1


class ImageSettings(BaseModel):
    """Settings of the image side of `persona ingest` (recipe kind `ingest-images`)."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(30, ge=1, description="images to pick (fewer, with a warning, when the footage lacks variety)")
    sample_every: float = Field(2.0, gt=0, description="seconds between analysed frames; every shot also gets one")
    keyframes_only: bool | None = Field(None, description="decode keyframes only; default: when they are about "
                                                           "as dense as sample_every")
    min_face: int = Field(160, ge=40, description="smallest face height (source pixels) looked for and kept; "
                                                  "lower finds smaller faces at a higher cost")
    match_distance: float | None = Field(None, gt=0, description="identity distance below which a face is the "
                                                                 "person (default: the face backend's, 0.55 for dlib)")
    identity_margin: float = Field(0.1, ge=0, description="how much closer to the person than to any other "
                                                          "identity a face must be")
    min_sharpness: float = Field(6.0, ge=0, description="variance of the Laplacian of the face at 256 px")
    min_brightness: float = Field(45.0, ge=0, le=255, description="mean face brightness (0-255) below which it "
                                                                  "is too dark")
    max_brightness: float = Field(215.0, ge=0, le=255, description="... above which it is washed out")
    min_eye_openness: float = Field(0.15, ge=0, description="eye aspect ratio from landmarks; below is eyes closed")
    max_yaw: float = Field(0.5, gt=0, le=1, description="head turn from landmarks (0 frontal, 1 full profile)")
    other_face_ratio: float = Field(0.5, gt=0, description="reject frames with another face at least this "
                                                           "fraction of the person's face height")
    dedupe_bits: int = Field(8, ge=0, le=64, description="perceptual-hash bits within which two frames are "
                                                         "near-duplicates")
    framing: dict[str, float] = Field(default_factory=lambda: {"close-up": 0.3, "head-and-shoulders": 0.4,
                                                                "half-body": 0.3},
                                      description="wanted share of each framing")
    resolution: int = Field(1024, ge=256, description="short side of the written images (multiple of 64)")
    max_upscale: float = Field(4.0, ge=1, description="largest upscale allowed to reach the resolution")
    captions: Literal["auto", "florence2", "token"] = Field(
        "auto", description="auto: Florence-2 when found, else the token alone")
    caption_task: Literal["<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"] = "<DETAILED_CAPTION>"
    face_backend: Literal["dlib"] = "dlib"
    workers: int = Field(0, ge=0, description="processes scanning footage (0: one per CPU core)")

    @field_validator("framing")
    @classmethod
    def _known_framings(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = set(mix) - set(crops.FRAMINGS)
        if unknown:
            raise ValueError(f"unknown framing {', '.join(sorted(unknown))}; use {', '.join(crops.FRAMINGS)}")
        total = sum(mix.values())
        if total <= 0 or any(v < 0 for v in mix.values()):
            raise ValueError("shares must be non-negative and not all zero")
        return {k: v / total for k, v in mix.items()}

    @field_validator("resolution")
    @classmethod
    def _multiple_of_64(cls, value: int) -> int:
        if value % 64:
            raise ValueError("must be a multiple of 64 (the trainers' bucket step)")
        return value

    def scan_settings(self) -> scan.ScanSettings:
        return scan.ScanSettings(self.sample_every, self.min_face, self.face_backend, self.keyframes_only)

    def selection_key(self) -> dict[str, Any]:
        return self.model_dump(exclude={"captions", "caption_task", "workers"})


# ------------------------------------------------------------------------------------------------
@locked("ingest")
def ingest_images(ws: Workspace, videos: list[Path], images: list[Path], settings: ImageSettings | None = None,
                  faces: list[Path] | tuple[Path, ...] = ()) -> dict[str, Any]:
    """Build `datasets/images` from footage; returns a summary for --json.

    Bad files are reported and skipped; a PersonaError is raised only when no usable dataset results.
    """
    settings = settings or ImageSettings()
    problems: list[str] = []
    try:
        return _ingest(ws, [Path(p) for p in videos], [Path(p) for p in images], settings,
                       [Path(p) for p in faces], problems)
    finally:
        for line in problems:  # also when no dataset results: what was wrong with each file
            warn(line)


@dataclass
class Footage:
    """Scanned footage and who the person is in it: what the image and presenter sides share."""

    usable: list[scan.Source]  # sources with at least one sample (analysis filled in)
    identity: select.Identity
    backend: fx.FaceBackend
    match: float  # identity distance below which a face is the person
    scanned_now: int  # files scanned by this call (0 when all came from the cache)


def scan_and_identify(ws: Workspace, videos: list[Path], images: list[Path], settings: ImageSettings, faces: list[Path],
                      problems: list[str], require_person: bool = True) -> Footage:
    """Scan the footage (cached in cache/ingest/images/) and decide who the person is.

    Raises a PersonaError when nothing is readable, or (with require_person) when nobody can be
    picked; file problems go to `problems`.
    """
    backend = fx.backend(settings.face_backend)
    match = settings.match_distance or backend.match_distance
    references = _references(faces, settings, problems)
    sources = [scan.Source(p.resolve(), "video") for p in videos] + [scan.Source(p.resolve(), "image") for p in images]
    if not sources:
        raise PersonaError("no videos or images to ingest", fix="pass video files or folders holding them")
    scanned = _scan(ws, sources, settings, problems)
    usable = [s for s in sources if s.analysis and s.analysis["samples"]]
    if not usable:
        names = ", ".join(s.path.name for s in sources[:5]) + (", ..." if len(sources) > 5 else "")
        raise PersonaError(f"none of the footage could be read ({names})",
                           fix="fix or replace the files; the warnings above say what is wrong with each")
    identity = select.identify([s.analysis for s in usable], references, backend, match, settings.identity_margin)
    _per_file_problems(usable, identity, match, problems)
    if require_person and not identity.accepted.any():
        raise nobody(identity, len(references) > 0, match)
    return Footage(usable, identity, backend, match, scanned)


def _ingest(ws: Workspace, videos: list[Path], images: list[Path], settings: ImageSettings, faces: list[Path],
            problems: list[str]) -> dict[str, Any]:
    florence = _captioner(ws, settings)
    footage = scan_and_identify(ws, videos, images, settings, faces, problems)
    usable, identity, backend, match, scanned = (footage.usable, footage.identity, footage.backend, footage.match,
                                                 footage.scanned_now)
    analyses = [s.analysis for s in usable]
    found, rejected = select.candidates(analyses, identity, settings, match)
    distinct, rejected[select.DUPLICATE] = select.dedupe(found, settings.dedupe_bits)
    root = ws.path(DATASET)
    by_hand = read_json(root / review.DROPPED, [])
    distinct, rejected[review.REASON] = select.leave_out(distinct, [e["phash"] for e in by_hand if e.get("phash")],
                                                         settings.dedupe_bits)
    ordered = select.order_by_variety(distinct)

    key = hash_json({"sources": [s.key for s in usable], "references": [hash_file(p) for p in faces if p.exists()],
                     "settings": settings.selection_key(), "v": SELECTION_VERSION})
    reused = is_fresh(root / "manifest.json", key)
    if not reused:
        if not ordered:
            raise _nothing_usable(rejected)
        _build(ws, root, usable, identity, ordered, rejected, settings, backend, match, key, by_hand)
    manifest = read_json_strict(root / "manifest.json", fix=f"delete {root} and run the same ingest again "
                                                            "(the scan cache makes it quick)")
    if not isinstance(manifest, list) or not all(isinstance(e, dict) and "file" in e for e in manifest):
        raise PersonaError("is not a list of images", file=root / "manifest.json",
                           fix=f"delete {root} and run the same ingest again (the scan cache makes it quick)")
    report = read_json(root / "report.json", {})
    captioner = _caption(ws, root, manifest, settings, florence, problems)
    ws.update("datasets", {"images": ws.relative(root)})
    if report.get("shortfall"):
        problems.append(report["shortfall"])
    info(f"{len(manifest)} images of {report.get('person', {}).get('description', 'the person')} in "
         f"{ws.relative(root)} (captions: {captioner})")
    return {
        "dataset": ws.relative(root), "images": len(manifest), "requested": settings.count,
        "person": report.get("person"), "captions": captioner, "reused_selection": reused,
        "framing": dict(Counter(e["framing"] for e in manifest)),
        "upscaled": sum(1 for e in manifest if e["upscale"] > 1.0),
        "footage": {"videos": len(videos), "images": len(images), "usable": len(usable), "scanned_now": scanned,
                    "seconds": report.get("seconds_of_footage")},
        "rejected": report.get("rejected", {}), "candidates": report.get("candidates"),
        "presence": {k: round(sum(b - a for a, b in v), 2) for k, v in read_json(root / "presence.json", {}).items()},
        "contact_sheet": ws.relative(ws.path(REVIEW) / "contact_sheet.png"), "problems": problems,
    }


# ---- steps ------------------------------------------------------------------------------------
def _references(paths: list[Path], settings: ImageSettings, problems: list[str]) -> np.ndarray:
    refs, bad = scan.reference_faces(paths, settings.face_backend)
    problems += [str(e) for e in bad]
    if paths and not len(refs):
        raise PersonaError("no --face photo shows exactly one clear face: " + "; ".join(str(e) for e in bad),
                           fix="pass a sharp photo of the person alone, facing the camera")
    return refs


def _scan(ws: Workspace, sources: list[scan.Source], settings: ImageSettings, problems: list[str]) -> int:
    cache = ws.path(CACHE)
    scan.prepare(sources, settings.scan_settings(), cache)
    pending = [s for s in sources if s.analysis is None and s.error is None]
    total = sum(s.layout.duration if s.layout else 1.0 for s in pending)
    if pending:
        with meter(f"scanning {len(pending)} file(s) for faces", total=round(total, 1)) as m:
            scan.run(sources, settings.scan_settings(), cache, scan.worker_count(settings.workers),
                     progress=lambda n: m.advance(n))
    for s in sources:
        if s.error:
            problems.append(str(PersonaError(s.error, file=s.path, fix=s.fix or "re-copy or re-export the file")))
        elif s.analysis is not None:
            problems += _decode_problems(s)
    return len(pending)


def _decode_problems(src: scan.Source) -> list[str]:
    a = src.analysis or {}
    if not a.get("errors") and not a.get("truncated") and a.get("samples"):
        return []
    first = a["errors"][0]["error"] if a.get("errors") else ""
    if src.kind == "image":
        problem = PersonaError(first or "yielded no image to analyse", file=src.path,
                               fix="check it opens in an image viewer; re-export it as PNG")
    elif not a["samples"] and first:
        problem = PersonaError(f"cannot be decoded ({first})", file=src.path,
                               fix="check it plays; re-export it (e.g. as H.264 mp4)")
    elif not a["samples"]:
        # No decode error, yet not one frame came out (no video frames, or none before its end): skipped,
        # and said so, rather than quietly leaving the file out.
        problem = PersonaError("yielded no frames to analyse (0 samples), so it was skipped", file=src.path,
                               fix="check it plays and has a picture; re-export it (e.g. as H.264 mp4)")
    elif a.get("truncated"):
        problem = PersonaError(f"is truncated or damaged at the end: only the first {a['scanned_until']:.1f} s of "
                               f"{a['duration']:.1f} s could be decoded (used)", file=src.path,
                               fix="re-copy or re-export the file")
    else:
        problem = PersonaError(f"is damaged: decoding failed in places ({first}); the readable parts were used",
                               file=src.path, fix="re-copy or re-export the file")
    return [str(problem)]


def _per_file_problems(usable: list[scan.Source], identity: select.Identity, match: float, problems: list[str]) -> None:
    for i, s in enumerate(usable):
        a = s.analysis
        assert a is not None
        if not a["faces"]:
            what = "video" if s.kind == "video" else "image"
            problems.append(str(PersonaError(
                f"no face found in this {what}", file=s.path,
                fix="check it shows the person; faces smaller than min_face are not looked for (lower it to find them)")))
            continue
        rows = [identity.row(i, f) for f in a["faces"]]
        if not identity.accepted[rows].any():
            closest = float(identity.distance[rows].min())
            refs = identity.how == "reference"
            who = "the --face photos" if refs else "the person with the most screen time"
            problems.append(str(PersonaError(
                f"none of its {len(rows)} faces is {who} (closest identity distance {closest:.2f}, "
                f"threshold {match:.2f})", file=s.path,
                fix="leave it out, or check the reference photos" if refs else
                "fine if the person is not in it; otherwise pass --face PHOTO to say who the person is")))


def nobody(identity: select.Identity, with_refs: bool, match: float) -> PersonaError:
    if not len(identity.distance):
        return PersonaError("no face found in any of the footage",
                            fix="use footage where the person's face is visible; lower min_face for small faces")
    closest = float(identity.distance.min())
    if with_refs:
        return PersonaError(f"no frame in the footage matches the --face photos (closest identity distance "
                            f"{closest:.2f}, threshold {match:.2f})",
                            fix="check the reference photos show the person in the footage")
    return PersonaError("no face could be told apart from the others clearly enough to pick the person",
                        fix="pass --face PHOTO with a photo of the person")


def _nothing_usable(rejected: Counter) -> PersonaError:
    top = ", ".join(f"{k}: {v}" for k, v in rejected.most_common(4) if v)
    return PersonaError(f"the person was found, but no frame passed the quality checks ({top})",
                        fix="add sharper, better-lit footage, or relax the thresholds in an ingest-images recipe")


def _build(ws: Workspace, root: Path, usable: list[scan.Source], identity: select.Identity, ordered: list[select.Candidate],
           rejected: Counter, settings: ImageSettings, backend: fx.FaceBackend, match: float, key: str,
           by_hand: list[dict[str, Any]]) -> None:
    """Extract, verify, crop and write the dataset into a staging folder, then swap it in."""
    with staged_dir(root) as staging:
        manifest = _write(ws, root, staging, usable, identity, ordered, rejected, settings, backend, match, by_hand)
    crops.contact_sheet([root / e["file"] for e in manifest], [f"{e['file'][:4]} {e['framing']}" for e in manifest],
                        ws.path(REVIEW) / "contact_sheet.png")
    mark_fresh(root / "manifest.json", key)


def _write(ws: Workspace, root: Path, staging: Path, usable: list[scan.Source], identity: select.Identity,
           ordered: list[select.Candidate], rejected: Counter, settings: ImageSettings, backend: fx.FaceBackend,
           match: float, by_hand: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chosen, examined = _extract(usable, ordered, settings, identity, backend, match, rejected)
    if not chosen:
        raise _nothing_usable(rejected)
    rejected[select.SURPLUS] = len(ordered) - examined
    framings = crops.assign_framings([c.options for c, _, _ in chosen], settings.framing)
    chosen_sorted = sorted(zip(chosen, framings), key=lambda x: (x[0][0].file, x[0][0].face["t"] or 0.0))
    manifest, embeddings = [], {}
    for n, ((c, (piece, offset), exact), framing) in enumerate(track(chosen_sorted, "writing crops"), start=1):
        p = c.options[framing]
        local = crops.CropPlan(p.framing, (p.box[0] - offset[0], p.box[1] - offset[1], p.box[2] - offset[0],
                                           p.box[3] - offset[1]), p.size, p.upscale)
        name = f"{n:04d}.png"
        crops.render(piece, local).save(staging / name, format="PNG", compress_level=3)
        manifest.append(_entry(name, usable[c.file], c, p, exact, ws.token))
        embeddings[name] = exact["embedding"]
    write_json(staging / "manifest.json", manifest)
    # The face the likeness checks compare against (persona.likeness), from the kept frames' exact embeddings.
    likeness.write_reference_face(staging / "reference_face.json", list(embeddings.values()), settings.face_backend,
                                  list(embeddings))
    if by_hand:  # what was dropped by hand stays dropped (persona.data.review)
        write_json(staging / review.DROPPED, by_hand)
    _trainer_files(staging, manifest, root)
    _write_report(staging, usable, identity, rejected, settings, ordered, manifest)
    presence = {str(s.path): select.presence(s.analysis, i, identity)
                for i, s in enumerate(usable) if s.kind == "video"}
    write_json(staging / "presence.json", presence)
    return manifest


def _extract(usable: list[scan.Source], ordered: list[select.Candidate], settings: ImageSettings,
             identity: select.Identity, backend: fx.FaceBackend, match: float, rejected: Counter
             ) -> tuple[list[tuple[select.Candidate, Any, dict[str, float]]], int]:
    """Decode the chosen frames exactly and check identity and sharpness again on them (the scan's
    frames skip the deblocking filter), replacing a frame that fails with the next in variety order.
    Keeps only the region the crops can use; also returns how many candidates were examined."""
    chosen: list[tuple[select.Candidate, Any, dict[str, float]]] = []
    pos = 0
    while len(chosen) < settings.count and pos < len(ordered):
        batch = ordered[pos: pos + settings.count - len(chosen)]
        pos += len(batch)
        for c, rgb in _decode(usable, batch):
            if rgb is None:
                rejected[select.UNREADABLE] += 1
                continue
            box = tuple(c.face["box"])
            face = fx.Face(box, 0.0, backend.landmarks(rgb, box))
            embedding = backend.embed(rgb, face)
            distance = float(backend.distance(embedding, identity.references).min())
            sharp = fx.sharpness(np.asarray(Image.fromarray(fx.region(rgb, box)).convert("L")))
            if distance > match:
                rejected[select.MISMATCH] += 1
            elif sharp < settings.min_sharpness:
                rejected[select.BLUR] += 1
            else:
                chosen.append((c, _keep_region(rgb, c), {"distance": distance, "sharpness": round(sharp, 1),
                                                          "embedding": embedding}))
    return chosen, pos


def _decode(usable: list[scan.Source], batch: list[select.Candidate]
            ) -> Iterator[tuple[select.Candidate, np.ndarray | None]]:
    """Each candidate with its exactly decoded full-resolution frame (None if it could not be)."""
    by_file: dict[int, list[select.Candidate]] = {}
    for c in batch:
        by_file.setdefault(c.file, []).append(c)
    for file, cands in by_file.items():
        src = usable[file]
        if src.kind == "image":
            rgb = scan.load_still(src.path)
            for c in cands:
                yield c, rgb
            continue
        a = src.analysis
        got = frames.grab(src.path, [c.face["pts"] for c in cands], a["keyframes"], a.get("rotation", 0))
        for c in cands:
            yield c, got.get(c.face["pts"])


def _keep_region(rgb: np.ndarray, c: select.Candidate) -> tuple[np.ndarray, tuple[int, int]]:
    boxes = np.array([p.box for p in c.options.values()])
    x0, y0 = np.floor(boxes[:, :2].min(0)).astype(int)
    x1, y1 = np.ceil(boxes[:, 2:].max(0)).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    return np.ascontiguousarray(rgb[y0:y1, x0:x1]), (int(x0), int(y0))


def _entry(name: str, src: scan.Source, c: select.Candidate, p: crops.CropPlan, exact: dict[str, float], token: str
           ) -> dict[str, Any]:
    f = c.face
    return {
        "file": name, "source": str(src.path), "time": f["t"], "pts": f["pts"],
        "box": [round(v, 1) for v in f["box"]], "identity_distance": round(exact["distance"], 4),
        "sharpness": exact["sharpness"], "phash": f["phash"], "framing": p.framing,
        "crop": [round(v, 1) for v in p.box], "size": list(p.size), "upscale": p.upscale,
        "pose": {k: f[k] for k in ("yaw", "pitch", "roll")},
        "expression": {k: f[k] for k in ("eyes", "mouth", "smile")},
        "caption": token, "caption_raw": "", "captioner": "token",
    }


def _write_report(folder: Path, usable: list[scan.Source], identity: select.Identity, rejected: Counter,
                  settings: ImageSettings, ordered: list[select.Candidate], manifest: list[dict[str, Any]]) -> None:
    refs = identity.how == "reference"
    person = {"how": identity.how, "identities_seen": identity.identities,
              "description": "the person in the --face photos" if refs else
              "the identity with the most screen time (no --face photo given)"}
    shortfall = None
    if len(manifest) < settings.count:
        top = ", ".join(f"{k} {v}" for k, v in rejected.most_common(3) if v and k != select.SURPLUS)
        shortfall = (f"only {len(manifest)} of {settings.count} images: the footage has {len(ordered)} distinct usable "
                     f"frames of the person (most rejected: {top}) — add footage with more variety, or relax the "
                     f"thresholds")
    write_json(folder / "report.json", {
        "person": person, "images": len(manifest), "requested": settings.count, "shortfall": shortfall,
        "candidates": len(ordered), "rejected": {r: rejected[r] for r in select.REASONS if rejected[r]},
        "seconds_of_footage": round(sum(s.analysis.get("duration", 0.0) for s in usable if s.analysis), 2),
        "files": [{"source": str(s.path), "kind": s.kind, "samples": len(s.analysis["samples"]),
                   "faces": len(s.analysis["faces"]), "keyframes_only": s.analysis.get("keyframes_only")}
                  for s in usable if s.analysis],
        "settings": settings.model_dump(),
    })


# ---- captions and the trainer-facing files ---------------------------------------------------
def _captioner(ws: Workspace, settings: ImageSettings) -> tuple[Path | None, str | None]:
    """Florence-2's folder (or None, and why), checked before any work when it is required."""
    if settings.captions == "token":
        return None, None
    path, missing = cap.find_florence(ws.pack.models)
    if settings.captions == "florence2" and path is None:
        raise PersonaError(f"captions = \"florence2\" but {missing}", fix="fetch it, or use captions = \"auto\"")
    return path, missing


def _caption(ws: Workspace, root: Path, manifest: list[dict[str, Any]], settings: ImageSettings,
             florence: tuple[Path | None, str | None], problems: list[str]) -> str:
    """Caption entries whose captioner or token differ from now; rewrite the caption files."""
    token = ws.token
    florence_path, missing = florence
    name = f"florence2:{florence_path.name}" if florence_path else "token"
    if florence_path is None and settings.captions == "auto":
        kept = [e for e in manifest if e.get("captioner", "token") != "token"]
        if kept:
            name = kept[0]["captioner"]  # captions from an earlier run with Florence-2 stay
        else:
            problems.append(f"captions are the token alone: {missing}; a later run with it recaptions "
                            f"without redoing the selection")
    todo = [e for e in manifest if cap.needs_caption(e, name, token)]
    if todo:
        fresh = [e for e in todo if e.get("captioner") != name]
        model = cap.Florence(florence_path, settings.caption_task) if name != "token" and fresh else None
        for e in track(todo, f"captioning with {name}"):
            if name == "token":
                e.update(caption=token, captioner="token")
                continue
            if e.get("captioner") != name:
                with Image.open(root / e["file"]) as im:
                    e["caption_raw"] = model.describe(im)
                e["captioner"] = name
            e["caption"] = cap.person_caption(e.get("caption_raw", ""), token)
        write_json(root / "manifest.json", manifest)
    _trainer_files(root, manifest, root)  # writes the changed captions' .txt files
    return name


def _trainer_files(root: Path, manifest: list[dict[str, Any]], image_dir: Path) -> None:
    """Caption files, metadata.jsonl and dataset.toml from the manifest (`image_dir`: the final folder)."""
    for e in manifest:
        txt = root / Path(e["file"]).with_suffix(".txt")
        if not txt.exists() or txt.read_text(encoding="utf-8").strip() != e["caption"]:
            write_text(txt, e["caption"] + "\n")
    write_text(root / "metadata.jsonl",
               "".join(json.dumps({"file_name": e["file"], "text": e["caption"]}, ensure_ascii=False) + "\n"
                       for e in manifest))
    write_text(root / "dataset.toml", kohya_dataset_toml(image_dir, manifest))


def kohya_dataset_toml(root: Path, manifest: list[dict[str, Any]]) -> str:
    """A kohya-ss sd-scripts dataset config for this folder (DreamBooth style, captions in .txt)."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment("kohya-ss sd-scripts dataset config, written by `persona ingest`"))
    general = tomlkit.table()
    general["caption_extension"] = ".txt"
    general["keep_tokens"] = 1  # the trigger token stays first when captions are shuffled
    doc["general"] = general
    dataset = tomlkit.table()
    dataset["resolution"] = min(e["size"][0] for e in manifest) if manifest else 1024
    dataset["batch_size"] = 1
    dataset["enable_bucket"] = True
    dataset["min_bucket_reso"] = 256
    dataset["max_bucket_reso"] = 2048
    dataset["bucket_reso_steps"] = 64
    subset = tomlkit.table()
    subset["image_dir"] = str(root)
    subset["num_repeats"] = 1
    dataset["subsets"] = tomlkit.aot()
    dataset["subsets"].append(subset)
    datasets = tomlkit.aot()
    datasets.append(dataset)
    doc["datasets"] = datasets
    text = tomlkit.dumps(doc)
    tomllib.loads(text)
    return text
