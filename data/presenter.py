"""The presenter side of `persona ingest`: stretches of footage where the person talks to the camera.

    scan + identity (the image side's, cached) ─samples─> good/bad sample per scan frame
      ─regions─> candidate spans inside one shot ─windows─> spread over sources ─verify─> frames
      checked one by one at the full frame rate ─trim/split─> clips ─encode─> datasets/presenter/

A candidate comes from the image side's scan: consecutive samples of one shot where the person's
face is the only clear face, large, and turned to the camera. Only the chosen candidates are decoded
again, at the full frame rate: every frame's luma goes through the cut detector; faces are detected
every `detect_every` frames (and on every frame between two detections that disagree, so a change
is placed to the frame); each frame gets 68 landmarks from the interpolated box, hence yaw and a
face box; identity is measured every `identity_every` seconds. Frames failing a check split the
span; each remaining run of at least `min_seconds` becomes a clip (at most `max_seconds` long).

Written to `<workspace>/datasets/presenter/`: NNNN.mp4 (H.264, no audio, the source frame rate),
manifest.json (one entry per clip, with the smoothed face box of every frame), report.json (per
file the reasons, in seconds, why footage was not used, and every rejected span with its reason)
and review/strip.png (the first frame of each clip, in a subfolder so no reader of clips meets it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TYPE_CHECKING

import av
import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

from persona import faces as fx
from persona.data import frames, scan
from persona.data.crops import labelled_grid
from persona.data.images import Footage, ImageSettings, nobody, scan_and_identify
from persona.errors import PersonaError
from persona.files import hash_file, hash_json, is_fresh, mark_fresh, read_json, staged_dir, write_json
from persona.media import open_video, write_video
from persona.progress import info, meter, warn

if TYPE_CHECKING:
    from persona.workspace import Workspace

DATASET = "datasets/presenter"
CACHE = "cache/ingest/presenter"
VERSION = 2

# Reasons a stretch of footage is not a clip (reported in seconds per file, and per rejected span).
NO_FACE = "no face"
OTHER = "someone else"
CROWD = "another person on screen"
SMALL = "face too small"
EDGE = "face cut by the frame edge"
TURNED = "turned away from the camera"
UNSTEADY = "face moving too much"
BLUR = "blurry"
CUT = "shot cut"
SHORT = "too short"
SURPLUS = "not needed (enough clips)"
UNREADABLE = "could not be decoded"


class PresenterSettings(BaseModel):
    """Settings of the presenter side of `persona ingest` (recipe kind `ingest-presenter`)."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(8, ge=1, description="clips to make at most, spread over the source files")
    min_seconds: float = Field(4.0, gt=0, description="shortest clip")
    max_seconds: float = Field(15.0, gt=0, description="longest clip (a longer steady stretch gives several)")
    min_face: int = Field(256, ge=40, description="smallest face height (source pixels)")
    max_yaw: float = Field(0.4, gt=0, le=1, description="head turn from landmarks (0 frontal, 1 full profile)")
    max_motion: float = Field(1.0, gt=0, description="face-centre speed, in face heights per second "
                                                      "(averaged over half a second)")
    min_sharpness: float = Field(6.0, ge=0, description="mean variance of the Laplacian of the face at 256 px")
    detect_every: int = Field(5, ge=1, description="frames between face detections; frames in between "
                                                   "are tracked, and detected too where two detections disagree")
    identity_every: float = Field(1.0, gt=0, description="seconds between identity checks along a clip")
    max_height: int | None = Field(None, ge=64, description="scale clips down to this height (default: keep "
                                                            "the source resolution)")
    crf: int = Field(18, ge=0, le=51, description="x264 quality (lower is better)")
    preset: str = Field("fast", description="x264 speed preset")

    def key(self) -> dict[str, Any]:
        return self.model_dump()


@dataclass
class Window:
    """A span of one video to decode and check; `lo`/`hi` in seconds."""

    file: int  # index into the usable sources
    lo: float
    hi: float
    shot: int
    quality: float = 0.0


@dataclass
class Checked:
    """A window checked frame by frame: per frame pts, times, verdicts and measures (source pixels)."""

    pts: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    reason: list[str | None] = field(default_factory=list)
    cut: list[bool] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)  # smoothed landmark boxes
    yaw: list[float] = field(default_factory=list)
    sharpness: dict[int, float] = field(default_factory=dict)  # frame index -> sharpness
    distance: dict[int, float] = field(default_factory=dict)  # frame index -> identity distance

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v.items()) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Checked":
        c = cls(**{k: v for k, v in d.items() if k not in ("sharpness", "distance")})
        c.sharpness, c.distance = {int(k): v for k, v in d["sharpness"]}, {int(k): v for k, v in d["distance"]}
        return c


# ------------------------------------------------------------------------------------------------
def ingest_presenter(ws: Workspace, videos: list[Path], images: list[Path], settings: PresenterSettings | None = None,
                     image_settings: ImageSettings | None = None, faces: list[Path] | tuple[Path, ...] = (),
                     report_scan_problems: bool = True) -> dict[str, Any]:
    """Build `datasets/presenter` from footage; returns a summary for --json.

    The scan and identity are the image side's (same settings, same cache), so after the image side
    nothing is scanned again. Footage without a usable stretch is not an error: the summary says why.
    """
    settings = settings or PresenterSettings()
    image_settings = image_settings or ImageSettings()
    problems: list[str] = []
    try:
        # Without the person there are no clips, but that is an answer (given in the report), not a failure.
        footage = scan_and_identify(ws, [Path(p) for p in videos], [Path(p) for p in images], image_settings,
                                    [Path(p) for p in faces], problems, require_person=False)
    finally:
        for line in problems if report_scan_problems else []:
            warn(line)
    root = ws.path(DATASET)
    videos_used = [i for i, s in enumerate(footage.usable) if s.kind == "video"]
    key = hash_json({"sources": [footage.usable[i].key for i in videos_used],
                     "identity": {"how": footage.identity.how,
                                  "refs": [hash_file(p) for p in faces if Path(p).exists()], "scan": image_settings.scan_settings().key(), "match": footage.match,
                                  "margin": image_settings.identity_margin,
                                  "images": [s.key for s in footage.usable if s.kind == "image"]},
                     "settings": settings.key(), "v": VERSION})
    reused = is_fresh(root / "manifest.json", key)
    if not reused:
        with staged_dir(root) as staging:
            _build(ws, staging, footage, videos_used, settings)
        mark_fresh(root / "manifest.json", key)
    manifest = read_json(root / "manifest.json", [])
    report = read_json(root / "report.json", {})
    ws.update("datasets", {"presenter": ws.relative(root) if manifest else None})
    seconds = round(sum(e["end"] - e["start"] for e in manifest), 2)
    if manifest:
        info(f"{len(manifest)} presenter clips ({seconds:.1f} s) in {ws.relative(root)}")
    else:
        warn(f"no presenter clips: {report.get('why')}")
    return {"dataset": ws.relative(root), "clips": len(manifest), "requested": settings.count, "seconds": seconds,
            "reused": reused, "why": report.get("why"), "rejected": report.get("rejected", {}),
            "files": {f["source"]: {"clips": f["clips"], "rejected": f["rejected"]} for f in report.get("files", [])},
            "decoded_seconds": report.get("decoded_seconds"),
            "strip": ws.relative(root / "review" / "strip.png") if manifest else None}


# ---- candidates from the scan -------------------------------------------------------------------
def sample_verdicts(a: dict[str, Any], file: int, footage: Footage, s: PresenterSettings
                    ) -> list[tuple[float, str | None, dict[str, Any] | None]]:
    """Each scan sample of a video: (time, reason it is unusable or None, the person's face)."""
    clear = footage.backend.clear_score
    by_t: dict[float, list[dict[str, Any]]] = {}
    for f in a["faces"]:
        by_t.setdefault(f["t"], []).append(f)
    out = []
    for smp in sorted(a["samples"], key=lambda x: x["t"]):
        found = [f for f in by_t.get(smp["t"], []) if f["score"] >= clear]
        mine = [f for f in found if footage.identity.accepted[footage.identity.row(file, f)]]
        reason, face = None, mine[0] if mine else None
        if not found:
            reason = NO_FACE
        elif not mine:
            reason = OTHER
        elif len(found) > 1:
            reason = CROWD
        else:
            # The detector's box height jumps between its pyramid levels by about a tenth: the scan
            # lets such faces through and the frame-by-frame check judges the size over time.
            reason = _face_problem(face["box"], a["width"], a["height"], face["yaw"], s, 0.9 * s.min_face)
        out.append((smp["t"], reason, face))
    return out


def _face_problem(box: list[float], w: int, h: int, yaw: float, s: PresenterSettings, min_face: float = 0.0
                  ) -> str | None:
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * 0.1, (y1 - y0) * 0.1
    if y1 - y0 < min_face:
        return SMALL
    if x0 - mx < 0 or y0 - my < 0 or x1 + mx > w or y1 + my > h:
        return EDGE
    if abs(yaw) > s.max_yaw:
        return TURNED
    return None


def candidate_windows(a: dict[str, Any], file: int, verdicts: list[tuple[float, str | None, Any]],
                      s: PresenterSettings, rejected: list[dict[str, Any]]) -> list[Window]:
    """Runs of good samples within one shot, widened to the neighbouring bad sample or cut (the check
    at the full frame rate finds the exact edges), split into windows of at most max_seconds."""
    cuts = list(a.get("cuts", []))
    bounds = [0.0] + cuts + [a.get("duration") or 0.0]

    def shot_of(t: float) -> int:
        return sum(1 for c in cuts if c <= t + 1e-6)

    windows: list[Window] = []
    run: list[int] = []
    for j in range(len(verdicts) + 1):
        good = j < len(verdicts) and verdicts[j][1] is None
        if good and run and shot_of(verdicts[j][0]) != shot_of(verdicts[run[-1]][0]):
            windows += _close(a, file, verdicts, run, bounds, shot_of, s, rejected)
            run = []
        if good:
            run.append(j)
            continue
        if run:
            windows += _close(a, file, verdicts, run, bounds, shot_of, s, rejected)
            run = []
    return windows


def _close(a: dict[str, Any], file: int, verdicts: list[tuple[float, str | None, Any]], run: list[int],
           bounds: list[float], shot_of: Any, s: PresenterSettings, rejected: list[dict[str, Any]]) -> list[Window]:
    shot = shot_of(verdicts[run[0]][0])
    start, end = bounds[shot], bounds[shot + 1]
    j0, j1 = run[0], run[-1]
    # A cut is timed at the first decoded frame of the new shot, so the real one may be a little
    # earlier: half a second before it is decoded too, and the frame-by-frame cut check places it.
    lo = verdicts[j0 - 1][0] if j0 > 0 and shot_of(verdicts[j0 - 1][0]) == shot else max(0.0, start - 0.5 * (shot > 0))
    hi = verdicts[j1 + 1][0] if j1 + 1 < len(verdicts) and shot_of(verdicts[j1 + 1][0]) == shot else end
    if hi - lo < s.min_seconds:
        rejected.append({"source": a["path"], "start": round(lo, 3), "end": round(hi, 3), "reason": SHORT,
                         "stage": "scan"})
        return []
    faces = [verdicts[j][2] for j in run]
    quality = float(np.mean([(f["box"][3] - f["box"][1]) * (1 - abs(f["yaw"])) for f in faces]))
    n = max(1, int((hi - lo) // s.max_seconds))  # pieces of max_seconds or a little more
    edges = np.linspace(lo, hi, n + 1)
    return [Window(file, float(x), float(y), shot, quality) for x, y in zip(edges[:-1], edges[1:])]


def spread(windows: list[Window]) -> list[Window]:
    """Candidates in the order they are tried: round robin over files, and within a file a shot not
    yet used first, then the larger and more frontal face."""
    by_file: dict[int, list[Window]] = {}
    for w in windows:
        by_file.setdefault(w.file, []).append(w)
    queues = []
    for group in by_file.values():
        used: Counter = Counter()
        ordered = []
        pool = sorted(group, key=lambda w: -w.quality)
        while pool:
            best = min(pool, key=lambda w: used[w.shot])
            pool.remove(best)
            used[best.shot] += 1
            ordered.append(best)
        queues.append(ordered)
    out = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


# ---- the frame-by-frame check ---------------------------------------------------------------------
def check_window(src: scan.Source, w: Window, footage: Footage, s: PresenterSettings) -> Checked:
    """Decode [lo, hi) at the full frame rate and give every frame a verdict and a face box."""
    a = src.analysis
    assert a is not None
    backend, rotation = footage.backend, a.get("rotation", 0)
    scale = min(1.0, backend.min_size / (0.9 * s.min_face))  # a face of 0.9 min_face is the smallest found
    width, height = a["width"], a["height"]
    stored = (height, width) if rotation % 180 else (width, height)
    small_size = {"width": max(2, round(stored[0] * scale)), "height": max(2, round(stored[1] * scale))}
    id_step = max(1, round(s.identity_every * a["fps"]))
    sharp_step = max(1, round(a["fps"] / 2))
    out = Checked()
    grays: list[np.ndarray] = []
    colours: dict[int, np.ndarray] = {}  # small RGB where identity is measured
    lumas: dict[int, np.ndarray] = {}  # full-resolution luma where sharpness is measured
    previous = None
    for frame in _decode(src.path, w.lo, w.hi):
        i = len(out.pts)
        thumb = frames.thumb(frame)
        out.cut.append(previous is not None and frames.is_cut(previous, thumb))
        previous = thumb
        out.pts.append(int(frame.pts))
        out.times.append(float(frame.time))
        grays.append(frames.upright(frame.to_ndarray(format="gray", **small_size), rotation))
        if i == 0 or out.cut[i] or i - max(colours) >= id_step:  # every identity_every s and after each cut
            colours[i] = frames.upright(frame.to_ndarray(format="rgb24", **small_size), rotation)
        if i % sharp_step == 0:  # measured below, once the box is known
            lumas[i] = frames.upright(frame.to_ndarray(format="gray"), rotation)
    n = len(out.pts)
    if n == 0:
        return out
    dets = _detections(grays, out.cut, backend, s.detect_every)
    target = _target_boxes(dets, out.cut, max(2 * s.detect_every, round(a["fps"] / 2)))
    out.reason = [None] * n
    boxes = np.zeros((n, 4))
    yaw, heights = np.zeros(n), np.zeros(n)  # heights: the detector's box, as min_face is measured
    for i in range(n):
        if target[i] is None:
            out.reason[i] = NO_FACE
            continue
        if sum(1 for f in dets[_nearest(dets, i)] if f.score >= backend.clear_score) > 1:
            out.reason[i] = CROWD
        lm = backend.landmarks(grays[i], tuple(target[i]))
        yaw[i] = fx.landmark_measures(lm)["yaw"]
        boxes[i] = [*(lm.min(0) / scale), *(lm.max(0) / scale)]
        heights[i] = (target[i][3] - target[i][1]) / scale
        if out.reason[i] is None:
            out.reason[i] = _face_problem(list(np.array(target[i]) / scale), width, height, 0.0, s)
        if i in colours:
            face = fx.Face(tuple(target[i]), 1.0, lm)
            d = float(backend.distance(backend.embed(colours[i], face), footage.identity.references).min())
            out.distance[i] = round(d, 4)
    _identity_verdicts(out, footage.match)
    smooth = _smooth(boxes, out.reason, out.cut, a["fps"])
    yaw_s = _smooth(yaw[:, None], out.reason, out.cut, a["fps"])[:, 0]
    speed = _speed(smooth, out.reason, out.cut, a["fps"])
    size = _smooth(heights[:, None], out.reason, out.cut, a["fps"], seconds=1.0, order=1)[:, 0]
    for i in range(n):
        if out.reason[i] is None and size[i] < s.min_face:
            out.reason[i] = SMALL
        elif out.reason[i] is None and abs(yaw_s[i]) > s.max_yaw:
            out.reason[i] = TURNED
        elif out.reason[i] is None and speed[i] > s.max_motion:
            out.reason[i] = UNSTEADY
    for i, luma in lumas.items():
        if out.reason[i] is None:
            out.sharpness[i] = round(fx.sharpness(fx.region(luma, tuple(smooth[i]))), 1)
    out.boxes = [[round(float(v), 1) for v in b] for b in smooth]
    out.yaw = [round(float(v), 4) for v in yaw_s]
    return out


def _decode(path: Path, lo: float, hi: float) -> Iterator[av.VideoFrame]:
    """Every frame of [lo, hi) seconds (frame threads: this runs in the main process alone)."""
    container, stream = open_video(path)
    with container:
        stream.thread_type = "AUTO"
        if lo > 0:
            container.seek(int(lo / stream.time_base), stream=stream)
        decoding = container.decode(stream)
        try:
            for frame in decoding:
                if frame.time is None or frame.pts is None or frame.time < lo - 1e-6:
                    continue
                if frame.time >= hi - 1e-6:
                    break
                yield frame
        finally:
            decoding.close()


def _detections(grays: list[np.ndarray], cuts: list[bool], backend: fx.FaceBackend, every: int
                ) -> dict[int, list[fx.Face]]:
    """Faces on every `every`-th frame, on each side of every cut, and on every frame between two
    detections that disagree (a face count or a box that jumped), so each change is placed exactly."""
    n = len(grays)
    at = sorted(set(range(0, n, every)) | {n - 1} | {i for i in range(n) if cuts[i]} |
                {i - 1 for i in range(1, n) if cuts[i]})
    dets = {i: backend.detect(grays[i]) for i in at}
    for a, b in zip(at, at[1:]):
        if b - a > 1 and not _agree(dets[a], dets[b], backend.clear_score):
            for i in range(a + 1, b):
                dets[i] = backend.detect(grays[i])
    return dets


def _agree(x: list[fx.Face], y: list[fx.Face], clear: float) -> bool:
    x = [f for f in x if f.score >= clear]
    y = [f for f in y if f.score >= clear]
    if len(x) != len(y):
        return False
    return all(max((scan._iou(list(f.box), list(g.box)) for g in y), default=0.0) >= 0.5 for f in x)


def _nearest(dets: dict[int, Any], i: int) -> int:
    """The detected frame whose verdict frame i shares: itself, else the previous one (frames between
    two detections that agree share their verdict; where they disagree every frame was detected)."""
    if i in dets:
        return i
    return max(k for k in dets if k < i)


def _target_boxes(dets: dict[int, list[fx.Face]], cuts: list[bool], max_gap: int) -> list[list[float] | None]:
    """The tracked face's detector box on every frame (analysis pixels): the largest face where
    detected, linearly interpolated between detections up to `max_gap` frames apart within a shot
    (so a detector miss on a frame or two does not split a clip)."""
    known = {k: list(max(faces, key=lambda f: f.height).box) for k, faces in dets.items() if faces}
    ks = sorted(known)
    out: list[list[float] | None] = [None] * len(cuts)
    for k0, k1 in zip(ks, ks[1:] + [None]):
        out[k0] = known[k0]
        if k1 is None or k1 - k0 > max_gap or any(cuts[k0 + 1: k1 + 1]):
            continue
        for i in range(k0 + 1, k1):
            f = (i - k0) / (k1 - k0)
            out[i] = [(1 - f) * p + f * q for p, q in zip(known[k0], known[k1])]
    return out


def _identity_verdicts(out: Checked, match: float) -> None:
    """A failed identity check condemns the frames from the check before it to the check after it,
    within its shot (each shot's first frame is checked): a stretch near someone else is unusable."""
    checked = sorted(out.distance)
    cuts = [i for i, c in enumerate(out.cut) if c]
    for pos, f in enumerate(checked):
        if out.distance[f] <= match:
            continue
        lo = max(([checked[pos - 1] + 1] if pos > 0 else [0]) + [c for c in cuts if c <= f])
        hi = min(([checked[pos + 1]] if pos + 1 < len(checked) else [len(out.reason)]) + [c for c in cuts if c > f])
        for i in range(lo, hi):
            out.reason[i] = OTHER


def _pieces(reason: list[str | None], cuts: list[bool]) -> list[tuple[int, int]]:
    """[a, b) ranges of frames with a face and no cut inside."""
    out, start = [], None
    for i in range(len(reason) + 1):
        stop = i == len(reason) or reason[i] == NO_FACE or cuts[i]
        if stop and start is not None:
            out.append((start, i))
            start = None
        if i < len(reason) and reason[i] != NO_FACE and start is None:
            start = i
    return out


def _smooth(values: np.ndarray, reason: list[str | None], cuts: list[bool], fps: float, seconds: float = 0.4,
            order: int = 2) -> np.ndarray:
    """Savitzky-Golay smoothing over `seconds` (scipy), piece by piece so it never crosses a cut: it
    removes the landmarks' frame-to-frame jitter and keeps real head motion."""
    from scipy.signal import savgol_filter

    out = values.astype(float).copy()
    win = max(5, int(round(seconds * fps)) | 1)
    for a, b in _pieces(reason, cuts):
        if b - a >= 5:
            out[a:b] = savgol_filter(values[a:b], min(win, (b - a) - (1 - (b - a) % 2)), order, axis=0)
    return out


def _speed(boxes: np.ndarray, reason: list[str | None], cuts: list[bool], fps: float) -> np.ndarray:
    """Face-centre speed in face heights per second, averaged over half a second (not across a cut
    or a frame without the face)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    step = np.zeros(len(boxes))
    step[1:] = np.linalg.norm(np.diff(centre, axis=0), axis=1) / heights[1:] * fps
    gone = [i for i in range(len(boxes)) if cuts[i] or reason[i] == NO_FACE or (i > 0 and reason[i - 1] == NO_FACE)]
    step[gone] = 0.0
    width = max(1, int(round(fps / 2)))
    return np.convolve(step, np.ones(width) / width, mode="same")


# ---- from checked frames to clips ---------------------------------------------------------------
def runs(checked: Checked, src: str, s: PresenterSettings, fps: float, rejected: list[dict[str, Any]]
         ) -> list[tuple[int, int]]:
    """[a, b) frame ranges that pass every check, split at cuts, at most max_seconds long; what fails
    is recorded in `rejected` with its reason."""
    n = len(checked.pts)
    good, start = [], None
    reason = list(checked.reason)
    for i in range(n + 1):
        ok = i < n and reason[i] is None and not (checked.cut[i] and start is not None)
        if start is not None and not ok:
            good.append((start, i))
            start = None
        if i < n and reason[i] is None and start is None:
            start = i
    # bad stretches, one entry per reason
    i = 0
    while i < n:
        if reason[i] is None:
            i += 1
            continue
        j = i
        while j < n and reason[j] == reason[i]:
            j += 1
        rejected.append(_span(src, checked, i, j, reason[i], fps))
        i = j
    for i in range(1, n):
        if checked.cut[i]:
            rejected.append({**_span(src, checked, i, i + 1, CUT, fps), "end": round(checked.times[i], 3)})
    out = []
    longest = max(1, int(round(s.max_seconds * fps)))
    shortest = int(np.ceil(s.min_seconds * fps - 1e-6))
    for a, b in good:
        sharp = [v for k, v in checked.sharpness.items() if a <= k < b]
        if b - a < shortest:
            rejected.append(_span(src, checked, a, b, SHORT, fps))
        elif sharp and float(np.mean(sharp)) < s.min_sharpness:
            rejected.append(_span(src, checked, a, b, BLUR, fps))
        else:
            while b - a >= shortest:
                out.append((a, min(b, a + longest)))
                a += longest
    return out


def _span(src: str, c: Checked, a: int, b: int, reason: str, fps: float) -> dict[str, Any]:
    return {"source": src, "start": round(c.times[a], 3), "end": round(c.times[b - 1] + 1 / fps, 3),
            "reason": reason, "stage": "frames"}


def write_clip(path: Path, src: scan.Source, c: Checked, a: int, b: int, s: PresenterSettings
               ) -> tuple[np.ndarray, tuple[int, int], float]:
    """Encode frames [a, b) of a checked window (no audio, the source frame rate); returns the first
    frame, the clip's size and its scale from source pixels."""
    info_ = src.analysis
    rotation, fps = info_.get("rotation", 0), info_["fps"]
    w, h = info_["width"], info_["height"]
    scale = min(1.0, s.max_height / h) if s.max_height else 1.0
    size = (int(round(w * scale / 2)) * 2, int(round(h * scale / 2)) * 2)  # yuv420p needs even sides
    stored = {"width": size[1], "height": size[0]} if rotation % 180 else {"width": size[0], "height": size[1]}
    wanted = set(c.pts[a:b])
    first: list[np.ndarray] = []

    def pictures():
        for frame in _decode(src.path, c.times[a], c.times[b - 1] + 0.5 / fps):
            if frame.pts in wanted:
                rgb = frames.upright(frame.to_ndarray(format="rgb24", **stored), rotation)
                if not first:
                    first.append(rgb)
                wanted.discard(frame.pts)
                yield rgb

    write_video(path, pictures(), fps, crf=s.crf, preset=s.preset)
    if wanted:
        path.unlink()
        raise PersonaError(f"{len(wanted)} frames of {c.times[a]:.2f}-{c.times[b - 1]:.2f} s could not be "
                           f"decoded again", file=src.path, fix="re-copy or re-export the file")
    return first[0], size, size[0] / w


def _build(ws: Workspace, staging: Path, footage: Footage, videos: list[int], s: PresenterSettings) -> None:
    cache = ws.path(CACHE)
    rejected: list[dict[str, Any]] = []
    per_file: dict[int, Counter] = {i: Counter() for i in videos}  # seconds by reason, at the scan's samples
    per_check: dict[int, Counter] = {i: Counter() for i in videos}  # ... and in the frames checked one by one
    windows: list[Window] = []
    for i in videos:
        a = footage.usable[i].analysis
        verdicts = sample_verdicts(a, i, footage, s)
        for t, reason, _ in verdicts:
            if reason:
                per_file[i][reason] += a["step"]
        for j, (t, reason, _) in enumerate(verdicts):  # rejected spans at the scan's resolution
            if reason and (j == 0 or verdicts[j - 1][1] != reason):
                k = j
                while k + 1 < len(verdicts) and verdicts[k + 1][1] == reason:
                    k += 1
                rejected.append({"source": a["path"], "start": round(max(0.0, t - a["step"] / 2), 3),
                                 "end": round(min(a.get("duration", 0.0), verdicts[k][0] + a["step"] / 2), 3),
                                 "reason": reason, "stage": "scan"})
        windows += candidate_windows(a, i, verdicts, s, rejected)
    manifest: list[dict[str, Any]] = []
    firsts: list[tuple[np.ndarray, list[float]]] = []
    decoded = 0.0
    ordered = spread(windows)
    with meter("presenter clips: checking candidates", total=round(sum(w.hi - w.lo for w in ordered), 1)) as m:
        for pos, w in enumerate(ordered):
            if len(manifest) >= s.count:
                for rest in ordered[pos:]:
                    rejected.append({"source": footage.usable[rest.file].analysis["path"], "start": round(rest.lo, 3),
                                     "end": round(rest.hi, 3), "reason": SURPLUS, "stage": "scan"})
                    m.advance(rest.hi - rest.lo)  # skipped, so the bar still reaches its total
                break
            src = footage.usable[w.file]
            a = src.analysis
            checked = _checked(cache, src, w, footage, s)
            decoded += w.hi - w.lo
            m.advance(w.hi - w.lo)
            if not checked.pts:
                rejected.append({"source": a["path"], "start": round(w.lo, 3), "end": round(w.hi, 3),
                                 "reason": UNREADABLE, "stage": "frames"})
                continue
            for r in checked.reason:
                if r:
                    per_check[w.file][r] += 1 / a["fps"]
            for x, y in runs(checked, a["path"], s, a["fps"], rejected):
                if len(manifest) >= s.count:
                    rejected.append({**_span(a["path"], checked, x, y, SURPLUS, a["fps"])})
                    continue
                name = f"{len(manifest) + 1:04d}.mp4"
                first, size, scale = write_clip(staging / name, src, checked, x, y, s)
                manifest.append(_entry(name, a, checked, x, y, size, scale))
                firsts.append((first, manifest[-1]["boxes"][0]))
    order = sorted(range(len(manifest)), key=lambda k: (manifest[k]["source"], manifest[k]["start"]))
    manifest, firsts = [manifest[k] for k in order], [firsts[k] for k in order]
    _rename(staging, manifest)
    if manifest:
        strip(firsts, [f"{e['file'][:4]} {e['end'] - e['start']:.1f} s" for e in manifest],
              staging / "review" / "strip.png")
    write_json(staging / "manifest.json", manifest)
    totals: Counter = Counter()
    for c in per_file.values():
        totals.update({k: round(v, 2) for k, v in c.items()})
    why = None if manifest else _why(footage, videos, totals, rejected, s)
    if not footage.identity.accepted.any():
        absent = nobody(footage.identity, footage.identity.how == "reference", footage.match)
        why = f"the person is not in the footage: {absent.message}"
    write_json(staging / "report.json", {
        "clips": len(manifest), "requested": s.count, "why": why, "person": footage.identity.how,
        "rejected": {k: round(v, 2) for k, v in totals.most_common()},
        "files": [{"source": footage.usable[i].analysis["path"],
                   "clips": sum(1 for e in manifest if e["source"] == footage.usable[i].analysis["path"]),
                   "rejected": {k: round(v, 2) for k, v in per_file[i].most_common()},
                   "rejected_when_checked": {k: round(v, 2) for k, v in per_check[i].most_common()}}
                  for i in videos],
        "rejected_spans": rejected, "decoded_seconds": round(decoded, 2), "settings": s.model_dump(),
    })


def _rename(staging: Path, manifest: list[dict[str, Any]]) -> None:
    """Clips were numbered as they were made; renumber them in (source, start) order."""
    for e in manifest:
        (staging / e["file"]).rename(staging / f".{e['file']}")
    for n, e in enumerate(manifest, start=1):
        name = f"{n:04d}.mp4"
        (staging / f".{e['file']}").rename(staging / name)
        e["file"] = name


def _checked(cache: Path, src: scan.Source, w: Window, footage: Footage, s: PresenterSettings) -> Checked:
    """check_window, cached by the file, the window and the settings: a killed run resumes here."""
    key = hash_json({"file": src.key, "lo": round(w.lo, 4), "hi": round(w.hi, 4), "refs": footage.identity.references
                     .round(5).tolist(), "match": footage.match, "s": s.model_dump(exclude={"count", "crf", "preset",
                                                                                             "max_height"}),
                     "v": VERSION})
    path = cache / f"{src.path.stem[:40]}-{key}.json"
    done = read_json(path)
    if done:
        return Checked.from_json(done)
    checked = check_window(src, w, footage, s)
    write_json(path, checked.to_json())
    return checked


def _entry(name: str, a: dict[str, Any], c: Checked, x: int, y: int, size: tuple[int, int], scale: float
           ) -> dict[str, Any]:
    fps = a["fps"]
    yaw = np.abs(c.yaw[x:y])
    sharp = [v for k, v in c.sharpness.items() if x <= k < y]
    dist = [v for k, v in c.distance.items() if x <= k < y]
    return {"file": name, "source": a["path"], "start": round(c.times[x], 4), "end": round(c.times[y - 1] + 1 / fps, 4),
            "fps": fps, "size": list(size), "frames": y - x,
            "boxes": [[round(v * scale, 1) for v in b] for b in c.boxes[x:y]],
            "yaw": {"mean": round(float(yaw.mean()), 3), "max": round(float(yaw.max()), 3)},
            "sharpness": round(float(np.mean(sharp)), 1) if sharp else None,
            "identity_distance": round(max(dist), 4) if dist else None}


def _why(footage: Footage, videos: list[int], totals: Counter, rejected: list[dict[str, Any]],
         s: PresenterSettings) -> str:
    if not videos:
        return "no video among the footage (still images cannot give clips)"
    top = ", ".join(f"{k} {v:.0f} s" for k, v in totals.most_common(4) if v)
    short = sum(1 for r in rejected if r["reason"] == SHORT)
    return (f"no stretch of at least {s.min_seconds:g} s shows the person alone, facing the camera, with a face of "
            f"at least {s.min_face} px (time not usable: {top or 'none'}; {short} stretch(es) too short); see "
            f"report.json, or lower min_face / min_seconds in an ingest-presenter recipe")


def strip(firsts: list[tuple[np.ndarray, list[float]]], labels: list[str], out: Path, height: int = 256) -> Path:
    """The first frame of each clip in a row (wrapping after eight), its face box drawn, to review
    the clips at a glance."""
    cells = []
    for rgb, box in firsts:
        im = Image.fromarray(rgb)
        k = height / im.height
        im = im.resize((max(1, round(im.width * k)), height), Image.Resampling.BILINEAR)
        ImageDraw.Draw(im).rectangle([v * k for v in box], outline=(80, 220, 80), width=2)
        cells.append(im)
    return labelled_grid(cells, labels, out, per_row=min(8, max(1, len(cells))))
