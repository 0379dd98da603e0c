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


def synthetic_voice_dataset(folder: str | Path, clips: int = 12, seed: int = 0) -> Path:
    """A small voice dataset in the layout `persona ingest` writes (wavs/, manifest.json, metadata.csv,
    reference.wav/.txt, report.json), made from the demo speech: `clips` takes of SPEECH_TEXT with
    slight changes of speed, loudness, padding and background noise (for tests and benchmarks of the
    stages after ingest)."""
    import csv
    import io

    from scipy.signal import resample

    from persona.files import write_json, write_text
    from persona.media import read_audio, write_audio

    folder = Path(folder)
    sr = 24000
    speech = read_audio(speech_wav(), sr)
    rng = np.random.default_rng(seed)
    manifest, rows = [], []
    for i in range(1, clips + 1):
        speed = rng.uniform(0.92, 1.08)
        take = resample(speech, int(len(speech) / speed)).astype(np.float32) * rng.uniform(0.6, 1.0)
        pad = [np.zeros(int(rng.uniform(0.05, 0.4) * sr), np.float32) for _ in range(2)]
        take = np.concatenate([pad[0], take, pad[1]])
        snr_db = float(rng.uniform(28, 40))
        noise = rng.standard_normal(len(take)).astype(np.float32)
        take += noise * np.sqrt(np.mean(take**2) / 10 ** (snr_db / 10))
        path = write_audio(folder / "wavs" / f"{i:04d}.wav", take, sr)
        seconds = round(len(take) / sr, 3)
        manifest.append({"file": f"wavs/{i:04d}.wav", "source": speech_wav().name, "start": 0.0, "end": seconds,
                         "duration": seconds, "speaker_similarity": 1.0, "snr_db": round(snr_db, 1), "text": SPEECH_TEXT})
        rows.append([str(path.resolve()), SPEECH_TEXT])
    write_json(folder / "manifest.json", manifest)
    table = io.StringIO()
    csv.writer(table, delimiter="|", lineterminator="\n").writerows([["audio_file", "text"], *rows])
    write_text(folder / "metadata.csv", table.getvalue())
    write_audio(folder / "reference.wav", speech, sr)
    write_text(folder / "reference.txt", SPEECH_TEXT + "\n")
    write_json(folder / "report.json", {"clips": clips, "transcribed": clips,
                                        "seconds": round(sum(m["duration"] for m in manifest), 2),
                                        "note": "demo fallback: variations of one recording, not ingest output"})
    return folder
