"""Scan footage for faces: every sampled frame's faces with their landmarks, measures and identity.

Work is split into segments (a piece of one video between keyframes, or one still image) that run
in a process pool over the CPU cores. Each segment's result is cached on disk as soon as it is done,
keyed by the file's content hash and the scan settings, so a killed run resumes and a re-run skips
footage already scanned; thresholds are applied later, so changing them never rescans.

Identity embeddings are the expensive part (about 60 ms each with dlib on one core), so a face is
followed through its shot by box overlap and its embedding is measured when the track starts and
again every REEMBED seconds; the frames in between share it.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from persona import faces as fx
from persona.data import frames
from persona.errors import PersonaError
from persona.files import hash_json, read_json, remembered_hash, write_json
from persona.progress import quiet_libraries

SCAN_VERSION = 2
REEMBED = 30.0  # seconds between identity measurements along one face track
TRACK_IOU = 0.3  # box overlap that continues a track between samples of one shot
# Bounds on a segment's length (a quarter of the video, to keep both cores busy); each segment starts
# its face tracks afresh, so shorter segments cost more identity embeddings.
SEGMENT_SECONDS = (20.0, 120.0)
MAX_ANALYSIS_SIDE = 720  # the detector never sees more than this on the short side (4K footage)


@dataclass(frozen=True)
class ScanSettings:
    every: float  # seconds between sampled frames
    min_face: int  # smallest face height (source pixels) to find; sets the detector's frame size
    backend: str = "dlib"
    keyframes_only: bool | None = None  # None: when keyframes are about as dense as `every`

    def key(self) -> dict[str, Any]:
        return {"every": self.every, "min_face": self.min_face, "backend": self.backend,
                "keyframes_only": self.keyframes_only, "v": SCAN_VERSION}

    def use_keyframes(self, lay: frames.VideoLayout) -> bool:
        if self.keyframes_only is not None:
            return self.keyframes_only
        return lay.keyframe_interval() <= 1.5 * self.every

    def step(self, lay: frames.VideoLayout) -> float:
        """Seconds between samples of this video."""
        return max(self.every, lay.keyframe_interval()) if self.use_keyframes(lay) else self.every


# ---- one frame ------------------------------------------------------------------------------
def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def analysis_scale(width: int, height: int, min_face: int, detector_min: int) -> float:
    """Scale at which a face of `min_face` source pixels is the smallest the detector finds."""
    return min(1.0, detector_min / min_face, MAX_ANALYSIS_SIDE / min(width, height))


def measure_faces(small: np.ndarray, found: list[fx.Face], gray: Callable[[], np.ndarray], scale: float
                  ) -> list[tuple[fx.Face, dict[str, Any]]]:
    """Faces found in `small` (the frame's luma at `scale`), with boxes in source pixels and measures.

    `gray` lazily gives the full-resolution luma, used for sharpness and exposure because the crops
    are cut from full-resolution frames.
    """
    if not found:
        return []
    full = gray()
    out = []
    for face in found:
        box = [round(v / scale, 1) for v in face.box]
        g = fx.region(full, box)
        bright, clipped = fx.exposure(g)
        rec = {"box": box, "score": round(face.score, 3), "sharp": round(fx.sharpness(g), 1),
               "bright": round(bright, 1), "clipped": round(clipped, 3),
               "phash": fx.phash(fx.region(small, fx.landmark_box(face.landmarks))),
               **{k: round(v, 4) for k, v in fx.landmark_measures(face.landmarks).items()}}
        out.append((face, rec))
    return out


class Tracker:
    """Follows faces through one segment; decides which faces need a fresh identity embedding."""

    def __init__(self, every: float):
        self.every = every
        self.tracks: list[dict[str, Any]] = []  # {"box", "t", "shot", "emb", "emb_t"}

    def assign(self, t: float, shot: int, boxes: list[list[float]]) -> list[tuple[int, bool]]:
        """For each box: (track index, whether it needs a new embedding)."""
        live = [i for i, tr in enumerate(self.tracks)
                if tr["shot"] == shot and t - tr["t"] <= 2.5 * self.every + 1e-6]
        pairs = sorted(((_iou(b, self.tracks[i]["box"]), j, i) for j, b in enumerate(boxes) for i in live), reverse=True)
        result: dict[int, tuple[int, bool]] = {}
        used: set[int] = set()
        for overlap, j, i in pairs:
            if overlap < TRACK_IOU or j in result or i in used:
                continue
            used.add(i)
            result[j] = (i, t - self.tracks[i]["emb_t"] >= REEMBED)
        for j, b in enumerate(boxes):
            if j not in result:
                self.tracks.append({"box": b, "t": t, "shot": shot, "emb": None, "emb_t": t})
                result[j] = (len(self.tracks) - 1, True)
        for j, b in enumerate(boxes):
            tr = self.tracks[result[j][0]]
            tr["box"], tr["t"] = b, t
        return [result[j] for j in range(len(boxes))]


# ---- one task: a video segment or a still image ---------------------------------------------
def scan_segment(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: sample [start, end) of a video; faces, measures and embeddings of every sample."""
    path, every, rotation = Path(task["path"]), task["every"], task["rotation"]
    backend = fx.backend(task["backend"])
    seg = frames.Segment(path, task["start"], task["end"], every, task["keyframes_only"])
    tracker = Tracker(every)
    samples, faces, embeddings = [], [], []
    try:
        for frame in seg:
            t = float(frame.time)
            w, h = frame.width, frame.height
            scale = analysis_scale(w, h, task["min_face"], backend.min_size)
            size = {"width": max(2, round(w * scale)), "height": max(2, round(h * scale))}
            # The detector and landmarks work on luma (HOG on one channel instead of three is a third
            # faster, with the same boxes); colour is converted only for an identity embedding.
            small = frames.upright(frame.to_ndarray(format="gray", **size), rotation)
            measured = measure_faces(small, backend.detect(small),
                                     lambda: frames.upright(frame.to_ndarray(format="gray"), rotation), scale)
            colour = None
            shot = len(seg.cuts)
            samples.append({"t": round(t, 4), "pts": int(frame.pts), "faces": len(measured)})
            for (face, rec), (track, fresh) in zip(measured, tracker.assign(t, shot, [r["box"] for _, r in measured])):
                if fresh:
                    if colour is None:
                        colour = frames.upright(frame.to_ndarray(format="rgb24", **size), rotation)
                    embeddings.append([round(float(v), 5) for v in backend.embed(colour, face)])
                    tracker.tracks[track].update(emb=len(embeddings) - 1, emb_t=t)
                faces.append({"t": round(t, 4), "pts": int(frame.pts), "shot": shot, "track": track,
                              "emb": tracker.tracks[track]["emb"], **rec})
    except PersonaError as e:
        seg.error = e.message
    return {"kind": "segment", "path": str(path), "start": task["start"], "end": task["end"], "samples": samples,
            "faces": faces, "embeddings": embeddings, "cuts": [round(c, 4) for c in seg.cuts],
            "last_time": seg.last_time, "decoded": seg.decoded, "error": seg.error}


def load_still(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise PersonaError(f"cannot be read as an image ({e.__class__.__name__}: {e})", file=path,
                           fix="check it opens in an image viewer; re-export it as PNG or JPEG") from None


def scan_image(task: dict[str, Any], upsample: int = 0) -> dict[str, Any]:
    """Worker: one still image (a dataset candidate, or with upsample=1 a reference photo)."""
    path = Path(task["path"])
    backend = fx.backend(task["backend"])
    try:
        rgb = load_still(path)
    except PersonaError as e:
        return {"kind": "image", "path": str(path), "error": e.message, "samples": [], "faces": [], "embeddings": []}
    h, w = rgb.shape[:2]
    scale = analysis_scale(w, h, task["min_face"], backend.min_size)
    colour = np.asarray(Image.fromarray(rgb).resize((max(2, round(w * scale)), max(2, round(h * scale))),
                                                    Image.Resampling.BILINEAR)) if scale < 1 else rgb
    small = np.asarray(Image.fromarray(colour).convert("L"))
    found = backend.detect(small, upsample)
    measured = measure_faces(small, found, lambda: np.asarray(Image.fromarray(rgb).convert("L")), scale)
    faces, embeddings = [], []
    for i, (face, rec) in enumerate(measured):
        embeddings.append([round(float(v), 5) for v in backend.embed(colour, face)])
        faces.append({"t": None, "pts": None, "shot": 0, "track": i, "emb": i, **rec})
    return {"kind": "image", "path": str(path), "width": w, "height": h, "error": None,
            "samples": [{"t": None, "pts": None, "faces": len(faces)}], "faces": faces, "embeddings": embeddings}


def _run(task: dict[str, Any]) -> dict[str, Any]:
    result = scan_segment(task) if task["kind"] == "segment" else scan_image(task)
    result["task"] = task
    return result


# ---- planning, caching and running ----------------------------------------------------------
class IncompleteScan(PersonaError):
    """A segment of a file's scan is missing at merge time (another process, or a lost write)."""


@dataclass
class Source:
    """One input file and what is known about it."""

    path: Path
    kind: str  # "video" | "image"
    key: str = ""
    layout: frames.VideoLayout | None = None
    analysis: dict[str, Any] | None = None
    error: str | None = None
    fix: str | None = None


def _cache_dir(root: Path, src: Source) -> Path:
    return root / f"{src.path.stem[:40]}-{src.key}"


def _segment_file(folder: Path, start: float) -> Path:
    return folder / f"seg-{start:012.3f}.json"


def plan(src: Source) -> list[tuple[float, float]]:
    """A video's segments; they depend on the file alone, so a resumed run finds its finished ones."""
    if src.kind == "image" or src.layout is None:
        return [(0.0, 0.0)]
    lay = src.layout
    lo, hi = SEGMENT_SECONDS
    return frames.plan_segments(lay.keyframes, lay.duration, min(hi, max(lo, lay.duration / 4)))


def _tasks_for(src: Source, settings: ScanSettings, folder: Path) -> list[dict[str, Any]]:
    base = {"path": str(src.path), "every": settings.every, "min_face": settings.min_face,
            "backend": settings.backend}
    if src.kind == "image":
        return [] if _segment_file(folder, 0.0).exists() else [{**base, "kind": "image", "start": 0.0, "seconds": 1.0}]
    lay = src.layout
    assert lay is not None
    tasks = []
    for start, end in plan(src):
        if not _segment_file(folder, start).exists():
            span = min(end, lay.duration) - start
            tasks.append({**base, "kind": "segment", "start": start, "end": end, "rotation": lay.rotation,
                          "keyframes_only": settings.use_keyframes(lay), "seconds": max(span, 0.0)})
    return tasks


def prepare(sources: list[Source], settings: ScanSettings, cache: Path) -> None:
    """Hash each input and load finished scans from the cache; read the layout of the others."""
    memo = read_json(cache / "hashes.json", {})
    for src in sources:
        try:
            if src.path.stat().st_size == 0:
                raise PersonaError("is empty", file=src.path, fix="re-copy or re-export the file")
            src.key = hash_json({"file": remembered_hash(src.path, memo), "scan": settings.key()})
            done = read_json(_cache_dir(cache, src) / "analysis.json")
            if done and done.get("key") == src.key:
                src.analysis = done
            elif src.kind == "video":
                src.layout = frames.layout(src.path)
        except PersonaError as e:
            src.error, src.fix = e.message, e.fix
        except FileNotFoundError:
            src.error, src.fix = "does not exist", "check the path"
        except OSError as e:
            src.error, src.fix = f"cannot be read ({e.strerror})", "check the file's permissions"
    write_json(cache / "hashes.json", memo)


def run(sources: list[Source], settings: ScanSettings, cache: Path, workers: int,
        progress: Callable[[float], None] = lambda n: None) -> None:
    """Scan every source not already scanned; fills `src.analysis` (or `src.error`)."""
    pending = [s for s in sources if s.analysis is None and s.error is None]
    tasks = []
    for src in pending:
        folder = _cache_dir(cache, src)
        folder.mkdir(parents=True, exist_ok=True)
        tasks += _tasks_for(src, settings, folder)
    by_path = {str(s.path): s for s in pending}
    for result in _map(tasks, workers, settings.backend):
        src = by_path[result["path"]]
        folder = _cache_dir(cache, src)
        name = _segment_file(folder, result["task"].get("start", 0.0))
        write_json(name, {k: v for k, v in result.items() if k != "task"})
        progress(result["task"]["seconds"])
    for src in pending:
        folder = _cache_dir(cache, src)
        src.analysis = merge(src, [_segment_file(folder, start) for start, _ in plan(src)], settings)
        write_json(folder / "analysis.json", src.analysis)
        for seg in folder.glob("seg-*.json"):
            seg.unlink(missing_ok=True)


def _map(tasks: list[dict[str, Any]], workers: int, backend: str) -> Iterator[dict[str, Any]]:
    workers = max(1, min(workers, len(tasks)))
    if workers == 1:
        fx.backend(backend)
        yield from map(_run, tasks)
        return
    # Longest first, so one long segment does not run alone at the end. Workers come from a fork
    # server, not a fork of this process: by now it may hold threads (torch's, PyAV's, a compile
    # pool's) whose locks a plain fork would copy in a locked state, and a worker would hang on them.
    # ProcessPoolExecutor, not multiprocessing.Pool: a worker killed by the OOM killer or a crash in
    # dlib or FFmpeg breaks the pool (BrokenProcessPool), where Pool.imap_unordered waits forever.
    tasks = sorted(tasks, key=lambda t: -t["seconds"])
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([__name__])  # workers start with the imports done
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(backend,))
    queue = iter(tasks)
    running: dict[Future, dict[str, Any]] = {}
    try:
        # At most one task per worker in flight: a broken pool then names the files being scanned,
        # and Ctrl-C has little queued work to cancel.
        for task in itertools.islice(queue, workers):
            running[pool.submit(_run, task)] = task
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    files = sorted({Path(t["path"]).name for t in [task, *running.values()]})
                    raise PersonaError(f"a scan worker died on {' or '.join(files)}; run again to resume",
                                       file=Path(task["path"]),
                                       fix="finished parts are kept; if it happens again, check free memory "
                                           "or re-export the file") from None
                for nxt in itertools.islice(queue, 1):
                    running[pool.submit(_run, nxt)] = nxt
                yield result
    except BaseException:  # an error, Ctrl-C, or the caller stopping early: drop the work in flight
        _stop(pool)
        raise
    pool.shutdown(wait=True)


def _start_worker(backend: str) -> None:
    # Ctrl-C reaches every process of the terminal's group; the parent handles it (and stops the
    # workers), so a worker prints no KeyboardInterrupt traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_libraries()  # a fresh process: the parent's warning filters do not carry over
    fx.backend(backend)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down without waiting for segments still being scanned (on Ctrl-C or an error
    their results are not wanted; finished ones are on disk). Python 3.14 has terminate_workers();
    before it the worker processes are only reachable through the executor's _processes."""
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()
    pool.shutdown(wait=True)


def merge(src: Source, parts: list[Path], settings: ScanSettings) -> dict[str, Any]:
    """One analysis per file from its segments: global embedding indices and track ids, errors, cuts."""
    samples, faces, embeddings, cuts, errors = [], [], [], [], []
    last_time, decoded = 0.0, 0
    for i, part in enumerate(parts):
        seg = read_json(part)
        if not isinstance(seg, dict):
            # Read as empty, a lost segment would be cached as a finished scan that misses the person.
            raise IncompleteScan(f"the face scan is incomplete ({part.name} is missing or unreadable); "
                                 "it is not cached", file=src.path, fix="run the same command again to resume")
        offset = len(embeddings)
        embeddings += seg.get("embeddings", [])
        samples += seg.get("samples", [])
        for f in seg.get("faces", []):
            faces.append({**f, "emb": f["emb"] + offset, "track": f"{i}:{f['track']}", "shot": f"{i}:{f['shot']}"})
        cuts += seg.get("cuts", [])
        last_time = max(last_time, seg.get("last_time") or 0.0)
        decoded += seg.get("decoded", 0)
        if seg.get("error"):
            errors.append({"start": seg.get("start"), "error": seg["error"]})
    lay = src.layout
    out: dict[str, Any] = {"key": src.key, "path": str(src.path), "kind": src.kind, "samples": samples,
                           "faces": faces, "embeddings": embeddings, "cuts": sorted(cuts), "errors": errors,
                           "decoded_frames": decoded}
    if lay is not None:
        out.update(duration=lay.duration, width=lay.width, height=lay.height, fps=lay.fps, rotation=lay.rotation,
                   keyframes=lay.keyframes, scanned_until=last_time, step=settings.step(lay),
                   keyframes_only=settings.use_keyframes(lay),
                   truncated=bool(samples) and last_time < lay.duration - max(1.0, 4 / lay.fps))
    else:
        first = read_json(parts[0]) if parts else {}
        out.update(width=first.get("width"), height=first.get("height"), step=settings.every)
    return out


def worker_count(requested: int) -> int:
    """`requested` processes, or one per CPU core this process may use."""
    if requested > 0:
        return requested
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def reference_faces(paths: list[Path], backend_name: str) -> tuple[np.ndarray, list[PersonaError]]:
    """Embeddings of the person from reference photos that show exactly one clear face."""
    embeddings, problems = [], []
    for path in paths:
        # Upsampled once: a reference photo is worth finding even a small face in.
        res = scan_image({"path": str(path), "backend": backend_name, "min_face": 160}, upsample=1)
        if res["error"]:
            problems.append(PersonaError(res["error"], file=path, fix="use a PNG or JPEG photo of the person"))
            continue
        faces, clear_score = res["faces"], fx.backend(backend_name).clear_score
        tallest = max((f["box"][3] - f["box"][1] for f in faces), default=0.0)
        clear_faces = [f for f in faces if f["score"] >= clear_score and f["box"][3] - f["box"][1] >= 0.3 * tallest]
        if not clear_faces and faces:
            clear_faces = [max(faces, key=lambda f: f["score"])]
        if not clear_faces:
            problems.append(PersonaError("shows no face the detector can find", file=path,
                                         fix="use a sharp, well-lit photo facing the camera"))
        elif len(clear_faces) > 1:
            problems.append(PersonaError(f"shows {len(clear_faces)} faces, so it cannot say who the person is",
                                         file=path, fix="crop the photo to the person alone"))
        else:
            embeddings.append(res["embeddings"][clear_faces[0]["emb"]])
    return np.array(embeddings, np.float32), problems
