"""`persona render`: topic -> script -> narration -> keyframes -> video -> final.mp4.

Stage-major: each stage runs over all scenes, loading its model once (and only if some scene needs
it) and freeing it before the next stage, because VRAM is the scarce resource. Every artifact is
keyed by the hash of its inputs, so a re-render redoes only what changed and a killed render
resumes where it stopped. render.json records models, seeds, settings, timings and what each
stage rendered or reused; it is rewritten after every stage.
"""

from __future__ import annotations

import datetime as dt
import errno
import time
from pathlib import Path
from typing import Any

from persona.config import prompt_text, resolve_settings
from persona.errors import PersonaError
from persona.files import hash_json, is_fresh, mark_fresh, write_json, write_text
from persona.inference import assemble, finish, keyframes, lipsync, narration, video
from persona.inference.plan import STAGES, RenderDir, RenderSettings, SceneDir, detect_profile
from persona.inference.script import Script, load_script, make_backend, messages_for, read_topic, write_script
from persona.inference.speech import VoiceFiles
from persona.progress import info, meter


def load_settings(profile: str | None, overrides: dict[str, Any] | None = None) -> RenderSettings:
    """A VRAM profile recipe (recipes/render/<profile>.toml, or a TOML path; 'auto' detects) plus flags."""
    name = detect_profile() if profile in (None, "auto") else profile
    return resolve_settings(RenderSettings, "render", name, overrides)


def obtain_script(ws: Any, rdir: RenderDir, topic: Path | None, script_file: Path | None,
                  settings: RenderSettings, loads: dict[str, int]) -> tuple[Script, dict[str, Any]]:
    """The script to render: --script FILE, else the render's own script.json (kept, edits and all,
    while the topic and prompt are unchanged), else a new one from the LLM."""
    if script_file is not None:
        script = load_script(script_file)
        write_text(rdir.script, script.model_dump_json(indent=2))
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
    if rdir.script.exists():
        rdir.script.replace(rdir.root / "script.previous.json")
        info(f"the topic or script settings changed; the previous script is kept as {rdir.root / 'script.previous.json'}")
    backend = make_backend(s, settings.seed, ws.pack.models)
    if s.backend == "transformers":
        loads["llm"] = loads.get("llm", 0) + 1
    try:
        script, attempts = write_script(backend, messages_for(prompt, text, ws.name, s), s)
    finally:
        if hasattr(backend, "close"):
            backend.close()
    write_text(rdir.script, script.model_dump_json(indent=2))
    mark_fresh(rdir.script, key, backend=s.backend, model=s.model, attempts=attempts, prompt=str(prompt_path))
    return script, {"source": "llm", "backend": s.backend, "model": s.model, "attempts": attempts}


def preflight(ws: Any) -> VoiceFiles:
    """Fail before any heavy work when the pack lacks what a stage needs."""
    missing = []
    if ws.pack.voice is None:
        missing.append("the narration stage needs a voice ([voice]: run `persona train-voice`)")
    if ws.pack.lora is None:
        missing.append("the keyframe stage needs the likeness LoRA ([lora]: run `persona train-lora`)")
    if missing:
        raise PersonaError("; ".join(missing), file=ws.manifest_path, fix="train the missing parts of the pack first")
    return VoiceFiles.from_workspace(ws)


def render(ws: Any, topic: Path | None = None, *, script_file: Path | None = None, name: str | None = None,
           profile: str | None = None, overrides: dict[str, Any] | None = None, until: str | None = None) -> dict[str, Any]:
    consent = ws.require_consent("rendering")
    if until is not None and until not in STAGES:
        raise PersonaError(f"unknown stage {until!r}", fix=f"use one of: {', '.join(STAGES)}")
    settings = load_settings(profile, overrides)
    name = name or (topic or script_file or Path("render")).stem
    rdir = RenderDir(ws.root / "renders" / name)
    rdir.root.mkdir(parents=True, exist_ok=True)
    voice_files = preflight(ws)
    loads: dict[str, int] = {}
    record: dict[str, Any] = {
        "name": name, "persona": ws.name, "consent": consent.summary(), "profile": settings.profile,
        "started": dt.datetime.now().isoformat(timespec="seconds"), "settings": settings.model_dump(mode="json"),
        "stages": {}, "model_loads": loads, "completed": False,
    }

    def stage(label: str, fn, total: int) -> Any:
        t0 = time.perf_counter()
        try:
            with meter(label, total) as m:
                result = fn(m)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise PersonaError(f"the disk is full (stage {label}); finished stages and scenes are kept",
                                   file=rdir.root, fix="free some space and run the same command again") from None
            raise
        result["seconds_taken"] = round(time.perf_counter() - t0, 3)
        record["stages"][label] = result
        write_json(rdir.record, record)
        return result

    got: dict[str, Script] = {}

    def script_stage(m: Any) -> dict[str, Any]:
        got["script"], how = obtain_script(ws, rdir, topic, script_file, settings, loads)
        record["title"] = got["script"].title
        return {**how, "scenes": len(got["script"].scenes)}

    stage("script", script_stage, 1)
    script = got["script"]
    rdir.scenes = [SceneDir(i, sc, rdir.root / "scenes" / f"{i + 1:02d}") for i, sc in enumerate(script.scenes)]
    for s in rdir.scenes:
        s.folder.mkdir(parents=True, exist_ok=True)
    n = len(rdir.scenes)
    plan = [
        ("narration", lambda m: narration.run(voice_files, settings, rdir, loads, m)),
        ("keyframes", lambda m: keyframes.run(ws, settings, rdir, loads, m)),
        ("video", lambda m: video.run(ws, settings, rdir, loads, m)),
        ("lipsync", lambda m: lipsync.run(rdir.scenes, ws, settings, loads, m)),
        ("finish", lambda m: finish.run(ws, settings, rdir, record["stages"]["lipsync"]["synced"], loads, m)),
        ("assemble", lambda m: assemble.run(ws, settings, rdir, script.title)),
    ]
    for label, fn in plan:
        if until is not None and STAGES.index(label) > STAGES.index(until):
            break
        result = stage(label, fn, n)
        if label == "narration":
            _check_durations(result["seconds"], settings)
    record.update(completed=until is None or until == "assemble", finished=dt.datetime.now().isoformat(timespec="seconds"),
                  scenes=_scene_summary(rdir))
    write_json(rdir.record, record)
    return {"render": str(rdir.root), "final": str(rdir.root / "final.mp4") if record["completed"] else None,
            "title": script.title, "scenes": n, "model_loads": loads,
            "stages": {k: {"rendered": v.get("rendered"), "reused": v.get("reused"), "moved": v.get("moved"),
                           "seconds": v["seconds_taken"]}
                       for k, v in record["stages"].items()}}


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
