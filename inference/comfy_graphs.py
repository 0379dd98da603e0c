"""ComfyUI workflows built in code: API-format graphs from typed inputs, and their check against a server.

A `Graph` hands out node handles (`g.node("UNETLoader", unet_name=...)`); an input that takes another
node's output gets the handle (output 0) or `handle[i]`, so no node id is ever written by hand. Local
files (a keyframe, the narration, the pack's LoRA) enter a graph as `LocalFile`; the client uploads or
places them and puts the server's name in before the graph is checked and queued.

`check(graph, object_info)` refuses a graph the server cannot run (a node it lacks, a missing
required input, a value outside an enum, such as a model file the server does not list) with one line
that names what is missing and where it goes, before anything is queued.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from persona.errors import PersonaError

Ref = tuple[str, int]


@dataclass(frozen=True)
class Node:
    """A handle on one node of a graph; `node[i]` is a reference to its output i (`node` alone: 0)."""

    id: str
    class_type: str

    def __getitem__(self, index: int) -> Ref:
        return (self.id, index)


@dataclass(frozen=True)
class LocalFile:
    """A file on this machine that a node reads: "input" files are uploaded (`POST /upload/image`),
    "loras" are placed where the server reads LoRAs (see comfyui.ComfyUI.place_lora)."""

    path: Path
    kind: Literal["input", "loras"] = "input"


@dataclass
class Graph:
    """An API-format ComfyUI prompt under construction. `outputs` names the nodes whose files the
    caller wants back (e.g. {"image": save_node_id})."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    label: str = "graph"

    def node(self, class_type: str, **inputs: Any) -> Node:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return Node(node_id, class_type)

    def output(self, name: str, node: Node) -> Node:
        self.outputs[name] = node.id
        return node

    def local_files(self) -> list[tuple[str, str, LocalFile]]:
        """(node id, input name, file) for every local file the graph reads."""
        return [(nid, k, v) for nid, n in self.nodes.items() for k, v in n["inputs"].items() if isinstance(v, LocalFile)]

    def with_values(self, values: dict[tuple[str, str], Any]) -> Graph:
        """A copy with some inputs replaced ({(node id, input): value}), e.g. local files by server names."""
        nodes = {nid: {"class_type": n["class_type"], "inputs": dict(n["inputs"])} for nid, n in self.nodes.items()}
        for (nid, name), value in values.items():
            nodes[nid]["inputs"][name] = value
        return replace(self, nodes=nodes, outputs=dict(self.outputs))

    def to_api(self) -> dict[str, Any]:
        """The JSON `POST /prompt` takes: {id: {"class_type", "inputs"}} with links as [id, index]."""
        def value(v: Any) -> Any:
            if isinstance(v, Node):
                return [v.id, 0]
            if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int):
                return [v[0], v[1]]
            if isinstance(v, LocalFile):
                raise ValueError(f"{v.path} was not uploaded: the client resolves local files before queueing")
            return v

        return {nid: {"class_type": n["class_type"], "inputs": {k: value(v) for k, v in n["inputs"].items()},
                      "_meta": {"title": f"persona {self.label}"}}
                for nid, n in self.nodes.items()}


# ------------------------------------------------------------------------------------------------
# Models: which file each loader reads, where it goes, and where to get it
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRole:
    key: str  # settings key, e.g. "flux"
    title: str
    folder: str  # ComfyUI models/<folder>/
    loader: tuple[str, str]  # (node class, input) whose enum lists the server's files
    default: str  # the file name of Comfy-Org's repackaged weights
    match: tuple[str, ...]  # lower-case name fragments that identify it among a server's files
    source: str  # where to download it


ROLES: dict[str, ModelRole] = {r.key: r for r in [
    ModelRole("flux", "FLUX.1-dev transformer", "diffusion_models", ("UNETLoader", "unet_name"),
              "flux1-dev.safetensors", ("flux1-dev", "flux1_dev", "flux.1-dev"),
              "huggingface.co/black-forest-labs/FLUX.1-dev (flux1-dev.safetensors; fp8: Comfy-Org/flux1-dev)"),
    ModelRole("clip_l", "CLIP-L text encoder", "text_encoders", ("DualCLIPLoader", "clip_name1"),
              "clip_l.safetensors", ("clip_l",), "huggingface.co/comfyanonymous/flux_text_encoders"),
    ModelRole("t5", "T5-XXL text encoder", "text_encoders", ("DualCLIPLoader", "clip_name2"),
              "t5xxl_fp16.safetensors", ("t5xxl",), "huggingface.co/comfyanonymous/flux_text_encoders"),
    ModelRole("flux_vae", "FLUX VAE", "vae", ("VAELoader", "vae_name"),
              "ae.safetensors", ("ae.", "flux_vae", "flux-vae"), "huggingface.co/black-forest-labs/FLUX.1-dev (ae.safetensors)"),
    ModelRole("wan_i2v", "Wan 2.1 image-to-video 14B", "diffusion_models", ("UNETLoader", "unet_name"),
              "wan2.1_i2v_480p_14B_fp16.safetensors", ("wan2.1_i2v", "wan2.2_i2v"),
              "huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged (split_files/diffusion_models)"),
    ModelRole("wan_flf2v", "Wan 2.1 first-last-frame 14B", "diffusion_models", ("UNETLoader", "unet_name"),
              "wan2.1_flf2v_720p_14B_fp16.safetensors", ("flf2v",),
              "huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged (split_files/diffusion_models)"),
    ModelRole("umt5", "UMT5-XXL text encoder (Wan)", "text_encoders", ("CLIPLoader", "clip_name"),
              "umt5_xxl_fp8_e4m3fn_scaled.safetensors", ("umt5",),
              "huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged (split_files/text_encoders)"),
    ModelRole("wan_vae", "Wan 2.1 VAE", "vae", ("VAELoader", "vae_name"),
              "wan_2.1_vae.safetensors", ("wan_2.1_vae", "wan2.1_vae"),
              "huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged (split_files/vae)"),
    ModelRole("clip_vision", "CLIP vision H (Wan image conditioning)", "clip_vision", ("CLIPVisionLoader", "clip_name"),
              "clip_vision_h.safetensors", ("clip_vision_h",),
              "huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged (split_files/clip_vision)"),
    ModelRole("wan_s2v", "Wan 2.2 S2V 14B (audio-driven video)", "diffusion_models", ("UNETLoader", "unet_name"),
              "wan2.2_s2v_14B_fp8_scaled.safetensors", ("s2v",),
              "huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged (split_files/diffusion_models)"),
    ModelRole("wav2vec2", "wav2vec2 audio encoder (S2V)", "audio_encoders", ("AudioEncoderLoader", "audio_encoder_name"),
              "wav2vec2_large_english_fp16.safetensors", ("wav2vec2",),
              "huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged (split_files/audio_encoders)"),
    ModelRole("humo", "HuMo 17B (audio-driven video)", "diffusion_models", ("UNETLoader", "unet_name"),
              "humo_17B_fp8_e4m3fn.safetensors", ("humo",),
              "huggingface.co/Comfy-Org/HuMo_ComfyUI (split_files/diffusion_models)"),
    ModelRole("whisper", "Whisper large-v3 audio encoder (HuMo)", "audio_encoders", ("AudioEncoderLoader", "audio_encoder_name"),
              "whisper_large_v3_fp16.safetensors", ("whisper",),
              "huggingface.co/Comfy-Org/HuMo_ComfyUI (split_files/audio_encoders)"),
]}

# Loader inputs whose enum is a list of files in a models/ folder (for error messages).
FOLDER_OF = {r.loader: r.folder for r in ROLES.values()} | {
    ("DualCLIPLoader", "clip_name2"): "text_encoders", ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("LoraLoader", "lora_name"): "loras", ("LoadImage", "image"): "input", ("LoadAudio", "audio"): "input",
}

# The on-camera modes each stage's models give, and the nodes they need (InfiniteTalk only where a
# server has it: it arrived after ComfyUI 0.8.0).
STAGE_NEEDS: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]] = {
    # stage: [(mode, model roles, node classes)]
    "keyframes": [("keyframe", ("flux", "clip_l", "t5", "flux_vae"),
                   ("UNETLoader", "DualCLIPLoader", "VAELoader", "LoraLoaderModelOnly", "CLIPTextEncode",
                    "FluxGuidance", "EmptySD3LatentImage", "KSampler", "VAEDecode", "SaveImage"))],
    "video": [("image-to-video", ("wan_i2v", "umt5", "wan_vae", "clip_vision"),
               ("WanImageToVideo", "CLIPVisionLoader", "CLIPVisionEncode", "CreateVideo", "SaveVideo")),
              ("first-last", ("wan_flf2v", "umt5", "wan_vae", "clip_vision"),
               ("WanFirstLastFrameToVideo", "CLIPVisionLoader", "CLIPVisionEncode", "CreateVideo", "SaveVideo"))],
    "talking": [("s2v", ("wan_s2v", "umt5", "wan_vae", "wav2vec2"),
                 ("WanSoundImageToVideo", "WanSoundImageToVideoExtend", "AudioEncoderLoader", "AudioEncoderEncode",
                  "LoadAudio", "LatentConcat", "CreateVideo", "SaveVideo")),
                ("humo", ("humo", "umt5", "wan_vae", "whisper"),
                 ("WanHuMoImageToVideo", "AudioEncoderLoader", "AudioEncoderEncode", "LoadAudio", "CreateVideo", "SaveVideo")),
                ("infinitetalk", (), ("WanInfiniteTalkToVideo",))],
}


def choices(object_info: dict[str, Any], class_type: str, name: str) -> list[Any] | None:
    """The allowed values of an enum input, in either /object_info form
    (`[[...], {...}]` or `["COMBO", {"options": [...]}]`); None when the input is not an enum."""
    spec = _input_spec(object_info.get(class_type, {}), name)
    if spec is None:
        return None
    kind = spec[0]
    if isinstance(kind, list):
        return kind
    if kind == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options", []))
    return None


def pick_model(role: ModelRole, object_info: dict[str, Any], configured: str | None = None) -> tuple[str, bool]:
    """(file name, whether the server has it): the configured name, else the first server file that
    matches the role, else the role's default name (missing)."""
    files = choices(object_info, *role.loader) or []
    if configured:
        return configured, configured in files
    for f in files:
        if any(m in f.lower() for m in role.match):
            return f, True
    return role.default, False


def missing_model_fix(role_or_folder: ModelRole | str, name: str) -> str:
    if isinstance(role_or_folder, ModelRole):
        r = role_or_folder
        return f"put {name} ({r.title}, from {r.source}) in ComfyUI/models/{r.folder}/"
    return f"put {name} in ComfyUI/models/{role_or_folder}/"


# ------------------------------------------------------------------------------------------------
# Checking a graph against /object_info
# ------------------------------------------------------------------------------------------------
def _input_spec(info: dict[str, Any], name: str) -> list[Any] | None:
    for section in ("required", "optional"):
        spec = info.get("input", {}).get(section, {}).get(name)
        if spec is not None:
            return spec
    return None


NODE_FIX = {
    "WanInfiniteTalkToVideo": "InfiniteTalk arrived after ComfyUI 0.8.0: update ComfyUI, or use the s2v or humo talking model",
}


def check(graph: Graph, object_info: dict[str, Any], server: str = "the ComfyUI server",
          uploaded: set[tuple[str, str]] | frozenset = frozenset()) -> None:
    """Raise a one-line PersonaError for the first thing `server` cannot run; `uploaded` lists
    (node id, input) values the client has just uploaded (not yet in the cached enums)."""
    api = graph.to_api()
    for nid, node in api.items():
        ct, inputs = node["class_type"], node["inputs"]
        info = object_info.get(ct)
        if info is None:
            raise PersonaError(f"{server} has no node {ct} (needed by persona's {graph.label} graph)",
                               fix=NODE_FIX.get(ct, "update ComfyUI to 0.8.0 or later, or install the custom node that provides it"))
        required = info.get("input", {}).get("required", {})
        for name in required:
            if name not in inputs:
                raise PersonaError(f"{graph.label} graph: node {nid} ({ct}) lacks its required input {name!r} on {server}",
                                   fix="this ComfyUI version's node differs from what persona builds for: use ComfyUI 0.8.0 or later")
        outputs_of = {i: api[i]["class_type"] for i in api}
        for name, value in inputs.items():
            spec = _input_spec(info, name)
            if spec is None:
                raise PersonaError(f"{graph.label} graph: node {nid} ({ct}) on {server} has no input {name!r}",
                                   fix="this ComfyUI version's node differs from what persona builds for: use ComfyUI 0.8.0 or later")
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
                _check_link(graph, nid, ct, name, spec, value, api, outputs_of, object_info)
                continue
            allowed = choices(object_info, ct, name)
            if allowed is not None and (nid, name) not in uploaded and value not in allowed:
                folder = FOLDER_OF.get((ct, name))
                if folder is not None:
                    role = next((r for r in ROLES.values() if r.folder == folder and
                                 (r.default == value or any(m in str(value).lower() for m in r.match))), None)
                    raise PersonaError(f"{server} has no {value} in models/{folder}/ (node {ct}, {graph.label} graph)",
                                       fix=missing_model_fix(role or folder, str(value)))
                shown = ", ".join(map(str, allowed[:8])) + (" ..." if len(allowed) > 8 else "")
                raise PersonaError(f"{graph.label} graph: node {nid} ({ct}) input {name!r} = {value!r} is not one of: {shown}",
                                   fix="pick an allowed value in the render settings")
            _check_range(graph, nid, ct, name, spec, value)


def _check_link(graph: Graph, nid: str, ct: str, name: str, spec: list[Any], link: list[Any],
                api: dict[str, Any], outputs_of: dict[str, str], object_info: dict[str, Any]) -> None:
    src, index = link
    if src not in api:
        raise ValueError(f"{graph.label} graph: node {nid} ({ct}) input {name} links to missing node {src}")
    out_types = object_info[outputs_of[src]].get("output", [])
    if index >= len(out_types):
        raise ValueError(f"{graph.label} graph: node {nid} ({ct}) input {name} links to output {index} of "
                         f"{outputs_of[src]}, which has {len(out_types)}")
    want = spec[0]
    have = out_types[index]
    if isinstance(want, str) and want not in ("*", "COMBO") and have != "*" and have != want:
        raise ValueError(f"{graph.label} graph: node {nid} ({ct}) input {name} takes {want}, "
                         f"but {outputs_of[src]} output {index} is {have}")


def _check_range(graph: Graph, nid: str, ct: str, name: str, spec: list[Any], value: Any) -> None:
    if not (isinstance(spec[0], str) and spec[0] in ("INT", "FLOAT") and len(spec) > 1 and isinstance(spec[1], dict)):
        return
    lo, hi = spec[1].get("min"), spec[1].get("max")
    if not isinstance(value, (int, float)) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise PersonaError(f"{graph.label} graph: node {nid} ({ct}) input {name!r} = {value!r} is outside {lo}..{hi}",
                           fix="correct that value in the render settings")


# ------------------------------------------------------------------------------------------------
# The graphs persona renders with
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FluxModels:
    unet: str = ROLES["flux"].default
    clip_l: str = ROLES["clip_l"].default
    t5: str = ROLES["t5"].default
    vae: str = ROLES["flux_vae"].default
    weight_dtype: str = "default"  # or "fp8_e4m3fn" to halve VRAM


@dataclass(frozen=True)
class WanModels:
    unet: str  # an image-to-video or first-last-frame Wan checkpoint
    text_encoder: str = ROLES["umt5"].default
    vae: str = ROLES["wan_vae"].default
    clip_vision: str | None = ROLES["clip_vision"].default  # Wan 2.1 14B uses it; Wan 2.2 does not
    weight_dtype: str = "default"
    shift: float = 8.0  # ModelSamplingSD3 shift of ComfyUI's Wan examples


@dataclass(frozen=True)
class TalkingModels:
    model: Literal["s2v", "humo"] = "s2v"
    unet: str = ROLES["wan_s2v"].default
    audio_encoder: str = ROLES["wav2vec2"].default
    text_encoder: str = ROLES["umt5"].default
    vae: str = ROLES["wan_vae"].default
    weight_dtype: str = "default"
    shift: float = 8.0


@dataclass(frozen=True)
class Sampling:
    steps: int
    cfg: float
    seed: int
    sampler: str = "euler"
    scheduler: str = "simple"


def flux_keyframe(models: FluxModels, prompt: str, width: int, height: int, sampling: Sampling, guidance: float,
                  lora: Path | None = None, lora_strength: float = 1.0, prefix: str = "persona/keyframe") -> Graph:
    """FLUX.1-dev text-to-image with the pack's LoRA at its strength (strength 0 or no LoRA: the base
    model). FLUX-dev is guidance-distilled: guidance goes in through FluxGuidance, KSampler runs at cfg 1."""
    g = Graph(label="keyframe")
    model = g.node("UNETLoader", unet_name=models.unet, weight_dtype=models.weight_dtype)
    if lora is not None and lora_strength != 0:
        model = g.node("LoraLoaderModelOnly", model=model, lora_name=LocalFile(Path(lora), "loras"),
                       strength_model=float(lora_strength))
    clip = g.node("DualCLIPLoader", clip_name1=models.clip_l, clip_name2=models.t5, type="flux")
    positive = g.node("FluxGuidance", conditioning=g.node("CLIPTextEncode", text=prompt, clip=clip), guidance=float(guidance))
    negative = g.node("CLIPTextEncode", text="", clip=clip)  # ignored at cfg 1, but KSampler requires one
    latent = g.node("EmptySD3LatentImage", width=width, height=height, batch_size=1)
    samples = g.node("KSampler", model=model, seed=sampling.seed, steps=sampling.steps, cfg=sampling.cfg,
                     sampler_name=sampling.sampler, scheduler=sampling.scheduler, positive=positive,
                     negative=negative, latent_image=latent, denoise=1.0)
    image = g.node("VAEDecode", samples=samples, vae=g.node("VAELoader", vae_name=models.vae))
    g.output("image", g.node("SaveImage", images=image, filename_prefix=prefix))
    return g


def _video_out(g: Graph, images: Any, fps: int, prefix: str) -> None:
    video = g.node("CreateVideo", images=images, fps=float(fps))
    g.output("video", g.node("SaveVideo", video=video, filename_prefix=prefix, format="mp4", codec="h264"))


def wan_video(models: WanModels, image: Path, prompt: str, negative: str, width: int, height: int, length: int,
              sampling: Sampling, fps: int = 16, last_image: Path | None = None,
              prefix: str = "persona/video") -> Graph:
    """Wan image-to-video from `image`; with `last_image`, first-last-frame (FLF2V checkpoint) that
    ends on it (persona passes the keyframe twice so every chunk returns to it and nothing drifts)."""
    g = Graph(label="first-last video" if last_image is not None else "image-to-video")
    model = g.node("ModelSamplingSD3", model=g.node("UNETLoader", unet_name=models.unet, weight_dtype=models.weight_dtype),
                   shift=models.shift)
    clip = g.node("CLIPLoader", clip_name=models.text_encoder, type="wan")
    vae = g.node("VAELoader", vae_name=models.vae)
    pos = g.node("CLIPTextEncode", text=prompt, clip=clip)
    neg = g.node("CLIPTextEncode", text=negative, clip=clip)
    start = g.node("LoadImage", image=LocalFile(Path(image)))
    vision = g.node("CLIPVisionLoader", clip_name=models.clip_vision) if models.clip_vision else None
    size = dict(width=width, height=height, length=length, batch_size=1)
    if last_image is None:
        extra = {"clip_vision_output": g.node("CLIPVisionEncode", clip_vision=vision, image=start, crop="none")} if vision else {}
        cond = g.node("WanImageToVideo", positive=pos, negative=neg, vae=vae, start_image=start, **size, **extra)
    else:
        end = start if Path(last_image) == Path(image) else g.node("LoadImage", image=LocalFile(Path(last_image)))
        extra = {}
        if vision:
            extra["clip_vision_start_image"] = g.node("CLIPVisionEncode", clip_vision=vision, image=start, crop="none")
            extra["clip_vision_end_image"] = (extra["clip_vision_start_image"] if end is start else
                                              g.node("CLIPVisionEncode", clip_vision=vision, image=end, crop="none"))
        cond = g.node("WanFirstLastFrameToVideo", positive=pos, negative=neg, vae=vae, start_image=start,
                      end_image=end, **size, **extra)
    samples = g.node("KSampler", model=model, seed=sampling.seed, steps=sampling.steps, cfg=sampling.cfg,
                     sampler_name=sampling.sampler, scheduler=sampling.scheduler, positive=cond[0], negative=cond[1],
                     latent_image=cond[2], denoise=1.0)
    _video_out(g, g.node("VAEDecode", samples=samples, vae=vae), fps, prefix)
    return g


S2V_CHUNK = 77  # frames per WanSoundImageToVideo(/Extend) call in ComfyUI's S2V example
HUMO_MAX = 97  # the longest clip HuMo was trained for


def talking_chunks(frames: int, chunk: int = S2V_CHUNK) -> list[int]:
    """Clip lengths (each 4k+1) whose latents, concatenated, decode to at least `frames` frames:
    T latent frames decode to 4(T-1)+1 frames, and every chunk of L frames adds (L-1)//4+1 latents."""
    chunk = (chunk - 1) // 4 * 4 + 1
    latents_needed = math.ceil((frames - 1) / 4) + 1
    per = (chunk - 1) // 4 + 1
    return [chunk] * max(1, math.ceil(latents_needed / per))


def talking(models: TalkingModels, image: Path, audio: Path, prompt: str, negative: str, width: int, height: int,
            frames: int, sampling: Sampling, fps: int = 16, prefix: str = "persona/talking") -> Graph:
    """Audio-driven video: the presenter in `image` speaks `audio` (the scene's narration), the whole
    body moving with the speech. s2v: Wan2.2-S2V, extended chunk by chunk for long narrations (each
    extension continues from all frames so far, anchored to the same reference image, so clothes and
    face stay the keyframe's). humo: HuMo, one clip of at most 97 frames."""
    g = Graph(label=f"talking ({models.model})")
    model = g.node("ModelSamplingSD3", model=g.node("UNETLoader", unet_name=models.unet, weight_dtype=models.weight_dtype),
                   shift=models.shift)
    clip = g.node("CLIPLoader", clip_name=models.text_encoder, type="wan")
    vae = g.node("VAELoader", vae_name=models.vae)
    pos = g.node("CLIPTextEncode", text=prompt, clip=clip)
    neg = g.node("CLIPTextEncode", text=negative, clip=clip)
    ref = g.node("LoadImage", image=LocalFile(Path(image)))
    sound = g.node("LoadAudio", audio=LocalFile(Path(audio)))
    encoded = g.node("AudioEncoderEncode", audio_encoder=g.node("AudioEncoderLoader", audio_encoder_name=models.audio_encoder),
                     audio=sound)

    def sample(cond: Node) -> Node:
        return g.node("KSampler", model=model, seed=sampling.seed, steps=sampling.steps, cfg=sampling.cfg,
                      sampler_name=sampling.sampler, scheduler=sampling.scheduler, positive=cond[0], negative=cond[1],
                      latent_image=cond[2], denoise=1.0)

    if models.model == "humo":
        if frames > HUMO_MAX:
            raise PersonaError(f"HuMo makes at most {HUMO_MAX} frames ({HUMO_MAX / fps:.1f} s); this scene needs {frames}",
                               fix="use the s2v talking model for long scenes, or shorten the scene's narration")
        length = (max(frames, 1) + 2) // 4 * 4 + 1
        cond = g.node("WanHuMoImageToVideo", positive=pos, negative=neg, vae=vae, width=width, height=height,
                      length=length, batch_size=1, audio_encoder_output=encoded, ref_image=ref)
        latents: Node = sample(cond)
    else:
        chunks = talking_chunks(frames)
        cond = g.node("WanSoundImageToVideo", positive=pos, negative=neg, vae=vae, width=width, height=height,
                      length=chunks[0], batch_size=1, audio_encoder_output=encoded, ref_image=ref)
        latents = sample(cond)
        for length in chunks[1:]:
            more = g.node("WanSoundImageToVideoExtend", positive=pos, negative=neg, vae=vae, length=length,
                          video_latent=latents, audio_encoder_output=encoded, ref_image=ref)
            latents = g.node("LatentConcat", samples1=latents, samples2=sample(more), dim="t")
    _video_out(g, g.node("VAEDecode", samples=latents, vae=vae), fps, prefix)
    return g


def infinitetalk_available(object_info: dict[str, Any]) -> bool:
    """InfiniteTalk (WanInfiniteTalkToVideo) arrived after ComfyUI 0.8.0: only where the server lists it."""
    return "WanInfiniteTalkToVideo" in object_info
