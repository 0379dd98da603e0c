"""Lip sync for on-camera scenes through the user's LatentSync 1.5/1.6 checkout.

LatentSync runs in its own Python environment (its pinned torch, diffusers and DeepCache differ
from ours), so it is a subprocess behind a small interface (`LipSyncer`); an in-process model can
replace it later. Its inference script resolves `configs/` and `checkpoints/` against the working
directory and writes intermediate files to a fixed `./temp` (and shells out to ffmpeg with unquoted
paths), so every job runs in a private folder holding links to the checkout's configs and
checkpoints and copies of the inputs under fixed, space-free names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from persona.errors import PersonaError
from persona.files import atomic_path, hash_json
from persona.inference.memory import Lazy
from persona.inference.plan import LipsyncSettings, SceneDir, scene_seed
from persona.inference.stage import RenderJob, Stage, Tick
from persona.media import read_audio, write_audio
from persona.models import find
from persona.progress import warn

if TYPE_CHECKING:
    from persona.workspace import Workspace

SYNC_RATE = 16000  # LatentSync's audio encoder (Whisper) takes 16 kHz


class LipSyncer(Protocol):
    name: str

    def identity(self) -> str:
        """What goes into the cache key: the model (or checkout) and its configuration."""
        ...

    def describe(self) -> dict[str, Any]:
        """What render.json records about it."""
        ...

    def sync(self, video: Path, audio: Path, out: Path, seed: int) -> None: ...


class LatentSync:
    """One `python -m scripts.inference` run per scene, in a private working folder."""

    name = "latentsync"

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

    def sync(self, video: Path, audio: Path, out: Path, seed: int) -> None:
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


def lipsyncer(ws: Workspace, settings: LipsyncSettings) -> LipSyncer | None:
    """The configured lip syncer, or None when lip sync is off or no checkout is set up."""
    if not settings.enabled:
        return None
    found = find("latentsync", models=ws.pack.models)
    if found is None:
        return None
    if found.problems:
        raise PersonaError(f"LatentSync checkout: {'; '.join(found.problems)}", file=found.path,
                           fix="point PERSONA_LATENTSYNC or [models] latentsync at a LatentSync checkout")
    return LatentSync(found.path, settings)


class LipsyncStage(Stage):
    """On-camera scenes get their mouths re-animated to the narration (progress in frames)."""

    name, output = "lipsync", "synced.mp4"

    def __init__(self, job: RenderJob):
        settings = job.settings.lipsync
        self.syncer = lipsyncer(job.ws, settings)
        self.model = self.syncer.name if self.syncer else ""
        self.skipped: str | None = None
        if self.syncer is None:
            self.skipped = "off in the render settings" if not settings.enabled else \
                "LatentSync is not configured (PERSONA_LATENTSYNC or [models] latentsync; see `persona doctor`)"
            if settings.enabled and any(s.scene.on_camera for s in job.scenes):
                warn(f"lip sync skipped: {self.skipped}; on-camera scenes keep their unsynced video", once=True)

    def scenes(self, job: RenderJob) -> list[SceneDir]:
        return [s for s in job.scenes if s.scene.on_camera] if self.syncer else []

    def key(self, job: RenderJob, scene: SceneDir) -> str:
        assert self.syncer is not None
        video, narration = scene.record("video.mp4").get("key"), scene.record("narration.wav").get("key")
        return hash_json(["lipsync", video, narration, self.syncer.identity(),
                          job.settings.lipsync.model_dump(exclude={"python", "timeout_seconds"}), job.settings.seed])

    def work(self, job: RenderJob, scene: SceneDir) -> float:
        return scene.record("video.mp4").get("frames") or 1

    def load(self, job: RenderJob) -> LipSyncer | None:
        return self.syncer

    def make(self, job: RenderJob, scene: SceneDir, model: Lazy, tick: Tick) -> dict[str, Any]:
        seed = scene_seed(job.settings.seed, "lipsync", scene.scene.narration)
        model.get().sync(scene.path("video.mp4"), scene.path("narration.wav"), scene.path(self.output), seed)
        tick(self.work(job, scene))
        return {"seed": seed, "tool": self.model}

    def summary(self, job: RenderJob) -> dict[str, Any]:
        synced = [s.label for s in self.scenes(job)]
        job.notes["synced"] = synced
        if self.syncer is None:
            return {"synced": [], "skipped": self.skipped}
        return {"synced": synced, "skipped": None, "tool": self.syncer.name, **self.syncer.describe()}
