"""Who speaks when, within one recording, and where the target speaks alone.

Comparing each window with one enrollment clip keeps many windows of other speakers (voices
in the same room sound alike to a small encoder), so the decision is made in three steps:

1. cluster the recording's speech windows (agglomerative, cosine, average linkage);
2. decide per recording, relative to its other voices: clusters of one voice are merged, voices
   are ranked by similarity to the target profile (enrollment, or the voice picked from on-screen
   presence or talk time), and the best is the target's when it clears a low floor and leads the
   runner-up by a margin (an absolute threshold fails when the enrollment comes from another
   microphone: every voice of the recording then scores lower);
3. keep only time where every window covering it is a confident target window: in a target
   cluster, close to the target's own centroid *in this recording*, and clearly closer to it
   than to any other cluster. Windows that straddle a speaker change or hold overlapped speech
   are mixtures that fail this test, so the time around changes and overlap is dropped.

A missing clip costs little; a clip of the wrong speaker poisons the voice, so every threshold
errs towards dropping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from persona.data import vad
from persona.speakers import SpeakerEncoder, unit

RESOLUTION = 0.01  # seconds per mask frame
HOP = 0.4  # seconds between window starts


@dataclass
class Analysis:
    """The target-independent analysis of one recording (cached per file and settings)."""

    duration: float
    probs: np.ndarray  # silero speech probability per 32 ms frame
    starts: np.ndarray  # window start times (s)
    embeddings: np.ndarray  # (windows, D), unit length
    labels: np.ndarray  # cluster index per window
    window: float  # seconds per window

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def centroid(self, members: np.ndarray) -> np.ndarray:
        return unit(self.embeddings[members].mean(0))

    def centroids(self) -> np.ndarray:
        return np.stack([self.centroid(self.labels == c) for c in range(self.n_clusters)]) if len(self.labels) else \
            np.zeros((0, self.embeddings.shape[1]), np.float32)

    def cluster_seconds(self) -> np.ndarray:
        """Approximate speech time per cluster (each window stands for one hop of speech)."""
        return np.bincount(self.labels, minlength=self.n_clusters) * HOP

    @property
    def speech_seconds(self) -> float:
        return float((self.probs >= 0.5).sum() * vad.FRAME)


def window_starts(regions: list[tuple[float, float]], window: float, min_region: float = 0.8) -> np.ndarray:
    """Windows every HOP seconds over each speech region, the last one flush with its end;
    a region shorter than a window gets one window centred on it."""
    starts: list[float] = []
    for a, b in regions:
        if b - a < min_region:
            continue
        if b - a <= window:
            starts.append(max(0.0, (a + b - window) / 2))
            continue
        n = int(np.floor((b - a - window) / HOP)) + 1
        starts += [a + i * HOP for i in range(n)]
        if starts[-1] + window < b - 0.05:
            starts.append(b - window)
    return np.asarray(starts, np.float64)


def cluster(embeddings: np.ndarray, distance: float, max_windows: int = 2000) -> np.ndarray:
    """Cluster labels, largest cluster first. Long recordings are clustered on an even subsample
    (average linkage needs all pairwise distances), then every window joins its nearest centroid."""
    from sklearn.cluster import AgglomerativeClustering

    n = len(embeddings)
    if n < 2:
        return np.zeros(n, int)
    step = int(np.ceil(n / max_windows))
    sample = embeddings[::step]
    labels = AgglomerativeClustering(n_clusters=None, distance_threshold=distance, metric="cosine",
                                     linkage="average").fit_predict(sample)
    if step > 1:
        cents = unit(np.stack([sample[labels == c].mean(0) for c in range(labels.max() + 1)]))
        labels = np.argmax(embeddings @ cents.T, axis=1)
    order = np.argsort(-np.bincount(labels))
    return np.argsort(order)[labels]


def analyse(wav: np.ndarray, encoder: SpeakerEncoder, vad_threshold: float, distance: float) -> Analysis:
    """VAD, speaker windows and clusters of 16 kHz mono audio."""
    probs = vad.speech_probs(wav)
    regions = vad.speech_regions(probs, threshold=vad_threshold)
    starts = window_starts(regions, encoder.window)
    emb = encoder.embed_windows(wav, starts)
    return Analysis(len(wav) / vad.SAMPLE_RATE, probs, starts, emb, cluster(emb, distance), encoder.window)


def voice_groups(an: Analysis, same_voice: float) -> np.ndarray:
    """A voice index per cluster: clusters whose centroids are at least `same_voice` alike (average
    linkage) are one voice that the window clustering split (distance to the microphone, mood)."""
    if an.n_clusters < 2:
        return np.zeros(an.n_clusters, int)
    return cluster(an.centroids(), 1.0 - same_voice)


def enrollment_problem(an: Analysis, same_voice: float, min_speech: float = 1.0, second_share: float = 0.15,
                       second_seconds: float = 1.2) -> str | None:
    """Why a clip cannot serve as an enrollment (no speech, or more than one voice), or None.
    Clusters of one voice are merged first, so a voice split by a far-field microphone passes;
    a second voice with a real share of the clip is refused: it would poison the whole dataset."""
    if an.speech_seconds < min_speech or len(an.starts) == 0:
        return f"holds {an.speech_seconds:.1f} s of speech; an enrollment clip needs at least {min_speech:g} s"
    groups = voice_groups(an, same_voice)
    sizes = np.sort(np.bincount(groups[an.labels]))[::-1]
    if len(sizes) > 1 and sizes[1] >= second_share * len(an.labels) and sizes[1] * HOP >= second_seconds:
        cents = an.centroids()
        closest = max(float(cents[a] @ cents[b]) for a in range(len(cents)) for b in range(len(cents))
                      if groups[a] != groups[b])
        return (f"holds several voices ({len(sizes)} voices, {sizes[1] * HOP:.1f} s of the second; their closest "
                f"clusters are {closest:.2f} alike < {same_voice:g}); an enrollment clip must hold the person alone")
    return None


@dataclass
class Decision:
    clusters: list[int]  # the target's clusters in this recording (empty: the target is not heard)
    similarity: float  # the best cluster centroid's similarity to the profile
    profile_sim: np.ndarray  # per window: similarity to the profile
    clean: np.ndarray  # per window: a confident window of the target alone
    mask: np.ndarray  # per RESOLUTION frame: every window covering it is clean
    margin: float | None = None  # the best voice's lead over the runner-up voice (None: no other voice)
    reason: str = ""  # why the target was taken here or not, in numbers
    ranking: list[dict] = field(default_factory=list)  # per cluster, best first: similarity, margin, role

    def kept_seconds(self) -> float:
        return float(self.mask.sum() * RESOLUTION)


def rank(an: Analysis, profile: np.ndarray, floor: float, margin: float, same_voice: float,
         spread: float = 0.05) -> tuple[list[int], float, float | None, str, list[dict]]:
    """Whose voice, if anyone's, is the target's in this recording, decided relative to the others.

    Clusters of one voice (centroids `same_voice` alike) are merged, and voices are ranked by their
    similarity to the profile. The best is the target's when it clears a low `floor` and leads the
    runner-up voice by `margin`. The margin is the channel normalisation: every voice of a recording
    went through the same room and microphone, so an enrollment from another microphone lowers them
    all, while the target's lead over the recording's other voices survives. (The cohort is the
    recording's own voices; its maximum, not a mean and deviation as in s-norm, is used because a
    recording has only a few voices and the closest rival is the one that could be let in.)
    With no other voice to compare against, the best must clear `floor + 2 * margin`.
    Returns (target clusters, best similarity, margin, reason, ranking).
    """
    cents = an.centroids()
    csim = cents @ profile
    groups = voice_groups(an, same_voice)
    vsim = np.array([float(unit(an.embeddings[np.isin(an.labels, np.flatnonzero(groups == g))].mean(0)) @ profile)
                     for g in range(groups.max() + 1)])
    best_voice = int(np.argmax(vsim))
    best = float(vsim[best_voice])
    rivals = np.delete(vsim, best_voice)
    lead = float(best - rivals.max()) if len(rivals) else None
    need = floor + 2 * margin if lead is None else floor
    if best < need:
        reason = f"closest voice similarity {best:.2f} < {need:.2f} (floor{' + 2 x margin, no other voice' if lead is None else ''})"
    elif lead is not None and lead < margin:
        reason = f"closest voice {best:.2f} leads the next ({best - lead:.2f}) by {lead:.2f} < margin {margin:g}"
    else:
        reason = ""
    targets: list[int] = []
    if not reason:
        top = float(csim[groups == best_voice].max())
        # The voice's clusters near its best one are the target's; its others (merged by centroid
        # but further from the profile) are judged window by window in `decide`.
        targets = [int(c) for c in np.flatnonzero((groups == best_voice) & (csim >= top - spread))]
        reason = (f"voice similarity {best:.2f} >= {floor:g}" + (f", {lead:.2f} ahead of the next voice >= {margin:g}"
                  if lead is not None else f" + 2 x {margin:g} (the only voice)"))
    ranking = []
    for c in np.argsort(-csim):
        g = int(groups[c])
        others = np.delete(vsim, g)
        ranking.append({"cluster": int(c), "voice": g, "seconds": round(float((an.labels == c).sum() * HOP), 1),
                        "similarity": round(float(csim[c]), 3), "voice_similarity": round(float(vsim[g]), 3),
                        "margin": round(float(vsim[g] - others.max()), 3) if len(others) else None,
                        "role": "target" if int(c) in targets else "not taken"})
    return targets, best, lead, reason, ranking


def decide(an: Analysis, profile: np.ndarray, floor: float, margin: float, same_voice: float,
           window_similarity: float, window_margin: float, spread: float = 0.05, rival_gap: float = 0.1,
           bar_floor: float = 0.7) -> Decision:
    """Where the target speaks alone in this recording.

    The target's clusters come from `rank`. Rivals, clearly someone else, are `rival_gap` further
    from the profile than the best cluster. A cluster in between is often the target's own voice
    split off (another mood, another distance to the microphone): its windows are judged one by one.
    """
    n_frames = int(np.ceil(an.duration / RESOLUTION))
    if len(an.starts) == 0:
        return Decision([], 0.0, np.zeros(0), np.zeros(0, bool), np.zeros(n_frames, bool), reason="no speech")
    targets, best, lead, reason, ranking = rank(an, profile, floor, margin, same_voice, spread)
    cents = an.centroids()
    csim = cents @ profile
    psim = an.embeddings @ profile
    clean = np.zeros(len(an.starts), bool)
    if targets:
        top = float(csim[targets].max())
        # The target's voice as it sounds in this recording: the half of its windows most like the profile.
        in_domain = [an.centroid(_half(np.flatnonzero(an.labels == c), psim)) for c in targets]
        s_target = (an.embeddings @ np.stack(in_domain).T).max(1)
        # Some voices vary more than others: the bar is lowered for a recording whose target
        # windows spread widely (down to `bar_floor`), so a lively speaker is not cut to pieces.
        own = s_target[np.isin(an.labels, targets)]
        med = float(np.median(own))
        bar = max(bar_floor, min(window_similarity, med - 2.5 * 1.4826 * float(np.median(np.abs(own - med)))))
        rivals = [c for c in range(len(cents)) if csim[c] < top - rival_gap]
        # Each rival as it sounds apart from the target: the half of its windows least like the
        # profile (a cluster of overlapped speech otherwise carries the target's voice too).
        rival_cents = [an.centroid(_half(np.flatnonzero(an.labels == c), -psim)) for c in rivals]
        s_other = (an.embeddings @ np.stack(rival_cents).T).max(1) if rivals else np.full(len(psim), -1.0)
        clean = ~np.isin(an.labels, rivals) & (s_target >= bar) & (s_target - s_other >= window_margin)
        for row in ranking:
            if row["role"] != "target":
                row["role"] = "rival" if row["cluster"] in rivals else "judged per window"
    return Decision(targets, best, psim, clean, _erode(an, clean, n_frames), lead, reason, ranking)


def _half(members: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The members scoring at or above their median."""
    return members[score[members] >= np.median(score[members])]


def _erode(an: Analysis, clean: np.ndarray, n_frames: int) -> np.ndarray:
    """Frames covered by at least one window, all of them clean."""
    first = np.clip(np.round(an.starts / RESOLUTION).astype(int), 0, n_frames)
    last = np.clip(first + int(round(an.window / RESOLUTION)), 0, n_frames)
    cover = np.zeros(n_frames + 1, int)
    bad = np.zeros(n_frames + 1, int)
    np.add.at(cover, first, 1)
    np.add.at(cover, last, -1)
    np.add.at(bad, first[~clean], 1)
    np.add.at(bad, last[~clean], -1)
    return (np.cumsum(cover)[:n_frames] > 0) & (np.cumsum(bad)[:n_frames] == 0)


def covering(an: Analysis, start: float, end: float) -> np.ndarray:
    """Indices of the windows overlapping [start, end]."""
    return np.flatnonzero((an.starts < end) & (an.starts + an.window > start))


def presence_clusters(an: Analysis, intervals: list[tuple[float, float]], min_seconds: float = 2.0,
                      min_share: float = 0.5) -> list[int]:
    """The cluster heard most while the person is on screen, if most of its speech is on screen."""
    if not len(an.starts) or not intervals:
        return []
    centres = an.starts + an.window / 2
    on = np.zeros(len(centres), bool)
    for a, b in intervals:
        on |= (centres >= a) & (centres < b)
    on_seconds = np.bincount(an.labels[on], minlength=an.n_clusters) * HOP
    best = int(np.argmax(on_seconds))
    total = an.cluster_seconds()[best]
    if on_seconds[best] >= min_seconds and on_seconds[best] >= min_share * total:
        return [best]
    return []


def most_talkative(analyses: list[Analysis], distance: float) -> tuple[np.ndarray, float] | None:
    """The voice with the most speech over all recordings: clusters of different recordings are
    grouped by their centroids, and the group with the most speech wins. Returns (profile, seconds)."""
    cents, secs = [], []
    for an in analyses:
        if an.n_clusters:
            cents.append(an.centroids())
            secs.append(an.cluster_seconds())
    if not cents:
        return None
    c, s = np.concatenate(cents), np.concatenate(secs)
    groups = cluster(c, distance) if len(c) > 1 else np.zeros(1, int)
    totals = np.bincount(groups, weights=s)
    best = int(np.argmax(totals))
    return unit((c[groups == best] * s[groups == best, None]).sum(0)), float(totals[best])
