"""Lip sync for on-camera scenes: MuseTalk 1.5 in this process (the default), or the user's
LatentSync 1.5/1.6 checkout (`lipsync.backend = "latentsync"`).

LatentSync runs in its own Python environment (its pinned torch, diffusers and DeepCache differ
from ours), so it is a subprocess behind the same small interface (`LipSyncer`). Its inference script resolves `configs/` and `checkpoints/` against the working
directory and writes intermediate files to a fixed `./temp` (and shells out to ffmpeg with unquoted
paths), so every job runs in a private folder holding links to the checkout's configs and
checkpoints and copies of the inputs under fixed, space-free names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from persona.errors import PersonaError
from persona.files import atomic_path, hash_json
from persona.inference.memory import Lazy
from persona.inference.plan import LipsyncSettings, SceneDir, scene_seed
from persona.inference.stage import RenderJob, Stage, Tick, model_key
from persona.media import read_audio, write_audio
from persona.models import find
from persona.progress import warn

if TYPE_CHECKING:
    from persona.workspace import Workspace

SYNC_RATE = 16000  # LatentSync's audio encoder (Whisper) takes 16 kHz


class LipSyncer(Protocol):
    """A loaded lip-sync model: the mouth of `video` re-drawn to `audio`, written to `out`."""

    def sync(self, video: Path, audio: Path, out: Path, *, seed: int, boxes: list | None,
             progress: Callable[[int], None]) -> dict[str, Any]: ...


class Backend(Protocol):
    """A lip-sync backend before loading: what identifies it in cache keys, and how to load it."""

    name: str

    def identity(self) -> str: ...

    def describe(self) -> dict[str, Any]: ...

    def open(self) -> LipSyncer: ...


MUSETALK_MODELS = ("musetalk", "sd-vae", "whisper-tiny")


class MuseTalkBackend:
    """MuseTalk 1.5 in this process (inference/musetalk.py): faces from the project's dlib tracker, or
    the face boxes the footage already carries."""

    name = "musetalk"

    def __init__(self, paths: dict[str, Path], settings: LipsyncSettings):
        self.paths, self.settings = paths, settings

    def identity(self) -> str:
        return model_key(*self.paths.values())

    def describe(self) -> dict[str, Any]:
        return {"models": {k: str(v) for k, v in self.paths.items()}}

    def open(self) -> LipSyncer:
        from persona.inference.musetalk import MuseTalk  # torch and diffusers: only when a scene is synced

        model = MuseTalk(self.paths["musetalk"], self.paths["sd-vae"], self.paths["whisper-tiny"],
                         batch_size=self.settings.batch_size)
        return MuseTalkRun(model)


class MuseTalkRun:
    def __init__(self, model: Any):
        self.model = model

    def sync(self, video: Path, audio: Path, out: Path, *, seed: int, boxes: list | None,
             progress: Callable[[int], None]) -> dict[str, Any]:
        return self.model.sync(video, audio, out, boxes=boxes, progress=progress)  # deterministic: no seed

    def close(self) -> None:
        self.model.close()


class LatentSync:
    """One `python -m scripts.inference` run per scene, in a private working folder."""

    name = "latentsync"

    def open(self) -> "LatentSync":
        return self

    def __init__(self, checkout: Path, settings: LipsyncSettings):
        self.checkout = checkout.resolve()
        self.settings = settings
        self.python = self._interpreter()
        self.unet_config = self._unet_config()
        ckpt = self.checkout / settings.checkpoint
        if not ckpt.exists():
            raise PersonaError("LatentSync's UNet checkpoint is missing", file=ckpt,
                               fix="download its checkpoints as LatentSync's README says (huggingface ByteDance/LatentSync-1.6)")

    def _interpreter(self) -> Path:
        candidates = [self.settings.python, os.environ.get("PERSONA_LATENTSYNC_PYTHON"),
                      self.checkout / ".venv" / "bin" / "python", self.checkout / "venv" / "bin" / "python"]
        for c in candidates:
            if c and Path(c).exists():
                return Path(c)
        raise PersonaError("no Python environment found for LatentSync", file=self.checkout,
                           fix="create one in <checkout>/.venv as its README says, or set PERSONA_LATENTSYNC_PYTHON")

    def _unet_config(self) -> str:
        if self.settings.unet_config:
            return self.settings.unet_config
        for rel in ("configs/unet/stage2_512.yaml", "configs/unet/stage2.yaml"):  # 1.6, then 1.5
            if (self.checkout / rel).exists():
                return rel
        raise PersonaError("no UNet config found in the LatentSync checkout", file=self.checkout / "configs" / "unet",
                           fix="check out LatentSync 1.5 or 1.6")

    def identity(self) -> str:
        return hash_json([str(self.checkout), self.unet_config])

    def describe(self) -> dict[str, Any]:
        return {"unet_config": self.unet_config}

    def command(self, seed: int) -> list[str]:
        s = self.settings
        cmd = [str(self.python), "-m", "scripts.inference",
               "--unet_config_path", self.unet_config, "--inference_ckpt_path", s.checkpoint,
               "--inference_steps", str(s.steps), "--guidance_scale", str(s.guidance),
               "--video_path", "input.mp4", "--audio_path", "input.wav", "--video_out_path", "output.mp4",
               "--seed", str(seed)]
        return cmd + (["--enable_deepcache"] if s.deepcache else [])

    def prepare(self, job: Path, video: Path, audio: Path) -> None:
        for name in ("configs", "checkpoints"):
            (job / name).symlink_to(self.checkout / name, target_is_directory=True)
        shutil.copyfile(video, job / "input.mp4")
        write_audio(job / "input.wav", read_audio(audio, SYNC_RATE), SYNC_RATE)

    def sync(self, video: Path, audio: Path, out: Path, *, seed: int = 0, boxes: list | None = None,
             progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
        """One LatentSync process (it finds faces itself: `boxes` are not used); progress comes at the end."""
        with tempfile.TemporaryDirectory(prefix="persona-latentsync-") as tmp:
            job = Path(tmp)
            self.prepare(job, video, audio)
            env = {**os.environ, "PYTHONPATH": str(self.checkout)}
            try:
                done = subprocess.run(self.command(seed), cwd=job, env=env, capture_output=True, text=True,
                                      timeout=self.settings.timeout_seconds)
            except subprocess.TimeoutExpired:
                raise PersonaError(f"LatentSync took longer than {self.settings.timeout_seconds:.0f} s", file=video,
                                   fix="raise lipsync.timeout_seconds in a render recipe") from None
            result = job / "output.mp4"
            if done.returncode != 0 or not result.exists():
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise PersonaError(f"LatentSync failed (exit {done.returncode}): {' | '.join(tail)}", file=video,
                                   fix=f"run `{' '.join(self.command(seed))}` in the checkout to see why")
            with atomic_path(out) as part:
                shutil.copyfile(result, part)
        return {}


def lipsyncer(ws: Workspace, settings: LipsyncSettings) -> tuple[Backend | None, str | None]:
    """The configured lip-sync backend, or None and the reason (off, or its weights are missing). A
    LatentSync checkout is code: a pack's [models] latentsync is refused by the locator unless the user
    trusts the pack."""
    if not settings.enabled:
        return None, "off in the render settings"
    if settings.backend == "musetalk":
        found = {k: find(k, models=ws.pack.models) for k in MUSETALK_MODELS}
        missing = [k for k, f in found.items() if f is None or f.problems]
        if missing:
            return None, (f"MuseTalk's weights are missing ({', '.join(missing)}; `persona doctor` gives the commands "
                          "that fetch them)")
        return MuseTalkBackend({k: f.path for k, f in found.items()}, settings), None
    found = find("latentsync", models=ws.pack.models)
    if found is None:
        return None, "LatentSync is not configured (PERSONA_LATENTSYNC or [models] latentsync; see `persona doctor`)"
    if found.problems:
        raise PersonaError(f"LatentSync checkout: {'; '.join(found.problems)}", file=found.path,
                           fix="point PERSONA_LATENTSYNC, or latentsync in your user config (see `persona doctor`), "
                               "at a LatentSync checkout")
    return LatentSync(found.path, settings), None


class LipsyncStage(Stage):
    """On-camera scenes get their mouths re-animated to the narration (progress in frames)."""

    name, output = "lipsync", "synced.mp4"

    def __init__(self, job: RenderJob):
        settings = job.settings.lipsync
        self.syncer, self.skipped = lipsyncer(job.ws, settings)
        self.model = self.syncer.name if self.syncer else ""
        if self.syncer is None and settings.enabled and any(s.scene.on_camera for s in job.scenes):
            warn(f"lip sync skipped: {self.skipped}; on-camera scenes keep their unsynced video", once=True)

    def scenes(self, job: RenderJob) -> list[SceneDir]:
        # talking scenes were made to speak by their video model: they need no second pass
        return [s for s in job.scenes if s.scene.on_camera and job.sources.get(s.label) != "talking"] \
            if self.syncer else []

    def key(self, job: RenderJob, scene: SceneDir) -> str:
        assert self.syncer is not None
        video, narration = scene.record("video.mp4").get("key"), scene.record("narration.wav").get("key")
        return hash_json(["lipsync", video, narration, self.syncer.identity(),
                          job.settings.lipsync.model_dump(exclude={"python", "timeout_seconds", "batch_size"}), job.settings.seed])

    def work(self, job: RenderJob, scene: SceneDir) -> float:
        return scene.record("video.mp4").get("frames") or 1

    def load(self, job: RenderJob) -> LipSyncer:
        assert self.syncer is not None
        return self.syncer.open()

    def make(self, job: RenderJob, scene: SceneDir, model: Lazy, tick: Tick) -> dict[str, Any]:
        seed = scene_seed(job.settings.seed, "lipsync", scene.scene.narration)
        video = scene.record("video.mp4")
        done = [0]

        def counted(n: int) -> None:
            done[0] += n
            tick(n)

        info = model.get().sync(scene.path("video.mp4"), scene.path("narration.wav"), scene.path(self.output),
                                seed=seed, boxes=video.get("boxes"), progress=counted)
        tick(max(0, self.work(job, scene) - done[0]))  # a backend that reports nothing on the way
        return {"seed": seed, "tool": self.model, **{k: v for k, v in (info or {}).items() if k != "boxes"}}

    def summary(self, job: RenderJob) -> dict[str, Any]:
        synced = [s.label for s in self.scenes(job)]
        job.synced = synced
        if self.syncer is None:
            return {"synced": [], "skipped": self.skipped}
        return {"synced": synced, "skipped": None, "tool": self.syncer.name, **self.syncer.describe()}
