"""`persona status`: the pack at a glance, read only from the files the stages leave behind.

Consent, dataset sizes, the chosen LoRA and voice with the scores they were chosen by, the last
render's likeness, and what to do next. Every file is read tolerantly (a missing, partial, older or
hand-edited record is shown as unknown, never a crash): status is what a user runs when something
looks wrong, and the studio polls it. Nothing here imports a stage; it reads their records:

- datasets/images/{manifest,report,reference_face}.json, datasets/voice/{manifest,report,reference_voice}.json,
  datasets/presenter/manifest.json (written by ingest);
- lora/NAME.safetensors.json (the LoRA's freshness record: its run folder) and runs/lora/<run>/likeness.json;
- voice/training.json (the exported voice's history, choice and run folder) and runs/voice/<run>/likeness.png;
- renders/*/render.json (the newest one's `likeness` section).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona.files import read_json, record_path
from persona.likeness import REFERENCE_FACE, REFERENCE_VOICE

if TYPE_CHECKING:
    from persona.workspace import Workspace

NEXT_TOPIC = "persona render topic.txt"


def pack_status(ws: Workspace) -> dict[str, Any]:
    """A complete, JSON-able picture of the pack in `ws` (a Workspace). Never raises on stage files.

    Keys: workspace, name, token, consent, datasets {images, voice, presenter}, lora, voice, render,
    next [{"what", "command"}]. A part the pack does not have yet is None.
    """
    pack = ws.pack
    consent = pack.consent.model_dump(mode="json") if pack.consent else None
    status: dict[str, Any] = {
        "workspace": str(ws.root), "name": pack.name, "token": pack.token, "consent": consent,
        "datasets": {"images": _images(ws), "voice": _voice_data(ws), "presenter": _presenter(ws)},
        "lora": _lora(ws), "voice": _voice(ws), "render": _last_render(ws),
    }
    status["next"] = next_steps(status)
    return status


# ---- reading records tolerantly --------------------------------------------------------------
def _read(path: Path, kind: type = dict) -> Any:
    """The JSON at `path` if it is a `kind`, else None (missing, unreadable, or another shape)."""
    try:
        value = read_json(path, None)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, kind) else None


def _num(value: Any, digits: int = 4) -> float | None:
    """A finite number rounded for display, else None (a hand-edited "n/a" or a missing field)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        return None
    return round(float(value), digits)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _folder(ws: Workspace, relative: str | None) -> Path | None:
    if not relative:
        return None
    folder = ws.path(relative)
    return folder if folder.is_dir() else None


def _entries(manifest: Any) -> list[dict[str, Any]]:
    return [e for e in manifest if isinstance(e, dict)] if isinstance(manifest, list) else []


# ---- datasets --------------------------------------------------------------------------------
def _images(ws: Workspace) -> dict[str, Any] | None:
    folder = _folder(ws, ws.pack.datasets.images)
    if folder is None:
        return None
    report = _read(folder / "report.json") or {}
    rejected = report.get("rejected") if isinstance(report.get("rejected"), dict) else {}
    rejected = {str(k): v for k, v in rejected.items() if _int(v) is not None}
    return {"folder": ws.relative(folder), "kept": len(_entries(_read(folder / "manifest.json", list))),
            "dropped_by_hand": len(_entries(_read(folder / "dropped.json", list))),
            "requested": _int(report.get("requested")), "rejected": sum(rejected.values()),
            "rejected_by_reason": rejected, "shortfall": report.get("shortfall") or None,
            "reference_face": ws.path(REFERENCE_FACE).is_file()}


def _voice_data(ws: Workspace) -> dict[str, Any] | None:
    folder = _folder(ws, ws.pack.datasets.voice)
    if folder is None:
        return None
    clips = _entries(_read(folder / "manifest.json", list))
    seconds = sum(_num(c.get("duration"), 3) or 0.0 for c in clips)
    transcribed = [c for c in clips if str(c.get("text") or "").strip()]
    totals = (_read(folder / "report.json") or {}).get("totals")
    totals = totals if isinstance(totals, dict) else {}
    return {"folder": ws.relative(folder), "clips": len(clips), "minutes": round(seconds / 60, 2),
            "transcribed_clips": len(transcribed),
            "transcribed_minutes": round(sum(_num(c.get("duration"), 3) or 0.0 for c in transcribed) / 60, 2),
            "rejected": _int(totals.get("rejected_clips")),
            "dropped_by_hand": len(_entries(_read(folder / "dropped.json", list))),
            "reference_clip": ws.relative(folder / "reference.wav") if (folder / "reference.wav").is_file() else None,
            "reference_voice": ws.path(REFERENCE_VOICE).is_file()}


def _presenter(ws: Workspace) -> dict[str, Any] | None:
    folder = _folder(ws, ws.pack.datasets.presenter)
    if folder is None:
        return None
    clips = _entries(_read(folder / "manifest.json", list))
    seconds = 0.0
    for c in clips:
        start, end = _num(c.get("start"), 3), _num(c.get("end"), 3)
        seconds += max(0.0, end - start) if start is not None and end is not None else 0.0
    return {"folder": ws.relative(folder), "clips": len(clips), "seconds": round(seconds, 2),
            "missing": sum(not (folder / str(c.get("file", ""))).is_file() for c in clips)}


# ---- trained parts ---------------------------------------------------------------------------
def _run_folder(ws: Workspace, raw: Any, kind: str) -> Path | None:
    """A run folder a record names, if it lies under the workspace's runs/<kind>/ (records are files
    a pack may carry from elsewhere: a path out of the workspace is not followed)."""
    if not isinstance(raw, str) or not raw:
        return None
    runs = (ws.root / "runs" / kind).resolve()
    folder = ws.path(raw).resolve()
    return folder if folder.is_relative_to(runs) and folder.is_dir() else None


def _lora(ws: Workspace) -> dict[str, Any] | None:
    section = ws.pack.lora
    if section is None:
        return None
    path = ws.path(section.path)
    summary = (_read(record_path(path)) or {}).get("summary")
    summary = summary if isinstance(summary, dict) else {}
    out: dict[str, Any] = {"path": section.path, "exists": path.is_file(), "base": section.base,
                           "strength": section.strength, "rank": section.rank, "steps": section.steps,
                           "backend": section.backend, "images": _int(summary.get("images")),
                           "final_loss": _num(summary.get("final_loss"), 6), "run": None, "likeness": None}
    run = _run_folder(ws, summary.get("run_dir"), "lora")
    if run is not None:
        out["run"] = ws.relative(run)
        out["likeness"] = lora_likeness(ws, run)
    return out


def lora_likeness(ws: Workspace, run: Path) -> dict[str, Any] | None:
    """What runs/lora/<run>/likeness.json says about the choice: the step, the strength, the chosen
    step's identity distance and leak, the reason and the plot. Unknown keys are ignored."""
    record = _read(run / "likeness.json")
    if record is None:
        return None
    step = _int(record.get("chosen_step", record.get("step")))
    steps = [s for s in record.get("steps", []) if isinstance(s, dict)] if isinstance(record.get("steps"), list) else []
    chosen = next((s for s in steps if s.get("step") == step), {})
    reasons = [record.get(k) for k in ("step_reason", "strength_reason", "reason")]
    reason = "; ".join(r for r in reasons if isinstance(r, str) and r) or None
    plot = run / "likeness.png"
    pick = record.get("pick")
    return {"pick": pick if isinstance(pick, str) else None, "fallback": bool(record.get("fallback")),
            "step": step, "strength": _num(record.get("strength"), 3),
            "identity_distance": _num(chosen.get("identity")), "leak": _num(chosen.get("leak")),
            "match_distance": _num(record.get("match_distance")), "scored_steps": len(steps),
            "reason": reason, "plot": ws.relative(plot) if plot.is_file() else None}


def _voice(ws: Workspace) -> dict[str, Any] | None:
    section = ws.pack.voice
    if section is None:
        return None
    path = ws.path(section.checkpoint)
    training = _read(path.parent / "training.json") or {}
    best = training.get("best") if isinstance(training.get("best"), dict) else {}
    choice = training.get("choice") if isinstance(training.get("choice"), dict) else {}
    history = [h for h in training.get("history", []) if isinstance(h, dict)] if isinstance(training.get("history"), list) else []
    baseline = next((h for h in history if h.get("update") == 0), {})
    chosen = choice or best
    out: dict[str, Any] = {
        "checkpoint": section.checkpoint, "exists": path.is_file(), "base": section.base,
        "reference_audio": section.reference_audio, "trained": bool(training),
        "update": _int(chosen.get("update")), "weights": chosen.get("weights", "ema" if best else None),
        "val_loss": _num(chosen.get("val_loss"), 6), "baseline_val_loss": _num(baseline.get("val_loss"), 6),
        "speaker_similarity": _num(chosen.get("speaker_similarity")), "wer": _num(chosen.get("wer")),
        "pick": choice.get("pick", "loss" if best else None), "reason": choice.get("reason"),
        "validations": sum(1 for h in history if _int(h.get("update"))),
        "run": None, "plot": None,
    }
    run = _run_folder(ws, training.get("run_dir"), "voice")
    if run is not None:
        out["run"] = ws.relative(run)
        plot = run / "likeness.png"
        out["plot"] = ws.relative(plot) if plot.is_file() else None
    return out


# ---- renders ---------------------------------------------------------------------------------
def _last_render(ws: Workspace) -> dict[str, Any] | None:
    """The render whose render.json was written last, with its likeness summary."""
    records = []
    for path in (ws.root / "renders").glob("*/render.json"):
        try:
            records.append((path.stat().st_mtime, path))
        except OSError:
            continue
    if not records:
        return None
    _, path = max(records)
    record = _read(path) or {}
    folder = path.parent
    final = folder / "final.mp4"
    out: dict[str, Any] = {"name": folder.name, "folder": ws.relative(folder), "title": record.get("title"),
                           "completed": bool(record.get("completed")), "finished": record.get("finished"),
                           "final": ws.relative(final) if final.is_file() else None,
                           "zero_shot": record.get("zero_shot") if isinstance(record.get("zero_shot"), list) else None,
                           "renders": len(records), "likeness": None}
    likeness = record.get("likeness")
    if isinstance(likeness, dict):
        worst = likeness.get("worst") if isinstance(likeness.get("worst"), dict) else None
        scenes = [s for s in likeness.get("scenes", []) if isinstance(s, dict)] if isinstance(likeness.get("scenes"), list) else []
        voices = [v for v in (_num(s.get("speaker_similarity")) for s in scenes) if v is not None]
        plot = folder / str(likeness.get("plot") or "likeness.png")
        out["likeness"] = {
            "summary": likeness.get("summary") if isinstance(likeness.get("summary"), str) else None,
            "skipped": likeness.get("skipped"), "match_distance": _num(likeness.get("match_distance")),
            "worst": worst and {"scene": worst.get("scene"), "second": _num(worst.get("second"), 2),
                                "distance": _num(worst.get("distance"))},
            "scenes": len(scenes),
            "lowest_speaker_similarity": min(voices) if voices else None,
            "no_face_frames": sum(_int(s.get("no_face")) or 0 for s in scenes if s.get("source") != "b-roll"),
            "plot": ws.relative(plot) if likeness.get("plot") and plot.is_file() else None,
        }
    return out


# ---- what next -------------------------------------------------------------------------------
def next_steps(status: dict[str, Any]) -> list[dict[str, str]]:
    """What the pack lacks, in the order the lifecycle fills it, each with the command that does it."""
    steps: list[dict[str, str]] = []

    def add(what: str, command: str) -> None:
        steps.append({"what": what, "command": command})

    if status["consent"] is None:
        add("no consent recorded: training and rendering refuse the pack",
            "add [consent] (person, granted_by, date, scope) to persona.toml")
    d = status["datasets"]
    if d["images"] is None and d["voice"] is None:
        add("no datasets yet", "persona ingest FOOTAGE")
    else:
        if d["images"] is None:
            add("no image dataset", "persona ingest FOOTAGE --images-only")
        elif not d["images"]["reference_face"]:
            add("no reference face: renders and train-lora cannot measure likeness", "persona ingest FOOTAGE --images-only")
        if d["voice"] is None:
            add("no voice dataset", "persona ingest FOOTAGE --voice-only")
        elif not d["voice"]["reference_voice"]:
            add("no reference voice: renders and train-voice cannot measure likeness", "persona ingest FOOTAGE --voice-only")
    lora, voice = status["lora"], status["voice"]
    if lora is None:
        if d["images"] is not None:
            add("no LoRA trained: generated on-camera scenes need one", "persona train-lora")
    elif not lora["exists"]:
        add(f"the LoRA {lora['path']} is missing", "persona train-lora")
    if voice is None:
        if d["voice"] is not None:
            add("no voice trained: renders narrate zero-shot from the reference clip", "persona train-voice")
    elif not voice["exists"]:
        add(f"the voice {voice['checkpoint']} is missing", "persona train-voice")
    render = status["render"]
    if render is None:
        if d["images"] is not None or d["voice"] is not None:
            add("no render yet", NEXT_TOPIC)
    elif not render["completed"]:
        add(f"the render {render['name']} has not finished", f"persona render --name {render['name']}")
    elif render["likeness"] is None:
        add(f"the render {render['name']} has no likeness report (made before persona measured it)",
            f"persona render --name {render['name']}")
    return steps


# ---- the readable form -----------------------------------------------------------------------
def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def show(status: dict[str, Any]) -> None:
    """The status for people, on stderr (stdout stays for --json)."""
    from rich.markup import escape as e

    from persona.progress import console

    def line(text: str) -> None:
        console.print(text, highlight=False)

    def row(label: str, text: str) -> None:
        line(f"  [bold]{label:<10}[/bold] {text}")

    def notes(part: dict) -> None:  # why a checkpoint was chosen, and its likeness plot
        for extra in (part.get("reason"), part.get("plot") and f"plot: {part['plot']}"):
            if extra:
                line(f"             [dim]{e(str(extra))}[/dim]")

    line(f"[bold]{e(status['name'])}[/bold] (token {e(status['token'])}) in {e(status['workspace'])}")
    c = status["consent"]
    row("consent", "[red]none recorded[/red]" if c is None else
        e(f"{c['person']}, granted by {c['granted_by']} on {c['date']} for {c['scope']}"
          + (f" (record: {c['reference']})" if c.get("reference") else "")))
    d = status["datasets"]
    im, vo, pr = d["images"], d["voice"], d["presenter"]
    row("images", "[dim]none[/dim]" if im is None else e(
        f"{im['kept']} kept" + (f" of {im['requested']} asked" if im["requested"] else "")
        + f", {im['rejected']} rejected" + (f", {im['dropped_by_hand']} dropped by hand" if im["dropped_by_hand"] else "")
        + ("" if im["reference_face"] else "; no reference face") + f" ({im['folder']})"))
    row("voice data", "[dim]none[/dim]" if vo is None else e(
        f"{_n(vo['clips'], 'clip')}, {vo['minutes']:g} min ({vo['transcribed_clips']} transcribed, "
        f"{vo['transcribed_minutes']:g} min)" + (f", {vo['rejected']} rejected" if vo["rejected"] else "")
        + (f", {vo['dropped_by_hand']} dropped by hand" if vo["dropped_by_hand"] else "")
        + ("" if vo["reference_voice"] else "; no reference voice") + f" ({vo['folder']})"))
    row("presenter", "[dim]none[/dim]" if pr is None else e(
        f"{_n(pr['clips'], 'clip')}, {pr['seconds']:g} s" + (f", {pr['missing']} missing on disk" if pr["missing"] else "")
        + f" ({pr['folder']})"))
    lo = status["lora"]
    if lo is None:
        row("LoRA", "[dim]not trained[/dim]")
    else:
        lk = lo["likeness"] or {}
        text = f"{lo['path']}" + ("" if lo["exists"] else " (MISSING)") + f", strength {lo['strength']:g}"
        text += "".join(f", {k} {v}" for k, v in (("rank", lo["rank"]), ("steps", lo["steps"])) if v is not None)
        if lk.get("step") is not None:
            text += f"; chosen step {lk['step']}"
        if lk.get("identity_distance") is not None:
            text += f", identity distance {lk['identity_distance']:.3f}"
        row("LoRA", e(text))
        notes(lk)
    v = status["voice"]
    if v is None:
        row("voice", "[dim]not trained (renders narrate zero-shot)[/dim]")
    else:
        text = f"{v['checkpoint']}" + ("" if v["exists"] else " (MISSING)")
        if v["update"] is not None:
            text += f"; update {v['update']}" + (f" ({v['weights']} weights)" if v["weights"] else "")
        for label, key, fmt in (("val loss", "val_loss", ".4g"), ("speaker similarity", "speaker_similarity", ".3f"),
                                ("WER", "wer", ".1%")):
            if v[key] is not None:
                text += f", {label} {format(v[key], fmt)}"
        row("voice", e(text))
        notes(v)
    r = status["render"]
    if r is None:
        row("render", "[dim]none yet[/dim]")
    else:
        state = "finished" if r["completed"] else "not finished"
        row("render", e(f"{r['name']} ({state}{', ' + r['finished'] if r.get('finished') else ''})"
                        + (f": {r['final']}" if r["final"] else "")))
        lk = r["likeness"]
        if lk and (lk.get("summary") or lk.get("skipped")):
            line(f"             {e(str(lk.get('summary') or lk.get('skipped')))}")
        if lk and lk.get("plot"):
            line(f"             [dim]plot: {e(lk['plot'])}[/dim]")
    if status["next"]:
        line("[bold]Next[/bold]")
        for s in status["next"]:
            line(f"  {e(s['what'])}: [bold]{e(s['command'])}[/bold]")
    else:
        line("[bold green]The pack is complete.[/bold green]")

