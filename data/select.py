"""From scanned faces to a dataset: who the person is, which of their frames are usable, and a varied
set of them. Pure computation on the scan results; nothing here decodes video.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from persona.data import crops
from persona import faces as fx
from persona.faces import FaceBackend, hamming

# Rejection reasons, in the order they are checked (and reported).
NO_FACE = "no face in the frame"
OTHER = "someone else"
AMBIGUOUS = "identity not clear (too close to another identity)"
SMALL = "face too small"
EDGE = "face cut by the frame edge"
BLUR = "blurry"
EXPOSURE = "bad exposure"
EYES = "eyes closed"
PROFILE = "strong profile"
CROWD = "another face prominent"
NO_FRAMING = "frame too small for any framing at the output size"
DUPLICATE = "near-duplicate"
BY_HAND = "dropped by hand"  # persona.data.review
SURPLUS = "not needed (enough variety already)"
MISMATCH = "failed the identity check on the exactly decoded frame"
UNREADABLE = "could not be decoded again"
REASONS = [NO_FACE, OTHER, AMBIGUOUS, SMALL, EDGE, BLUR, EXPOSURE, EYES, PROFILE, CROWD, NO_FRAMING, DUPLICATE, BY_HAND,
           SURPLUS, MISMATCH, UNREADABLE]

CLUSTER_CAP = 4000  # embeddings clustered directly; beyond this a spread subset is, the rest join the nearest


@dataclass
class Identity:
    how: str  # "reference" | "screen time"
    references: np.ndarray  # (k, d) embeddings that define the person
    distance: np.ndarray  # per embedding row: distance to the person
    accepted: np.ndarray  # per embedding row: the person, with margin over every other identity
    identities: int  # identities seen in the footage (clusters)
    offsets: list[int] = field(default_factory=list)  # first embedding row of each analysis

    def row(self, file: int, face: dict[str, Any]) -> int:
        return self.offsets[file] + face["emb"]


def _clusters(emb: np.ndarray, backend: FaceBackend, threshold: float) -> np.ndarray:
    """Identity labels by average-linkage clustering (scipy), cut at the backend's match distance."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = len(emb)
    if n < 2:
        return np.zeros(n, int)
    subset = np.linspace(0, n - 1, min(n, CLUSTER_CAP)).round().astype(int)
    d = backend.distance(emb[subset], emb[subset])
    labels = fcluster(linkage(squareform(d, checks=False), "average"), threshold, "distance") - 1
    if len(subset) == n:
        return labels
    centroids = np.stack([emb[subset][labels == k].mean(0) for k in range(labels.max() + 1)])
    return backend.distance(emb, centroids).argmin(1)


def identify(analyses: list[dict[str, Any]], references: np.ndarray, backend: FaceBackend, match: float,
             margin: float) -> Identity:
    """Who the person is: the reference photos, else the identity with the most screen time.

    A face is the person when it is within `match` of a reference and at least `margin` closer to
    it than to any other identity seen (other clusters' centroids).
    """
    offsets, flat = [], []
    for a in analyses:
        offsets.append(len(flat))
        flat += a["embeddings"]
    emb = np.array(flat, np.float32)
    if not len(emb):
        return Identity("reference" if len(references) else "screen time", references, np.zeros(0),
                        np.zeros(0, bool), 0, offsets)
    labels = _clusters(emb, backend, match)
    n_id = int(labels.max()) + 1
    how = "reference"
    if len(references) == 0:
        how = "screen time"
        seconds = np.zeros(n_id)
        for i, a in enumerate(analyses):
            for f in a["faces"]:
                seconds[labels[offsets[i] + f["emb"]]] += a.get("step", 1.0)
        references = emb[labels == int(seconds.argmax())].mean(0, keepdims=True)
    dist = backend.distance(emb, references).min(1)
    centroids = np.stack([emb[labels == k].mean(0) for k in range(n_id)])
    others = centroids[backend.distance(centroids, references).min(1) > match]
    d_other = backend.distance(emb, others).min(1) if len(others) else np.full(len(emb), np.inf)
    accepted = (dist <= match) & (d_other - dist >= margin)
    return Identity(how, references, dist, accepted, n_id, offsets)


# ---- candidates ------------------------------------------------------------------------------
@dataclass
class Candidate:
    file: int  # index of the analysis
    face: dict[str, Any]
    width: int
    height: int
    distance: float
    options: dict[str, crops.CropPlan]
    quality: float = 0.0


def _face_h(f: dict[str, Any]) -> float:
    return f["box"][3] - f["box"][1]


def _reject(face: dict[str, Any], w: int, h: int, others: list[dict[str, Any]], s: Any, clear: float) -> str | None:
    x0, y0, x1, y1 = face["box"]
    fh = y1 - y0
    mx, my = (x1 - x0) * 0.1, fh * 0.1
    if fh < s.min_face:
        return SMALL
    if x0 - mx < 0 or y0 - my < 0 or x1 + mx > w or y1 + my > h:
        return EDGE
    if face["sharp"] < s.min_sharpness:
        return BLUR
    if not (s.min_brightness <= face["bright"] <= s.max_brightness) or face["clipped"] > 0.25:
        return EXPOSURE
    if face["eyes"] < s.min_eye_openness:
        return EYES
    if abs(face["yaw"]) > s.max_yaw:
        return PROFILE
    if any(_face_h(o) >= s.other_face_ratio * fh and o["score"] >= clear for o in others):
        return CROWD
    return None


def candidates(analyses: list[dict[str, Any]], identity: Identity, s: Any, match: float
               ) -> tuple[list[Candidate], Counter]:
    """Faces of the person that pass every quality check; `s` is the ImageSettings."""
    rejected: Counter = Counter()
    out: list[Candidate] = []
    clear_score = fx.backend(s.face_backend).clear_score
    for i, a in enumerate(analyses):
        w, h = a["width"], a["height"]
        rejected[NO_FACE] += sum(1 for smp in a["samples"] if smp["faces"] == 0)
        by_frame: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for f in a["faces"]:
            by_frame[f["pts"] if f["pts"] is not None else f["t"]].append(f)
        for group in by_frame.values():
            for f in group:
                row = identity.row(i, f)
                if not identity.accepted[row]:
                    rejected[OTHER if identity.distance[row] > match else AMBIGUOUS] += 1
                    continue
                reason = _reject(f, w, h, [o for o in group if o is not f], s, clear_score)
                options = crops.plans(f["box"], w, h, s.resolution, s.max_upscale) if reason is None else {}
                if reason is None and not options:
                    reason = NO_FRAMING
                if reason:
                    rejected[reason] += 1
                    continue
                c = Candidate(i, f, w, h, float(identity.distance[row]), options)
                c.quality = _quality(c, match)
                out.append(c)
    return out, rejected


def _quality(c: Candidate, match: float) -> float:
    """Higher is better: sharp, facing the camera, clearly the person, little upscaling."""
    least_upscale = min(p.upscale for p in c.options.values())
    return float(np.log1p(c.face["sharp"]) - 2 * abs(c.face["yaw"]) - c.distance / match
                 - 0.5 * np.log2(max(1.0, least_upscale)))


def dedupe(cands: list[Candidate], max_bits: int) -> tuple[list[Candidate], int]:
    """Drop near-duplicates (perceptual hashes within `max_bits` bits), keeping the better of each,
    across all files: the same moment in two files hashes alike."""
    kept: list[Candidate] = []
    hashes: list[str] = []
    for c in sorted(cands, key=lambda c: -c.quality):
        if hashes and hamming(c.face["phash"], hashes).min() <= max_bits:
            continue
        kept.append(c)
        hashes.append(c.face["phash"])
    return kept, len(cands) - len(kept)


def _features(cands: list[Candidate]) -> np.ndarray:
    """Pose, expression and framing, each scaled so one unit is a clearly visible difference."""
    f = np.array([[c.face["yaw"], c.face["pitch"], c.face["roll"], c.face["mouth"], c.face["smile"],
                   np.log(_face_h(c.face) / c.height)] for c in cands], np.float64)
    f[:, 1] -= np.median(f[:, 1])
    f[:, 4] -= np.median(f[:, 4])
    return f / np.array([0.2, 0.08, 8.0, 0.12, 0.1, 0.35])


def leave_out(cands: list[Candidate], hashes: list[str], max_bits: int) -> tuple[list[Candidate], int]:
    """Leave out the candidates within `max_bits` of any of `hashes` (frames dropped by hand: the same
    moment, by dedupe's own measure)."""
    if not hashes:
        return cands, 0
    kept = [c for c in cands if hamming(c.face["phash"], hashes).min() > max_bits]
    return kept, len(cands) - len(kept)


def order_by_variety(cands: list[Candidate]) -> list[Candidate]:
    """All candidates, best first, each next one the most different from those before it.

    Farthest-point order on pose/expression/framing features, plus a bonus for a shot or file not
    used yet (backgrounds, clothes and light vary between them); quality breaks near-ties.
    Identity embeddings are deliberately not used: they are built to ignore pose.
    """
    if not cands:
        return []
    feats = _features(cands)
    q = np.array([c.quality for c in cands])
    qn = (q - q.min()) / (np.ptp(q) or 1.0)
    shots = np.array([f"{c.file}/{c.face['shot']}" for c in cands])
    files = np.array([c.file for c in cands])
    first = int(q.argmax())
    order = [first]
    gap = np.full(len(cands), np.inf)
    taken = np.zeros(len(cands), bool)
    taken[first] = True
    for _ in range(len(cands) - 1):
        last = order[-1]
        d = np.linalg.norm(feats - feats[last], axis=1) + 1.0 * (shots != shots[last]) + 0.5 * (files != files[last])
        gap = np.minimum(gap, d)
        score = np.where(taken, -np.inf, gap + 0.5 * qn)
        nxt = int(score.argmax())
        order.append(nxt)
        taken[nxt] = True
    return [cands[i] for i in order]


# ---- presence --------------------------------------------------------------------------------
def presence(analysis: dict[str, Any], file: int, identity: Identity) -> list[list[float]]:
    """Intervals (seconds) of a video where the person's face is on screen.

    Each sample where the person is seen stands for half a sampling step either side, never across
    a shot cut; intervals closer than one step are merged.
    """
    step = analysis["step"]
    duration = analysis.get("duration") or 0.0
    cuts = [0.0] + list(analysis.get("cuts", [])) + [duration]
    times = sorted({f["t"] for f in analysis["faces"] if identity.accepted[identity.row(file, f)]})
    spans: list[list[float]] = []
    for t in times:
        shot_start = max(c for c in cuts if c <= t + 1e-6)
        shot_end = min((c for c in cuts if c > t + 1e-6), default=duration)
        lo, hi = max(t - step / 2, shot_start, 0.0), min(t + step / 2, shot_end, duration)
        if spans and lo - spans[-1][1] < step:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    return [[round(a, 2), round(b, 2)] for a, b in spans]
