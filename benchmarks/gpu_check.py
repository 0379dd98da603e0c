"""GPU truth: every heavy stage at full size with random weights, one table of speed and memory per profile.

    python benchmarks/gpu_check.py                 # on a CUDA GPU: full-size models, caps enforced
    python benchmarks/gpu_check.py --tiny          # the same code on the CPU with persona's tiny models
    python benchmarks/gpu_check.py --wheels DIR    # (here, with PyPI) download the wheels the GPU machine lacks

Weights are random: speed and memory do not depend on their values. On the GPU each model is built
on the meta device and materialised straight on the GPU in bf16 (no downloads), then saved where
persona's own loaders need a folder, so every row runs the project's code path (train/lora_native.py,
inference/memory.py, inference/musetalk.py) and not a copy of it.

Each row runs under its profile's memory cap, enforced with torch.cuda.set_per_process_memory_fraction,
so "fits: yes" on a "12gb" row means it ran within 12 GiB. A row that fails (OOM under the cap, a
missing package) is a row with fits "no" and the error; the table is always printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

LORA_RECIPES = ("flux-dev-12gb", "flux-dev-16gb", "flux-dev-24gb", "flux-dev-80gb")
LORA_SIZES = (512, 1024)
VOICE_RECIPES = ("f5-12gb", "f5-24gb", "f5-80gb")
RENDER_PROFILES = ("12gb", "16gb", "24gb", "48gb", "80gb")
# What this script's code path imports that the GPU machine (python 3.12, torch 2.11, transformers,
# peft, accelerate, pandas, pyarrow, numba, rich, einops, torchdiffeq ...: /work/.library/device/KINDS.md)
# lacks. f5-tts is heavy because f5_tts.model's __init__ imports its trainer (datasets, wandb, librosa).
WHEELS = (
    "diffusers", "bitsandbytes", "f5-tts", "spandrel", "ema-pytorch", "x-transformers", "vocos", "einx", "frozendict",
    "torch-einops-utils", "omegaconf", "antlr4-python3-runtime", "pydantic", "pydantic-core", "annotated-types",
    "typing-inspection", "tomlkit", "ftfy", "wcwidth", "datasets", "dill", "multiprocess", "librosa", "soundfile",
    "audioread", "soxr", "pooch", "decorator", "platformdirs", "pypinyin", "rjieba",
    "loguru", "orjson", "wandb", "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-proto",
    "opentelemetry-exporter-otlp-proto-http", "opentelemetry-exporter-otlp-proto-common",
    "opentelemetry-semantic-conventions",
)
# Published as source only (pure Python): built into a wheel here, so the GPU machine installs wheels only.
SOURCE_ONLY = ("antlr4-python3-runtime",)
# The GPU machine's Python and platforms, for binary wheels (pip matches manylinux tags exactly).
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"] + [
    a for tag in ("manylinux_2_28", "manylinux_2_27", "manylinux_2_24", "manylinux_2_17", "manylinux2014",
                  "manylinux1") for a in ("--platform", f"{tag}_x86_64")]
CARRY_LIMIT = 60 << 20  # a run carries 64 MiB in all; the source tree takes ~1 MiB of it


@dataclass
class Row:
    stage: str
    profile: str
    value: float | None = None
    unit: str = ""
    peak_vram_gb: float | None = None
    peak_ram_gb: float | None = None
    fits: str = "no"
    note: str = ""
    error: str = ""


@dataclass
class Ctx:
    tiny: bool
    root: Path
    device: torch.device
    models: dict[str, Path] = field(default_factory=dict)


# ---- measuring -------------------------------------------------------------------------------------
class RamPeak:
    """Peak resident memory of this process while a row runs, sampled from /proc (getrusage's
    ru_maxrss is a lifetime peak that cannot be reset per row, and psutil is not a dependency)."""

    def __init__(self, every: float = 0.05):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: the lifetime peak is the best there is
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> "RamPeak":
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def cap_gb(profile: str) -> float | None:
    """The memory cap a profile claims: '12gb' and 'flux-dev-12gb' -> 12; None for none."""
    digits = profile.rsplit("-", 1)[-1].removesuffix("gb")
    return float(digits) if digits.isdigit() else None


def measure(ctx: Ctx, stage: str, profile: str, run: Callable[[], tuple[float, str, str]],
            family: str | None = None) -> Row:
    """Run one row under its profile's cap; any exception becomes the row's error. The row's model
    family is built first, uncapped and unmeasured (building is not what a profile runs)."""
    row = Row(stage, profile)
    cuda = ctx.device.type == "cuda"
    if family:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
        try:
            model(ctx, family)
        except Exception as e:  # noqa: BLE001
            row.error = f"building {family}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            free(ctx)
            return row
        free(ctx)
    if cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        cap = cap_gb(profile)
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 2**30 / total) if cap else 1.0)
        torch.cuda.reset_peak_memory_stats()
    with RamPeak() as ram:
        try:
            row.value, row.unit, row.note = run()
            row.fits = "yes"
        except Exception as e:  # noqa: BLE001 - a failing row is a result, not a crash
            row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    row.peak_ram_gb = round(ram.peak / 2**30, 2)
    if cuda:
        row.peak_vram_gb = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if row.value is not None:
        row.value = round(row.value, 3)
    free(ctx)
    return row


def free(ctx: Ctx) -> None:
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def timed(fn: Callable[[], Any], repeats: int, ctx: Ctx) -> float:
    """Best seconds of `repeats` calls after one warm-up call (compilation, allocator, cuDNN choice)."""
    if not ctx.tiny:  # --tiny proves the code runs (in the tests); its timings mean little
        fn()
    best = float("inf")
    for _ in range(1 if ctx.tiny else repeats):
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


# ---- full-size models with random weights -----------------------------------------------------------
def random_weights(make: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Build on the meta device, then give every parameter random values directly on `device`
    (a 12B model is never materialised in host RAM). Buffers (RoPE tables, position ids) are computed
    at construction, so they are kept from a CPU copy rather than left empty."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = make()
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                values = torch.empty(p.shape, device=device, dtype=dtype).normal_(0, 0.02)
                module._parameters[name] = torch.nn.Parameter(values, requires_grad=p.requires_grad)
    return model.to(device)


def full_flux(ctx: Ctx) -> Path:
    """A FluxPipeline folder at FLUX.1-dev's sizes (transformer, T5-XXL, CLIP-L, VAE), tokenizers from
    persona's tiny build (token ids only; their vocabularies fit inside the real embeddings)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from persona import tiny

    folder = tiny.build("flux", ctx.root / "models")  # scheduler, tokenizers and config layout
    parts: dict[str, Callable[[], torch.nn.Module]] = {
        # black-forest-labs/FLUX.1-dev transformer/config.json
        "transformer": lambda: FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56)),
        # google/t5-v1_1-xxl encoder as FLUX.1 ships it (text_encoder_2/config.json)
        "text_encoder_2": lambda: T5EncoderModel(T5Config(
            vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            feed_forward_proj="gated-gelu", is_gated_act=True, dense_act_fn="gelu_new")),
        # openai/clip-vit-large-patch14 text model (text_encoder/config.json)
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu")),
        "vae": lambda: AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            latent_channels=16, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
            use_quant_conv=False, use_post_quant_conv=False),
    }
    out = save_full(ctx, folder, "flux-full", parts)
    from diffusers import FlowMatchEulerDiscreteScheduler

    # FLUX.1-dev scheduler/scheduler_config.json (the tiny one's sequence lengths are scaled down)
    FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                    base_image_seq_len=256, max_image_seq_len=4096).save_pretrained(str(out / "scheduler"))
    return out


def full_wan(ctx: Ctx) -> Path:
    """A WanImageToVideoPipeline folder at Wan2.1-I2V-14B-480P-Diffusers' sizes."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    from persona import tiny

    folder = tiny.build("wan-i2v", ctx.root / "models")
    parts: dict[str, Callable[[], torch.nn.Module]] = {
        # Wan-AI/Wan2.1-I2V-14B-480P-Diffusers transformer/config.json
        "transformer": lambda: WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=5120, rope_max_seq_len=1024),
        # google/umt5-xxl encoder
        "text_encoder": lambda: UMT5EncoderModel(UMT5Config(
            vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            feed_forward_proj="gated-gelu", is_gated_act=True, dense_act_fn="gelu_new")),
        # open-clip ViT-H/14 vision tower (image_encoder/config.json)
        "image_encoder": lambda: CLIPVisionModel(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
            image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")),
        "vae": lambda: AutoencoderKLWan(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                        temperal_downsample=[False, True, True]),
    }
    folder = save_full(ctx, folder, "wan-full", parts)
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}).save_pretrained(str(folder / "image_processor"))
    return folder


def save_full(ctx: Ctx, tiny_folder: Path, name: str, parts: dict[str, Callable[[], torch.nn.Module]]) -> Path:
    """Copy the tiny pipeline folder's small files and write each full-size part in its place."""
    import shutil

    out = ctx.root / "models" / name
    if (out / ".complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(tiny_folder, out, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    for sub, make in parts.items():
        shutil.rmtree(out / sub, ignore_errors=True)
        model = random_weights(make, ctx.device, torch.bfloat16)
        model.save_pretrained(str(out / sub), safe_serialization=True)
        del model
        free(ctx)
    (out / ".complete").write_text("random weights at full size\n")
    return out


def full_musetalk(ctx: Ctx) -> Path:
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, str(Path(__file__).parent))
    from lipsync import MUSETALK_JSON  # musetalkV15/musetalk.json as published (NOTES.md)

    folder = ctx.root / "models" / "musetalk-full" / "musetalkV15"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "musetalk.json").write_text(json.dumps(MUSETALK_JSON))
    unet = random_weights(lambda: UNet2DConditionModel.from_config(MUSETALK_JSON), torch.device("cpu"), torch.float32)
    torch.save({k: v.half() for k, v in unet.state_dict().items()}, folder / "unet.pth")  # fp16, as published
    return folder.parent


def model(ctx: Ctx, family: str) -> Path:
    """The folder (or file) of one family: persona's tiny build, or the full-size random one."""
    if family not in ctx.models:
        from persona import tiny

        if ctx.tiny:
            ctx.models[family] = tiny.build(family, ctx.root / "models")
        else:
            # FLUX.1 (34 GB) and Wan (41 GB) in bf16 do not fit the GPU machine's 64 GB disk together
            import shutil

            for done in [f for f in ctx.models if f != "musetalk"]:
                shutil.rmtree(ctx.models.pop(done), ignore_errors=True)
            ctx.models[family] = {"flux": full_flux, "wan-i2v": full_wan, "musetalk": full_musetalk}[family](ctx)
    return ctx.models[family]


# ---- the rows -----------------------------------------------------------------------------------------
def lora_row(ctx: Ctx, recipe: str, size: int) -> tuple[float, str, str]:
    """One FLUX LoRA optimizer step with the recipe's precision, optimizer and checkpointing, through
    train/lora_native.py's own model loading, optimizer and forward pass."""
    from persona.config import resolve_settings
    from persona.train.lora import LoraSettings
    from persona.train.flux_base import FluxBase
    from persona.train.lora_native import flux_forward, load_transformer, make_optimizer

    note = ""
    overrides: dict[str, Any] = {"resolutions": [size]}
    if ctx.tiny:  # NF4 and 8-bit AdamW are bitsandbytes CUDA kernels; the CPU runs fp32 and AdamW
        overrides.update(base_precision="fp32", optimizer="adamw", mixed_precision="no")
        size, note = size // 8, f"tiny model at {size // 8} px; nf4/fp8/8-bit settings replaced on CPU"
    s = resolve_settings(LoraSettings, "lora", recipe, overrides)
    compute = torch.bfloat16 if s.mixed_precision == "bf16" else torch.float32
    flux = model(ctx, "flux")
    net = load_transformer(FluxBase(flux, str(flux)), s, ctx.device, compute)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = make_optimizer(s, params)
    latent = size // 8
    channels = net.config.in_channels // 4
    text = net.config.joint_attention_dim
    noisy = torch.randn(1, channels, latent, latent, device=ctx.device, dtype=compute)
    target = torch.randn(1, (latent // 2) ** 2, channels * 4, device=ctx.device)
    embeds = torch.randn(1, s.max_text_tokens, text, device=ctx.device, dtype=compute)
    pooled = torch.randn(1, net.config.pooled_projection_dim, device=ctx.device, dtype=compute)
    t = torch.tensor([0.5], device=ctx.device, dtype=compute)

    def step() -> None:
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=s.mixed_precision == "bf16"):
            pred = flux_forward(net, noisy, t, embeds, pooled, s.guidance if net.config.guidance_embeds else None)
            loss = torch.nn.functional.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = timed(step, 2, ctx)
    del net, opt, params
    return seconds, "s/step", note or f"{s.steps} steps: ~{seconds * s.steps / 60:.0f} min"


def voice_row(ctx: Ctx, recipe: str) -> tuple[float, str, str]:
    """One F5-TTS v1 Base update (fp32 master weights, the recipe's optimizer, autocast and activation
    recomputation, the EMA update) on a batch of the recipe's size."""
    from ema_pytorch import EMA
    from f5_tts.model import CFM, DiT

    from persona.config import resolve_settings
    from persona.models import f5_pretrained_vocab
    from persona.train.voice import VoiceSettings
    from persona.train.voice_data import read_vocab
    from persona.train.voice_trainer import MEL

    s = resolve_settings(VoiceSettings, "voice", recipe)
    frames, note = s.batch_frames, ""
    if ctx.tiny:
        frames, note = 300, "tiny DiT, 300 frames"
    vocab = read_vocab(f5_pretrained_vocab())
    net = CFM(transformer=DiT(**voice_arch(ctx.tiny, s.checkpoint_activations), text_num_embeds=len(vocab),
                              mel_dim=100), mel_spec_kwargs=MEL, vocab_char_map=vocab).to(ctx.device)
    ema = EMA(net, include_online_model=False, update_every=1).to(ctx.device)
    if s.optimizer == "adamw8bit" and ctx.device.type == "cuda":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(net.parameters(), lr=1e-5)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    clip = min(750, frames)  # 8 s clips, a typical ingest length
    lens = [clip] * (frames // clip) + ([frames % clip] if frames % clip else [])
    mel = torch.randn(len(lens), max(lens), 100, device=ctx.device)
    text = ["a sentence of about one hundred characters, which is what eight seconds of speech hold, roughly."] * len(lens)
    lengths = torch.tensor(lens, device=ctx.device)
    bf16 = ctx.device.type == "cuda" and s.precision == "bf16"

    def update() -> None:
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = net(mel, text=text, lens=lengths)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update()

    seconds = timed(update, 2, ctx)
    return seconds, "s/update", note or f"{frames} frames per update"


def voice_arch(tiny_model: bool, checkpoint_activations: bool) -> dict[str, Any]:
    from persona import tiny
    from persona.models import f5_base_arch

    arch = dict(tiny.F5_TINY_ARCH) if tiny_model else f5_base_arch()
    return {**arch, "checkpoint_activations": checkpoint_activations}


def keyframe_row(ctx: Ctx, profile: str) -> tuple[float, str, str]:
    """One FLUX keyframe at the profile's size and steps, loaded by inference/memory.py."""
    from diffusers import FluxPipeline

    from persona.config import resolve_settings
    from persona.inference.memory import load_pipeline
    from persona.inference.plan import RenderSettings

    r = resolve_settings(RenderSettings, "render", profile)
    k = r.keyframes
    width, height, steps, note = k.width, k.height, k.steps, f"{k.width}x{k.height}, {k.steps} steps"
    if ctx.tiny:
        width, height, steps, note = 64, 32, 2, "tiny model, 64x32, 2 steps"
    pipe = load_pipeline(FluxPipeline, model(ctx, "flux"), k.memory)
    seconds = timed(lambda: pipe(prompt="a presenter at a whiteboard", width=width, height=height,
                                 num_inference_steps=steps, guidance_scale=3.5, output_type="np"), 1, ctx)
    del pipe
    return seconds, "s/image", note


def wan_row(ctx: Ctx, profile: str) -> tuple[float, str, str]:
    """One Wan 2.1 I2V chunk at the profile's size: a few denoising steps, scaled to the recipe's steps
    (each step costs the same; text and image encoding and VAE decoding are counted once)."""
    import numpy as np
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    from persona.config import resolve_settings
    from persona.inference.memory import load_pipeline
    from persona.inference.plan import RenderSettings

    v = resolve_settings(RenderSettings, "render", profile).video
    width, height, frames, steps, few = v.width, v.height, v.chunk_frames, v.steps, 2
    if ctx.tiny:
        width, height, frames, few = 32, 32, 5, 1
    pipe = load_pipeline(WanImageToVideoPipeline, model(ctx, "wan-i2v"), v.memory)
    image = Image.fromarray(np.full((height, width, 3), 128, np.uint8))

    def chunk(n: int) -> float:
        t0 = time.perf_counter()
        pipe(image=image, prompt="a presenter talking", height=height, width=width, num_frames=frames,
             num_inference_steps=n, guidance_scale=5.0, output_type="np")
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    if not ctx.tiny:
        chunk(1)  # warm-up
    one, more = chunk(1), chunk(1 + few)
    per_step = max(more - one, 0.0) / few
    seconds = one - per_step + per_step * steps
    del pipe
    return seconds, "s/chunk", (f"{width}x{height}x{frames}: {few} step(s) timed, scaled to {steps} "
                                f"({per_step:.2f} s/step)")


def musetalk_row(ctx: Ctx) -> tuple[float, str, str]:
    """MuseTalk's UNet, one batch of 8 faces as inference/musetalk.py feeds it (masked + reference
    latents, Whisper features): faces per second. Face detection, VAE and blending are not counted."""
    from persona.inference.musetalk import load_unet

    unet = load_unet(model(ctx, "musetalk")).to(ctx.device)
    dtype = torch.float16 if ctx.device.type == "cuda" else torch.float32
    unet = unet.half() if dtype == torch.float16 else unet.float()
    batch = 8
    latents = torch.randn(batch, 8, 32, 32, device=ctx.device, dtype=dtype)
    features = torch.randn(batch, 50, unet.config.cross_attention_dim, device=ctx.device, dtype=dtype)
    t = torch.zeros(batch, device=ctx.device, dtype=dtype)
    with torch.inference_mode():
        seconds = timed(lambda: unet(latents, t, encoder_hidden_states=features), 2, ctx)
    return batch / seconds, "fps", "UNet only, batch 8" + (" (tiny)" if ctx.tiny else "")


def upscaler_row(ctx: Ctx) -> tuple[float, str, str]:
    """A 4x ESRGAN (RRDBNet, 23 blocks, 64 filters, as 4x-UltraSharp) through spandrel, on one 720p frame."""
    import spandrel
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    if ctx.tiny:
        path, height, width = model(ctx, "upscaler"), 32, 56
    else:
        path, height, width = ctx.root / "models" / "4x-esrgan.safetensors", 720, 1280
        save_file({k: v.contiguous() for k, v in ESRGAN(num_filters=64, num_blocks=23, scale=4).state_dict().items()},
                  str(path))
    net = spandrel.ModelLoader(device=ctx.device).load_from_file(str(path))
    dtype = torch.float16 if ctx.device.type == "cuda" else torch.float32
    if dtype == torch.float16:
        net.model.half()
    frame = torch.rand(1, 3, height, width, device=ctx.device, dtype=dtype)
    with torch.inference_mode():
        seconds = timed(lambda: net(frame), 1, ctx)
    return 1 / seconds, "fps", f"{width}x{height} in, x4 out" + (" (tiny)" if ctx.tiny else "")


# ---- the table ------------------------------------------------------------------------------------------
Planned = tuple[str, str, Callable[[], tuple[float, str, str]], str | None]  # stage, profile, run, family


def plan(ctx: Ctx, only: str | None) -> list[Planned]:
    rows: list[Planned] = []
    for recipe in LORA_RECIPES:
        for size in LORA_SIZES:
            rows.append((f"lora@{size}", recipe, lambda r=recipe, z=size: lora_row(ctx, r, z), "flux"))
    rows += [("voice", r, lambda r=r: voice_row(ctx, r), None) for r in VOICE_RECIPES]
    rows += [("keyframe", p, lambda p=p: keyframe_row(ctx, p), "flux") for p in RENDER_PROFILES]
    rows += [("wan-chunk", p, lambda p=p: wan_row(ctx, p), "wan-i2v") for p in RENDER_PROFILES]
    rows += [("musetalk", "-", lambda: musetalk_row(ctx), "musetalk"),
             ("upscaler-720p", "-", lambda: upscaler_row(ctx), None)]
    return [r for r in rows if not only or r[0].startswith(only)]


def table(rows: list[Row]) -> str:
    head = ("stage", "profile", "speed", "peak VRAM GB", "peak RAM GB", "fits", "note / error")
    lines = [head] + [(r.stage, r.profile, f"{r.value} {r.unit}" if r.value is not None else "-",
                       str(r.peak_vram_gb if r.peak_vram_gb is not None else "-"), str(r.peak_ram_gb), r.fits,
                       r.error or r.note) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] for line in lines)


def wheels(folder: Path) -> list[list[tuple[str, int]]]:
    """Download the wheels the GPU machine lacks, at the versions installed here (the ones the tests
    pass with), for its Python 3.12, and group them into bundles of at most 64 MiB, one per run."""
    import importlib.metadata as md
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={md.version(name)}" for name in WHEELS if name not in SOURCE_ONLY]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), *PLATFORM, *pins],
                   check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder),
                    *[f"{name}=={md.version(name)}" for name in SOURCE_ONLY]], check=True)
    # persona itself, so that the GPU machine imports it as here (its folders map onto persona.*)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(folder),
                    str(Path(__file__).resolve().parents[1])], check=True)
    files = sorted(((p.name, p.stat().st_size) for p in folder.glob("*.whl")), key=lambda x: -x[1])
    bundles: list[list[tuple[str, int]]] = []
    for name, size in files:  # first fit, largest first
        for b in bundles:
            if sum(s for _, s in b) + size <= CARRY_LIMIT:
                b.append((name, size))
                break
        else:
            bundles.append([(name, size)])
    for i, b in enumerate(bundles, 1):
        sub = folder / f"run{i}"
        sub.mkdir(exist_ok=True)
        for name, _ in b:
            os.replace(folder / name, sub / name)
    return bundles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny models on the CPU (what the tests run)")
    ap.add_argument("--only", help="only the stages starting with this (lora, voice, keyframe, wan, musetalk, upscaler)")
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    ap.add_argument("--models", type=Path, help="where models are built (default: a temporary folder)")
    ap.add_argument("--wheels", type=Path, help="download the wheels the GPU machine needs into this folder and exit")
    args = ap.parse_args()
    if args.wheels:
        for i, bundle in enumerate(wheels(args.wheels), 1):
            print(f"run{i}: {sum(s for _, s in bundle) / 2**20:.1f} MiB")
            for name, size in bundle:
                print(f"  {name}  {size / 2**20:.1f} MiB")
        return
    from persona.progress import quiet_libraries

    quiet_libraries()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.tiny:
        sys.exit("gpu_check: no CUDA GPU here; --tiny runs the same code on the CPU with the tiny models")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Ctx(tiny=args.tiny, root=args.models or Path(tmp), device=device)
        results = []
        for stage, profile, run, family in plan(ctx, args.only):
            results.append(measure(ctx, stage, profile, run, family))
            print(f"{stage} {profile}: {results[-1].fits} {results[-1].error}", file=sys.stderr, flush=True)
    title = f"gpu_check {time.strftime('%Y-%m-%d')} on " + (
        torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (--tiny)")
    print(title + "\n" + table(results))
    print("FILM: not timed (its weights are TorchScript only; there is no architecture to build at full size)")
    if args.json:
        from persona.files import write_json

        write_json(args.json, {"title": title, "rows": [asdict(r) for r in results]})


if __name__ == "__main__":
    main()
