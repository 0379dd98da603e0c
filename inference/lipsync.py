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
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from persona.errors import PersonaError
from persona.files import atomic_path
from persona.media import read_audio, write_audio
from persona.models import find

SYNC_RATE = 16000  # LatentSync's audio encoder (Whisper) takes 16 kHz


class LipsyncSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    steps: int = 20
    guidance: float = 1.5
    deepcache: bool = True
    # relative to the checkout; None picks configs/unet/stage2_512.yaml (1.6) or stage2.yaml (1.5)
    unet_config: str | None = None
    checkpoint: str = "checkpoints/latentsync_unet.pt"
    python: str | None = None  # LatentSync's interpreter; None: $PERSONA_LATENTSYNC_PYTHON or <checkout>/.venv
    timeout_seconds: float = 3600


class LipSyncer(Protocol):
    name: str

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


def lipsyncer(ws: Any, settings: LipsyncSettings) -> LipSyncer | None:
    """The configured lip syncer, or None when lip sync is off or no checkout is set up. A checkout
    is code: a pack's [models] latentsync is refused by the locator unless the user trusts the pack."""
    if not settings.enabled:
        return None
    found = find("latentsync", models=ws.pack.models)
    if found is None:
        return None
    if found.problems:
        raise PersonaError(f"LatentSync checkout: {'; '.join(found.problems)}", file=found.path,
                           fix="point PERSONA_LATENTSYNC, or latentsync in your user config (see `persona doctor`), "
                               "at a LatentSync checkout")
    return LatentSync(found.path, settings)


def lipsync_key(scene: Any, syncer: LatentSync, settings: Any) -> str:
    from persona.files import hash_json

    video, narration = scene.record("video.mp4").get("key"), scene.record("narration.wav").get("key")
    return hash_json(["lipsync", video, narration, str(syncer.checkout), syncer.unet_config,
                      settings.lipsync.model_dump(exclude={"python", "timeout_seconds"}), settings.seed])


def run(scenes: list[Any], ws: Any, settings: Any, loads: dict[str, int], progress: Any) -> dict[str, Any]:
    """Sync every on-camera scene whose synced.mp4 is stale; without LatentSync, say so once."""
    from persona.files import is_fresh, mark_fresh
    from persona.inference.plan import scene_seed
    from persona.progress import warn

    on_camera = [s for s in scenes if s.scene.on_camera]
    syncer = lipsyncer(ws, settings.lipsync)
    if syncer is None:
        reason = "off in the render settings" if not settings.lipsync.enabled else \
            "LatentSync is not configured (PERSONA_LATENTSYNC or [models] latentsync; see `persona doctor`)"
        if on_camera and settings.lipsync.enabled:
            warn(f"lip sync skipped: {reason}; on-camera scenes keep their unsynced video", once=True)
        progress.advance(len(scenes))
        return {"synced": [], "skipped": reason, "rendered": [], "reused": []}
    rendered, reused = [], []
    for s in scenes:
        if s.scene.on_camera:
            key = lipsync_key(s, syncer, settings)
            if is_fresh(s.path("synced.mp4"), key):
                reused.append(s.label)
            else:
                seed = scene_seed(settings.seed, "lipsync", s.scene.narration)
                syncer.sync(s.path("video.mp4"), s.path("narration.wav"), s.path("synced.mp4"), seed)
                mark_fresh(s.path("synced.mp4"), key, seed=seed, tool=syncer.name)
                loads[syncer.name] = loads.get(syncer.name, 0) + 1  # one external process per scene
                rendered.append(s.label)
        progress.advance(1)
    return {"synced": [s.label for s in on_camera], "skipped": None, "rendered": rendered, "reused": reused,
            "tool": syncer.name, "unet_config": syncer.unet_config}
