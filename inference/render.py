"""`persona render`: topic -> script -> narration -> keyframes -> video -> lip sync -> finish -> final.mp4.

Stage-major: each stage runs over all scenes, loading its model once (and only if some scene needs
it) and freeing it before the next stage, because VRAM is the scarce resource. The per-scene stages
share one runner (inference/stage.py): every artifact is keyed by the hash of its inputs, so a
re-render redoes only what changed and a killed render resumes where it stopped. render.json
records models, seeds, settings, timings and what each stage rendered or reused; it is rewritten
after every stage.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona.config import prompt_text, resolve_settings
from persona.errors import PersonaError
from persona.files import hash_json, is_fresh, mark_fresh, write_json, write_text
from persona.inference import assemble, presenter
from persona.inference.finish import FinishStage
from persona.inference.keyframes import KeyframeStage
from persona.inference.lipsync import LipsyncStage
from persona.inference.narration import NarrationStage
from persona.inference.presenter import Clip, FootageStage
from persona.inference.plan import STAGES, RenderDir, RenderSettings, SceneDir, check_profile, detect_profile
from persona.inference.script import Script, load_script, make_backend, messages_for, read_topic, write_script
from persona.inference.speech import VoiceFiles
from persona.inference.stage import RenderJob, Stage, disk_full_is_kept, run_stage
from persona.inference.video import VideoStage
from persona.likeness import render_report
from persona.lock import locked
from persona.models import find
from persona.progress import info, meter

if TYPE_CHECKING:
    from persona.workspace import Workspace

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


def load_settings(profile: str | None, overrides: dict[str, Any] | None = None) -> RenderSettings:
    """A VRAM profile recipe (recipes/render/<profile>.toml, or a TOML path; 'auto' detects) plus flags."""
    name = detect_profile() if profile in (None, "auto") else profile
    return resolve_settings(RenderSettings, "render", name, overrides)


def render_name(name: str | None, topic: Path | None, script_file: Path | None) -> str:
    """The render folder's name: one plain folder name under renders/, never a path."""
    name = name if name is not None else (topic or script_file or Path("render")).stem
    if not _NAME.match(name) or name in (".", "..") or name.endswith((" ", ".")):
        raise PersonaError(f"--name {name!r} is not a plain folder name",
                           fix="use letters, digits, spaces, dots, dashes or underscores, without slashes "
                               "(e.g. --name my-topic)")
    return name


def obtain_script(ws: Workspace, rdir: RenderDir, topic: Path | None, script_file: Path | None,
                  settings: RenderSettings, loads: dict[str, int]) -> tuple[Script, dict[str, Any]]:
    """The script to render: --script FILE, else the render's own script.json (kept, edits and all,
    while the topic and prompt are unchanged), else a new one from the LLM. A script.json that would
    be replaced is kept as script.previous.json: it may hold the user's edits."""
    if script_file is not None:
        script = load_script(script_file)
        text = script.model_dump_json(indent=2)
        if rdir.script.exists() and rdir.script.read_text(encoding="utf-8") != text:
            _keep_previous(rdir, "--script gives another script")
        write_text(rdir.script, text)
        return script, {"source": str(script_file)}
    prompt, prompt_path = prompt_text("script", ws.root)
    if topic is None:
        if rdir.script.exists():
            return load_script(rdir.script), {"source": "kept"}
        raise PersonaError("nothing to render: give a topic file or --script",
                           fix="persona render topic.txt (or --script script.json)")
    s = settings.script
    text = read_topic(topic, s.max_topic_chars)
    key = hash_json(["script", text, prompt, s.model_dump(exclude={"api_key"}), settings.seed])
    if is_fresh(rdir.script, key):
        return load_script(rdir.script), {"source": "kept"}
    backend = make_backend(s, settings.seed, ws.pack.models)
    model = getattr(backend, "model_name", s.model)
    if s.backend == "transformers":
        loads["llm"] = loads.get("llm", 0) + 1
    try:
        script, attempts = write_script(backend, messages_for(prompt, text, ws.name, s), s)
    finally:
        if hasattr(backend, "close"):
            backend.close()
    if rdir.script.exists():
        _keep_previous(rdir, "the topic or script settings changed")
    write_text(rdir.script, script.model_dump_json(indent=2))
    mark_fresh(rdir.script, key, backend=s.backend, model=model, attempts=attempts, prompt=str(prompt_path))
    return script, {"source": "llm", "backend": s.backend, "model": model, "attempts": attempts}


def _keep_previous(rdir: RenderDir, why: str) -> None:
    kept = rdir.root / "script.previous.json"
    rdir.script.replace(kept)
    info(f"{why}; the previous script is kept as {kept}")


@dataclass
class PackParts:
    """What the pack brings to a render, and what is zero-shot for want of a trained part."""

    voice: VoiceFiles
    voice_trained: bool
    lora: bool
    clips: list[Clip]

    def zero_shot(self) -> list[str]:
        return [part for part, trained in (("voice", self.voice_trained), ("likeness", self.lora)) if not trained]


def preflight(ws: Workspace, settings: RenderSettings) -> PackParts:
    """Fail before any heavy work when the pack lacks what a stage needs. A pack right after ingest
    (datasets, no training) renders: narration zero-shot from the voice dataset's reference clip,
    on-camera scenes from the person's own footage, b-roll from FLUX without the LoRA."""
    # Models whose files are code (FILM, a LatentSync checkout) are refused when a pack names them
    # without the user's trust: say so now, not after the narration.
    code = ["film"] if settings.finish.interpolation in ("auto", "film") else []
    if settings.lipsync.enabled and settings.lipsync.backend == "latentsync":
        code.append("latentsync")
    for key in code:
        find(key, models=ws.pack.models)
    voice = VoiceFiles.from_workspace(ws) if ws.pack.voice else VoiceFiles.zero_shot(ws)
    return PackParts(voice, ws.pack.voice is not None, ws.pack.lora is not None, presenter.clips(ws))


def sources(scenes: list[SceneDir], pack: PackParts, settings: RenderSettings) -> dict[str, str]:
    """Each scene's picture: "footage" (a presenter clip), "generated" (FLUX + Wan with the likeness)
    or "b-roll" (off camera: FLUX + Wan, never the likeness)."""
    out = {}
    for s in scenes:
        if not s.scene.on_camera:
            out[s.label] = "b-roll"
            continue
        choice = s.scene.presenter or settings.presenter.source
        if choice == "auto":
            choice = "footage" if pack.clips else "generated"
        if choice == "footage" and not pack.clips:
            raise PersonaError(f"scene {s.label} asks for the presenter's footage, and this pack has no presenter "
                               "clips", file=s.folder.parent.parent / "script.json",
                               fix="set its presenter to \"generated\", or run `persona ingest` on footage where the "
                                   "person faces the camera alone")
        if choice == "talking" and settings.engine != "comfyui":
            raise PersonaError(f"scene {s.label} is a talking scene, which needs the ComfyUI engine (audio-driven "
                               "video models run there)", file=s.folder.parent.parent / "script.json",
                               fix="render with --engine comfyui --comfyui-url http://HOST:8188, or set its presenter "
                                   "to \"footage\" or \"generated\"")
        if choice in ("generated", "talking") and not pack.lora:
            raise PersonaError(f"scene {s.label} is an on-camera scene to generate, and this pack has no likeness "
                               "LoRA", file=s.folder.parent.parent / "script.json",
                               fix="run `persona train-lora`, or render it from footage (presenter \"footage\"; "
                                   "`persona ingest` finds presenter clips)")
        out[s.label] = choice
    return out


def sweep(rdir: RenderDir) -> None:
    """Remove what killed runs left behind: half-written temp files and private reuse stashes (a
    render holds the workspace, so none of them belongs to a running command)."""
    for part in [*rdir.root.rglob(".*.part"), *rdir.root.glob(".final.*.unsigned.mp4")]:
        part.unlink(missing_ok=True)
    for stash in rdir.root.glob(".reuse*"):
        shutil.rmtree(stash, ignore_errors=True)


def sweep_chunks(scenes: list[SceneDir]) -> None:
    """Wan chunks (and the keyframe as sent to a ComfyUI server) are kept only to resume an unfinished
    scene; once its video is made they are waste."""
    for s in scenes:
        if s.path("video.mp4").exists():
            for part in s.folder.glob("video.*"):
                if part.name not in ("video.mp4", "video.mp4.json"):
                    part.unlink(missing_ok=True)


@locked("render")
def render(ws: Workspace, topic: Path | None = None, *, script_file: Path | None = None, name: str | None = None,
           profile: str | None = None, overrides: dict[str, Any] | None = None, until: str | None = None,
           redo: list[str] | None = None) -> dict[str, Any]:
    """`redo`: scene numbers ("02") whose outputs are discarded first, so they are made again."""
    consent = ws.require_consent("rendering")
    if until is not None and until not in STAGES:
        raise PersonaError(f"unknown stage {until!r}", fix=f"use one of: {', '.join(STAGES)}")
    settings = load_settings(profile, overrides)
    check_profile(settings)
    name = render_name(name, topic, script_file)
    rdir = RenderDir(ws.root / "renders" / name)
    pack = preflight(ws, settings)
    forget_scenes(rdir, redo or [])
    created = not rdir.root.exists()
    rdir.root.mkdir(parents=True, exist_ok=True)
    sweep(rdir)
    job = RenderJob(ws, settings, rdir)
    record: dict[str, Any] = {
        "name": name, "persona": ws.name, "consent": consent.summary(), "profile": settings.profile,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "settings": settings.model_dump(mode="json", exclude={"script": {"api_key"}}),
        "stages": {}, "model_loads": job.loads, "completed": False, "zero_shot": pack.zero_shot(),
    }

    def timed(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        result = fn()
        result["seconds_taken"] = round(time.perf_counter() - t0, 3)
        record["stages"][label] = result
        write_json(rdir.record, record)
        return result

    try:
        script, how = obtain_script(ws, rdir, topic, script_file, settings, job.loads)
    except PersonaError:
        if created and not any(rdir.root.iterdir()):
            rdir.root.rmdir()  # a rejected script leaves no empty render folder behind
        raise
    record["title"] = script.title
    timed("script", lambda: {**how, "scenes": len(script.scenes)})
    rdir.scenes = [SceneDir(i, sc, rdir.root / "scenes" / f"{i + 1:02d}") for i, sc in enumerate(script.scenes)]
    for s in rdir.scenes:
        s.folder.mkdir(parents=True, exist_ok=True)

    source = sources(rdir.scenes, pack, settings)
    record["sources"] = source
    if pack.zero_shot():
        info(f"zero-shot: {' and '.join(pack.zero_shot())} (train them for the best likeness: "
             + ", ".join(f"`persona train-{'voice' if p == 'voice' else 'lora'}`" for p in pack.zero_shot()) + ")")
    job.sources = source
    drawn = [s for s in rdir.scenes if source[s.label] != "footage"]
    filmed = [s for s in rdir.scenes if source[s.label] == "footage"]
    animated = [s for s in drawn if source[s.label] != "talking"]
    talking = [s for s in drawn if source[s.label] == "talking"]
    comfy = settings.engine == "comfyui"
    if comfy:
        from persona.inference.comfy_stages import ComfyKeyframeStage, ComfyVideoStage, TalkingStage
    plan: list[tuple[str, Callable[[], list[Stage]]]] = [
        ("narration", lambda: [NarrationStage(pack.voice)]),
        ("keyframes", lambda: [(ComfyKeyframeStage if comfy else KeyframeStage)(job, drawn)] if drawn else []),
        ("video", lambda: ([FootageStage(job, filmed, pack.clips)] if filmed else [])
                           + ([(ComfyVideoStage if comfy else VideoStage)(job, animated)] if animated else [])
                           + ([TalkingStage(job, talking)] if talking else [])),
        ("lipsync", lambda: [LipsyncStage(job)]),
        ("finish", lambda: [FinishStage(job)]),
    ]
    for label, make_stages in plan:
        if until is not None and STAGES.index(label) > STAGES.index(until):
            break

        def run(make_stages: Callable[[], list[Stage]] = make_stages, label: str = label) -> dict[str, Any]:
            results = []
            for stage in make_stages():
                with meter(label if stage.name == label else f"{label} ({stage.name})", None) as m:
                    results.append(run_stage(job, stage, m))
            return merge_results(results)

        result = timed(label, run)
        if label == "narration":
            _check_durations(result["seconds"], settings)
        if label == "video":
            sweep_chunks(rdir.scenes)
    if until is None or until == "assemble":
        with disk_full_is_kept("assemble", rdir.root):
            timed("assemble", lambda: assemble.run(ws, settings, rdir, script.title))
    record.update(completed=until is None or until == "assemble", finished=dt.datetime.now().isoformat(timespec="seconds"),
                  scenes=_scene_summary(rdir))
    write_json(rdir.record, record)
    if record["completed"]:  # drift as a number: every scene scored against the person's references
        t0 = time.perf_counter()
        record["likeness"] = render_report(ws, rdir.root)
        record["likeness"]["seconds_taken"] = round(time.perf_counter() - t0, 3)
        write_json(rdir.record, record)
        if record["likeness"].get("summary"):
            info(record["likeness"]["summary"])
    return {"render": str(rdir.root), "final": str(rdir.root / "final.mp4") if record["completed"] else None,
            "title": script.title, "scenes": len(rdir.scenes), "model_loads": job.loads,
            "zero_shot": pack.zero_shot(), "sources": source,
            "likeness": {k: v for k, v in record.get("likeness", {}).items() if k in ("summary", "worst", "skipped")},
            "stages": {k: {"rendered": v.get("rendered"), "reused": v.get("reused"), "moved": v.get("moved"),
                           "seconds": v["seconds_taken"]}
                       for k, v in record["stages"].items()}}


def forget_scenes(rdir: RenderDir, labels: list[str]) -> None:
    """Discard scenes' outputs (scenes/NN/) so that the render makes them again: "redo this scene"."""
    for label in labels:
        if not re.fullmatch(r"\d{1,3}", str(label)):
            raise PersonaError(f"--redo {label!r} is not a scene number", fix="give a number such as 2 or 02")
        folder = rdir.root / "scenes" / f"{int(label):02d}"
        if not folder.is_dir():
            raise PersonaError("has no such scene", file=folder, fix="see the scene numbers in the render's script.json")
        shutil.rmtree(folder)
        info(f"scene {int(label):02d}: its outputs are discarded and made again")


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One render.json entry for a step made by several stages (footage and generated video)."""
    out: dict[str, Any] = {"rendered": [], "reused": [], "moved": []}
    for r in results:
        for k, v in r.items():
            if k in out:
                out[k] = sorted(out[k] + v)
            else:
                out[k] = v
    return out


def _check_durations(seconds: list[float], settings: RenderSettings) -> None:
    n = settings.narration
    for i, s in enumerate(seconds):
        if s > n.max_scene_seconds:
            raise PersonaError(f"scene {i + 1:02d} narrates for {s:.1f} s (limit {n.max_scene_seconds:.0f} s)",
                               fix="shorten its narration in script.json (1-3 sentences) and render again")
    if sum(seconds) > n.max_total_seconds:
        raise PersonaError(f"the script narrates for {sum(seconds):.0f} s (limit {n.max_total_seconds:.0f} s)",
                           fix="cut scenes from script.json, or raise narration.max_total_seconds in a recipe")


def _scene_summary(rdir: RenderDir) -> list[dict[str, Any]]:
    out = []
    for s in rdir.scenes:
        t, keyframe = s.record("narration.wav"), s.record("keyframe.png")
        out.append({"scene": s.label, "on_camera": s.scene.on_camera, "seconds": t.get("seconds"),
                    "keyframe_seed": keyframe.get("seed"), "keyframe_prompt": keyframe.get("prompt")})
    return out
