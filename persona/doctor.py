"""`persona doctor`: what this machine has, what each stage needs, and how to get what is missing."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from persona.models import REGISTRY, CodeRefused, Located, find

# Models that ship inside installed wheels: (name, package, file inside the package, stages)
BUNDLED = [
    ("dlib face detector, landmarks and 128-d embedding", "face_recognition_models",
     "models/dlib_face_recognition_resnet_model_v1.dat", "ingest: faces"),
    ("silero-vad voice activity (ONNX)", "silero_vad", "data/silero_vad.onnx", "ingest: speech regions"),
    ("Resemblyzer speaker encoder", "resemblyzer", "pretrained.pt", "ingest: speakers"),
]

# The smallest GPU each GPU-bound stage is planned for (recipes fit 12 GB and up).
GPU_STAGES = {"train-lora": 12, "train-voice": 12, "render: keyframes": 12, "render: video": 12}
# Render stages a ComfyUI server can run instead: (its stage in comfyui.discover's report, the models
# the local diffusers engine needs for it; None: diffusers has no such model)
ENGINE_STAGES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "render: keyframes": ("keyframes", ("flux",)), "render: video": ("video", ("wan-i2v",)),
    "render: talking": ("talking", None)}


def _package_file(package: str, relative: str) -> Path | None:
    # find_spec does not execute the package (face_recognition_models imports pkg_resources on import).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.exists() else None


def _gpu() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"available": False, "reason": "torch is not installed"}
    info: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(0)
        info.update(available=True, name=torch.cuda.get_device_name(0), vram_gb=round(total / 2**30, 1),
                    free_gb=round(free / 2**30, 1), count=torch.cuda.device_count())
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        info.update(available=True, name="Apple MPS", vram_gb=None)
    else:
        info.update(available=False, reason="no CUDA device visible")
    return info


def _disk(path: Path) -> float:
    while not path.exists():
        path = path.parent
    return round(shutil.disk_usage(path).free / 2**30, 1)


def diagnose(workspace: Any | None = None, comfyui: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything doctor reports, as data (the CLI renders it or prints it as JSON). `comfyui` holds one
    report per configured ComfyUI server (persona.inference.comfyui.discover: the CLI makes them, as
    the core does not import the stages)."""
    import av
    from huggingface_hub import constants as hf

    models_table = workspace.pack.models if workspace is not None else {}
    gpu = _gpu()
    ffmpeg = shutil.which("ffmpeg")
    system = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpu": gpu,
        "pyav_ffmpeg": ".".join(str(x) for x in av.library_versions["libavcodec"]),
        "system_ffmpeg": ffmpeg,
        "hf_cache": str(hf.HF_HUB_CACHE),
        "hf_offline": bool(hf.HF_HUB_OFFLINE),
        "free_disk_gb": {"hf_cache": _disk(Path(hf.HF_HUB_CACHE))},
    }
    if workspace is not None:
        system["workspace"] = str(workspace.root)
        system["free_disk_gb"]["workspace"] = _disk(workspace.root)

    models = []
    for m in REGISTRY.values():
        try:
            found = find(m.key, models=models_table)
        except CodeRefused as e:  # a pack's code-bearing entry, refused: shown, not fatal
            found = Located(m.key, Path(models_table[m.key]), "[models]", problems=[str(e)])
        ok = found is not None and not found.problems
        models.append({
            "key": m.key, "title": m.title, "stages": list(m.stages), "licence": m.licence, "found": ok,
            "path": str(found.path) if found else None, "source": found.source if found else None,
            "problems": found.problems if found else [], "env": m.env, "fetch": None if ok else m.fetch_command(),
            "size_gb": m.size_gb, "note": m.note,
        })
    bundled = []
    for title, package, rel, stage in BUNDLED:
        path = _package_file(package, rel)
        bundled.append({"title": title, "stages": [stage], "found": path is not None, "path": str(path) if path else None,
                        "fetch": None if path else f"pip install {package.replace('_', '-')}"})
    for key, files in _comfy_single_files(models_table).items():  # the ComfyUI folder's files, per model
        entry = next(m for m in models if m["key"] == key)
        entry["single_files"] = files
        if files["found"] and not entry["found"]:
            entry.update(found=True, path=f"{files['folder']}: {files['files']}", source="[models] comfyui", fetch=None)
        elif not files["found"] and not entry["found"]:
            entry["problems"] = [*entry["problems"], f"[models] comfyui: {files['problem']}"]
    report = {"system": system, "models": models, "bundled": bundled,
              "verdict": _verdict(gpu, models, bundled, comfyui or [])}
    if comfyui:
        report["comfyui"] = comfyui
    return report


def _comfy_single_files(models_table: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per model (flux, wan-i2v, wan-flf2v), its single files in the configured ComfyUI models folder or
    why they are not usable (the file missing and where it goes). Empty without a folder."""
    from persona.comfy_files import comfy_models, flux_files, wan_files_alone
    from persona.errors import PersonaError

    try:
        comfy = comfy_models(models_table)
    except PersonaError as e:
        return {"flux": {"found": False, "problem": str(e)}}
    if comfy is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    try:
        out["flux"] = {"found": True, "files": flux_files(comfy).describe(), "folder": str(comfy.models)}
    except PersonaError as e:
        out["flux"] = {"found": False, "problem": str(e)}
    for key in ("wan-i2v", "wan-flf2v"):
        try:
            out[key] = {"found": True, "files": wan_files_alone(key, comfy).describe(), "folder": str(comfy.models)}
        except PersonaError as e:
            out[key] = {"found": False, "problem": str(e)}
    return out


def _engines(stage: str, gpu_ok: bool, need: int, have: set[str], comfyui: list[dict[str, Any]]) -> tuple[bool, str]:
    """Which engines can run a render stage here: this GPU with diffusers, or a ComfyUI server that has
    the stage's nodes and models; else what each lacks."""
    part, local_models = ENGINE_STAGES[stage]
    engines, lacks = [], []
    if local_models is None:
        lacks.append("diffusers has no audio-driven video model")
    else:
        missing = [k for k in local_models if k not in have]
        if gpu_ok and not missing:
            engines.append("this GPU (diffusers)")
        else:
            lacks.append("this machine needs " + " and ".join(
                ([] if gpu_ok else [f"a GPU with >= {need} GB"]) + [f"{k} (see above)" for k in missing]))
    for server in comfyui:
        if not server.get("reachable"):
            lacks.append(f"ComfyUI at {server['url']} is unreachable")
            continue
        modes = server.get("stages", {}).get(part, [])
        ready = [m["mode"] for m in modes if m["ready"]]
        if ready:
            engines.append(f"ComfyUI at {server['url']} ({', '.join(ready)})")
        elif modes:
            first = modes[0]
            need_files = [f"models/{m['folder']}/{m['file']}" for m in first["models"] if not m["found"]]
            lacks.append(f"ComfyUI at {server['url']} lacks " + ", ".join(first["missing_nodes"] + need_files))
    if engines:
        return True, f"{stage} on " + " or ".join(engines)
    if not comfyui:
        lacks.append("or a ComfyUI server (--comfyui-url)")
    return False, f"{stage}: " + "; ".join(lacks)


def _verdict(gpu: dict[str, Any], models: list[dict[str, Any]], bundled: list[dict[str, Any]],
             comfyui: list[dict[str, Any]] | None = None) -> dict[str, list[str]]:
    have = {m["key"] for m in models if m["found"]}
    can, cannot = ["init", "demo (tiny random-weight models, CPU)"], []
    if all(b["found"] for b in bundled):
        can.append("ingest: select face frames and cut single-speaker voice clips")
    else:
        cannot.append("ingest: a bundled face/voice model is missing (reinstall persona)")
    (can if "florence2" in have else cannot).append(
        "ingest: caption images with Florence-2" + ("" if "florence2" in have else " (token-only captions instead)"))
    (can if {"whisper", "align-en"} <= have else cannot).append(
        "ingest: transcribe voice clips" + ("" if {"whisper", "align-en"} <= have else " (clips stay untranscribed)"))
    vram = gpu.get("vram_gb") or 0
    for stage, need in GPU_STAGES.items():
        gpu_ok = bool(gpu.get("available")) and not (vram and vram < need)
        if stage in ENGINE_STAGES:
            ok, line = _engines(stage, gpu_ok, need, have, comfyui or [])
            (can if ok else cannot).append(line)
        elif not gpu_ok:
            cannot.append(f"{stage}: needs a GPU with >= {need} GB")
    if comfyui:  # only a ComfyUI server makes audio-driven talking video
        ok, line = _engines("render: talking", False, 0, have, comfyui)
        (can if ok else cannot).append(line)
    return {"can": can, "cannot": cannot}


def render(report: dict[str, Any]) -> None:
    """Print the report for people."""
    from rich.markup import escape

    from persona.progress import console

    s = report["system"]
    gpu = s["gpu"]
    gpu_line = (f"{gpu['name']} ({gpu.get('vram_gb')} GB, {gpu.get('free_gb')} GB free)" if gpu.get("available")
                else f"none ({gpu.get('reason')})")
    console.print(f"[bold]System[/bold]  Python {s['python']}, {s['cpus']} CPUs, torch {gpu.get('torch')}")
    # paths and device names are printed as plain text: a "[...]" in them is not markup
    console.print(f"  GPU: {gpu_line}", markup=False)
    console.print(f"  FFmpeg: bundled with PyAV (libavcodec {s['pyav_ffmpeg']}); system ffmpeg: {s['system_ffmpeg'] or 'not found (optional; LatentSync needs one in its own environment)'}", markup=False)
    console.print(f"  Hugging Face cache: {s['hf_cache']} ({'offline' if s['hf_offline'] else 'online allowed, but persona never downloads'})", markup=False)
    console.print("  Free disk: " + ", ".join(f"{k} {v} GB" for k, v in s["free_disk_gb"].items()), markup=False)

    by_verb: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for entry in [*report["bundled"], *report["models"]]:
        for stage in entry["stages"]:
            verb, _, part = stage.partition(":")
            by_verb.setdefault(verb.split()[0], []).append((part.strip() or stage, entry))
    order = ["ingest", "train-lora", "train-voice", "speak", "render"]
    for verb, entries in sorted(by_verb.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        console.print(f"[bold]{verb}[/bold]")
        for part, e in entries:
            name = e.get("key") or e["title"]
            if e["found"]:
                console.print(f"  [green]✓[/green] {escape(name)} ({escape(part)}): {escape(str(e['path']))}"
                              + (f" [dim]({escape(e['source'])})[/dim]" if e.get("source") else ""))
                continue
            console.print(f"  [red]✗[/red] {escape(name)} ({escape(part)}): {escape(e['title'])}")
            for problem in e.get("problems") or []:
                console.print(f"      problem: {escape(problem)}")
            extra = ", ".join(x for x in (e.get("licence"), f"{e['size_gb']} GB" if e.get("size_gb") else "") if x)
            console.print(f"      get it: {escape(e['fetch'])}" + (f" [dim]({escape(extra)})[/dim]" if extra else ""))
            if e.get("note"):
                console.print(f"      [dim]{escape(e['note'])}[/dim]")
    console.print(escape("Paths can also be set in persona.toml [models] or with PERSONA_<KEY> (e.g. PERSONA_FLUX)."))
    for server in report.get("comfyui") or []:
        _render_comfyui(server)
    v = report["verdict"]
    console.print("[bold green]This machine can:[/bold green] " + escape("; ".join(v["can"])))
    if v["cannot"]:
        console.print("[bold yellow]It cannot yet:[/bold yellow] " + escape("; ".join(v["cannot"])))


def _render_comfyui(server: dict[str, Any]) -> None:
    """One ComfyUI server: per render stage and mode, the model files it has and the ones it lacks."""
    from rich.markup import escape

    from persona.progress import console

    if not server.get("reachable"):
        console.print(f"[bold]ComfyUI[/bold] {escape(server['url'])}: [red]✗[/red] {escape(server.get('error', 'unreachable'))}")
        return
    console.print(f"[bold]ComfyUI[/bold] {escape(server['url'])} (version {server.get('version')}, "
                  f"{escape(str(server.get('device')))}, {server.get('vram_gb')} GB)")
    for stage, modes in server["stages"].items():
        for mode in modes:
            mark = "[green]✓[/green]" if mode["ready"] else "[red]✗[/red]"
            console.print(f"  {mark} {stage}: {mode['mode']}")
            for node in mode["missing_nodes"]:
                console.print(f"      missing node: {escape(node)} (update ComfyUI)")
            for m in mode["models"]:
                if m["found"]:
                    console.print(f"      [green]✓[/green] models/{m['folder']}/{escape(m['file'])}")
                else:
                    console.print(f"      [red]✗[/red] {escape(m['title'])}: {escape(m['fix'])}")
