"""Real material that already ships inside installed wheels, for the demo and the tests (nothing is
downloaded): the f5-tts example recording with its known transcript, and scikit-image's
public-domain NASA astronaut portrait and "cameraman" photo."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np

SPEECH_TEXT = "Some call me nature, others call me mother nature."


def speech_wav() -> Path:
    """5.3 s of English speech at 24 kHz; its words are SPEECH_TEXT."""
    return Path(str(files("f5_tts").joinpath("infer/examples/basic/basic_ref_en.wav")))


def portrait() -> np.ndarray:
    """Eileen Collins, NASA portrait (public domain), 512x512 RGB."""
    from skimage import data

    return data.astronaut()


def other_person() -> np.ndarray:
    """The "cameraman" photo, 512x512, as RGB."""
    from skimage import data

    return np.repeat(data.camera()[..., None], 3, axis=2)
