"""`persona demo`: every verb end to end on tiny random-weight models and footage made offline.

The footage comes from material that already ships inside installed wheels: scikit-image's
public-domain NASA astronaut portrait (the persona) and its "cameraman" photo (someone else),
animated with slow zooms and pans, with the f5-tts example recording (whose transcript is known)
as the speech. Each step prints its result and time; the workspace is left under --keep DIR.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rich.markup import escape

from persona.models import TRUST_ENV
from persona.progress import console, quiet_libraries
from persona.samples import SPEECH_TEXT, other_person, portrait, speech_wav

DEMO_NAME = "Demo Astronaut"
FPS = 25
SIZE = (640, 360)  # width, height


def _ken_burns(image: np.ndarray, n: int, start: tuple[float, float, float], end: tuple[float, float, float],
               mirror: bool = False, tilt: float = 0.0) -> list[np.ndarray]:
    """Frames moving a 16:9 window from (cx, cy, width) `start` to `end`, in image pixels, with the
    picture turned by `tilt` degrees (a head tilt, for pose variety)."""
    from PIL import Image

    src = Image.fromarray(image[:, ::-1] if mirror else image)
    if tilt:
        src = src.rotate(tilt, resample=Image.Resampling.BICUBIC, fillcolor=(40, 40, 48))
    frames = []
    for i in range(n):
        a = i / max(n - 1, 1)
        cx, cy, w = (s + (e - s) * a for s, e in zip(start, end))
        h = w * SIZE[1] / SIZE[0]
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        frames.append(np.asarray(src.resize(SIZE, Image.Resampling.BICUBIC, box=box)))
    return frames


def make_footage(folder: str | Path) -> dict[str, Any]:
    """Write demo footage: two videos with the persona (one also shows someone else first) and a
    speech file. The persona says SPEECH_TEXT twice per video, the second time a little slower.

    Returns paths plus ground truth: per video, the seconds where the persona is on screen.
    """
    from scipy.signal import resample

    from persona.media import read_audio, write_audio, write_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sr = 24000
    speech = read_audio(speech_wav(), sr)
    slower = resample(speech, int(len(speech) * 1.08)).astype(np.float32) * 0.8
    pause = np.zeros(int(0.6 * sr), np.float32)
    track = np.concatenate([pause, speech, pause, slower, pause])  # ~13 s
    seconds = len(track) / sr
    n = int(seconds * FPS)
    astronaut, other = portrait(), other_person()

    # Windows (centre x, centre y, width) keep the face (x 175-265, y 76-166 in the portrait) inside
    # the frame, from half-body to close-up.
    # Four shots: half-body, close-up tilted one way, medium mirrored, close-up tilted the other way.
    q = n // 4
    lecture = (_ken_burns(astronaut, q, (240, 175, 480), (230, 160, 400))
               + _ken_burns(astronaut, q, (222, 128, 250), (220, 124, 220), tilt=8)
               + _ken_burns(astronaut, q, (292, 150, 340), (290, 140, 300), mirror=True)
               + _ken_burns(astronaut, n - 3 * q, (220, 126, 230), (222, 130, 260), tilt=-9))
    intro = int(2.0 * FPS)  # someone else on screen, silent, before the persona
    interview = (_ken_burns(other, intro, (256, 230, 480), (250, 210, 400))
                 + _ken_burns(astronaut, n, (292, 150, 360), (292, 135, 280), mirror=True))
    lead = np.zeros(int(intro / FPS * sr), np.float32)
    out = {
        "lecture": write_video(folder / "lecture.mp4", lecture, FPS, audio=track, sr=sr),
        "interview": write_video(folder / "interview.mp4", interview, FPS, audio=np.concatenate([lead, track]), sr=sr),
        "speech": write_audio(folder / "speech.wav", track, sr),
    }
    return {
        "files": {k: str(v) for k, v in out.items()},
        "persona_on_screen": {"lecture.mp4": [(0.0, n / FPS)], "interview.mp4": [(intro / FPS, (intro + n) / FPS)]},
        "transcript": SPEECH_TEXT,
        "seconds": round(seconds, 2),
    }


# ------------------------------------------------------------------------------------------------
@dataclass
class Demo:
    root: Path
    results: dict[str, Any] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    footage: dict[str, Any] = field(default_factory=dict)
    workspace: Any = None


def step_models(d: Demo) -> str:
    from persona import tiny

    # A random speaker encoder would make the voice side's choice of speaker arbitrary: the demo keeps
    # Resemblyzer (which ships real weights) and leaves the optional speaker-embedding model out.
    d.models = {k: str(v) for k, v in tiny.build_all(d.root / "models").items() if k != "speaker-embedding"}
    return f"{len(d.models)} tiny model families in {d.root / 'models'}"


def step_footage(d: Demo) -> str:
    d.footage = make_footage(d.root / "footage")
    return f"{len(d.footage['files'])} files, {d.footage['seconds']} s each, in {d.root / 'footage'}"


def step_init(d: Demo) -> str:
    from persona.workspace import Consent, Workspace

    ws_dir = d.root / "workspace"
    if (ws_dir / "persona.toml").exists():
        d.workspace = Workspace(ws_dir)
    else:
        consent = Consent(
            person=DEMO_NAME, granted_by="persona demo (public-domain NASA portrait from scikit-image)",
            date=dt.date.today(), scope="offline demo of the pipeline on random-weight models; no likeness is produced",
        )
        d.workspace = Workspace.create(ws_dir, DEMO_NAME, consent=consent)
    d.workspace.update("models", d.models, replace=True)
    return f"{d.workspace.manifest_path} (token {d.workspace.token}), [models] -> tiny models"


def step_doctor(d: Demo) -> str:
    from persona.doctor import diagnose

    report = diagnose(d.workspace)
    found = [m["key"] for m in report["models"] if m["found"]]
    missing = [m["key"] for m in report["models"] if not m["found"]]
    d.results["doctor_missing"] = missing
    return f"{len(found)} models found through [models]" + (f"; not needed by the demo: {', '.join(missing)}" if missing else "")


def step_train_voice(d: Demo) -> str:
    from persona.train.voice import VoiceSettings, train_voice

    ws = d.workspace
    settings = VoiceSettings(updates=6, val_every=3, batch_frames=1500, val_clips=1, val_repeats=2,
                             min_minutes=0.1, num_workers=0, learning_rate=1e-3, likeness_steps=4)
    summary = train_voice(ws, settings)
    d.results["train_voice"] = {k: summary[k] for k in ("update", "baseline_val_loss", "best")}
    best = summary["best"]
    return (f"{summary['update']} updates on {summary['plan']['train_clips']} clips; validation loss "
            f"{summary['baseline_val_loss']:.3f} (base) -> {best['val_loss']:.3f} (best, update {best['update']}); "
            f"exported {summary['voice']['checkpoint']}")


def step_speak(d: Demo) -> str:
    from persona.inference.speech import speak

    out = d.root / "speech"
    short = speak(d.workspace, "Hello there.", out / "hello.wav", steps=4)
    long = speak(d.workspace, "Today we look at how a computer learns to see, one small step at a time.",
                 out / "longer.wav", steps=4)
    d.results["speak_seconds"] = [short["seconds"], long["seconds"]]
    return f"{out / 'hello.wav'} ({short['seconds']:.2f} s), {out / 'longer.wav'} ({long['seconds']:.2f} s)"


def step_ingest(d: Demo) -> str:
    from persona.data.images import ImageSettings
    from persona.data.ingest import ingest
    from persona.data.presenter import PresenterSettings
    from persona.data.voice import VoiceIngestSettings

    footage = [Path(d.footage["files"][k]) for k in ("lecture", "interview")]
    # The demo's 360p faces are smaller than real footage's: look for them at 96 px (for the presenter
    # clips too; one short clip keeps the step quick). The tiny Whisper never stops talking, so its
    # (meaningless) transcripts are kept despite hitting the token limit.
    images = ImageSettings(count=8, min_face=96, sample_every=0.5, resolution=512)
    summary = ingest(d.workspace, footage, image_settings=images,
                     voice_settings=VoiceIngestSettings(drop_truncated=False, min_asr_logprob=None),
                     presenter_settings=PresenterSettings(min_face=96, count=1, max_seconds=6.0))
    d.results["ingest"] = {"images": summary["images"] and summary["images"].get("images"),
                           "voice_clips": summary["voice"] and summary["voice"].get("clips"),
                           "presenter_clips": summary["presenter"] and summary["presenter"].get("clips"),
                           "failed": summary["failed"]}
    images, voice, presenter = summary["images"] or {}, summary["voice"] or {}, summary["presenter"] or {}
    return (f"{images.get('images', 0)} images in {d.workspace.pack.datasets.images}, "
            f"{voice.get('clips', 0)} voice clips ({voice.get('seconds', 0):.1f} s) in {d.workspace.pack.datasets.voice}, "
            f"{presenter.get('clips', 0)} presenter clips ({presenter.get('seconds', 0):.1f} s)"
            + (f"; failed: {summary['failed']}" if summary["failed"] else ""))


def step_train_lora(d: Demo) -> str:
    from persona.train.lora import resolve, train_lora

    settings, recipe = resolve("tiny-cpu")
    summary = train_lora(d.workspace, settings, recipe=recipe)
    d.results["lora"] = summary["lora"]
    return (f"{d.workspace.relative(summary['lora'])}: {summary['steps']} steps on {summary['images']} images, "
            f"loss {summary['final_loss']}, {len(summary.get('samples', []))} sample grids")


SCRIPT = {
    "title": "How computers see",
    "scenes": [
        {"narration": "Hello there.", "image_prompt": "the presenter in a lecture hall",
         "motion_prompt": "slow push-in", "on_camera": True},
        {"narration": "Pixels.", "image_prompt": "a grid of glowing pixels", "motion_prompt": "slow pan",
         "on_camera": False},
    ],
}


def _render(d: Demo, name: str, **kw: Any) -> tuple[dict[str, Any], Any]:
    from persona.inference.render import render
    from persona.media import probe

    summary = render(d.workspace, profile="demo", name=name, **kw)
    final = probe(summary["final"])
    d.results[name] = {"final": summary["final"], "seconds": round(final.duration, 2), "fps": final.fps,
                       "size": [final.width, final.height], "scenes": summary["scenes"],
                       "model_loads": summary["model_loads"], "zero_shot": summary.get("zero_shot")}
    return summary, final


def step_first_video(d: Demo) -> str:
    """A video right after ingest: zero-shot narration, the person's own footage lip-synced."""
    import json

    script = d.root / "script.json"
    script.write_text(json.dumps(SCRIPT))
    summary, final = _render(d, "first-video", script_file=script)
    return (f"{summary['final']}: {final.duration:.1f} s before any training (zero-shot: "
            f"{', '.join(summary['zero_shot']) or 'nothing'}; on camera: "
            f"{', '.join(f'{k} {v}' for k, v in summary['sources'].items())})")


def step_render(d: Demo) -> str:
    topic = d.root / "topic.txt"
    topic.write_text("How a computer learns to see: pixels, then edges, then shapes, then whole objects.\n")
    # The other presenter source: on-camera scenes generated with the trained LoRA (FLUX + Wan), then
    # lip-synced; the first video showed the footage one.
    summary, final = _render(d, "render", topic=topic, overrides={"presenter": {"source": "generated"}})
    return (f"{summary['final']}: {summary['scenes']} scenes, {final.duration:.1f} s, {final.width}x{final.height} "
            f"at {final.fps:g} fps with the trained voice and LoRA, on camera generated (script by the tiny LLM)")


STEPS: list[tuple[str, Callable[[Demo], str]]] = [
    ("tiny models", step_models),
    ("footage", step_footage),
    ("init", step_init),
    ("doctor", step_doctor),
    ("ingest", step_ingest),
    ("first video", step_first_video),
    ("train-lora", step_train_lora),
    ("train-voice", step_train_voice),
    ("speak", step_speak),
    ("render", step_render),
]


def run_demo(keep: Path | None = None) -> dict[str, Any]:
    tmp = None
    if keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="persona-demo-")
        root = Path(tmp.name)
    else:
        root = Path(keep).resolve()
        root.mkdir(parents=True, exist_ok=True)
    quiet_libraries()
    d = Demo(root)
    timings: dict[str, float] = {}
    steps: dict[str, str] = {}
    t_all = time.perf_counter()
    # The demo's pack names the tiny FILM TorchScript it just built itself, so it trusts its own pack
    # (a kept demo workspace rendered again later needs `persona --trust-pack`, as any pack would).
    trusted = os.environ.get(TRUST_ENV)
    os.environ[TRUST_ENV] = "1"
    try:
        for name, fn in STEPS:
            t0 = time.perf_counter()
            with console.status(f"{name} ..."):
                result = fn(d)
            timings[name] = round(time.perf_counter() - t0, 2)
            steps[name] = result
            console.print(f"[green]✓[/green] [bold]{name}[/bold] ({timings[name]:.1f} s): {escape(result)}")
        total = round(time.perf_counter() - t_all, 2)
        console.print(f"demo finished in {total:.1f} s" + (f"; everything is in {root}" if keep else ""), markup=False)
        return {"root": str(root) if keep else None, "kept": keep is not None, "steps": steps, "seconds": timings,
                "total_seconds": total, "workspace": str(d.workspace.root) if d.workspace and keep else None,
                **{k: v for k, v in d.results.items()}}
    finally:
        if trusted is None:
            os.environ.pop(TRUST_ENV, None)
        else:
            os.environ[TRUST_ENV] = trusted
        if tmp is not None:
            tmp.cleanup()
