"""The `persona` command: a thin click layer over library functions that work from Python too."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from persona import __version__
from rich.markup import escape

from persona.errors import PersonaError
from persona.progress import quiet_libraries

# Offline first: a model is never downloaded implicitly (see `persona doctor`).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
quiet_libraries()

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


class Ctx:
    def __init__(self, workspace: Path | None, debug: bool):
        self.workspace_dir = workspace
        self.debug = debug

    def workspace(self):
        from persona.workspace import Workspace

        return Workspace.find(self.workspace_dir)

    def workspace_or_none(self):
        """The workspace if there is one; a broken persona.toml is still an error."""
        from persona.errors import WorkspaceNotFound

        try:
            return self.workspace()
        except WorkspaceNotFound:
            if self.workspace_dir is not None:
                raise
            return None


def emit(summary: dict[str, Any], as_json: bool) -> None:
    """The machine-readable summary goes to stdout; people read stderr."""
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")


class LifecycleOrder(click.Group):
    """List verbs in the order they are used (init ... render), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=LifecycleOrder, context_settings=CONTEXT)
@click.option("-w", "--workspace", type=click.Path(file_okay=False, path_type=Path),
              help="Workspace folder (default: the nearest folder upwards holding persona.toml).")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option("--trust-pack", is_flag=True,
              help="Let this workspace's persona.toml name code-bearing models (FILM TorchScript, LatentSync and "
                   "sd-scripts checkouts). Only for packs you made or whose maker you trust.")
@click.version_option(__version__, prog_name="persona")
@click.pass_context
def cli(ctx: click.Context, workspace: Path | None, debug: bool, trust_pack: bool) -> None:
    """Build a digital likeness of one consenting person and make short explainer videos with it.

    \b
    Typical session:
      persona init "Michael Pound"        create a workspace with a consent record
      persona doctor                      what this machine has and what is missing
      persona demo --keep /tmp/demo       run everything on tiny offline models
    """
    if trust_pack:
        from persona.models import TRUST_ENV

        os.environ[TRUST_ENV] = "1"  # the environment, so that processes persona starts trust it too
    ctx.obj = Ctx(workspace, debug)


# ------------------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.argument("name")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--token", help="Trigger token (default: derived from NAME, e.g. MichaelPound).")
@click.option("--person", help="Consent: the person whose likeness this is (default: NAME).")
@click.option("--granted-by", help="Consent: who gave it (the person, or a legal guardian).")
@click.option("--consent-date", type=click.DateTime(["%Y-%m-%d"]), help="Consent: date given (default: today).")
@click.option("--scope", help="Consent: what the likeness may be used for.")
@click.option("--consent-reference", help="Consent: where the signed record is kept (file, URL, id).")
@click.option("--no-consent", is_flag=True, help="Create the workspace without consent (ingest only; training refuses).")
@json_option
def init(name: str, directory: Path | None, token: str | None, person: str | None, granted_by: str | None,
         consent_date: dt.datetime | None, scope: str | None, consent_reference: str | None, no_consent: bool,
         as_json: bool) -> None:
    """Create a workspace (a folder with persona.toml) for the person NAME.

    DIRECTORY defaults to a folder named after NAME in the current directory. Consent is asked for
    in a terminal, or taken from the flags; training and rendering refuse a workspace without it.

    \b
    Examples:
      persona init "Michael Pound"
      persona init "Michael Pound" mikebot --granted-by "Michael Pound" \\
          --scope "educational explainer videos" --consent-date 2025-05-01
    """
    from persona.progress import info, warn
    from persona.workspace import Workspace, consent_from, slugify

    directory = directory or Path(slugify(name))
    consent = None
    if not no_consent:
        interactive = sys.stdin.isatty()
        person = person or name
        if interactive:
            granted_by = granted_by or click.prompt("Consent granted by", default=person, err=True)
            scope = scope or click.prompt("Scope of use (what the likeness may be used for)", err=True)
        consent = consent_from(person, granted_by, scope, consent_date.date() if consent_date else None,
                               consent_reference)
    ws = Workspace.create(directory, name, token=token, consent=consent)
    info(f"created {escape(str(ws.manifest_path))} (token [bold]{escape(ws.token)}[/bold])", markup=True)
    if consent is None:
        warn("no consent recorded: add [consent] to persona.toml before training or rendering")
    emit({"workspace": str(ws.root), "manifest": str(ws.manifest_path), "name": ws.name, "token": ws.token,
          "consent": ws.pack.consent.model_dump(mode="json") if ws.pack.consent else None}, as_json)


# ------------------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.option("--comfyui-url", "comfyui_urls", multiple=True,
              help="Also check this ComfyUI server's nodes and models per stage (repeatable; default: PERSONA_COMFYUI_URL).")
@json_option
@click.pass_obj
def doctor(ctx: Ctx, comfyui_urls: tuple[str, ...], as_json: bool) -> None:
    """Show what this machine has: GPU, FFmpeg, disk, and every model per stage.

    Missing models come with the exact command that fetches them on a machine with internet.
    Nothing is downloaded. Always exits 0.

    \b
    Examples:
      persona doctor
      persona -w mikebot doctor --json
    """
    from persona import doctor as doc

    comfyui = None
    urls_given = comfyui_urls or os.environ.get("PERSONA_COMFYUI_URL")
    if urls_given:
        from persona.inference.comfyui import ComfyUI, discover, merge_urls

        comfyui = [discover(ComfyUI(url)) for url in merge_urls((), comfyui_urls)]
    report = doc.diagnose(ctx.workspace_or_none(), comfyui)
    if as_json:
        emit(report, True)
    else:
        doc.render(report)


# ------------------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.argument("footage", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--face", "faces", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A photo of the person (repeatable). Without it: the face with the most screen time.")
@click.option("--voice", "voices", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A clip of the person speaking alone (repeatable). Without it: the voice heard while "
                   "the person is on screen, else the one that speaks most.")
@click.option("--count", type=click.IntRange(min=1), help="Images to pick (default 30).")
@click.option("--captions", type=click.Choice(["auto", "florence2", "token"]),
              help="auto: Florence-2 when its weights are found, else token-only captions.")
@click.option("--min-clip", type=float, help="Shortest voice clip in seconds (default 3).")
@click.option("--max-clip", type=float, help="Longest voice clip in seconds (default 12).")
@click.option("--images-only", is_flag=True, help="Only the image dataset.")
@click.option("--voice-only", is_flag=True, help="Only the voice dataset.")
@click.option("--presenter-only", is_flag=True, help="Only the presenter clips.")
@click.option("--no-presenter", is_flag=True, help="Skip the presenter clips.")
@click.option("--image-recipe", help="ingest-images recipe (fast, wide-shots) or a .toml file.")
@click.option("--voice-recipe", help="ingest-voice recipe (strict) or a .toml file.")
@click.option("--presenter-recipe", help="ingest-presenter recipe (small-faces) or a .toml file.")
@json_option
@click.pass_obj
def ingest(ctx: Ctx, footage: tuple[Path, ...], faces: tuple[Path, ...], voices: tuple[Path, ...], count: int | None,
           captions: str | None, min_clip: float | None, max_clip: float | None, images_only: bool, voice_only: bool,
           presenter_only: bool, no_presenter: bool, image_recipe: str | None, voice_recipe: str | None,
           presenter_recipe: str | None, as_json: bool) -> None:
    """Build the datasets from raw footage: sharp, varied, captioned frames of the person in
    datasets/images, clips of the person alone and facing the camera in datasets/presenter, and
    clean single-speaker clips of their voice with transcripts in datasets/voice.

    FOOTAGE: video files, still images, audio files, or folders of them (searched recursively).
    Other people may appear and speak too: only the person is kept. A re-run skips what it
    already analysed; with new models (Florence-2, Whisper) it only captions or transcribes.

    \b
    Examples:
      persona ingest videos/
      persona ingest lecture.mp4 interview.mkv --face me.jpg --voice me_alone.wav
      persona ingest videos/ --images-only --count 40 --image-recipe wide-shots
      persona ingest podcast.mp3 --voice-only --min-clip 4 --json
      persona ingest videos/ --presenter-only --presenter-recipe small-faces
    """
    from persona.config import resolve_settings
    from persona.data.images import ImageSettings
    from persona.data.ingest import ingest as run
    from persona.data.presenter import PresenterSettings
    from persona.data.voice import VoiceIngestSettings

    if images_only + voice_only + presenter_only > 1:
        raise PersonaError("--images-only, --voice-only and --presenter-only exclude each other",
                           fix="pass at most one of them")
    if presenter_only and no_presenter:
        raise PersonaError("--presenter-only and --no-presenter exclude each other", fix="pass at most one of them")
    image_settings = resolve_settings(ImageSettings, "ingest-images", image_recipe, {"count": count, "captions": captions})
    voice_settings = resolve_settings(VoiceIngestSettings, "ingest-voice", voice_recipe,
                                      {"min_clip": min_clip, "max_clip": max_clip})
    presenter_settings = resolve_settings(PresenterSettings, "ingest-presenter", presenter_recipe)
    only = images_only or voice_only or presenter_only
    summary = run(ctx.workspace(), list(footage), faces=list(faces), voices=list(voices),
                  images=images_only or not only, voice=voice_only or not only,
                  presenter=(presenter_only or not only) and not no_presenter, image_settings=image_settings,
                  voice_settings=voice_settings, presenter_settings=presenter_settings)
    emit(summary, as_json)


# ------------------------------------------------------------------------------------------------
@cli.group(context_settings=CONTEXT)
def dataset() -> None:
    """Review the datasets by hand: list them, drop an image or voice clip, keep it again.

    Each subcommand takes --json for a machine-readable summary on stdout.

    \b
    Examples:
      persona dataset list images
      persona dataset drop datasets/images/0003.png
      persona dataset drop voice/wavs/0002.wav
      persona dataset keep images/0003.png
    """


@dataset.command("list", context_settings=CONTEXT)
@click.argument("kind", type=click.Choice(["images", "voice"]))
@json_option
@click.pass_obj
def dataset_list(ctx: Ctx, kind: str, as_json: bool) -> None:
    """List the files of the image or voice dataset, and the ones dropped by hand."""
    from persona.data.review import listing
    from persona.progress import info

    report = listing(ctx.workspace(), kind)
    for e in report["kept"]:
        info(f"  kept     {e['path']}" + (f"  {e['text']}" if e.get("text") else ""))
    for e in report["dropped"]:
        info(f"  dropped  {e['path']}  ({e['reason']})")
    emit(report, as_json)


@dataset.command("drop", context_settings=CONTEXT)
@click.argument("files", nargs=-1, required=True)
@json_option
@click.pass_obj
def dataset_drop(ctx: Ctx, files: tuple[str, ...], as_json: bool) -> None:
    """Take FILES (images or voice clips) out of their dataset, recorded as "dropped by hand".

    The file moves to datasets/<kind>-review/dropped/ and its entry to the dataset's dropped.json;
    metadata.jsonl, dataset.toml, metadata.csv and the contact sheet are rewritten without it.
    """
    from persona.data.review import drop
    from persona.progress import info

    ws = ctx.workspace()
    done = [drop(ws, f) for f in files]
    for d in done:
        info(f"dropped {d['file']}: {d['kept']} {d['kind']} left in the dataset")
    emit({"dropped": done}, as_json)


@dataset.command("keep", context_settings=CONTEXT)
@click.argument("files", nargs=-1, required=True)
@json_option
@click.pass_obj
def dataset_keep(ctx: Ctx, files: tuple[str, ...], as_json: bool) -> None:
    """Put FILES dropped by hand back into their dataset."""
    from persona.data.review import keep
    from persona.progress import info

    ws = ctx.workspace()
    done = [keep(ws, f) for f in files]
    for d in done:
        info(f"kept {d['file']}: {d['kept']} {d['kind']} in the dataset")
    emit({"kept": done}, as_json)


# ------------------------------------------------------------------------------------------------
@cli.command("train-lora", context_settings=CONTEXT)
@click.option("--recipe", metavar="NAME|FILE",
              help="flux-dev-12gb, -16gb, -24gb, -80gb, tiny-cpu, or a .toml file "
                   "(default: the largest shipped recipe this GPU fits).")
@click.option("--steps", type=click.IntRange(min=1), help="Training steps (overrides the recipe).")
@click.option("--rank", type=click.IntRange(min=1), help="LoRA rank (overrides the recipe; alpha stays as the recipe sets it).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate (overrides the recipe).")
@click.option("--resolution", "resolutions", type=click.IntRange(min=16), multiple=True,
              help="Training resolution; repeat for multi-resolution, e.g. --resolution 512 --resolution 1024.")
@click.option("--backend", type=click.Choice(["native", "kohya"]), default="native", show_default=True,
              help="native: diffusers + peft + accelerate; kohya: your sd-scripts checkout ($PERSONA_SD_SCRIPTS).")
@click.option("--resume/--restart", default=None,
              help="Continue from the last checkpoint of this run (the default when one exists; --resume fails "
                   "without one) or start over.")
@click.option("--force", is_flag=True, help="Train again even if the LoRA is up to date with these settings and data.")
@click.option("--pick", type=click.Choice(["likeness", "last"]), default="likeness", show_default=True,
              help="likeness: export the sampled step that looks most like the person (the earliest within "
                   "tolerance of the best) and record the best strength; last: the final step at the recipe's strength.")
@json_option
@click.pass_obj
def train_lora(ctx: Ctx, recipe: str | None, steps: int | None, rank: int | None, lr: float | None,
               resolutions: tuple[int, ...], backend: str, resume: bool | None, force: bool, pick: str,
               as_json: bool) -> None:
    """Train the persona's FLUX.1-dev LoRA from the image dataset (`persona ingest`).

    Latents and text embeddings are cached first; sample grids (with and without the trigger token,
    fixed seeds) and checkpoints are written every N steps under runs/lora/; each grid is scored
    against the reference face, and the step and strength that look most like the person go to
    lora/NAME-flux-rRANK.safetensors and persona.toml's [lora] (runs/lora/RUN/likeness.json and
    likeness.png say why). Works under `accelerate launch` with several processes.

    FLUX.1-dev comes from [models] flux (a diffusers folder), else from the single files of your
    ComfyUI models folder ([models] comfyui: flux1-dev.safetensors, ae, clip_l, t5xxl; a GGUF
    transformer cannot be trained on), else from the Hugging Face cache.

    \b
    Examples:
      persona train-lora
      persona train-lora --recipe flux-dev-24gb --steps 2000 --resolution 512 --resolution 1024
      persona train-lora --backend kohya --recipe flux-dev-12gb
      accelerate launch --multi_gpu --num_processes 2 -m persona train-lora --recipe flux-dev-80gb
      persona -w mikebot train-lora --recipe tiny-cpu --json
    """
    from persona.train.lora import resolve
    from persona.train.lora import train_lora as train

    ws = ctx.workspace()
    overrides = {"steps": steps, "rank": rank, "lr": lr, "resolutions": list(resolutions) or None}
    settings, name = resolve(recipe, overrides)
    summary = train(ws, settings, recipe=name, backend=backend, resume=resume, force=force, pick=pick)
    if summary is not None:  # None on the other processes of `accelerate launch`
        emit(summary, as_json)


# ------------------------------------------------------------------------------------------------
@cli.command("train-voice", context_settings=CONTEXT)
@click.option("--recipe", help="A voice recipe (f5-12gb, f5-24gb, f5-80gb) or a .toml file "
              "(default: picked by the GPU's memory; plain defaults on a CPU).")
@click.option("--updates", type=int, help="Total updates (default: --epochs passes over the clips).")
@click.option("--epochs", type=float, help="Passes over the training clips that set the total updates.")
@click.option("--lr", "learning_rate", type=float, help="Peak learning rate (default: scaled to the batch).")
@click.option("--batch-frames", type=int, help="Mel frames per batch (93.75 per second of audio).")
@click.option("--val-every", type=int, help="Updates between validations and checkpoints.")
@click.option("--keep-last", type=int, help="Training checkpoints kept besides the best.")
@click.option("--min-minutes", type=float, help="Refuse less transcribed speech than this.")
@click.option("--base", type=click.Path(path_type=Path),
              help="Pretrained F5-TTS: a snapshot folder or a checkpoint file (default: [models] f5-tts, "
                   "$PERSONA_F5_TTS, the HF cache).")
@click.option("--restart", is_flag=True, help="Discard earlier checkpoints and start again from the base.")
@click.option("--stop-at", type=int, help="Stop with a checkpoint at this update; run again to continue.")
@click.option("--pick", type=click.Choice(["likeness", "loss"]),
              help="Which weights to export: likeness (default: held-out lines said by the EMA and the raw weights "
                   "at every validation, scored by speaker similarity to the person and word error rate) or loss "
                   "(the EMA weights with the lowest validation loss).")
@json_option
@click.pass_obj
def train_voice(ctx: Ctx, recipe: str | None, updates: int | None, epochs: float | None, learning_rate: float | None,
                batch_frames: int | None, val_every: int | None, keep_last: int | None, min_minutes: float | None,
                base: Path | None, restart: bool, stop_at: int | None, pick: str | None, as_json: bool) -> None:
    """Fine-tune F5-TTS on the persona's voice dataset and put the voice in the pack.

    Reads the clips and transcripts `persona ingest` wrote, holds a few out, trains from F5-TTS v1
    Base with hyperparameters scaled to the data, and at every validation has the EMA and the raw
    weights say a few held-out lines, scored against the person's reference voice (and by Whisper
    when it is installed). It exports the checkpoint and weight set that sounds most like the
    person (--pick loss: the lowest validation loss) with the vocab and reference clip to voice/
    and [voice], says why, and plots the scores in runs/voice/RUN/likeness.png. A stopped run
    resumes from its last checkpoint when started again.

    \b
    Examples:
      persona train-voice
      persona train-voice --recipe f5-12gb --epochs 30
      persona train-voice --pick loss                 # export by validation loss, as before
      persona -w mikebot train-voice --updates 2000 --val-every 100 --json
    """
    from persona.config import resolve_settings
    from persona.train.voice import VoiceSettings, auto_recipe, train_voice as train

    ws = ctx.workspace()
    recipe = recipe or auto_recipe()
    settings = resolve_settings(VoiceSettings, "voice", recipe, dict(
        updates=updates, epochs=epochs, learning_rate=learning_rate, batch_frames=batch_frames, val_every=val_every,
        keep_last=keep_last, min_minutes=min_minutes, pick=pick))
    summary = train(ws, settings, base=base, restart=restart, stop_at=stop_at, recipe=recipe)
    emit(summary, as_json)


# ------------------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.argument("text")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("speech.wav"),
              show_default=True, help="Where to write the wav (24 kHz mono).")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed (same seed, same take).")
@click.option("--steps", type=int, default=32, show_default=True, help="Flow-matching steps (fewer is faster, rougher).")
@click.option("--speed", type=float, default=1.0, show_default=True, help="Speaking rate.")
@json_option
@click.pass_obj
def speak(ctx: Ctx, text: str, output: Path, seed: int, steps: int, speed: float, as_json: bool) -> None:
    """Say TEXT in the persona's trained voice (F5-TTS, fully offline).

    Uses the pack's [voice] checkpoint, its reference clip and transcript, and the local Vocos
    vocoder; nothing is downloaded or transcribed. Before `persona train-voice`, it speaks
    zero-shot with F5-TTS v1 Base from the voice dataset's reference clip.

    \b
    Examples:
      persona speak "Today we look at how computers see." -o hello.wav
      persona -w mikebot speak "Hello" --seed 3 --json
    """
    from persona.inference.speech import speak as say
    from persona.progress import console, info

    from persona.lock import workspace_lock

    ws = ctx.workspace()
    inside = output.resolve().is_relative_to(ws.root)
    # Writing into the workspace counts as a writing job; a wav elsewhere does not block (or wait for) one.
    with workspace_lock(ws, "speak") if inside else contextlib.nullcontext(), console.status("speaking ..."):
        summary = say(ws, text, output, seed=seed, steps=steps, speed=speed)
    info(f"wrote {output} ({summary['seconds']:.2f} s)")
    emit(summary, as_json)


# ------------------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.argument("topic", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--script", "script_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Render this script.json instead of asking the LLM.")
@click.option("--name", help="Render folder name under renders/ (default: the topic or script file name).")
@click.option("--profile", default="auto", show_default=True,
              help="VRAM profile recipe: auto, cpu, 12gb, 16gb, 24gb, 48gb, 80gb, demo, or a .toml path.")
@click.option("--aspect", type=click.Choice(["16:9", "9:16"]), help="Frame shape.")
@click.option("--seed", type=int, help="Base seed (scene seeds derive from it and the scene's content).")
@click.option("--llm", "llm_backend", type=click.Choice(["ollama", "openai", "transformers"]), help="Script backend.")
@click.option("--llm-url", help="Ollama or OpenAI-compatible server URL.")
@click.option("--llm-model", help="Model name on that server.")
@click.option("--anchor", type=click.Choice(["first-last", "restart"]), help="How long scenes stay anchored to their keyframe.")
@click.option("--engine", type=click.Choice(["diffusers", "comfyui"]),
              help="diffusers: FLUX and Wan in this process; comfyui: on your ComfyUI servers (--comfyui-url).")
@click.option("--comfyui-url", "comfyui_urls", multiple=True,
              help="A ComfyUI server for --engine comfyui (repeatable: scenes go to whichever is free; "
                   "default: $PERSONA_COMFYUI_URL, or [comfyui] urls in the render recipe).")
@click.option("--presenter", "presenter_source", type=click.Choice(["auto", "footage", "generated", "talking"]),
              help="Where on-camera scenes come from (a scene's own \"presenter\" in script.json wins): auto = "
                   "footage when the pack has presenter clips; talking needs --engine comfyui.")
@click.option("--burn-subtitles", is_flag=True, default=None, help="Draw the subtitles into the picture as well.")
@click.option("--label", is_flag=True, default=None,
              help='Burn a small "AI-generated" mark into the picture (for platforms that strip metadata).')
@click.option("--label-corner", type=click.Choice(["top-left", "top-right", "bottom-left", "bottom-right"]),
              help="Corner for the label (implies --label; default top-right, clear of the subtitles).")
@click.option("--consent-reference", is_flag=True, default=None,
              help="Put the consent record's path/URL into the Content Credentials (left out by default).")
@click.option("--until", type=click.Choice(["script", "narration", "keyframes", "video", "lipsync", "finish", "assemble"]),
              help="Stop after this stage (e.g. review the script or keyframes first).")
@click.option("--redo", "redo", multiple=True, metavar="SCENE",
              help="Discard scene SCENE's outputs (e.g. 02) and make them again (repeatable).")
@json_option
@click.pass_obj
def render(ctx: Ctx, topic: Path | None, script_file: Path | None, name: str | None, profile: str,
           aspect: str | None, seed: int | None, llm_backend: str | None, llm_url: str | None, llm_model: str | None,
           anchor: str | None, engine: str | None, comfyui_urls: tuple[str, ...], presenter_source: str | None,
           burn_subtitles: bool | None, label: bool | None, label_corner: str | None,
           consent_reference: bool | None, until: str | None, redo: tuple[str, ...], as_json: bool) -> None:
    """Turn TOPIC (a text file) into an explainer video of the persona: renders/NAME/final.mp4.

    Stages: script (LLM) -> narration (the voice) -> keyframes (FLUX + LoRA) -> video (the person's
    own footage, or Wan 2.1) -> lip sync (MuseTalk) -> finish -> assembly (+ final.srt). Right after
    `persona ingest`, with no training, it narrates zero-shot and puts the person's own footage on
    camera. renders/NAME/script.json can be edited and rendered again: only the scenes that changed
    are redone, and a killed render resumes where it stopped.
    final.mp4 carries signed Content Credentials (C2PA) saying it is AI-generated: check them with
    `persona verify`.

    \b
    script.json (--script FILE, or the LLM's):
      {"title": "How computers see",
       "scenes": [{"narration": "Dr. Lee counts 3.5 million pixels. Each is a number!",
                   "image_prompt": "the presenter in a lab", "motion_prompt": "slow push-in",
                   "on_camera": true}, ...]}
      up to 8 scenes (script.max_scenes); narration is 1-3 sentences, each ending in . ! or ?
      and at most 240 characters: letters, digits, spaces and , ; : ' ’ ( ) % & / - (no double
      quotes), with a . only in decimals (3.5) and abbreviations (Dr., Mr., e.g.).

    \b
    Examples:
      persona render topic.txt
      persona render topic.txt --until keyframes      # review before the slow video stage
      persona render --name topic --redo 02           # make scene 2 again
      persona render --name topic                     # re-render after editing its script.json
      persona render --script my_script.json --profile 24gb --aspect 9:16
      persona render topic.txt --llm openai --llm-url http://localhost:8000 --llm-model qwen2.5
      persona render topic.txt --label --label-corner bottom-left   # a visible "AI-generated" mark
      persona render topic.txt --engine comfyui --comfyui-url http://127.0.0.1:8188 --presenter talking
    """
    from persona.inference.render import render as run

    overrides = {"aspect": aspect, "seed": seed,
                 "script": {"backend": llm_backend, "url": llm_url, "model": llm_model},
                 "video": {"anchor": anchor}, "engine": engine,
                 "comfyui": {"urls": list(comfyui_urls) or None}, "presenter": {"source": presenter_source},
                 "assembly": {"burn_subtitles": burn_subtitles, "label": True if label_corner else label,
                              "label_corner": label_corner, "consent_reference": consent_reference}}
    summary = run(ctx.workspace(), topic, script_file=script_file, name=name, profile=profile,
                  overrides=overrides, until=until, redo=list(redo))
    if summary["final"]:
        from persona.progress import info

        info(f"wrote {summary['final']}")
        _say_credentials(Path(summary["final"]))
    emit(summary, as_json)


def _say_credentials(video: Path) -> None:
    """One line on what the Content Credentials of a fresh video prove."""
    from persona.progress import info, warn
    from persona.provenance import verify_video

    report = verify_video(video)
    if report["status"] != "valid":
        warn(f"{video}: Content Credentials {report['status']}: {'; '.join(report['problems'])}")
    elif report["signer"]["kind"].startswith("workspace"):
        info(f"Content Credentials: AI-generated, {report['note']}")
    else:
        info(f"Content Credentials: AI-generated, signed by {report['signer']['name']} (your certificate)")


# ------------------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@json_option
@click.pass_obj
def status(ctx: Ctx, as_json: bool) -> None:
    """Show the pack at a glance: consent, dataset sizes, the chosen LoRA and voice with the scores
    they were chosen by, the last render's likeness, and what to do next.

    Reads only the files the other verbs wrote; changes nothing and takes no lock, so it can run
    while a training or a render is under way. --json prints the whole picture on stdout.

    \b
    Examples:
      persona status
      persona -w mikebot status --json
      persona status --json | jq .voice.speaker_similarity
    """
    from persona.status import pack_status, show

    report = pack_status(ctx.workspace())
    if as_json:
        emit(report, True)
    else:
        show(report)


# ------------------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.argument("video", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def verify(video: Path, as_json: bool) -> None:
    """Read the Content Credentials (C2PA manifest) of VIDEO and check they still match it.

    Reports whether the video says it is AI-generated (the IPTC digital source type), the
    generator, the persona, the consent, the signer, and the status: valid, tampered (the file
    changed after signing) or no manifest (never signed, or stripped by a re-encode or upload).
    Exits 1 unless the status is valid. Nothing is fetched from the network.

    \b
    Examples:
      persona verify renders/topic/final.mp4
      persona verify downloaded.mp4 --json
    """
    from rich.markup import escape

    from persona.progress import info
    from persona.provenance import verify_video

    r = verify_video(video)
    if r["status"] == "no manifest":
        info(f"{video}: no Content Credentials (never signed, or stripped by a re-encode or upload)")
    else:
        colour = "green" if r["status"] == "valid" else "red"
        info(f"{escape(str(video))}: [{colour}]{r['status']}[/{colour}]", markup=True)
        c = r["consent"] or {}
        consent = (f"granted by {c.get('granted_by')} on {c.get('date')} for {c.get('scope')}"
                   + (f" (record: {c['reference']})" if c.get("reference") else "")) if c else "none recorded"
        signer = r["signer"]
        rows = [("AI-generated", {True: "yes", False: "no"}.get(r["ai_generated"])),
                ("source type", r["digital_source_type"]), ("generator", r["generator"]), ("persona", r["persona"]),
                ("consent", consent if signer else None),
                ("signer", signer and f"{signer['name']} ({signer['kind']}, "
                                      f"{'trusted' if r['trusted'] else 'not on a trust list you set'})")]
        for k, v in rows:
            if v is not None:
                info(f"  {k:<13} {v}")
        for p in r["problems"]:
            info(f"  [red]problem[/red]       {escape(p)}", markup=True)
        if r.get("note"):
            info(f"  note          {r['note']}")
    emit(r, as_json)
    if r["status"] != "valid":
        raise click.exceptions.Exit(1)


# ------------------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="Work in DIR and keep it (workspace, tiny models, footage, outputs).")
@json_option
def demo(keep: Path | None, as_json: bool) -> None:
    """Run every verb end to end on tiny random-weight models and demo footage, offline, on CPU.

    The footage is made from material inside installed wheels (scikit-image's public-domain NASA
    astronaut portrait, animated; the f5-tts example recording with its transcript). Outputs are
    meaningless pictures and noise: the demo checks the plumbing, not the quality.

    \b
    Examples:
      persona demo
      persona demo --keep /tmp/demo --json
    """
    from persona.demo import run_demo

    summary = run_demo(keep)
    emit(summary, as_json)


# ------------------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="Port to listen on.")
@click.option("--listen", is_flag=True, help="Listen on every network interface, not only 127.0.0.1 (needs --auth).")
@click.option("--share", is_flag=True, help="Also open a public Gradio share link (needs --auth and internet).")
@click.option("--auth", envvar="PERSONA_STUDIO_AUTH", metavar="USER:PASSWORD",
              help="Ask for this user and password (default: $PERSONA_STUDIO_AUTH).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              help="The folder workspaces are created in and opened from (default: the current one).")
@json_option
@click.pass_obj
def studio(ctx: Ctx, port: int, listen: bool, share: bool, auth: str | None, root: Path, as_json: bool) -> None:
    """The whole lifecycle in a web page: workspace and consent, ingest and dataset review,
    trainings with live loss curves and sample grids, speak, script editing and rendering.

    Long work runs as background jobs (the same verbs as here, under .persona/jobs/ in the
    workspace), so a page reload or a closed browser loses nothing. Listens on 127.0.0.1 only,
    unless --listen or --share, which need --auth.

    \b
    Examples:
      persona studio                       then open http://127.0.0.1:7860
      persona -w mikebot studio --port 8000
      persona studio --listen --auth me:a-long-password
      persona studio --json                prints {"url": ...} once it listens
    """
    from persona.studio import serve

    ws = ctx.workspace_or_none()
    serve(root, ws.root if ws else None, port=port, listen=listen, share=share, auth=auth,
          ready=lambda info: emit(info, as_json))


# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug, as_json = "--debug" in args, "--json" in args
    try:
        rv = cli.main(args=args, prog_name="persona", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        _fail(as_json, e.format_message(), None, "see --help", e.exit_code)
    except click.Abort as e:
        # click turns Ctrl-C (and EOF at a prompt) into Abort before a KeyboardInterrupt handler sees it
        if isinstance(e.__context__, KeyboardInterrupt):
            _interrupted(as_json)
        click.echo("aborted", err=True)
        _fail(as_json, "aborted", None, None, 1)
    except KeyboardInterrupt:
        _interrupted(as_json)
    except PersonaError as e:
        if debug:
            raise
        from persona.lock import WorkspaceBusy

        busy = isinstance(e, WorkspaceBusy)
        click.echo(str(e) if busy else f"error: {e}", err=True)
        _fail(as_json, e.message, e.file, e.fix, EXIT_BUSY if busy else 1)
    except OSError as e:
        if debug:
            raise
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free disk space, then run the same command again (finished work is kept)"
            click.echo(f"error: {e.filename or 'a file'}: no space left on the disk — {fix}", err=True)
            _fail(as_json, "no space left on the disk", e.filename, fix, 1)
        click.echo(f"error: {e.__class__.__name__}: {e} (run with --debug for the traceback)", err=True)
        _fail(as_json, f"{e.__class__.__name__}: {e.strerror or e}", e.filename, "run with --debug for the traceback", 1)
    except Exception as e:  # a bug or an upstream failure: one line unless --debug
        if debug:
            raise
        click.echo(f"error: {e.__class__.__name__}: {e} (run with --debug for the traceback)", err=True)
        _fail(as_json, f"{e.__class__.__name__}: {e}", None, "run with --debug for the traceback", 1)
    sys.exit(rv if isinstance(rv, int) else 0)


EXIT_BUSY = 75  # EX_TEMPFAIL: another job holds the workspace; the same command works later
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)


def _interrupted(as_json: bool) -> None:
    click.echo("interrupted: finished work is kept; run the same command again to resume", err=True)
    _fail(as_json, "interrupted", None, "run the same command again to resume", EXIT_INTERRUPTED)


def _fail(as_json: bool, error: str, file: str | Path | None, fix: str | None, code: int) -> None:
    """Exit with `code`; with --json, the failure as JSON on stdout too (scripts read stdout only)."""
    if as_json:
        click.echo(json.dumps({"error": error, "file": None if file is None else str(file), "fix": fix}, indent=2))
    sys.exit(code)


if __name__ == "__main__":
    main()
