"""The render stages on the user's ComfyUI servers (`engine = "comfyui"`).

The same stages as in-process (same keys, chunks, records and runner); only how a model runs differs:
a graph built in code (inference/comfy_graphs.py) goes to whichever server is free (the dispatcher
in inference/comfyui.py), with that server's own model files. Keys name those files, so a render
with other weights is redone. The model files are picked on the first server when the stage starts,
which also checks that it can be reached before any work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from persona.errors import PersonaError
from persona.files import hash_json
from persona.inference import comfy_graphs as cg
from persona.inference.comfyui import ComfyUI, Dispatcher, ProgressEvent, merge_urls
from persona.inference.keyframes import KeyframeStage
from persona.inference.memory import Lazy
from persona.inference.plan import RenderSettings, SceneDir, frames_for, scene_seed
from persona.inference.stage import RenderJob, Stage, Tick
from persona.inference.video import VideoStage, fit_keyframe, video_prompt
from persona.media import read_frames, write_video
from persona.progress import warn


class Servers:
    """The configured servers (one dispatcher over them) and the model file chosen for each role."""

    def __init__(self, settings: RenderSettings, roles: tuple[str, ...]):
        urls = merge_urls(settings.comfyui.urls)
        self.dispatcher = Dispatcher.from_urls(urls, settings.comfyui)
        info = self.dispatcher.clients[0].object_info()
        self.info = info
        self.names = {r: cg.pick_model(cg.ROLES[r], info, settings.comfyui.models.get(r))[0] for r in roles}

    def has(self, role: str) -> bool:
        return cg.pick_model(cg.ROLES[role], self.info)[1]

    def close(self) -> None:
        self.dispatcher.close()


def steps_as_progress(tick: Tick) -> Callable[[ProgressEvent], None]:
    """Sampler steps streamed from the server's websocket, as persona's progress."""
    seen: dict[tuple[str, str | None], float] = {}

    def on(event: ProgressEvent) -> None:
        key = (event.prompt_id, event.node)
        done = event.value - seen.get(key, 0.0)
        seen[key] = event.value
        if done > 0:
            tick(done)

    return on


class OnServer:
    """What a stage's `make` gets as its model on this engine: the server that took the scene."""

    def __init__(self, client: ComfyUI):
        self.client = client

    def get(self) -> ComfyUI:
        return self.client


class OnServers:
    """What makes a stage run on the servers: its model is the servers (picked when the stage starts),
    and each scene goes to whichever server is free, coming back as it is done."""

    servers: Servers

    def load(self, job: RenderJob) -> Servers:
        return self.servers

    def make_all(self, job: RenderJob, scenes: list[SceneDir], model: Lazy, tick: Tick
                 ) -> Iterator[tuple[SceneDir, dict[str, Any]]]:
        servers: Servers = model.get()
        work = lambda client, scene: self.make(job, scene, OnServer(client), tick)  # noqa: E731
        yield from servers.dispatcher.run(scenes, work)


class ComfyKeyframeStage(OnServers, KeyframeStage):
    """FLUX.1-dev with the pack's LoRA on ComfyUI (UNETLoader + DualCLIPLoader + LoraLoaderModelOnly)."""

    model = "comfyui"
    ROLES = ("flux", "clip_l", "t5", "flux_vae")

    def __init__(self, job: RenderJob, scenes: list[SceneDir]):
        self.servers = Servers(job.settings, self.ROLES)
        self.set_lora(job, scenes)
        self.flux_id = hash_json(["comfyui", [self.servers.names[r] for r in self.ROLES]])

    def flux_files(self) -> str:
        return ", ".join(self.servers.names[r] for r in self.ROLES)  # the server's own files

    def make(self, job: RenderJob, scene: SceneDir, model: Any, tick: Tick) -> dict[str, Any]:
        k, (width, height) = job.settings.keyframes, job.settings.keyframe_size()
        n, seed, prompt = self.servers.names, self.seed(job, scene), self.prompt(job, scene)
        on = scene.scene.on_camera and self.lora is not None
        graph = cg.flux_keyframe(cg.FluxModels(n["flux"], n["clip_l"], n["t5"], n["flux_vae"]), prompt, width, height,
                                 cg.Sampling(k.steps, 1.0, seed), k.guidance, lora=self.lora if on else None,
                                 lora_strength=self.strength if on else 0.0)
        result = model.get().run(graph, {"image": scene.path(self.output)}, steps_as_progress(tick))
        return {"seed": seed, "prompt": prompt, "server": result.server, "overhead_s": round(result.overhead, 3)}


class ComfyVideoStage(OnServers, VideoStage):
    """Wan image-to-video or first-last-frame on ComfyUI, chunk by chunk as in-process."""

    model = "comfyui"
    ROLES = ("umt5", "wan_vae", "clip_vision")

    def __init__(self, job: RenderJob, scenes: list[SceneDir]):
        self.animated = scenes
        self.anchor = job.settings.video.anchor
        self.servers = Servers(job.settings, (*self.ROLES, "wan_flf2v", "wan_i2v"))
        if self.anchor == "first-last" and not self.servers.has("wan_flf2v") and self.servers.has("wan_i2v") \
                and "wan_flf2v" not in job.settings.comfyui.models:
            warn("the ComfyUI server has no Wan FLF2V checkpoint; anchoring every chunk by restarting from the "
                 "keyframe instead", once=True)
            self.anchor = "restart"
        self.unet = self.servers.names["wan_flf2v" if self.anchor == "first-last" else "wan_i2v"]
        self.path = Path(self.unet)
        self.model_id = hash_json(["comfyui", self.unet, [self.servers.names[r] for r in self.ROLES]])

    def animate(self, job: RenderJob, wan: Any, s: SceneDir, image: Any, length: int, seed: int, chunk: Path,
                tick: Tick) -> None:
        v, (width, height) = job.settings.video, job.settings.video_size()
        start = s.path("video.keyframe.png")  # the keyframe fitted to the video size, as uploaded
        image.save(start)
        n = self.servers.names
        graph = cg.wan_video(cg.WanModels(self.unet, n["umt5"], n["wan_vae"], n["clip_vision"]), start,
                             video_prompt(s.scene), v.negative_prompt, width, height, length,
                             cg.Sampling(v.steps, v.guidance, seed), fps=v.fps,
                             last_image=start if self.anchor == "first-last" else None)
        wan.get().run(graph, {"video": chunk}, steps_as_progress(tick))


class TalkingStage(OnServers, Stage):
    """On-camera scenes where the keyframe speaks the narration: audio-driven video (Wan2.2-S2V,
    extended for long narrations, or HuMo) on ComfyUI. It replaces video-then-lip-sync for them."""

    name, output, model = "talking", "video.mp4", "comfyui"

    def __init__(self, job: RenderJob, scenes: list[SceneDir]):
        self.talking = scenes
        kind = job.settings.presenter.talking_model
        self.roles = ("wan_s2v", "wav2vec2") if kind == "s2v" else ("humo", "whisper")
        self.servers = Servers(job.settings, (*self.roles, "umt5", "wan_vae"))
        n = self.servers.names
        self.models = cg.TalkingModels(kind, n[self.roles[0]], n[self.roles[1]], n["umt5"], n["wan_vae"])
        self.model_id = hash_json(["comfyui", self.models.__dict__])

    def scenes(self, job: RenderJob) -> list[SceneDir]:
        return self.talking

    def frames(self, job: RenderJob, scene: SceneDir) -> int:
        return frames_for(scene.record("narration.wav")["seconds"], job.settings.video.fps)

    def key(self, job: RenderJob, scene: SceneDir) -> str:
        v = job.settings.video
        return hash_json(["talking", scene.record("keyframe.png").get("key"), scene.record("narration.wav").get("key"),
                          video_prompt(scene.scene), self.model_id, job.settings.seed, job.settings.video_size(),
                          v.steps, v.guidance, v.negative_prompt, v.fps])

    def work(self, job: RenderJob, scene: SceneDir) -> float:
        return len(cg.talking_chunks(self.frames(job, scene))) * job.settings.video.steps

    def make(self, job: RenderJob, scene: SceneDir, model: Any, tick: Tick) -> dict[str, Any]:
        v, (width, height) = job.settings.video, job.settings.video_size()
        frames, seed = self.frames(job, scene), scene_seed(job.settings.seed, "talking", scene.scene.narration)
        start = scene.path("video.keyframe.png")
        fit_keyframe(scene.path("keyframe.png"), (width, height)).save(start)
        graph = cg.talking(self.models, start, scene.path("narration.wav"), video_prompt(scene.scene),
                           v.negative_prompt, width, height, frames, cg.Sampling(v.steps, v.guidance, seed), fps=v.fps)
        raw = scene.path("video.talking.mp4")
        result = model.get().run(graph, {"video": raw}, steps_as_progress(tick))
        clip, _ = read_frames(raw)
        if len(clip) < frames:
            raise PersonaError(f"scene {scene.label}: the talking model returned {len(clip)} frames, {frames} needed",
                               file=raw, fix="check the server's log; run the same command again")
        write_video(scene.path(self.output), clip[:frames], v.fps, crf=job.settings.assembly.crf)
        raw.unlink(missing_ok=True)
        return {"frames": frames, "source": "talking", "model": self.models.model, "server": result.server}
