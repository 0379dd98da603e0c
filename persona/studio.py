"""`persona studio`: the whole lifecycle in a web page (Gradio), for people who would rather click.

It sits on top, like the CLI, and holds no logic the CLI lacks: quick actions call the library
functions the CLI calls (init's consent, dataset drop/keep, doctor), and long work (ingest, the two
trainings, speak, script and render) runs as a background job: the CLI verb itself in a process of
its own (persona.jobs), with its state in files of the workspace. So a job survives a page reload,
a closed browser and a restarted studio; it takes the same workspace lock (a second job is refused
as `busy: ...`); and its errors are the CLI's one-line messages. The page polls the jobs (gr.Timer).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline first: no calls home (read at import)

import datetime as dt
import html
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TYPE_CHECKING

import gradio as gr

from persona import jobs
from persona.errors import PersonaError
from persona.files import read_json, write_text

if TYPE_CHECKING:
    from persona.workspace import Workspace

MAX_UPLOAD = "200mb"  # larger footage is added by path: uploads go through the browser and memory
POLL_SECONDS = 1.5
SCENE_COLUMNS = ["narration", "image_prompt", "motion_prompt", "on_camera", "presenter"]
UPLOADS = "footage/uploads"  # inside the workspace: uploads are never kept anywhere else


class Studio:
    """What the page works on: the open workspace (one person at a time, like a terminal's -w) and
    the folder new workspaces are created in and opened from."""

    def __init__(self, root: Path, workspace: Path | None = None):
        self.root = Path(root).resolve()
        self.workspace_root = Path(workspace).resolve() if workspace else None

    def ws(self):
        from persona.workspace import Workspace

        if self.workspace_root is None:
            raise PersonaError("no workspace is open", fix="create one or open one on the Workspace tab")
        return Workspace.find(self.workspace_root)

    def inside(self, path: str | Path) -> Path:
        """A folder named in the page, kept inside the studio's folder (or the workspace it opened)."""
        p = Path(path).expanduser()
        p = (p if p.is_absolute() else self.root / p).resolve()
        allowed = [self.root] + ([self.workspace_root] if self.workspace_root else [])
        if not any(p == a or p.is_relative_to(a) for a in allowed):
            raise PersonaError("is outside the studio's folder", file=p,
                               fix=f"use a folder inside {self.root} (or start the studio with --root)")
        return p


def message(e: Exception) -> str:
    """The CLI's one line: a PersonaError as it prints, anything else as its class and text."""
    if isinstance(e, PersonaError):
        from persona.lock import WorkspaceBusy

        return f"✗ {e}" if isinstance(e, WorkspaceBusy) else f"✗ error: {e}"
    return f"✗ error: {e.__class__.__name__}: {e}"


# ---- workspace -----------------------------------------------------------------------------------
def create_workspace(st: Studio, name: str, folder: str, granted_by: str, scope: str, date: str,
                     reference: str, token: str) -> str:
    from persona.workspace import Workspace, consent_from, slugify

    if not (name or "").strip():
        raise PersonaError("the workspace needs the person's name", fix="fill in Name")
    try:
        day = dt.date.fromisoformat(date.strip()) if (date or "").strip() else None
    except ValueError:
        raise PersonaError(f"consent date {date!r} is not YYYY-MM-DD", fix="e.g. 2025-05-01") from None
    consent = consent_from(name, granted_by, scope, day, reference)
    root = st.inside(folder.strip() or slugify(name))
    ws = Workspace.create(root, name.strip(), token=(token or "").strip() or None, consent=consent)
    st.workspace_root = ws.root
    return f"✓ created {ws.manifest_path} (token **{ws.token}**)"


def open_workspace(st: Studio, folder: str) -> str:
    from persona.workspace import Workspace

    root = st.inside(folder.strip() or ".")
    ws = Workspace.find(root)
    st.workspace_root = ws.root
    return f"✓ opened {ws.root}"


def pack_status(st: Studio) -> str:
    """`persona status` as markdown: what the pack holds, the scores it was chosen by, what is next."""
    from persona.status import pack_status as status_of
    from persona.workspace import Consent

    if st.workspace_root is None:
        return "No workspace open."
    s = status_of(st.ws())
    c, d = s["consent"], s["datasets"]
    im, vo, pr, lo, v, r = d["images"], d["voice"], d["presenter"], s["lora"], s["voice"], s["render"]

    def dropped(part: dict) -> str:
        return f", {part['dropped_by_hand']} dropped by hand" if part.get("dropped_by_hand") else ""

    rows = [("name / token", f"{s['name']} / `{s['token']}`"),
            ("consent", Consent(**c).summary() if c else "**missing**: training and rendering refuse"),
            ("images", f"{im['kept']} in `{im['folder']}`, {im['rejected']} rejected{dropped(im)}" if im
             else "missing: run ingest"),
            ("voice clips", f"{vo['clips']} ({vo['minutes']:g} min) in `{vo['folder']}`{dropped(vo)}" if vo
             else "missing: run ingest"),
            ("presenter clips", f"{pr['clips']} ({pr['seconds']:g} s) in `{pr['folder']}`" if pr else "none"),
            ("LoRA", f"`{lo['path']}`, strength {lo['strength']:g}" + _reason(lo.get("likeness")) if lo
             else "not trained (renders use footage)"),
            ("voice", f"`{v['checkpoint']}`" + (f", speaker similarity {v['speaker_similarity']:.3f}"
                                                 if v.get("speaker_similarity") is not None else "")
             + _reason(v) if v else "not trained (speaks zero-shot)"),
            ("last render", f"{r['name']} ({'finished' if r['completed'] else 'not finished'})"
             + (f": {r['likeness'].get('summary')}" if (r.get("likeness") or {}).get("summary") else "") if r
             else "none yet")]
    table = "| part | state |\n|---|---|\n" + "\n".join(f"| {k} | {_cell(x)} |" for k, x in rows)
    todo = "\n".join(f"- {n['what']}: `{n['command']}`" for n in s["next"])
    return f"**{s['workspace']}**\n\n{table}" + (f"\n\n**Next**\n{todo}" if todo else "")


def _reason(part: dict | None) -> str:
    return f" — {part['reason']}" if part and part.get("reason") else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def doctor_report(st: Studio) -> str:
    from persona.doctor import diagnose

    ws = st.ws() if st.workspace_root else None
    r = diagnose(ws)
    gpu = r["system"]["gpu"]
    lines = [f"GPU: {gpu.get('name') or 'none'} ({gpu.get('reason') or str(gpu.get('vram_gb')) + ' GB'}); "
             f"FFmpeg: {r['system']['pyav_ffmpeg']}"]
    lines += [f"- can: {c}" for c in r["verdict"].get("can", [])]
    lines += [f"- **cannot**: {c}" for c in r["verdict"].get("cannot", [])]
    missing = [m for m in r["models"] if not m["found"]]
    if missing:
        lines.append("\n| missing model | stages | how to get it |\n|---|---|---|")
        lines += [f"| {m['title']} | {', '.join(m['stages'])} | `{m['fetch'] or ''}` |" for m in missing]
    return "\n".join(lines)


# ---- jobs ----------------------------------------------------------------------------------------
def start_job(st: Studio, args: list[str], label: str | None = None) -> str:
    job = jobs.start(st.ws().root, args, label)
    return f"started {job['label']}"


def stop_job(st: Studio, verbs: tuple[str, ...]) -> str:
    for job in jobs.jobs(st.ws().root):
        if job["verb"] in verbs and job["state"] == "running":
            jobs.stop(st.ws().root, job["id"])
            return f"stopping {job['label']} (press again to kill it)"
    return "nothing running"


def job_box(st: Studio, verbs: tuple[str, ...], labels: tuple[str, ...] | None = None) -> str:
    """The latest job of these verbs: its state, its progress with ETA, or its one-line error."""
    if st.workspace_root is None:
        return ""
    found = [j for j in jobs.jobs(st.workspace_root) if j["verb"] in verbs and (labels is None or j["label"] in labels)]
    if not found:
        return "no job yet"
    j = found[0]
    icon = {"running": "…", "done": "✓", "failed": "✗", "stopped": "■"}[j["state"]]
    head = f"{icon} **{html.escape(j['label'])}** {j['state']} (started {j['started'][11:19]})"
    p = j.get("progress")
    if j["state"] == "running" and p:
        head += (f"<br><progress value='{p['percent']}' max='100'></progress> {html.escape(p['what'])}: "
                 f"{p['done']:g}/{p['total']:g} ({p['percent']}%), {p['eta']} {html.escape(p['status'])}")
    elif j["state"] == "running" and j.get("log_tail"):
        head += f"<br><small>{html.escape(j['log_tail'].splitlines()[-1])}</small>"
    if j.get("message"):
        head += f"<br><span class='job-error'>{html.escape(j['message'])}</span>"
    return head


def job_states(st: Studio) -> str:
    """A fingerprint of every job's state: the page refreshes its views when it changes."""
    if st.workspace_root is None:
        return ""
    return "|".join(f"{j['id']}:{j['state']}" for j in jobs.jobs(st.workspace_root)[:20])


# ---- ingest --------------------------------------------------------------------------------------
def save_uploads(st: Studio, files: list[str] | None) -> str:
    """Move uploaded files into the workspace (footage/uploads/); a file that is not media is refused."""
    from persona.media import probe

    ws = st.ws()
    if not files:
        return ""
    kept = []
    for f in files:
        src = Path(f)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", src.name).lstrip(".") or "upload"
        try:
            info = probe(src)
        except Exception:  # PyAV's errors are library jargon; the user needs the file's name and what to do
            src.unlink(missing_ok=True)
            raise PersonaError("cannot be read as a video, audio file or image; it was not kept", file=name,
                               fix="upload footage (mp4, mov, mkv, webm; wav, mp3; jpg, png)") from None
        if not (info.has_video or info.has_audio):
            src.unlink(missing_ok=True)
            raise PersonaError("holds neither video nor audio; it was not kept", file=name, fix="upload footage")
        dest = ws.path(UPLOADS) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dest)
        kept.append(ws.relative(dest))
    return "✓ saved " + ", ".join(kept)


def uploads(st: Studio) -> str:
    if st.workspace_root is None:
        return ""
    folder = st.ws().path(UPLOADS)
    return "\n".join(str(p) for p in sorted(folder.iterdir())) if folder.is_dir() else ""


def _count(value: str | None, what: str) -> list[str]:
    """A whole number typed into the page, as the CLI flag's value (nothing when left empty)."""
    text = str(value or "").strip()
    if not text:
        return []
    if not text.isdigit() or int(text) < 1:
        raise PersonaError(f"{what} must be a whole number of at least 1, not {text!r}", fix=f"correct {what}")
    return [text]


def start_ingest(st: Studio, paths: str, count: str | None, image_recipe: str, voice_recipe: str,
                 presenter_recipe: str) -> str:
    footage = [line.strip() for line in (paths or "").splitlines() if line.strip()]
    if not footage:
        raise PersonaError("no footage to ingest", fix="give paths (one per line) or upload files first")
    args = ["ingest", *footage]
    args += [f"--count={n}" for n in _count(count, "images to pick")]
    for flag, value in (("--image-recipe", image_recipe), ("--voice-recipe", voice_recipe),
                        ("--presenter-recipe", presenter_recipe)):
        if (value or "").strip():
            args += [flag, value.strip()]
    return start_job(st, args, "ingest")


def image_review(st: Studio) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str | None]:
    """(kept images with captions, dropped ones, the contact sheet)."""
    from persona.data.review import listing

    ws = st.ws()
    if not ws.pack.datasets.images:
        return [], [], None
    r = listing(ws, "images")
    sheet = ws.path("datasets/images-review/contact_sheet.png")
    return ([(str(ws.path(e["path"])), f"{e['path']}: {e.get('caption', '')}") for e in r["kept"]],
            [(str(ws.path(e["path"])), f"{e['path']}: {e['reason']}") for e in r["dropped"]],
            str(sheet) if sheet.exists() else None)


def file_url(path: str | Path) -> str:
    """Where the page fetches a workspace file (Gradio's file route; the workspace is an allowed path)."""
    return html.escape(f"/gradio_api/file={Path(path).resolve()}", quote=True)


def media_grid(items: list[tuple[str, str]], empty: str) -> str:
    """Videos (with controls) and pictures in a grid: Gradio 6's gallery shows no videos."""
    if not items:
        return f"<p class='empty'>{html.escape(empty)}</p>"
    cells = []
    for path, caption in items:
        src = file_url(path)
        media = (f"<video controls preload='metadata' src=\"{src}\"></video>" if path.endswith(".mp4")
                 else f"<img src=\"{src}\" alt=''>")
        cells.append(f"<figure>{media}<figcaption>{html.escape(caption)}</figcaption></figure>")
    return f"<div class='media-grid'>{''.join(cells)}</div>"


def voice_review(st: Studio) -> list[list[Any]]:
    """The voice clips as table rows: a play button, the file, seconds, transcript, kept or dropped."""
    from persona.data.review import listing

    ws = st.ws()
    if not ws.pack.datasets.voice:
        return []
    r = listing(ws, "voice")
    rows = []
    for state, entries in (("kept", r["kept"]), ("dropped by hand", r["dropped"])):
        for e in entries:
            rows.append([f"<audio controls preload='none' src=\"{file_url(ws.path(e['path']))}\"></audio>", e["path"],
                         e.get("duration"),
                         e.get("text") or "", state])
    return rows


def presenter_clips(st: Studio) -> str:
    ws = st.ws()
    folder = ws.pack.datasets.presenter
    entries = read_json(ws.path(folder) / "manifest.json", []) if folder else []
    return media_grid([(str(ws.path(folder) / e["file"]), f"{folder}/{e['file']}") for e in entries
                       if isinstance(e, dict) and "file" in e], "no presenter clips (ingest finds them in footage "
                                                                "where the person faces the camera alone)")


def drop_or_keep(st: Studio, file: str, keep: bool) -> str:
    from persona.data import review

    if not (file or "").strip():
        raise PersonaError("nothing selected", fix="click an image or a clip's row first")
    ws = st.ws()
    r = (review.keep if keep else review.drop)(ws, file.strip())
    return f"✓ {'kept' if keep else 'dropped'} {r['file']}: {r['kept']} {r['kind']} in the dataset, {r['dropped']} dropped"


# ---- training ------------------------------------------------------------------------------------
def latest_run(ws: Workspace, kind: str) -> Path | None:
    runs = [p for p in ws.path(f"runs/{kind}").glob("*") if p.is_dir() and not p.name.startswith(("data-", "."))] \
        if ws.path(f"runs/{kind}").is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def lora_monitor(st: Studio) -> tuple[Any, list[str], dict[str, Any] | None]:
    """(loss curve as a table, sample grids, the last training's summary) of the LoRA."""
    import pandas as pd

    ws = st.ws()
    run = latest_run(ws, "lora")
    grids = sorted(str(p) for p in run.glob("samples/step-*.png")) if run else []
    if run and (run / "likeness.png").is_file():  # identity and leak per step, the pick marked: shown first
        grids.insert(0, str(run / "likeness.png"))
    job = jobs.latest(ws.root, "train-lora")
    points = _losses(jobs.read_log(ws.root, job["id"])) if job else []
    summary = job.get("summary") if job else None
    if job and job["state"] == "done" and ws.pack.lora:  # the whole curve, from the finished LoRA's record
        record = read_json(ws.path(ws.pack.lora.path + ".json"), {})
        if record.get("losses"):
            points = list(enumerate(record["losses"], 1))
    return pd.DataFrame(points, columns=["step", "loss"], dtype=float), grids, summary


def voice_monitor(st: Studio) -> tuple[Any, dict[str, Any] | None, str | None]:
    """(validation loss per checkpoint, the last training's summary, its likeness plot) of the voice."""
    import pandas as pd

    ws = st.ws()
    job = jobs.latest(ws.root, "train-voice")
    points = _losses(jobs.read_log(ws.root, job["id"])) if job else []
    run = latest_run(ws, "voice")
    plot = run / "likeness.png" if run else None
    return (pd.DataFrame(points, columns=["step", "loss"], dtype=float), job.get("summary") if job else None,
            str(plot) if plot and plot.is_file() else None)


def chosen_checkpoints(st: Studio) -> tuple[str, str]:
    """The LoRA's and the voice's chosen checkpoint and why, from `persona status`."""
    from persona.status import pack_status as status_of

    s = status_of(st.ws())
    lo, v = s["lora"], s["voice"]
    lk = (lo or {}).get("likeness") or {}
    lora = (f"**chosen:** step {lk.get('step')}, strength {lo['strength']:g}" + _reason(lk) if lo and lk
            else f"**chosen:** `{lo['path']}`" if lo else "")
    voice = (f"**chosen:** update {v['update']}" + (f", {v['weights']} weights" if v.get("weights") else "")
             + _reason(v) if v and v.get("update") is not None else "")
    return lora, voice


def _losses(log: str) -> list[tuple[float, float]]:
    """(step, loss) from the progress lines a training prints (persona.progress.meter)."""
    points = []
    for line in log.splitlines():
        p = jobs.last_progress(line)
        m = re.search(r"\bloss ([-\d.e]+)", p["status"]) if p else None
        if m:
            points.append((p["done"], float(m.group(1))))
    return points


def start_lora(st: Studio, recipe: str, steps: str | None, restart: bool) -> str:
    args = ["train-lora"] + (["--recipe", recipe.strip()] if (recipe or "").strip() else [])
    args += [f"--steps={n}" for n in _count(steps, "steps")] + (["--restart"] if restart else [])
    return start_job(st, args, "train-lora")


def start_voice(st: Studio, recipe: str, updates: str | None, restart: bool) -> str:
    args = ["train-voice"] + (["--recipe", recipe.strip()] if (recipe or "").strip() else [])
    args += [f"--updates={n}" for n in _count(updates, "updates")] + (["--restart"] if restart else [])
    return start_job(st, args, "train-voice")


# ---- speak ---------------------------------------------------------------------------------------
def start_speak(st: Studio, text: str, seed: float, steps: float) -> str:
    if not (text or "").strip():
        raise PersonaError("nothing to say: the text is empty", fix="type some text")
    ws = st.ws()
    out = ws.path("speech") / f"{dt.datetime.now():%Y%m%d-%H%M%S}.wav"
    out.parent.mkdir(parents=True, exist_ok=True)
    return start_job(st, ["speak", text.strip(), "-o", str(out), "--seed", str(int(seed)), "--steps", str(int(steps))],
                     "speak")


def last_speech(st: Studio) -> tuple[str | None, str]:
    ws = st.ws()
    job = jobs.latest(ws.root, "speak")
    s = job.get("summary") if job and job["state"] == "done" else None
    if not s:
        return None, ""
    how = "zero-shot from the voice dataset's reference clip" if s.get("zero_shot") else "the trained voice"
    return s["output"], f"{s['seconds']:.2f} s, {how}"


# ---- render --------------------------------------------------------------------------------------
def _render_args(name: str, profile: str, llm: str, llm_url: str, llm_model: str, presenter: str) -> list[str]:
    args = ["--name", name, "--profile", (profile or "auto").strip()]
    if llm and llm != "recipe default":
        args += ["--llm", llm]
    if (llm_url or "").strip():
        args += ["--llm-url", llm_url.strip()]
    if (llm_model or "").strip():
        args += ["--llm-model", llm_model.strip()]
    if presenter and presenter != "auto":
        args += ["--presenter", presenter]
    return args


def render_name(name: str) -> str:
    from persona.inference.render import render_name as check

    return check((name or "").strip() or "video", None, None)


def start_script(st: Studio, name: str, topic: str, *settings: str) -> str:
    if not (topic or "").strip():
        raise PersonaError("no topic", fix="type what the video is about")
    ws, name = st.ws(), render_name(name)
    topic_file = ws.path("topics") / f"{name}.txt"
    write_text(topic_file, topic.strip() + "\n")
    return start_job(st, ["render", str(topic_file), *_render_args(name, *settings), "--until", "script"], f"script {name}")


def read_script(st: Studio, name: str) -> tuple[str, list[list[Any]]]:
    """(title, one row per scene) of renders/NAME/script.json."""
    from persona.inference.script import load_script

    path = st.ws().path("renders") / render_name(name) / "script.json"
    if not path.exists():
        return "", []
    script = load_script(path)
    return script.title, [[sc.narration, sc.image_prompt, sc.motion_prompt, sc.on_camera, sc.presenter or ""]
                          for sc in script.scenes]


def save_script(st: Studio, name: str, title: str, rows: Any) -> str:
    """The edited table back into renders/NAME/script.json, checked by the script's own rules."""
    from pydantic import ValidationError

    from persona.inference.script import Script
    from persona.lock import workspace_lock

    rows = rows.values.tolist() if hasattr(rows, "values") else list(rows or [])
    scenes = []
    for row in rows:
        if not any(str(v).strip() for v in row):
            continue
        sc = dict(zip(SCENE_COLUMNS, row))
        sc["on_camera"] = sc["on_camera"] if isinstance(sc["on_camera"], bool) else \
            str(sc["on_camera"]).strip().lower() in ("true", "1", "yes", "y")
        sc["presenter"] = str(sc.get("presenter") or "").strip() or None
        scenes.append(sc)
    ws, name = st.ws(), render_name(name)
    path = ws.path("renders") / name / "script.json"
    try:
        script = Script.model_validate({"title": (title or "").strip() or name, "scenes": scenes})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PersonaError(f"{where}: {first['msg']}", file=path, fix="correct that cell and save again") from None
    with workspace_lock(ws, "edit script"):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, script.model_dump_json(indent=2))
    return f"✓ saved {ws.relative(path)} ({len(scenes)} scenes)"


def start_render(st: Studio, name: str, title: str, rows: Any, redo: str | None, *settings: str) -> str:
    if rows is not None and len(rows):
        save_script(st, name, title, rows)
    name = render_name(name)
    args = ["render", *_render_args(name, *settings)] + (["--redo", redo] if redo else [])
    return start_job(st, args, f"render {name}")


def latest_render(st: Studio) -> str:
    """The render worked on last (the page shows it after a reload)."""
    if st.workspace_root is None or not st.ws().path("renders").is_dir():
        return "video"
    renders = [d for d in st.ws().path("renders").iterdir() if d.is_dir()]
    return max(renders, key=lambda d: d.stat().st_mtime).name if renders else "video"


def render_settings(st: Studio, name: str) -> list[str]:
    """The settings the render's last job ran with (profile, LLM, URL, model, presenter), read back
    from its argv, so a reloaded page renders the same way."""
    values = {"--profile": "auto", "--llm": "recipe default", "--llm-url": "", "--llm-model": "", "--presenter": "auto"}
    name = render_name(name)
    job = next((j for j in jobs.jobs(st.workspace_root) if j["label"] in (f"script {name}", f"render {name}")), None) \
        if st.workspace_root else None
    argv = job["argv"] if job else []
    for i, arg in enumerate(argv[:-1]):
        if arg in values:
            values[arg] = argv[i + 1]
    return list(values.values())


def render_views(st: Studio, name: str) -> tuple[str, Any, list[str], str | None, str]:
    """(scene previews, the final video with subtitles, files to download, likeness plot, the record)."""
    ws = st.ws()
    rdir = ws.path("renders") / render_name(name)
    previews = []
    for scene in sorted(rdir.glob("scenes/*")):
        for f in ("finished.mp4", "synced.mp4", "video.mp4", "keyframe.png"):  # the latest stage's output
            if (scene / f).exists():
                previews.append((str(scene / f), f"scene {scene.name}: {f}"))
                break
    final, srt = rdir / "final.mp4", rdir / "final.srt"
    video = {"value": str(final), "subtitles": str(srt) if srt.exists() else None} if final.exists() else None
    files = [str(p) for p in (final, srt, rdir / "render.json") if p.exists()]
    likeness = rdir / "likeness.png"
    record = read_json(rdir / "render.json", None)
    shown = {k: record.get(k) for k in ("title", "completed", "zero_shot", "sources", "model_loads", "likeness")
             } if isinstance(record, dict) else {}
    return (media_grid(previews, "no scenes rendered yet"), video, files, str(likeness) if likeness.exists() else None,
            json.dumps(shown, indent=2))


# ---- the page ------------------------------------------------------------------------------------
CSS = """
.job-error { color: #b00020; font-weight: 600; }
.msg p { margin: 0; }
.media-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 8px; }
.media-grid figure { margin: 0; }
.media-grid video, .media-grid img { width: 100%; border-radius: 4px; background: #111; }
.media-grid figcaption { font-size: 0.85em; }
"""


def _guard(fn: Callable[..., Any], n_out: int = 1) -> Callable[..., Any]:
    """Run a handler; a failure shows as one line in the message box (its first output), never a traceback."""
    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - the page shows every failure as the CLI would
            return (message(e),) + (gr.skip(),) * (n_out - 1) if n_out > 1 else message(e)
    return run


def build(st: Studio) -> gr.Blocks:
    g = _guard
    with gr.Blocks(title="persona studio") as app:
        gr.Markdown("# persona studio\nA likeness of one consenting person, from footage to a finished video.")
        current = gr.Markdown(elem_id="current")
        seen = gr.State("")
        with gr.Tabs():
            # ---- Workspace
            with gr.Tab("Workspace", id="workspace"):
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### Create a workspace\nConsent is required: who granted it and for what.")
                        name = gr.Textbox(label="Name (the person)", elem_id="ws-name")
                        folder = gr.Textbox(label="Folder (default: from the name)", elem_id="ws-folder")
                        granted = gr.Textbox(label="Consent granted by", elem_id="ws-granted")
                        scope = gr.Textbox(label="Scope of use (what the likeness may be used for)", elem_id="ws-scope")
                        date = gr.Textbox(label="Consent date (YYYY-MM-DD, default today)", elem_id="ws-date")
                        reference = gr.Textbox(label="Where the signed record is kept (optional)")
                        token = gr.Textbox(label="Trigger token (optional)")
                        create = gr.Button("Create workspace", variant="primary", elem_id="ws-create")
                    with gr.Column():
                        gr.Markdown("### Open a workspace")
                        open_path = gr.Textbox(label="Folder holding persona.toml", elem_id="ws-open-path")
                        open_btn = gr.Button("Open", elem_id="ws-open")
                        ws_msg = gr.Markdown(elem_id="ws-msg", elem_classes="msg")
                        status = gr.Markdown(elem_id="ws-status")
                        doctor_btn = gr.Button("Run doctor", elem_id="ws-doctor")
                        doctor_out = gr.Markdown(elem_id="ws-doctor-out")
            # ---- Ingest
            with gr.Tab("Ingest", id="ingest"):
                with gr.Row():
                    with gr.Column():
                        paths = gr.Textbox(label="Footage paths on this machine (one per line; folders too)", lines=3,
                                           elem_id="in-paths")
                        upload = gr.File(label=f"…or upload small files (up to {MAX_UPLOAD}; saved in the workspace)",
                                         file_count="multiple", elem_id="in-upload")
                        count = gr.Textbox(label="Images to pick", placeholder="30", elem_id="in-count")
                        with gr.Accordion("Recipes (a name or a .toml file)", open=False):
                            image_recipe = gr.Textbox(label="image recipe", elem_id="in-image-recipe")
                            voice_recipe = gr.Textbox(label="voice recipe", elem_id="in-voice-recipe")
                            presenter_recipe = gr.Textbox(label="presenter recipe", elem_id="in-presenter-recipe")
                        with gr.Row():
                            ingest_btn = gr.Button("Ingest", variant="primary", elem_id="in-start")
                            ingest_stop = gr.Button("Stop", elem_id="in-stop")
                        in_msg = gr.Markdown(elem_id="in-msg", elem_classes="msg")
                        in_job = gr.Markdown(elem_id="in-job")
                    with gr.Column():
                        sheet = gr.Image(label="contact sheet", type="filepath", interactive=False, elem_id="in-sheet")
                gr.Markdown("### Images: click one, then drop or keep it")
                with gr.Row():
                    kept_gallery = gr.Gallery(label="in the dataset", columns=6, height=300, elem_id="in-kept",
                                              allow_preview=False)
                    dropped_gallery = gr.Gallery(label="dropped by hand", columns=4, height=300, elem_id="in-dropped",
                                                 allow_preview=False)
                with gr.Row():
                    chosen = gr.Textbox(label="selected file", elem_id="in-chosen")
                    drop_btn = gr.Button("Drop", elem_id="in-drop")
                    keep_btn = gr.Button("Keep", elem_id="in-keep")
                gr.Markdown("### Voice clips: play, read the transcript, click a row, then drop or keep it")
                clips = gr.Dataframe(headers=["play", "file", "seconds", "transcript", "state"],
                                     datatype=["html", "str", "number", "str", "str"], interactive=False,
                                     elem_id="in-clips")
                gr.Markdown("### Presenter clips")
                presenter = gr.HTML(elem_id="in-presenter")
            # ---- Train
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### Likeness LoRA (`persona train-lora`)")
                        lora_recipe = gr.Textbox(label="recipe (default: the largest this GPU fits)", elem_id="lora-recipe")
                        lora_steps = gr.Textbox(label="steps", placeholder="the recipe's")
                        lora_restart = gr.Checkbox(label="start over (otherwise a stopped run resumes)")
                        with gr.Row():
                            lora_btn = gr.Button("Start / resume", variant="primary", elem_id="lora-start")
                            lora_stop = gr.Button("Stop", elem_id="lora-stop")
                        lora_msg = gr.Markdown(elem_id="lora-msg", elem_classes="msg")
                        lora_job = gr.Markdown(elem_id="lora-job")
                        lora_plot = gr.LinePlot(x="step", y="loss", label="loss", height=220, elem_id="lora-plot")
                        lora_choice = gr.Markdown(elem_id="lora-choice")
                        lora_summary = gr.JSON(label="result (chosen checkpoint, likeness where measured)")
                    with gr.Column():
                        gr.Markdown("### Voice (`persona train-voice`)")
                        voice_recipe_t = gr.Textbox(label="recipe (default: by GPU memory)")
                        voice_updates = gr.Textbox(label="updates", placeholder="from the data")
                        voice_restart = gr.Checkbox(label="start over")
                        with gr.Row():
                            voice_btn = gr.Button("Start / resume", variant="primary", elem_id="voice-start")
                            voice_stop = gr.Button("Stop", elem_id="voice-stop")
                        voice_msg = gr.Markdown(elem_id="voice-msg", elem_classes="msg")
                        voice_job = gr.Markdown(elem_id="voice-job")
                        voice_plot = gr.LinePlot(x="step", y="loss", label="loss", height=220)
                        voice_choice = gr.Markdown(elem_id="voice-choice")
                        voice_likeness = gr.Image(label="voice likeness per validation", type="filepath",
                                                  interactive=False, height=220)
                        voice_summary = gr.JSON(label="result (chosen checkpoint: by likeness, or by loss)")
                grids = gr.Gallery(label="LoRA: likeness per step (the pick marked), then the sample grids (with and "
                                         "without the trigger token)", columns=4,
                                   height=300, elem_id="lora-grids")
            # ---- Speak
            with gr.Tab("Speak", id="speak"):
                say = gr.Textbox(label="Text", lines=3, elem_id="sp-text")
                with gr.Row():
                    seed = gr.Number(label="seed", value=0, precision=0)
                    steps = gr.Number(label="steps", value=32, precision=0, elem_id="sp-steps")
                speak_btn = gr.Button("Speak", variant="primary", elem_id="sp-start")
                sp_msg = gr.Markdown(elem_id="sp-msg", elem_classes="msg")
                sp_job = gr.Markdown(elem_id="sp-job")
                audio = gr.Audio(label="speech", type="filepath", interactive=False, elem_id="sp-audio")
                sp_info = gr.Markdown(elem_id="sp-info")
            # ---- Render
            with gr.Tab("Render", id="render"):
                with gr.Row():
                    with gr.Column():
                        rname = gr.Textbox(label="Render name (folder under renders/)", value="video", elem_id="re-name")
                        topic = gr.Textbox(label="Topic", lines=3, elem_id="re-topic")
                        with gr.Accordion("Settings", open=False):
                            profile = gr.Textbox(label="profile (auto, cpu, 12gb … 80gb, demo, or a .toml)",
                                                 value="auto", elem_id="re-profile")
                            llm = gr.Dropdown(["recipe default", "ollama", "openai", "transformers"],
                                              value="recipe default", label="script LLM", elem_id="re-llm")
                            llm_url = gr.Textbox(label="LLM server URL", elem_id="re-llm-url")
                            llm_model = gr.Textbox(label="LLM model")
                            source = gr.Dropdown(["auto", "footage", "generated", "talking"], value="auto",
                                                 label="presenter source")
                        with gr.Row():
                            script_btn = gr.Button("Write script", elem_id="re-script")
                            load_btn = gr.Button("Reload script", elem_id="re-load")
                            save_btn = gr.Button("Save script", elem_id="re-save")
                    with gr.Column():
                        re_msg = gr.Markdown(elem_id="re-msg", elem_classes="msg")
                        re_job = gr.Markdown(elem_id="re-job")
                title = gr.Textbox(label="Title", elem_id="re-title")
                scenes = gr.Dataframe(headers=SCENE_COLUMNS, datatype=["str", "str", "str", "bool", "str"],
                                      interactive=True, wrap=True, elem_id="re-scenes", column_count=len(SCENE_COLUMNS))
                with gr.Row():
                    render_btn = gr.Button("Render", variant="primary", elem_id="re-start")
                    render_stop = gr.Button("Stop", elem_id="re-stop")
                    redo_scene = gr.Dropdown(choices=[], label="scene", elem_id="re-redo-scene", allow_custom_value=True)
                    redo_btn = gr.Button("Redo this scene", elem_id="re-redo")
                gr.Markdown("### Scenes")
                previews = gr.HTML(elem_id="re-previews")
                with gr.Row():
                    final = gr.Video(label="final video", elem_id="re-final", interactive=False)
                    likeness = gr.Image(label="likeness", type="filepath", interactive=False, elem_id="re-likeness")
                downloads = gr.File(label="download: final.mp4, final.srt, render.json", file_count="multiple",
                                    interactive=False, elem_id="re-files")
                record = gr.Code(label="render record", language="json", elem_id="re-record")
        timer = gr.Timer(POLL_SECONDS)

        # ---- wiring
        settings = [profile, llm, llm_url, llm_model, source]
        job_boxes = [in_job, lora_job, voice_job, sp_job, re_job]
        views = [current, status, sheet, kept_gallery, dropped_gallery, clips, presenter, lora_plot, grids,
                 lora_summary, lora_choice, voice_plot, voice_summary, voice_choice, voice_likeness, audio, sp_info, title, scenes, redo_scene, previews, final,
                 downloads, likeness, record]

        def boxes(rn: str) -> list[str]:
            if st.workspace_root is None:
                return [""] * len(job_boxes)
            return [job_box(st, ("ingest",)), job_box(st, ("train-lora",)), job_box(st, ("train-voice",)),
                    job_box(st, ("speak",)), job_box(st, ("render",), (f"script {render_name(rn)}",
                                                                        f"render {render_name(rn)}"))]

        def refresh(rn: str) -> list[Any]:
            """Every view, read from disk (after a job ends, an action, or a page load)."""
            if st.workspace_root is None:
                return ["No workspace open: create or open one."] + [gr.skip()] * (len(views) - 1)
            ws = st.ws()
            kept, dropped, contact = image_review(st)
            lplot, lgrids, lsum = lora_monitor(st)
            vplot, vsum, vlikeness = voice_monitor(st)
            lchoice, vchoice = chosen_checkpoints(st)
            wav, wav_info = last_speech(st)
            t, rows = read_script(st, rn)
            prev, video, files, lk, rec = render_views(st, rn)
            choices = [f"{i:02d}" for i in range(1, len(rows) + 1)]
            return [f"Workspace: **{ws.name}** — `{ws.root}`", pack_status(st), contact, kept, dropped,
                    voice_review(st), presenter_clips(st), lplot, lgrids, lsum, lchoice, vplot, vsum, vchoice,
                    vlikeness, wav, wav_info,
                    t, rows or None, gr.update(choices=choices, value=choices[0] if choices else None), prev,
                    gr.update(**video) if video else None,
                    files or None, lk, rec]

        def safe_refresh(rn: str) -> list[Any]:
            try:
                return refresh(rn)
            except Exception as e:  # noqa: BLE001 - a broken pack shows its one line in place of the views
                return [message(e)] + [gr.skip()] * (len(views) - 1)

        def tick(rn: str, last: str) -> list[Any]:
            try:
                now = job_states(st)
                out = boxes(rn)
            except Exception as e:  # noqa: BLE001
                return [message(e)] + [gr.skip()] * (len(job_boxes) + len(views))
            changed = now != last
            return out + [now] + (safe_refresh(rn) if changed else [gr.skip()] * len(views))

        def act(fn: Callable[..., str], msg: Any, *inputs: Any, refresh_after: bool = True, named: bool = False):
            """An action: its one-line result in `msg`, then every view read again. `named`: the
            action is about the render named on the Render tab (passed after the studio)."""
            def run(*args: Any) -> list[Any]:
                *values, rn = args
                try:
                    text = fn(st, rn, *values) if named else fn(st, *values)
                except Exception as e:  # noqa: BLE001
                    return [message(e)] + [gr.skip()] * len(views)
                return [text] + (safe_refresh(rn) if refresh_after else [gr.skip()] * len(views))
            return dict(fn=run, inputs=[*inputs, rname], outputs=[msg, *views])

        timer.tick(tick, [rname, seen], [*job_boxes, seen, *views], show_progress="hidden")
        def restore_settings(rn: str) -> list[Any]:
            try:
                return render_settings(st, rn)
            except Exception:  # noqa: BLE001 - a name the user is still typing: the settings stay as they are
                return [gr.skip()] * len(settings)

        app.load(lambda: latest_render(st), None, rname).then(safe_refresh, [rname], views).then(
            restore_settings, rname, settings)
        create.click(**act(create_workspace, ws_msg, name, folder, granted, scope, date, reference, token))
        open_btn.click(**act(open_workspace, ws_msg, open_path))
        doctor_btn.click(g(lambda: doctor_report(st)), None, doctor_out)
        def with_uploads(typed: str) -> tuple[None, str]:
            """The typed paths, plus the workspace's uploads not yet among them (typed ones are kept)."""
            lines = [x for x in (typed or "").splitlines() if x.strip()]
            return None, "\n".join(lines + [u for u in uploads(st).splitlines() if u not in lines])

        upload.upload(**act(save_uploads, in_msg, upload)).then(with_uploads, paths, [upload, paths])
        ingest_btn.click(**act(start_ingest, in_msg, paths, count, image_recipe, voice_recipe, presenter_recipe,
                               refresh_after=False))
        ingest_stop.click(**act(lambda s: stop_job(s, ("ingest",)), in_msg, refresh_after=False))

        def pick_image(evt: gr.SelectData) -> str:
            caption = (evt.value or {}).get("caption") or ""
            return caption.split(":")[0]

        kept_gallery.select(pick_image, None, chosen)
        dropped_gallery.select(pick_image, None, chosen)
        def pick_clip(evt: gr.SelectData) -> str:
            return evt.row_value[1] if evt.row_value else ""

        clips.select(pick_clip, None, chosen)
        drop_btn.click(**act(lambda s, f: drop_or_keep(s, f, False), in_msg, chosen))
        keep_btn.click(**act(lambda s, f: drop_or_keep(s, f, True), in_msg, chosen))
        lora_btn.click(**act(start_lora, lora_msg, lora_recipe, lora_steps, lora_restart, refresh_after=False))
        lora_stop.click(**act(lambda s: stop_job(s, ("train-lora",)), lora_msg, refresh_after=False))
        voice_btn.click(**act(start_voice, voice_msg, voice_recipe_t, voice_updates, voice_restart, refresh_after=False))
        voice_stop.click(**act(lambda s: stop_job(s, ("train-voice",)), voice_msg, refresh_after=False))
        speak_btn.click(**act(start_speak, sp_msg, say, seed, steps, refresh_after=False))
        script_btn.click(**act(start_script, re_msg, topic, *settings, refresh_after=False, named=True))
        load_btn.click(**act(lambda s, rn: f"read renders/{render_name(rn)}/script.json", re_msg, named=True))
        save_btn.click(**act(save_script, re_msg, title, scenes, named=True))
        render_btn.click(**act(lambda s, rn, t, rows, *a: start_render(s, rn, t, rows, None, *a), re_msg,
                               title, scenes, *settings, refresh_after=False, named=True))
        redo_btn.click(**act(start_render, re_msg, title, scenes, redo_scene, *settings, refresh_after=False,
                             named=True))
        render_stop.click(**act(lambda s: stop_job(s, ("render",)), re_msg, refresh_after=False))
    return app


def serve(root: Path, workspace: Path | None = None, port: int = 7860, listen: bool = False, share: bool = False,
          auth: str | None = None, ready: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Start the studio and block. Only 127.0.0.1 unless --listen/--share, which need a password.
    `ready` gets the address once it listens."""
    credentials = None
    if auth:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise PersonaError("--auth must be USER:PASSWORD", fix="e.g. --auth me:a-long-password (or set "
                               "PERSONA_STUDIO_AUTH)")
        credentials = (user, password)
    if (listen or share) and credentials is None:
        raise PersonaError("--listen and --share open the studio to other machines, which needs a password",
                           fix="add --auth USER:PASSWORD (or set PERSONA_STUDIO_AUTH=USER:PASSWORD)")
    st = Studio(root, workspace)
    app = build(st)
    allowed = [str(st.root)] + ([str(st.workspace_root)] if st.workspace_root else [])
    app.queue(default_concurrency_limit=4).launch(
        server_name="0.0.0.0" if listen else "127.0.0.1", server_port=port, share=share, auth=credentials,
        max_file_size=MAX_UPLOAD, allowed_paths=allowed, css=CSS, inbrowser=False, show_error=False,
        footer_links=[], quiet=False, prevent_thread_lock=True)
    if ready is not None:
        ready({"url": app.local_url, "share_url": app.share_url, "root": str(st.root),
               "workspace": str(st.workspace_root) if st.workspace_root else None})
    app.block_thread()
