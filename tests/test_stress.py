"""Stress: writing jobs at once and kill -9 at random points, as a user's terminal would run them.

Two ingests at once in one workspace (one is refused with "busy"), two in two workspaces (both
succeed, with the same dataset), and ingest, train-voice and train-lora killed with -9 at random
points, run again, and compared with an uninterrupted run: the same dataset manifest, the same
weights. Tiny models and the demo footage keep it to a few minutes on two CPU cores.

Renders too: two at once in one workspace (one refused), and one killed at a random point and run
again, compared with the uninterrupted one.

The kill points are random; PERSONA_STRESS_SEED replays a run (the seed is in every failure message).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from persona.files import hash_tree, read_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

SEED = int(os.environ.get("PERSONA_STRESS_SEED", time.time_ns() % 100_000))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
BUSY = 75  # persona.cli.EXIT_BUSY

# The demo's settings (persona/demo.py): its 360p faces are small, the tiny Whisper never stops talking.
IMAGE_RECIPE = "count = 8\nmin_face = 96\nsample_every = 0.5\nresolution = 512\n"
VOICE_INGEST_RECIPE = "drop_truncated = false\nmin_asr_logprob = -1000.0\n"
VOICE_RECIPE = ("updates = 6\nval_every = 2\nbatch_frames = 1500\nval_clips = 1\nval_repeats = 2\n"
                "min_minutes = 0.1\nnum_workers = 0\nlearning_rate = 1e-3\n")


# ---- running the CLI as a user would ---------------------------------------------------------------
@dataclass
class Job:
    proc: subprocess.Popen
    log: Path
    started: float

    def finish(self, timeout: float = 1200) -> tuple[int, dict | None, str]:
        """Exit code, the --json summary (or failure), stderr."""
        self.proc.wait(timeout=timeout)
        out = self.log.with_suffix(".out").read_text()
        return self.proc.returncode, (json.loads(out) if out.strip() else None), self.log.read_text()


def start(ws_root: Path, *args: str) -> Job:
    """`persona -w WS ARGS --json` in its own session (a kill hits it alone, as `kill -9 PID` does)."""
    logs = ws_root.parent / "logs"
    logs.mkdir(exist_ok=True)
    log = logs / f"{args[0]}-{time.monotonic_ns()}.err"
    with open(log, "w") as err, open(log.with_suffix(".out"), "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "persona", "-w", str(ws_root), *args, "--json"],
                                stdout=out, stderr=err, env=ENV, start_new_session=True)
    return Job(proc, log, time.monotonic())


def run(ws_root: Path, *args: str) -> tuple[dict, float]:
    """Run to the end; returns the summary and the seconds it took."""
    job = start(ws_root, *args)
    code, summary, err = job.finish()
    assert code == 0, f"persona {' '.join(args)} failed (seed {SEED}):\n{err[-3000:]}"
    return summary, time.monotonic() - job.started


def start_at_once(*jobs: tuple[Path, tuple[str, ...]]) -> list[tuple[int, dict | None, str]]:
    """Start several commands together and wait for all of them."""
    started = [start(root, *args) for root, args in jobs]
    return [job.finish() for job in started]


def kill_and_resume(ws_root: Path, args: tuple[str, ...], delays: list[float]) -> tuple[dict, list[float]]:
    """Start the command and kill -9 it after each delay (a run that ends first is left alone), then
    run it to the end. Returns the final summary and the delays at which a kill did happen."""
    killed_at = []
    for delay in delays:
        job = start(ws_root, *args)
        try:
            job.proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(job.proc.pid, signal.SIGKILL)
            job.proc.wait()
            killed_at.append(round(delay, 2))
        else:
            assert job.proc.returncode == 0, f"seed {SEED}: {job.log.read_text()[-3000:]}"
    summary, _ = run(ws_root, *args)
    return summary, killed_at


def kill_points(rng: random.Random, seconds: float, n: int) -> list[float]:
    """n random moments within a run that takes `seconds` (from just after start-up to near its end)."""
    return sorted(rng.uniform(0.15, 0.95) * seconds for _ in range(n))


# ---- what is compared ------------------------------------------------------------------------------
def datasets(root: Path) -> dict:
    images, voice = root / "datasets" / "images", root / "datasets" / "voice"
    return {"images": read_json(images / "manifest.json"), "image_files": hash_tree(images, "*.png"),
            "captions": hash_tree(images, "*.txt"), "voice": read_json(voice / "manifest.json"),
            "voice_files": hash_tree(voice / "wavs")}


SCRIPT = {"title": "Stress", "scenes": [
    {"narration": "Hello there, this is a test.", "image_prompt": "the presenter", "motion_prompt": "static",
     "on_camera": True},
    {"narration": "A grid of numbers.", "image_prompt": "a pixel grid", "motion_prompt": "pan", "on_camera": False}]}


def renders(root: Path) -> dict:
    """What a finished render is made of: each scene's narration (the same voice: the same audio), its
    frame counts, and the final video's length."""
    from persona.media import probe

    rdir = root / "renders" / "stress"
    scenes = sorted((rdir / "scenes").iterdir())
    return {"narration": [hash_tree(s, "narration.wav") for s in scenes],
            "frames": [read_json(s / "finished.mp4.json")["frames"] for s in scenes],
            "seconds": round(probe(rdir / "final.mp4").duration, 2),
            "leftovers": sorted(p.name for p in rdir.rglob(".*") if p.is_file())}


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_weights(a: dict, b: dict, what: str, atol: float = 0.0) -> None:
    import torch

    assert a.keys() == b.keys(), what
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=f"{what} {k} (seed {SEED})")


def leftovers(root: Path) -> list[str]:
    """Staging folders (persona.files.staged_dir) a finished run should not leave behind."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir() and p.name.endswith((".partial", ".old")))


# ---- the test ----------------------------------------------------------------------------------------
def workspace(root: Path, tiny_models: dict[str, Path]) -> Path:
    """A workspace of one person (the same name, so the same trigger token and captions in all)."""
    import datetime as dt

    from persona.workspace import Consent, Workspace

    consent = Consent(person="Stress Test", granted_by="Stress Test", date=dt.date(2025, 5, 1), scope="tests")
    from persona.models import spec

    ws = Workspace.create(root, "Stress Test", consent=consent)
    # Not the random speaker encoder (voices are told apart by Resemblyzer's real weights), and no
    # code-bearing model, which a pack may not name (finishing interpolates with FFmpeg instead).
    ws.update("models", {k: str(v) for k, v in tiny_models.items()
                         if k != "speaker-embedding" and not spec(k).runs_code}, replace=True)
    return ws.root


def test_concurrent_jobs_and_kill_9_resumes(tiny_models, demo_footage, tmp_path):
    rng = random.Random(SEED)
    (tmp_path / "images.toml").write_text(IMAGE_RECIPE)
    (tmp_path / "voice-ingest.toml").write_text(VOICE_INGEST_RECIPE)
    (tmp_path / "voice.toml").write_text(VOICE_RECIPE)
    lora_recipe = (Path(__file__).parents[1] / "recipes" / "lora" / "tiny-cpu.toml").read_text()
    (tmp_path / "lora.toml").write_text(lora_recipe.replace("sample_every = 3", "sample_every = 0")
                                        .replace("checkpoint_every = 3", "checkpoint_every = 2"))
    footage = [demo_footage["files"]["lecture"], demo_footage["files"]["interview"]]
    ingest = ("ingest", *footage, "--image-recipe", str(tmp_path / "images.toml"),
              "--voice-recipe", str(tmp_path / "voice-ingest.toml"))
    train_voice = ("train-voice", "--recipe", str(tmp_path / "voice.toml"))
    train_lora = ("train-lora", "--recipe", str(tmp_path / "lora.toml"))
    a, b, c = (workspace(tmp_path / name, tiny_models) for name in ("a", "b", "c"))

    # Two ingests at once in one workspace, and a third in another workspace at the same time.
    t0 = time.monotonic()
    results = start_at_once((a, ingest), (a, ingest), (b, ingest))
    ingest_seconds = time.monotonic() - t0
    codes = sorted(code for code, _, _ in results[:2])
    assert codes == [0, BUSY], f"seed {SEED}: {[err[-2000:] for _, _, err in results]}"
    refused = next(r for r in results[:2] if r[0] == BUSY)
    lines = refused[2].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("busy: ingest (pid ") and "wait for it or stop it" in lines[0]
    assert refused[1]["error"].startswith("busy: ingest")
    assert results[2][0] == 0, results[2][2][-3000:]
    reference = datasets(a)
    assert reference["images"] and reference["voice"], "the reference ingest made no dataset"
    assert datasets(b) == reference  # two workspaces at once: both succeed, neither disturbs the other

    # kill -9 at random points of ingest, then run it again: the same dataset as an uninterrupted run
    # (timed while two ingests shared the cores: alone, one takes about half as long, and a kill point
    # past its end would find a finished dataset and kill nothing)
    summary, killed = kill_and_resume(c, ingest, kill_points(rng, ingest_seconds / 2, 2))
    assert killed, f"seed {SEED}: no ingest was killed"
    assert not summary["failed"], summary["failed"]
    assert datasets(c) == reference, f"ingest killed at {killed} s (seed {SEED}) resumed to another dataset"
    assert not leftovers(c), leftovers(c)

    # train-voice: an uninterrupted run in A, one killed at random points in C (the same dataset)
    straight, voice_seconds = run(a, *train_voice)
    summary, killed = kill_and_resume(c, train_voice, kill_points(rng, voice_seconds, 2))
    assert killed, f"seed {SEED}: no train-voice was killed"
    assert summary["finished"] and straight["finished"]
    assert_same_weights(weights(c / "voice" / "model.safetensors"), weights(a / "voice" / "model.safetensors"),
                        f"train-voice killed at {killed} s")

    # train-lora likewise
    straight, lora_seconds = run(a, *train_lora)
    summary, killed = kill_and_resume(c, train_lora, kill_points(rng, lora_seconds, 2))
    assert killed, f"seed {SEED}: no train-lora was killed"
    assert_same_weights(weights(Path(summary["lora"])), weights(Path(straight["lora"])),
                        f"train-lora killed at {killed} s", atol=1e-6)

    # render: two at once in one workspace (one is refused), then one killed at a random point and run
    # again, against the uninterrupted one (A and C have the same voice; their LoRAs differ by < 1e-6)
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    render = ("render", "--script", str(script), "--profile", "demo", "--name", "stress")
    t0 = time.monotonic()
    results = start_at_once((a, render), (a, render))
    render_seconds = time.monotonic() - t0
    assert sorted(code for code, _, _ in results) == [0, BUSY], f"seed {SEED}: {[e[-2000:] for _, _, e in results]}"
    summary, killed = kill_and_resume(c, render, kill_points(rng, render_seconds, 1))
    assert killed, f"seed {SEED}: no render was killed"
    assert summary["final"] and renders(c) == renders(a), f"render killed at {killed} s (seed {SEED})"

    # persona.toml kept every section each verb wrote, and nothing was left half-done
    for root in (a, c):
        text = (root / "persona.toml").read_text()
        assert all(f"[{s}]" in text for s in ("consent", "datasets", "models", "lora", "voice")), text
        assert not leftovers(root), leftovers(root)
