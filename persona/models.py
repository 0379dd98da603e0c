"""Every model the toolkit uses, and where to find it on this machine. Nothing is ever downloaded.

Resolution order for a model key: an explicit path (a CLI flag) → `[models]` in persona.toml → the
environment variable `PERSONA_<KEY>` → `[models]` in the user's config file
(`$XDG_CONFIG_HOME/persona/config.toml`, by default `~/.config/persona/config.toml`) → the local
Hugging Face cache. `persona doctor` prints, per stage, what was found and the exact command that
fetches what is missing.

Packs are zipped and shared, so persona.toml is someone else's file. Models whose files are code
(`runs_code`: a TorchScript file, a checkout whose Python is run) are therefore taken from the user's
own configuration first (a flag, the environment, the user config), and a pack's `[models]` entry for
one is refused unless the user trusts the pack (`persona --trust-pack`, `PERSONA_TRUST_PACK=1`, or
`trust_pack = true` in the user config). Everything else a pack can name is data: safetensors,
`torch.load(weights_only=True)`, configs of numbers.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from persona.errors import PersonaError

Kind = Literal["repo", "file", "checkout", "folder"]


@dataclass(frozen=True)
class ModelSpec:
    key: str
    title: str
    stages: tuple[str, ...]
    licence: str
    kind: Kind = "repo"
    repos: tuple[str, ...] = ()  # Hugging Face repo ids; the first is the default, others are accepted
    include: tuple[str, ...] = ()  # download patterns (None = whole repo)
    required: tuple[str, ...] = ()  # files that must exist in a resolved folder (or the file itself)
    file: str | None = None  # for one file inside a repo: its path in the repo
    gated: bool = False
    url: str | None = None  # where to get it when it is not on the Hub
    note: str = ""
    size_gb: float = 0.0
    runs_code: bool = False  # its files are code (TorchScript, a checkout run with its Python): never from a pack

    @property
    def env(self) -> str:
        return "PERSONA_" + self.key.upper().replace("-", "_")

    def fetch_command(self) -> str:
        if self.kind == "folder":
            return f"set [models] {self.key} = \"{self.url}\" in {user_config_path()} (or ${self.env})"
        if self.kind == "checkout":
            return f"git clone {self.url} && export {self.env}=$PWD/{Path(self.url or '').stem}"
        if not self.repos:
            return f"download {self.url} and set {self.env}=/path/to/{Path(self.url or 'model').name}"
        parts = ["hf", "download", self.repos[0]]
        if self.file:
            parts.append(self.file)
        for pattern in self.include:
            parts += ["--include", f"'{pattern}'"]
        cmd = " ".join(parts)
        if self.gated:
            cmd = f"accept the licence at https://huggingface.co/{self.repos[0]}, `hf auth login`, then `{cmd}`"
        return cmd


REGISTRY: dict[str, ModelSpec] = {
    m.key: m
    for m in [
        ModelSpec(
            "flux",
            "FLUX.1-dev (transformer, VAE, CLIP-L and T5-XXL encoders), diffusers layout",
            ("train-lora", "render: keyframes"),
            "FLUX.1 [dev] Non-Commercial License",
            repos=("black-forest-labs/FLUX.1-dev",),
            include=("model_index.json", "scheduler/*", "text_encoder/*", "text_encoder_2/*", "tokenizer/*",
                     "tokenizer_2/*", "transformer/*", "vae/*"),
            required=("model_index.json", "transformer/config.json", "vae/config.json"),
            gated=True,
            size_gb=34,
        ),
        ModelSpec(
            "wan-i2v",
            "Wan 2.1 image-to-video 14B 480P, diffusers layout",
            ("render: video",),
            "Apache-2.0",
            repos=("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"),
            required=("model_index.json", "transformer/config.json", "image_encoder/config.json"),
            size_gb=80,
        ),
        ModelSpec(
            "wan-flf2v",
            "Wan 2.1 first-last-frame-to-video 14B 720P (anchors long scenes to the keyframe)",
            ("render: video (anchor = first-last-frame)",),
            "Apache-2.0",
            repos=("Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers",),
            required=("model_index.json", "transformer/config.json"),
            size_gb=80,
        ),
        ModelSpec(
            "f5-tts",
            "F5-TTS v1 Base checkpoint and its vocab",
            ("train-voice", "speak", "render: narration"),
            "CC-BY-NC-4.0",
            repos=("SWivid/F5-TTS",),
            include=("F5TTS_v1_Base/model_1250000.safetensors", "F5TTS_v1_Base/vocab.txt"),
            required=("F5TTS_v1_Base/model_1250000.safetensors",),
            size_gb=1.4,
        ),
        ModelSpec(
            "vocos",
            "Vocos mel vocoder, 24 kHz (F5-TTS's vocoder)",
            ("train-voice", "speak", "render: narration"),
            "MIT",
            repos=("charactr/vocos-mel-24khz",),
            required=("config.yaml", "pytorch_model.bin"),
            size_gb=0.05,
            # its config.yaml names classes (class_path) that vocos would import; persona builds the
            # three known classes itself from the config's numbers (inference/speech.py), so it is data
        ),
        ModelSpec(
            "florence2",
            "Florence-2 captioner (transformers-native checkpoint)",
            ("ingest: captions",),
            "MIT",
            repos=("florence-community/Florence-2-large", "florence-community/Florence-2-base"),
            required=("config.json", "tokenizer_config.json"),
            size_gb=1.6,
        ),
        ModelSpec(
            "whisper",
            "Whisper large-v3 in CTranslate2 format (faster-whisper, used by whisperx)",
            ("ingest: transcripts",),
            "MIT",
            repos=("Systran/faster-whisper-large-v3", "Systran/faster-whisper-medium.en", "Systran/faster-whisper-small"),
            required=("model.bin", "config.json"),
            size_gb=3.1,
        ),
        ModelSpec(
            "align-en",
            "wav2vec2 CTC model for English word alignment (whisperx.align)",
            ("ingest: transcripts",),
            "Apache-2.0",
            repos=("facebook/wav2vec2-base-960h",),
            include=("*.json", "*.safetensors", "vocab.json"),
            required=("config.json", "vocab.json"),
            size_gb=0.4,
        ),
        ModelSpec(
            "speaker-embedding",
            "WeSpeaker ResNet34 speaker embedding (pyannote layout), stronger than the built-in Resemblyzer",
            ("ingest: speakers",),
            "CC-BY-4.0",
            repos=("pyannote/wespeaker-voxceleb-resnet34-LM",),
            include=("pytorch_model.bin", "config.yaml"),
            required=("pytorch_model.bin",),
            note="optional: without it, ingest uses Resemblyzer, which ships in its wheel",
            size_gb=0.03,
        ),
        ModelSpec(
            "llm",
            "an instruct LLM for the local-transformers script backend (Ollama or an OpenAI-compatible server also work)",
            ("render: script",),
            "Apache-2.0",
            repos=("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-3B-Instruct"),
            required=("config.json", "tokenizer.json"),
            size_gb=15,
        ),
        ModelSpec(
            "film",
            "FILM frame interpolation, TorchScript export (film_net_fp32.pt)",
            ("render: interpolate",),
            "Apache-2.0",
            kind="file",
            url="https://github.com/dajes/frame-interpolation-pytorch/releases/download/v1.0.0/film_net_fp32.pt",
            note="without it, render falls back to ffmpeg minterpolate",
            size_gb=0.14,
            runs_code=True,  # TorchScript is a program: it can write files (torch.save) when run
        ),
        ModelSpec(
            "upscaler",
            "a single-image super-resolution model spandrel loads (e.g. 4x-LSDIR, ESRGAN), as .safetensors or .pth",
            ("render: upscale",),
            "see the model's page (4x-LSDIR: CC-BY-4.0)",
            kind="file",
            url="https://openmodeldb.info/models/4x-LSDIR",
            note="without it, render resizes with Lanczos",
            size_gb=0.07,
        ),
        ModelSpec(
            "latentsync",
            "LatentSync 1.5/1.6 checkout with its checkpoints, in its own Python environment",
            ("render: lip sync",),
            "Apache-2.0 (code); see its checkpoints' licences",
            kind="checkout",
            url="https://github.com/bytedance/LatentSync",
            required=("scripts/inference.py",),
            note="without it, on-camera scenes keep their unsynced video",
            runs_code=True,
        ),
        ModelSpec(
            "musetalk",
            "MuseTalk 1.5 lip-sync UNet (musetalkV15/musetalk.json + unet.pth)",
            ("render: lip sync (musetalk)",),
            "MIT (code); its README allows any use of the weights, commercial included",
            repos=("TMElyralab/MuseTalk",),
            include=("musetalkV15/musetalk.json", "musetalkV15/unet.pth"),
            required=("musetalkV15/musetalk.json", "musetalkV15/unet.pth"),
            note="with sd-vae and whisper-tiny; without them, on-camera scenes keep their unsynced video",
            size_gb=3.4,
        ),
        ModelSpec(
            "sd-vae",
            "Stable Diffusion VAE fine-tuned with MSE (sd-vae-ft-mse), MuseTalk's image encoder and decoder",
            ("render: lip sync (musetalk)",),
            "MIT",
            repos=("stabilityai/sd-vae-ft-mse",),
            include=("config.json", "diffusion_pytorch_model.safetensors"),
            required=("config.json",),
            size_gb=0.33,
        ),
        ModelSpec(
            "whisper-tiny",
            "Whisper tiny (transformers layout), MuseTalk's audio features",
            ("render: lip sync (musetalk)",),
            "Apache-2.0",
            repos=("openai/whisper-tiny",),
            include=("config.json", "preprocessor_config.json", "model.safetensors"),
            required=("config.json", "preprocessor_config.json"),
            size_gb=0.15,
        ),
        ModelSpec(
            "comfyui",
            "a ComfyUI models folder: diffusers loads FLUX's and Wan 2.1's single files (safetensors or GGUF) from it",
            ("train-lora", "render: keyframes", "render: video"),
            "those of the files in it",
            kind="folder",
            url="/path/to/ComfyUI/models",
            note="optional: FLUX and Wan from diffusion_models/, vae/, text_encoders/ and clip_vision/ instead of "
                 "a second copy in diffusers layout (persona.comfy_files)",
        ),
        ModelSpec(
            "sd-scripts",
            "kohya-ss sd-scripts checkout (second LoRA backend)",
            ("train-lora --backend kohya",),
            "Apache-2.0",
            kind="checkout",
            url="https://github.com/kohya-ss/sd-scripts",
            required=("flux_train_network.py",),
            note="only needed for --backend kohya; it also needs FLUX.1-dev's single files: "
                 "hf download black-forest-labs/FLUX.1-dev ae.safetensors flux1-dev.safetensors",
            runs_code=True,
        ),
    ]
}


@dataclass
class Located:
    key: str
    path: Path
    source: str  # "explicit", "[models]", "env", "user config", "hf-cache"
    repo: str | None = None
    problems: list[str] = field(default_factory=list)


TRUST_ENV = "PERSONA_TRUST_PACK"


class CodeRefused(PersonaError):
    """A pack named a code-bearing model and the user does not trust packs."""


@dataclass(frozen=True)
class UserConfig:
    """The user's own settings, outside every workspace: `$XDG_CONFIG_HOME/persona/config.toml`.

    ```toml
    trust_pack = false          # true: honour code-bearing [models] entries of every pack
    [models]
    film = "~/models/film_net_fp32.pt"
    latentsync = "~/src/LatentSync"
    ```
    """

    path: Path
    models: dict[str, str] = field(default_factory=dict)
    trust_pack: bool = False


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "persona" / "config.toml"


def user_config() -> UserConfig:
    """The user config (empty when there is none); relative model paths are relative to its folder."""
    path = user_config_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return UserConfig(path)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PersonaError(f"is not valid TOML ({e})", file=path, fix="fix the syntax at that line") from None
    models, trust = data.get("models", {}), data.get("trust_pack", False)
    extra = set(data) - {"models", "trust_pack"}
    if not isinstance(models, dict) or not all(isinstance(v, str) for v in models.values()) \
            or not isinstance(trust, bool) or extra:
        raise PersonaError("holds something other than trust_pack = true/false and a [models] table of paths",
                           file=path, fix='write e.g. trust_pack = false and [models] film = "/models/film_net_fp32.pt"')
    unknown = sorted(set(models) - set(REGISTRY))
    if unknown:
        raise PersonaError(f"[models] has unknown keys: {', '.join(unknown)}", file=path,
                           fix=f"use keys from: {', '.join(REGISTRY)}")
    return UserConfig(path, {k: str(path.parent / Path(v).expanduser()) for k, v in models.items()}, trust)


def pack_trusted() -> bool:
    """Whether the user lets packs name code-bearing models (--trust-pack sets PERSONA_TRUST_PACK)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes") or user_config().trust_pack


def _refusal(m: ModelSpec, raw: str) -> CodeRefused:
    what = {"file": "a TorchScript file, which is code", "checkout": "a checkout whose Python persona would run"}
    return CodeRefused(f"refused: persona.toml's [models] {m.key} = {raw!r} is {what.get(m.kind, 'code')}, "
                       "and a pack must not run code on this machine",
                       fix=f"set it yourself (${m.env}, or [models] in {user_config_path()}), or run "
                           "`persona --trust-pack ...` if you trust whoever made this pack")


def f5_base_arch() -> dict:
    """F5TTS_v1_Base's DiT settings, from the config the f5-tts package ships."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(str(files("f5_tts").joinpath("configs/F5TTS_v1_Base.yaml")))
    return OmegaConf.to_container(cfg.model.arch, resolve=True)


def f5_pretrained_vocab() -> Path:
    """The vocab the f5-tts wheel ships for inference: the pretrained one (2545 tokens)."""
    from importlib.resources import files

    return Path(str(files("f5_tts").joinpath("infer/examples/vocab.txt")))


F5_BASE_FILE = "F5TTS_v1_Base/model_1250000.safetensors"


def f5_base_files(models: dict[str, str] | None = None, explicit: str | Path | None = None) -> tuple[Path, Path, str]:
    """The pretrained F5-TTS checkpoint (from a snapshot folder or a checkpoint file), its vocab, and
    a name for records (the Hub path when it came from the cache). Fine-tuning starts from it, and
    a pack without a trained voice narrates with it zero-shot."""
    found = locate_entry("f5-tts", explicit, models)
    checkpoint = found.path if found.path.is_file() else found.path / F5_BASE_FILE
    vocab = checkpoint.parent / "vocab.txt"
    name = f"{found.repo}/{F5_BASE_FILE}" if found.repo else str(checkpoint)
    return checkpoint, vocab if vocab.exists() else f5_pretrained_vocab(), name


def f5_arch(checkpoint: Path) -> dict:
    """The DiT settings of an F5-TTS checkpoint: `model_config.json` beside it when there is one
    (smaller variants, the tiny test models), else F5TTS_v1_Base's.

    The sidecar may come with a pack, so it is checked to hold only DiT's own keyword settings as
    plain numbers, flags and words: it must not be able to name anything to import."""
    import inspect
    import json

    sidecar = Path(checkpoint).parent / "model_config.json"
    if not sidecar.exists():
        return f5_base_arch()
    from f5_tts.model import DiT

    try:
        arch = json.loads(sidecar.read_text(encoding="utf-8"))["arch"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise PersonaError("is not an F5-TTS model config (JSON with an \"arch\" table)", file=sidecar,
                           fix="export the voice again with `persona train-voice`, or delete the file for v1 Base") from None
    allowed = set(inspect.signature(DiT.__init__).parameters) - {"self", "text_num_embeds", "mel_dim"}
    bad = [k for k, v in arch.items() if k not in allowed or not isinstance(v, (int, float, bool, str, type(None)))] \
        if isinstance(arch, dict) else ["arch"]
    if bad:
        raise PersonaError(f"\"arch\" has settings DiT does not take as plain values: {', '.join(map(str, bad))}",
                           file=sidecar, fix=f"keep only {', '.join(sorted(allowed))}")
    return arch


def load_weights(path: str | Path, map_location: str = "cpu") -> Any:
    """torch.load(weights_only=True), refusing anything else in one line.

    torch's own message advises retrying with weights_only=False, which would let the file run code;
    that advice must not reach a user holding a file from someone else."""
    import pickle
    import warnings

    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch asks users to file issues about pickle protocols
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise PersonaError("not found", file=path, fix="check the path") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, TypeError) as e:
        text = str(e)
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        reason = detail.group(1) if detail else (text.strip().splitlines() or [e.__class__.__name__])[0]
        if "weights_only" in reason:
            reason = e.__class__.__name__
        raise PersonaError(f"refused: not a plain weights file ({reason[:160]})", file=path,
                           fix="use a .safetensors file, or a checkpoint saved with tensors only") from None


SMALL_FILE = 64 << 20  # configs, tokenizers, small weights: hashed; larger shards: named and sized


def model_identity(path: Path) -> str:
    """What a model file or folder is, for cache keys: every file's name and size, and the contents
    of the small ones (configs, tokenizers). Hashing tens of GB of shards on every render would cost
    more than the caches save, and a shard of the same name and size in a changed snapshot comes
    with a changed config or index beside it. A copy elsewhere keeps its identity."""
    from persona.files import hash_file, hash_json

    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    entries = []
    for f in files:
        size = f.stat().st_size
        name = f.name if f == path else f.relative_to(path).as_posix()
        entries.append([name, size, hash_file(f) if size <= SMALL_FILE else None])
    return hash_json(entries)


def spec(key: str) -> ModelSpec:
    try:
        return REGISTRY[key]
    except KeyError:
        raise PersonaError(f"unknown model key {key!r}", fix=f"use one of: {', '.join(REGISTRY)}") from None


def _missing_files(m: ModelSpec, path: Path) -> list[str]:
    if path.is_file():
        return []
    return [r for r in m.required if not (path / r).exists()]


def _from_hf_cache(m: ModelSpec) -> Located | None:
    if m.kind != "repo":
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for repo in m.repos:
        try:
            folder = Path(snapshot_download(repo, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            continue
        path = folder / m.file if m.file else folder
        if path.exists() and not _missing_files(m, path):
            return Located(m.key, path, "hf-cache", repo=repo)
    return None


def find(key: str, explicit: str | Path | None = None, models: dict[str, str] | None = None) -> Located | None:
    """Where `key` is on this machine, or None. `models` is the workspace's [models] table (someone
    else's, when the pack came from elsewhere): a code-bearing entry there is refused with a
    PersonaError unless the user trusts packs, and the user's own configuration wins over it."""
    m = spec(key)
    own = user_config()
    pack_entry = [("[models]", models[key])] if models and models.get(key) else []
    candidates: list[tuple[str, str]] = [("explicit", str(explicit))] if explicit else []
    if not m.runs_code:
        candidates += pack_entry
    if os.environ.get(m.env):
        candidates.append(("env", os.environ[m.env]))
    if own.models.get(key):
        candidates.append(("user config", own.models[key]))
    if m.runs_code and pack_entry and not candidates:
        if not pack_trusted():
            raise _refusal(m, pack_entry[0][1])
        candidates += pack_entry
    for source, raw in candidates:
        path = Path(raw).expanduser()
        if not path.exists():
            return Located(key, path, source, problems=[f"{path} does not exist"])
        missing = _missing_files(m, path)
        if missing:
            return Located(key, path, source, problems=[f"{path} lacks {', '.join(missing)}"])
        return Located(key, path, source)
    return _from_hf_cache(m)


def locate(key: str, explicit: str | Path | None = None, models: dict[str, str] | None = None) -> Path:
    """The path of `key`, or a PersonaError that says how to get it."""
    return locate_entry(key, explicit, models).path


def locate_entry(key: str, explicit: str | Path | None = None, models: dict[str, str] | None = None) -> Located:
    """Where `key` is and where that came from (its Hub repo, when from the cache), or a PersonaError
    that says how to get it."""
    m = spec(key)
    found = find(key, explicit, models)
    if found is not None and not found.problems:
        return found
    if found is not None:
        raise PersonaError(
            f"{m.title}: {'; '.join(found.problems)} (from {found.source})",
            fix="point it at a complete copy; `persona doctor` shows what is expected",
        )
    raise PersonaError(
        f"{m.title} not found (looked at [models].{key} in persona.toml, ${m.env}, {user_config_path()}, "
        "and the Hugging Face cache)",
        fix=f"{m.fetch_command()}; `persona doctor` lists every model",
    )
