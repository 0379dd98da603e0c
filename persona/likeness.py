"""How much a picture looks, and a voice sounds, like the person: references and scores.

Ingest stores the references in the datasets (`datasets/images/reference_face.json`,
`datasets/voice/reference_voice.json`); the stages read those files and score with the functions
here, so no stage imports another. Face identity comes from `persona.faces` (dlib's 128-d
embedding, Euclidean distance, `match_distance` 0.55), voice from `persona.speakers` (cosine of
unit embeddings). The lip-sync check needs no extra weights: the motion energy of the mouth region
(frame differences in the lower half of the face box) against the narration's loudness envelope,
correlated at the best lag within ±0.3 s.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path
from typing import Any, Iterable, Iterator, TYPE_CHECKING

import numpy as np
from PIL import Image

from persona import faces as fx
from persona.files import atomic_path, read_json, write_json
from persona.progress import track

if TYPE_CHECKING:
    from persona.workspace import Workspace

REFERENCE_FACE = "datasets/images/reference_face.json"
REFERENCE_VOICE = "datasets/voice/reference_voice.json"
ANALYSIS_SIDE = 960  # frames are scored at most this large: faces in renders are big, dlib's HOG is slow
MAX_LAG = 0.3  # seconds the sync check searches either way


# ---- references ------------------------------------------------------------------------------
def reference_face(embeddings: np.ndarray | list, keep: float = 0.8) -> np.ndarray:
    """A robust mean: the mean of the `keep` share of embeddings nearest their element-wise median,
    so odd frames (a turned head, a wrong crop that slipped through) do not pull the reference."""
    emb = np.atleast_2d(np.asarray(embeddings, np.float32))
    if not len(emb):
        raise ValueError("no face embeddings to build a reference from")
    d = np.linalg.norm(emb - np.median(emb, 0), axis=1)
    nearest = np.argsort(d)[: max(1, int(np.ceil(keep * len(emb))))]
    return emb[nearest].mean(0)


def write_reference_face(path: str | Path, embeddings: np.ndarray | list, backend: str = "dlib",
                         files: list[str] | None = None) -> Path:
    """The reference face; with `files` (the dataset images the embeddings are of), each image's own
    embedding too, so that a dropped image leaves the reference (persona.data.review)."""
    emb = np.atleast_2d(np.asarray(embeddings, np.float32))
    record = {"backend": backend, "faces": len(emb), "match_distance": fx.backend(backend).match_distance,
              "embedding": [round(float(v), 6) for v in reference_face(emb)]}
    if files is not None:
        record["files"] = {f: [round(float(v), 6) for v in e] for f, e in zip(files, emb, strict=True)}
    return write_json(path, record)


def _to_16k(wav: np.ndarray, sr: int) -> np.ndarray:
    from scipy.signal import resample_poly

    from persona.speakers import SAMPLE_RATE

    wav = np.asarray(wav, np.float32).reshape(-1)
    if sr == SAMPLE_RATE:
        return wav
    g = gcd(int(sr), SAMPLE_RATE)
    return resample_poly(wav, SAMPLE_RATE // g, int(sr) // g).astype(np.float32)


def voice_embedding(wav: np.ndarray, sr: int, encoder: Any = None) -> np.ndarray:
    """The unit mean of half-overlapping window embeddings over the whole recording."""
    from persona.speakers import SAMPLE_RATE, default_encoder, unit

    encoder = encoder or default_encoder()
    audio = _to_16k(wav, sr)
    seconds = len(audio) / SAMPLE_RATE
    starts = np.arange(0.0, max(seconds - encoder.window, 0.0) + 1e-6, encoder.window / 2)
    return unit(encoder.embed_windows(audio, starts).mean(0))


def reference_voice(wavs: Iterable[str | Path], encoder: Any = None) -> np.ndarray:
    """The unit mean of the clips' own embeddings (each clip weighs the same, however long)."""
    from persona.speakers import unit

    per_clip = clip_embeddings(wavs, encoder)
    if not per_clip:
        raise ValueError("no clips to build a reference voice from")
    return unit(np.mean(per_clip, 0))


def clip_embeddings(wavs: Iterable[str | Path], encoder: Any = None) -> list[np.ndarray]:
    from persona.media import read_audio
    from persona.speakers import SAMPLE_RATE

    return [voice_embedding(read_audio(w, SAMPLE_RATE), SAMPLE_RATE, encoder) for w in wavs]


def write_reference_voice(path: str | Path, wavs: list[str | Path], encoder: Any = None,
                          files: list[str] | None = None) -> Path:
    """The reference voice of `wavs`; with `files` (the dataset clips they are), each clip's own
    embedding too, so that a dropped clip leaves the reference without re-embedding the rest."""
    from persona.speakers import default_encoder

    encoder = encoder or default_encoder()
    return write_voice_record(path, encoder.name, clip_embeddings(track(wavs, "reference voice"), encoder), files)


def write_voice_record(path: str | Path, encoder: str, per_clip: list, files: list[str] | None = None) -> Path:
    from persona.speakers import unit

    if not len(per_clip):
        raise ValueError("no clips to build a reference voice from")
    record: dict[str, Any] = {"encoder": encoder, "clips": len(per_clip),
                              "embedding": [round(float(v), 6) for v in unit(np.mean(np.asarray(per_clip, np.float32), 0))]}
    if files is not None:
        record["files"] = {f: [round(float(v), 6) for v in e] for f, e in zip(files, per_clip, strict=True)}
    return write_json(path, record)


# ---- scores ----------------------------------------------------------------------------------
def _small(rgb: np.ndarray, side: int = ANALYSIS_SIDE) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(rgb)
    return np.asarray(Image.fromarray(rgb).resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR))


def main_face(rgb: np.ndarray, backend: fx.FaceBackend) -> fx.Face | None:
    """The largest clear face (upsampling once when the frame is small), or None."""
    upsample = 1 if max(rgb.shape[:2]) < 640 else 0
    found = [f for f in backend.detect(rgb, upsample) if f.score >= backend.clear_score]
    return max(found, key=lambda f: f.height) if found else None


def face_distances(frames: Iterable[np.ndarray], reference: np.ndarray, backend: str = "dlib") -> list[float | None]:
    """Identity distance of each RGB frame's largest face to `reference` (None: no face found)."""
    be = fx.backend(backend)
    out: list[float | None] = []
    for rgb in frames:
        rgb = _small(rgb)
        face = main_face(rgb, be)
        out.append(None if face is None else float(be.distance(be.embed(rgb, face), reference)[0, 0]))
    return out


def speaker_similarity(wav: np.ndarray, sr: int, reference: np.ndarray, encoder: Any = None) -> float:
    """Cosine similarity of the recording's voice to the reference voice (-1..1, higher is closer)."""
    from persona.speakers import unit

    return float(voice_embedding(wav, sr, encoder) @ unit(np.asarray(reference, np.float32)))


def pack_reference_voice(ws: Workspace) -> tuple[np.ndarray | None, Any, str | None]:
    """(the reference voice embedding, the encoder that made it, None), or (None, None, why not):
    no reference stored yet, or the pack's encoder has changed since ingest."""
    record = read_json(ws.path(REFERENCE_VOICE), None)
    if not isinstance(record, dict) or not record.get("embedding"):
        return None, None, f"no {REFERENCE_VOICE}: run `persona ingest` to store the reference voice"
    encoder, why = _voice_encoder(ws, record)
    if encoder is None:
        return None, None, why
    return np.asarray(record["embedding"], np.float32), encoder, None


def mouth_motion(frames: list[np.ndarray], backend: str = "dlib", every: int = 5) -> np.ndarray:
    """Motion energy of the mouth region between consecutive frames (len(frames) - 1 values).

    The face is detected every `every` frames and the nearest detection's box is used between them
    (a talking head barely moves in 0.2 s, and detecting every frame would cost 5x as much).
    """
    be = fx.backend(backend)
    small = [_small(f, 640) for f in frames]
    boxes: list[fx.Box | None] = []
    for i in range(0, len(small), every):
        face = main_face(small[i], be)
        boxes.append(face.box if face else None)
    known = [b for b in boxes if b is not None]
    if not known:
        return np.zeros(max(len(frames) - 1, 0), np.float32)
    crops = []
    for i, rgb in enumerate(small):
        box = boxes[min(round(i / every), len(boxes) - 1)] or known[0]
        x0, y0, x1, y1 = box
        mouth = (x0, (y0 + y1) / 2, x1, y1)  # the lower half of the box: nose tip, mouth and chin
        gray = Image.fromarray(fx.region(rgb, mouth)).convert("L").resize((64, 32), Image.Resampling.BILINEAR)
        crops.append(np.asarray(gray, np.float32))
    return np.array([np.abs(b - a).mean() for a, b in zip(crops, crops[1:])], np.float32)


def loudness(wav: np.ndarray, sr: int, times: np.ndarray, width: float) -> np.ndarray:
    """RMS level (dB) of `width`-second windows centred on `times`."""
    wav = np.asarray(wav, np.float32).reshape(-1)
    half = max(1, int(width * sr / 2))
    out = []
    for t in times:
        c = int(t * sr)
        seg = wav[max(0, c - half): c + half]
        out.append(10 * np.log10(np.mean(seg.astype(np.float64) ** 2) + 1e-8) if len(seg) else -80.0)
    return np.array(out, np.float32)


def sync_check(frames: list[np.ndarray], fps: float, wav: np.ndarray, sr: int, max_lag: float = MAX_LAG,
               backend: str = "dlib") -> dict[str, float]:
    """Pearson correlation of mouth motion with the loudness envelope at the best lag within ±max_lag.

    `lag` > 0 means the picture trails the sound by that many seconds. A mouth that moves with the
    narration correlates clearly (speech opens the mouth when it is loud); a still or unrelated one
    stays near 0.
    """
    motion = mouth_motion(frames, backend)
    times = (np.arange(len(motion)) + 1.0) / fps  # a difference sits between frames i and i+1
    env = loudness(wav, sr, times, 2.0 / fps)
    # Syllables last ~0.2 s: averaging both over that span keeps the speech rhythm and drops
    # frame-to-frame noise (measured on ../shared/media footage: r 0.27 -> 0.52 for the real pairing).
    n = max(1, int(round(0.2 * fps)))
    motion, env = (np.convolve(x, np.ones(n) / n, "same") for x in (motion, env))
    k = int(round(max_lag * fps))
    best = (-2.0, 0)
    for lag in range(-k, k + 1):
        a, b = (motion[lag:], env[: len(env) - lag]) if lag >= 0 else (motion[:lag], env[-lag:])
        if len(a) < 3 or a.std() == 0 or b.std() == 0:
            continue
        r = float(np.corrcoef(a, b)[0, 1])
        if r > best[0]:
            best = (r, lag)
    r, lag = best
    return {"correlation": round(max(r, -1.0), 4), "lag": round(lag / fps, 3)}


# ---- the render report -----------------------------------------------------------------------
def _video_frames(path: Path, fps: float | None) -> Iterator[tuple[float, np.ndarray]]:
    from persona.media import iter_frames

    for t, rgb in iter_frames(path, fps):
        yield t, _small(rgb)


def _voice_encoder(ws: Workspace, record: dict[str, Any]) -> tuple[Any, str | None]:
    """The encoder that made the reference voice, or why there is none."""
    from persona.speakers import encoder_for

    encoder = encoder_for(ws.pack.models)
    same = encoder.name.removesuffix("-bf16") == str(record.get("encoder", "")).removesuffix("-bf16")
    return (encoder, None) if same else (None, f"the reference voice was embedded by {record.get('encoder')}, "
                                                f"and this pack now uses {encoder.name}: run `persona ingest` again")


def _scene(folder: Path, source: str, face: dict | None, voice: np.ndarray | None, encoder: Any) -> dict[str, Any]:
    from persona.media import probe, read_audio, read_frames

    out: dict[str, Any] = {"scene": folder.name, "source": source}
    finished = folder / "finished.mp4"
    out["seconds"] = round(probe(finished).duration, 3) if finished.exists() else 0.0
    if face is not None:
        ref, be = np.asarray(face["embedding"], np.float32), face.get("backend", "dlib")
        key = folder / "keyframe.png"
        if key.exists():
            out["keyframe_distance"] = _round(face_distances([np.asarray(Image.open(key).convert("RGB"))], ref, be)[0])
        if finished.exists():
            sampled = list(_video_frames(finished, 1.0))
            dist = face_distances([f for _, f in sampled], ref, be)
            out["frames"] = [[round(t, 2), _round(d)] for (t, _), d in zip(sampled, dist)]
            out["no_face"] = sum(d is None for d in dist)
            scored = [d for d in dist if d is not None]
            out["worst_distance"] = _round(max(scored)) if scored else None
            out["mean_distance"] = _round(float(np.mean(scored))) if scored else None
    narration = folder / "narration.wav"
    if voice is not None and narration.exists():
        out["speaker_similarity"] = round(speaker_similarity(read_audio(narration, 16000), 16000, voice, encoder), 4)
    if (folder / "synced.mp4").exists() and narration.exists() and finished.exists():
        frames, fps = read_frames(finished)
        out["sync"] = sync_check(list(frames), fps, read_audio(narration, 16000), 16000)
    return out


def _round(d: float | None) -> float | None:
    return None if d is None else round(float(d), 4)


def render_report(ws: Workspace, render_dir: str | Path) -> dict[str, Any]:
    """Score every scene of `renders/NAME` against the pack's references and plot identity over time.

    Returns {"skipped": why} when the workspace has no references; else {"match_distance", "scenes":
    [per scene: scene, source, seconds, keyframe_distance, frames [[t, distance|None]], no_face,
    worst_distance, mean_distance, speaker_similarity, sync {correlation, lag}], "worst": {scene,
    second, distance}, "voice_skipped"?, "plot": "likeness.png", "summary": one line}. Keys a scene
    cannot have (no keyframe, no lip sync) are left out. B-roll scenes are scored but never "worst".
    """
    render_dir = Path(render_dir)
    face = read_json(ws.path(REFERENCE_FACE), None)
    voice_record = read_json(ws.path(REFERENCE_VOICE), None)
    if face is None and voice_record is None:
        return {"skipped": f"no {REFERENCE_FACE} or {REFERENCE_VOICE}: run `persona ingest` to store the references"}
    encoder, voice_skipped, voice = None, None, None
    if voice_record is not None:
        encoder, voice_skipped = _voice_encoder(ws, voice_record)
        voice = np.asarray(voice_record["embedding"], np.float32) if encoder is not None else None
    sources = read_json(render_dir / "render.json", {}).get("sources", {})
    folders = sorted(p for p in (render_dir / "scenes").glob("*") if p.is_dir())
    scenes = [_scene(f, sources.get(f.name, "unknown"), face, voice, encoder) for f in track(folders, "likeness")]
    match = float(face["match_distance"]) if face else fx.backend("dlib").match_distance
    report: dict[str, Any] = {"match_distance": match, "scenes": scenes}
    if voice_skipped:
        report["voice_skipped"] = voice_skipped
    start = 0.0
    worst: dict[str, Any] | None = None
    for s in scenes:
        s["start"] = round(start, 3)
        for t, d in s.get("frames", []):
            if d is not None and s["source"] != "b-roll" and (worst is None or d > worst["distance"]):
                worst = {"scene": s["scene"], "second": round(start + t, 2), "distance": d}
        start += s["seconds"]
    report["worst"] = worst
    if face is not None:
        _plot(scenes, match, render_dir / "likeness.png")
        report["plot"] = "likeness.png"
    report["summary"] = _summary(report)
    return report


def _summary(report: dict[str, Any]) -> str:
    scenes, match = report["scenes"], report["match_distance"]
    parts = []
    w = report["worst"]
    if w is not None:
        verdict = "within" if w["distance"] <= match else "ABOVE"
        parts.append(f"worst identity: scene {w['scene']} at {w['second']:.1f} s, distance {w['distance']:.2f} "
                     f"({verdict} the match threshold {match:.2f})")
    no_face = sum(s.get("no_face", 0) for s in scenes if s["source"] != "b-roll")
    if no_face:
        parts.append(f"{no_face} on-camera frame(s) without a face")
    voices = [s for s in scenes if "speaker_similarity" in s]
    if voices:
        low = min(voices, key=lambda s: s["speaker_similarity"])
        parts.append(f"lowest voice similarity: scene {low['scene']} ({low['speaker_similarity']:.2f})")
    synced = [s for s in scenes if "sync" in s]
    if synced:
        low = min(synced, key=lambda s: s["sync"]["correlation"])
        parts.append(f"weakest lip sync: scene {low['scene']} (r={low['sync']['correlation']:.2f}, "
                     f"lag {low['sync']['lag']:+.2f} s)")
    return "likeness: " + ("; ".join(parts) if parts else "nothing to score")


def _plot(scenes: list[dict[str, Any]], match: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.5), dpi=100)
    top = match * 1.6
    for s in scenes:
        pts = [(s["start"] + t, d) for t, d in s.get("frames", []) if d is not None]
        missing = [s["start"] + t for t, d in s.get("frames", []) if d is None]
        if pts:
            ax.plot(*zip(*pts), "o-", ms=3, color="tab:blue" if s["source"] != "b-roll" else "tab:gray")
            top = max(top, max(d for _, d in pts) * 1.1)
        if s.get("keyframe_distance") is not None:
            ax.plot([s["start"]], [s["keyframe_distance"]], "D", color="tab:purple", ms=5)
        if missing:
            ax.plot(missing, [0.02] * len(missing), "x", color="tab:red", ms=4)
        ax.axvline(s["start"], color="0.7", lw=0.8)
        ax.text(s["start"] + 0.1, 0.97, f"{s['scene']} {s['source']}", transform=ax.get_xaxis_transform(),
                fontsize=7, va="top")
    ax.axhline(match, color="tab:orange", ls="--", lw=1, label=f"match threshold {match:.2f}")
    ax.plot([], [], "D", color="tab:purple", label="keyframe")
    ax.plot([], [], "x", color="tab:red", label="no face")
    ax.set_ylim(0, top)
    ax.set_xlim(0, max(sum(s["seconds"] for s in scenes), 1.0))
    ax.set_xlabel("seconds into the video")
    ax.set_ylabel("identity distance (lower is closer)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)  # outside: never over the curve
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ---- train-lora: scoring sample grids and picking the checkpoint and strength -----------------
# A token cell without a face counts as this far from the reference: clearly another person (dlib
# measured 0.65-1.01 between different people, NOTES.md), so a step that loses the face scores badly
# without one missing cell hiding the others.
NO_FACE_DISTANCE = 1.0


def grid_cells(sheet: np.ndarray, rows: int, cols: int) -> list[list[np.ndarray]]:
    """The cells of a sample grid (rows x cols images of equal size) as RGB arrays, row by row."""
    h, w = sheet.shape[0] // rows, sheet.shape[1] // cols
    return [[sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] for c in range(cols)] for r in range(rows)]


def score_cells(cells: list[list[np.ndarray]], with_token: list[bool], reference: np.ndarray,
                backend: str = "dlib", match: float | None = None) -> dict[str, Any]:
    """Identity and leak of one sample grid (rows of cells; `with_token[r]`: row r's prompt has the token).

    identity: mean distance to the reference over the token cells, a cell without a face counted as
    NO_FACE_DISTANCE; None when no token cell has a face. leak: the share of token-less cells whose
    face is within the match threshold (the likeness appearing without being asked for).
    """
    match = fx.backend(backend).match_distance if match is None else match
    return summarise_distances([face_distances(row, reference, backend) for row in cells], with_token, match)


def summarise_distances(dist: list[list[float | None]], with_token: list[bool], match: float) -> dict[str, Any]:
    """`score_cells`' result from the per-cell distances (rows of cells, None: no face)."""
    token = [d for row, t in zip(dist, with_token) if t for d in row]
    plain = [d for row, t in zip(dist, with_token) if not t for d in row]
    found = [d for d in token if d is not None]
    identity = float(np.mean([NO_FACE_DISTANCE if d is None else d for d in token])) if found else None
    leaked = sum(d is not None and d < match for d in plain)
    return {"distances": [[_round(d) for d in row] for row in dist], "faces": len(found), "token_cells": len(token),
            "identity": _round(identity), "leak": round(leaked / len(plain), 4) if plain else 0.0}


def objective(score: dict[str, Any], leak_weight: float) -> float | None:
    """What the pick minimises: identity distance plus `leak_weight` times the leak share."""
    if score.get("identity") is None:
        return None
    return float(score["identity"]) + leak_weight * float(score.get("leak") or 0.0)


def within_reach(scores: dict[int, dict[str, Any]], tolerance: float, leak_weight: float) -> set[int]:
    """Steps that may still be picked whatever later steps score: those within `tolerance` of the
    best so far (a later, better step only lowers the bar, so a step beyond it now never returns)."""
    obj = {s: objective(v, leak_weight) for s, v in scores.items()}
    known = [o for o in obj.values() if o is not None]
    if not known:
        return set()  # a step without a face is never picked
    bar = min(known) + tolerance
    return {s for s, o in obj.items() if o is not None and o <= bar + 1e-9}


def pick_checkpoint(scores: dict[int, dict[str, Any]], last: int, tolerance: float,
                    leak_weight: float) -> dict[str, Any]:
    """The step to export: the earliest whose objective is within `tolerance` of the best (an
    overtraining guard: a later step barely better is more likely memorising the dataset).

    `scores` maps candidate steps to `score_cells` results; `last` is the final step, the fallback
    when no candidate has a face. Returns {"step", "reason", "fallback"?, "best_step"?}.
    """
    obj = {s: objective(v, leak_weight) for s, v in sorted(scores.items())}
    scored = {s: o for s, o in obj.items() if o is not None}
    if not scored:
        what = "no face was found in the token rows of any sample grid" if scores else "no sample grid was scored"
        return {"step": last, "fallback": True,
                "reason": f"{what}, so likeness cannot choose: exported the last step ({last})"}
    best_step = min(scored, key=lambda s: (scored[s], s))
    best = scored[best_step]
    step = min(s for s, o in scored.items() if o <= best + tolerance + 1e-9)
    sc = scores[step]
    leak = f", leak {sc.get('leak', 0.0):.0%} of token-less images" if leak_weight else ""
    why = f"step {step}: identity distance {sc['identity']:.3f} ({sc['faces']}/{sc['token_cells']} faces){leak}"
    if step == best_step:
        why += f", the best of {len(scored)} scored steps"
    else:
        why += (f"; the best was step {best_step} ({best:.3f}), and the earliest step within {tolerance:g} of it "
                "is kept (guards against overtraining)")
    return {"step": step, "best_step": best_step, "reason": why}


def pick_strength(sweep: list[dict[str, Any]], leak_weight: float, default: float) -> dict[str, Any]:
    """The strength to record: the lowest objective in the sweep (ties: the one nearest 1.0).

    `sweep` holds {"strength", **score_cells(...)} per strength; `default` is kept when no face was found."""
    scored = [(objective(s, leak_weight), s) for s in sweep]
    scored = [(o, s) for o, s in scored if o is not None]
    if not scored:
        return {"strength": default, "fallback": True,
                "reason": f"no face in the strength sweep: kept the recipe's strength {default:g}"}
    o, best = min(scored, key=lambda x: (round(x[0], 6), abs(x[1]["strength"] - 1.0)))
    swept = ", ".join(f"{s['strength']:g}" for s in sweep)
    return {"strength": best["strength"],
            "reason": f"strength {best['strength']:g}: identity distance {best['identity']:.3f}, "
                      f"leak {best.get('leak', 0.0):.0%} (swept {swept})"}


def plot_training(record: dict[str, Any], path: str | Path) -> Path:
    """`likeness.png` of a LoRA run: identity distance and leak per sample step (the chosen step
    marked, the match threshold drawn) and, beside it, the strength sweep."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    path = Path(path)
    match = record.get("match_distance", fx.backend("dlib").match_distance)
    fig, (ax, sw) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=100, gridspec_kw={"width_ratios": [3, 1]})
    steps = sorted(record.get("steps", []), key=lambda s: s["step"])
    pts = [(s["step"], s["identity"]) for s in steps if s.get("identity") is not None]
    if pts:
        ax.plot(*zip(*pts), "o-", ms=4, color="tab:blue", label="identity distance (token rows)")
    missing = [s["step"] for s in steps if s.get("identity") is None]
    if missing:
        ax.plot(missing, [0.02] * len(missing), "x", color="tab:red", ms=5, label="no face")
    ax.axhline(match, color="tab:orange", ls="--", lw=1, label=f"match threshold {match:.2f}")
    chosen = record.get("chosen_step")
    if chosen is not None:
        ax.axvline(chosen, color="tab:green", lw=1.5, label=f"chosen step {chosen}")
    ax.set_ylim(0, max([NO_FACE_DISTANCE * 1.05] + [d * 1.1 for _, d in pts]))
    ax.set_xlabel("training step")
    ax.set_ylabel("identity distance (lower is closer)")
    leak_ax = ax.twinx()
    if steps:
        leak_ax.plot([s["step"] for s in steps], [100 * (s.get("leak") or 0.0) for s in steps], "s:", ms=3,
                     color="tab:purple", label="leak (token-less rows)")
    leak_ax.set_ylim(0, 105)
    leak_ax.set_ylabel("leak (% of token-less images)")
    lines = ax.get_legend_handles_labels(), leak_ax.get_legend_handles_labels()
    ax.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], fontsize=7, loc="upper right")
    sweep = sorted(record.get("sweep", []), key=lambda s: s["strength"])
    spts = [(s["strength"], s["identity"]) for s in sweep if s.get("identity") is not None]
    if spts:
        sw.plot(*zip(*spts), "o-", color="tab:blue")
    sw.axhline(match, color="tab:orange", ls="--", lw=1)
    if record.get("strength") is not None and sweep:
        sw.axvline(record["strength"], color="tab:green", lw=1.5)
    sw.set_ylim(0, max([NO_FACE_DISTANCE * 1.05] + [d * 1.1 for _, d in spts]))
    sw.set_xlabel(f"strength (step {chosen})" if chosen is not None else "strength")
    sw.set_title("strength sweep" if sweep else "no strength sweep", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
