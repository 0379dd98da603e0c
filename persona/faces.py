"""Faces: a small backend interface, the dlib backend, and what landmarks and pixels say about a face.

A backend finds faces with 68 landmarks in the iBUG layout (the layout dlib and InsightFace's
`1k3d68` model share) and turns a face into an identity vector. The default needs no download:
`face_recognition_models` ships dlib's HOG detector, 68-point shape predictor and 128-d ResNet
embedding (public domain / CC0). A stronger backend (InsightFace with user-supplied weights) plugs
in by implementing `FaceBackend` and adding itself to `BACKENDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass
class Face:
    box: Box
    score: float
    landmarks: np.ndarray  # (68, 2), iBUG order, pixels

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


class FaceBackend(Protocol):
    name: str
    match_distance: float  # the same person is usually closer than this
    min_size: int  # smallest face (pixels) `detect` finds without upsampling
    clear_score: float  # detections scoring lower are mostly false positives or barely visible faces

    def detect(self, image: np.ndarray, upsample: int = 0) -> list[Face]:
        """Faces in an RGB or grayscale (luma) image."""
        ...

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray: ...

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """The identity vector of `face` (landmarks in `rgb`'s pixels)."""
        ...

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distances between rows of a (n, d) and b (m, d): an (n, m) array."""
        ...


class DlibBackend:
    """dlib's HOG frontal detector, 68-point shape predictor and ResNet face embedding (Euclidean)."""

    name = "dlib"
    # dlib's documented threshold is 0.6; on real footage the same person measured 0.09-0.47 and
    # different people 0.65-1.01 (NOTES.md), so a stricter 0.55 costs little and guards lookalikes.
    match_distance = 0.55
    min_size = 80  # the HOG window
    clear_score = 0.3  # e.g. a badge on a spacesuit scores ~0.1, faces facing the camera 1-2.5

    def __init__(self) -> None:
        import dlib
        import face_recognition_models as frm

        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._shapes = dlib.shape_predictor(frm.pose_predictor_model_location())
        self._encoder = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    def _rect(self, box: Box):
        return self._dlib.rectangle(*(int(round(v)) for v in box))

    def detect(self, image: np.ndarray, upsample: int = 0) -> list[Face]:
        rects, scores, _ = self._detector.run(image, upsample, 0.0)
        faces = []
        for r, s in zip(rects, scores):
            box = (float(r.left()), float(r.top()), float(r.right()), float(r.bottom()))
            faces.append(Face(box, float(s), self.landmarks(image, box)))
        return faces

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        shape = self._shapes(image, self._rect(box))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        points = [self._dlib.point(int(x), int(y)) for x, y in face.landmarks]
        shape = self._dlib.full_object_detection(self._rect(face.box), points)
        return np.asarray(self._encoder.compute_face_descriptor(rgb, shape), np.float32)

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        from scipy.spatial.distance import cdist

        return cdist(np.atleast_2d(a), np.atleast_2d(b))


BACKENDS = {"dlib": DlibBackend}
_loaded: dict[str, FaceBackend] = {}


def backend(name: str = "dlib") -> FaceBackend:
    """The named backend, loaded once per process (each scan worker loads its own when it starts)."""
    if name not in _loaded:
        _loaded[name] = BACKENDS[name]()
    return _loaded[name]


# ---- what the 68 landmarks say ----------------------------------------------------------------
def _eye_openness(eye: np.ndarray) -> float:
    """Eye aspect ratio: lid-to-lid over corner-to-corner (about 0.3 open, below ~0.15 closed)."""
    width = np.linalg.norm(eye[0] - eye[3]) + 1e-6
    return float((np.linalg.norm(eye[1] - eye[5]) + np.linalg.norm(eye[2] - eye[4])) / (2 * width))


def landmark_measures(lm: np.ndarray) -> dict[str, float]:
    """Pose and expression from iBUG-68 landmarks, as scale-free ratios.

    yaw: -1..1, 0 facing the camera, ±1 full profile (nose against one jaw edge); pitch: nose tip
    height between the eye line and the mouth (about 0.5 level); roll: eye-line angle in degrees;
    eyes: mean eye aspect ratio; mouth: lip gap over mouth width; smile: mouth width over eye distance.
    """
    eye_r, eye_l = lm[36:42].mean(0), lm[42:48].mean(0)
    nose, mouth = lm[30], lm[48:60].mean(0)
    left, right = np.linalg.norm(nose - lm[0]), np.linalg.norm(lm[16] - nose)
    eye_y = (eye_r[1] + eye_l[1]) / 2
    mouth_w = np.linalg.norm(lm[48] - lm[54]) + 1e-6
    return {
        "yaw": float((left - right) / (left + right + 1e-6)),
        "pitch": float((nose[1] - eye_y) / (mouth[1] - eye_y + 1e-6)),
        "roll": float(np.degrees(np.arctan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0]))),
        "eyes": (_eye_openness(lm[36:42]) + _eye_openness(lm[42:48])) / 2,
        "mouth": float(np.linalg.norm(lm[62] - lm[66]) / mouth_w),
        "smile": float(mouth_w / (np.linalg.norm(eye_l - eye_r) + 1e-6)),
    }


# ---- what the pixels say ----------------------------------------------------------------------
def region(image: np.ndarray, box: Box, grow: float = 1.0) -> np.ndarray:
    """The pixels of `box` grown by `grow` around its centre, clipped to the image."""
    x0, y0, x1, y1 = box
    cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * grow / 2, (y1 - y0) * grow / 2
    h, w = image.shape[:2]
    xa, xb = int(max(0, cx - half_w)), int(min(w, cx + half_w))
    ya, yb = int(max(0, cy - half_h)), int(min(h, cy + half_h))
    return image[ya:yb, xa:xb]


def sharpness(gray_face: np.ndarray, height: int = 256) -> float:
    """Variance of the Laplacian of the face resized to `height` px (about its size in a 1024 crop),
    so faces filmed at different sizes are compared on the same scale."""
    from scipy.ndimage import laplace

    if gray_face.size == 0:
        return 0.0
    h, w = gray_face.shape[:2]
    face = Image.fromarray(gray_face).resize((max(1, round(w * height / h)), height), Image.Resampling.BILINEAR)
    return float(laplace(np.asarray(face, np.float32)).var())


def exposure(gray_face: np.ndarray) -> tuple[float, float]:
    """Mean brightness (0-255) and the fraction of clipped pixels (crushed or blown) of the face."""
    if gray_face.size == 0:
        return 0.0, 1.0
    return float(gray_face.mean()), float(((gray_face <= 4) | (gray_face >= 251)).mean())


def landmark_box(lm: np.ndarray, grow: float = 2.0) -> Box:
    """A square around the landmarks' centre, `grow` times their extent. Steadier than the detector's
    box, whose size jumps between pyramid levels, so hashes of one moment agree across files."""
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * grow / 2
    return (float(cx - half), float(cy - half), float(cx + half), float(cy + half))


def phash(face: np.ndarray) -> str:
    """64-bit perceptual hash (hex) of the face and its surroundings (luma), for near-duplicate checks."""
    import imagehash

    return str(imagehash.phash(Image.fromarray(face).convert("L")))


def hamming(a: str, b_many: list[str] | np.ndarray) -> np.ndarray:
    """Bit differences between one hex hash and many."""
    x = np.array([int(h, 16) for h in b_many], dtype=np.uint64) ^ np.uint64(int(a, 16))
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1)
