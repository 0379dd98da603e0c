"""A real ComfyUI 0.8.0 server for tests: ../shared/comfyui started on CPU on a free local port, with
every writable folder in a temp dir (that source tree is read-only), stopped after."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SHARED_COMFYUI = Path(os.environ.get("PERSONA_SHARED_COMFYUI", REPO.parent / "shared" / "comfyui"))
# What ComfyUI imports beyond persona's own dependencies (the `test` extra installs them).
EXTRA_MODULES = ("torchsde", "kornia", "sqlalchemy", "alembic", "comfy_kitchen", "pydantic_settings",
                 "comfyui_frontend_package", "websocket")


def unavailable() -> str | None:
    """Why a ComfyUI server cannot be started here, or None."""
    if not (SHARED_COMFYUI / "main.py").is_file():
        return f"ComfyUI source not found at {SHARED_COMFYUI} (../shared/comfyui is absent on this machine)"
    missing = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"ComfyUI's packages are not installed ({', '.join(missing)}): pip install -e '.[test]'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    base: Path
    proc: subprocess.Popen

    @property
    def models(self) -> Path:
        return self.base / "models"

    def kill(self) -> None:
        """Stop it the hard way (as a crash or a restart would), and wait until it is gone."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def start(base: Path, timeout: float = 240.0, args: tuple[str, ...] = ()) -> Server:
    """Start ComfyUI with its folders under `base` (put model files in base/models/<kind>/ first) and
    any more of its own command-line `args`."""
    for sub in ("custom_nodes", "models", "user", "output", "temp", "input"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(base / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(SHARED_COMFYUI / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--base-directory", str(base), "--database-url", "sqlite:///:memory:", *args],
        stdout=log, stderr=subprocess.STDOUT, cwd=base, start_new_session=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    server = Server(f"http://127.0.0.1:{port}", base, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode}: {_tail(base / 'server.log')}")
        try:
            if httpx.get(f"{server.url}/object_info/SaveImage", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"ComfyUI did not serve /object_info within {timeout:.0f} s: {_tail(base / 'server.log')}")


def _tail(path: Path, n: int = 1500) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def place_placeholders(models: Path, names: dict[str, list[str]]) -> None:
    """Empty files under the names loaders list ({folder: [file names]}): enough for /object_info's
    enums and so for checking graphs, never for running them."""
    for folder, files in names.items():
        for name in files:
            path = models / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


# ------------------------------------------------------------------------------------------------
# The smallest FLUX that ComfyUI 0.8.0 loads, and a LoRA for it in the pack's format
# ------------------------------------------------------------------------------------------------
# ComfyUI sizes its models from fixed configs, not from the file: FLUX is detected from its keys
# (comfy/model_detection.py) with num_heads = 24 and axes_dim = [16, 56, 56], and
# comfy/ldm/flux/model.py requires hidden_size // num_heads == sum(axes_dim), so the width is 3072;
# only the block counts and the text/pooled widths come from the file. One double and one single block
# is 535 M parameters (1.07 GB in bf16). Its CLIP-L (comfy/sd1_clip_config.json) and VAE (ch 128,
# ch_mult 1-2-4-4) are fixed at full size too (123 M and 84 M), and DualCLIPLoader's "flux" type always
# builds T5-XXL from comfy/text_encoders/t5_config_xxl.json (4.7 B parameters, 9.5 GB in fp16) whatever
# the file holds: no tiny T5 can be loaded. The FLUX built here therefore takes CLIP-L's 768-wide
# output as its text context (txt_in and vector_in are read from the file), loaded with
# CLIPLoader(type="stable_diffusion"); with text_width=4096 it reads T5-XXL's, for the full graph
# with the sparse full-size encoders below (tests/test_comfyui_render.py).
def build_comfy_flux(models: Path, lora: Path, seed: int = 0, text_width: int = 768) -> dict[str, str]:
    """Random FLUX (diffusers layout, which UNETLoader converts), CLIP-L and FLUX-VAE files under
    models/, and a random LoRA saved as the pack's is; returns {role: file name}. `text_width` is the
    text context FLUX reads: CLIP-L's 768 by default, T5-XXL's 4096 for the full graph."""
    import torch
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    gen = torch.Generator().manual_seed(seed)

    def randn(shape, std=0.02):
        return (torch.randn(shape, generator=gen) * std).to(torch.bfloat16)

    with torch.device("meta"):  # shapes only: random values are drawn below, far faster than init
        flux = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                      attention_head_dim=128, num_attention_heads=24, joint_attention_dim=text_width,
                                      pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    state = {k: (torch.ones(v.shape, dtype=torch.bfloat16) if ".norm" in k and k.endswith("norm_q.weight")
                 or k.endswith("norm_k.weight") or k.endswith("norm_added_q.weight") or k.endswith("norm_added_k.weight")
                 else randn(v.shape))
             for k, v in flux.state_dict().items()}
    names = {"unet": "persona-test-flux.safetensors", "clip": "persona-test-clip-l.safetensors",
             "vae": "persona-test-flux-vae.safetensors"}
    for folder in ("diffusion_models", "text_encoders", "vae"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    save_file(state, str(models / "diffusion_models" / names["unet"]))

    # The LoRA: the layers persona's trainer adapts, in diffusers' format (what FluxPipeline writes).
    layers = {}
    for k, v in state.items():
        if k.endswith(".weight") and any(f".attn.{t}.weight" in k for t in ("to_q", "to_k", "to_v", "to_out.0")):
            base = k.removesuffix(".weight")
            layers[f"{base}.lora_A.weight"] = randn((4, v.shape[1]), 0.05)
            layers[f"{base}.lora_B.weight"] = randn((v.shape[0], 4), 0.05)
    del state
    lora.parent.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(str(lora.parent), transformer_lora_layers=layers, weight_name=lora.name)

    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu"))
    sd = {(k if k.startswith("text_model.") else "text_model." + k): v.half().contiguous() for k, v in clip.state_dict().items()}
    sd["text_projection.weight"] = torch.eye(768, dtype=torch.float16)
    save_file(sd, str(models / "text_encoders" / names["clip"]))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                        layers_per_block=2, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
    save_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, str(models / "vae" / names["vae"]))
    return names



# ------------------------------------------------------------------------------------------------
# The encoders ComfyUI 0.8.0 only builds at full size, as sparse files
# ------------------------------------------------------------------------------------------------
# DualCLIPLoader(type=flux) builds T5-XXL (4.7 B parameters), CLIPLoader(type=wan) UMT5-XXL (5.7 B) and
# CLIPVisionLoader CLIP ViT-H (0.63 B) from fixed configs, and leaves any tensor a file lacks
# uninitialised: a file must hold every tensor at full size. Here their weights are zeros (layer norms
# one, so no NaN), written as holes in a sparse file: 4.8 GB of T5 takes 0.3 s and no disk. The
# encodings carry no meaning (zeros through every layer), but ComfyUI loads, casts and runs every
# layer as it would the real files. safetensors' own writer writes every byte, so the header is laid
# out here by the format's specification (8-byte length, JSON header, contiguous data).
SAFETENSORS_BYTES = {"F8_E4M3": 1, "F16": 2, "BF16": 2, "F32": 4, "U8": 1}


def write_sparse_safetensors(path: Path, specs: dict[str, tuple[str, tuple[int, ...]]],
                             data: dict[str, bytes]) -> Path:
    """A safetensors file of `specs` ({name: (dtype, shape)}) holding `data` where given, zeros (holes) elsewhere."""
    import json
    import struct

    header, offset = {}, 0
    for name, (dtype, shape) in specs.items():
        size = SAFETENSORS_BYTES[dtype]
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        start = f.tell()
        for name, payload in data.items():
            assert len(payload) == header[name]["data_offsets"][1] - header[name]["data_offsets"][0], name
            f.seek(start + header[name]["data_offsets"][0])
            f.write(payload)
        f.truncate(start + offset)
    return path


def _ones(dtype: str, n: int) -> bytes:
    import torch

    torch_dtype = {"F8_E4M3": torch.float8_e4m3fn, "F16": torch.float16}[dtype]
    return torch.ones(n, dtype=torch_dtype).view(torch.uint8).numpy().tobytes()


def t5_encoder_specs(vocab: int, bias_every_layer: bool, dtype: str = "F8_E4M3", layers: int = 24, width: int = 4096,
                     ff: int = 10240, heads: int = 64) -> dict[str, tuple[str, tuple[int, ...]]]:
    """T5-XXL's encoder (vocab 32128, one relative attention bias) or UMT5-XXL's (vocab 256384, a bias
    in every layer), in the Hugging Face names ComfyUI reads."""
    s = {"shared.weight": (dtype, (vocab, width)), "encoder.final_layer_norm.weight": (dtype, (width,))}
    for i in range(layers):
        p = f"encoder.block.{i}.layer."
        for x in "qkvo":
            s[f"{p}0.SelfAttention.{x}.weight"] = (dtype, (width, width))
        if i == 0 or bias_every_layer:
            s[f"{p}0.SelfAttention.relative_attention_bias.weight"] = (dtype, (32, heads))
        s[f"{p}0.layer_norm.weight"] = (dtype, (width,))
        s[f"{p}1.DenseReluDense.wi_0.weight"] = (dtype, (ff, width))
        s[f"{p}1.DenseReluDense.wi_1.weight"] = (dtype, (ff, width))
        s[f"{p}1.DenseReluDense.wo.weight"] = (dtype, (width, ff))
        s[f"{p}1.layer_norm.weight"] = (dtype, (width,))
    return s


def write_t5_encoder(path: Path, vocab: int, bias_every_layer: bool, spiece: bytes | None = None) -> Path:
    specs = t5_encoder_specs(vocab, bias_every_layer)
    data = {k: _ones("F8_E4M3", v[1][0]) for k, v in specs.items() if k.endswith("layer_norm.weight")}
    if spiece is not None:  # as ComfyUI's umt5 files carry their tokenizer
        specs["spiece_model"] = ("U8", (len(spiece),))
        data["spiece_model"] = spiece
    return write_sparse_safetensors(path, specs, data)


def write_clip_vision_h(path: Path) -> Path:
    """CLIP ViT-H/14 with its projection (comfy/clip_vision_config_h.json), in Hugging Face names."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
            patch_size=14, projection_dim=1024, hidden_act="gelu"))
    specs = {k if k.startswith(("vision_model.", "visual_projection.")) else f"vision_model.{k}": ("F16", tuple(v.shape))
             for k, v in model.state_dict().items()}
    data = {k: _ones("F16", shape[0]) for k, (_, shape) in specs.items() if "layer_norm" in k or "layrnorm" in k
            if k.endswith(".weight")}
    return write_sparse_safetensors(path, specs, data)


# Wan2.2-S2V and its wav2vec2 audio encoder have no diffusers or transformers class that writes
# ComfyUI's names: their tensors are listed from ComfyUI's own modules (built on the meta device in
# a child process, so the test process never imports ComfyUI), at the smallest width ComfyUI sizes S2V
# to from the file (one 128-wide head, one layer) and wav2vec2-large's fixed size.
_LIST_SHAPES = """
import json, sys
sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI reads its flags on import: a CPU, as the test server runs
import torch
import comfy.options
comfy.options.enable_args_parsing()
import comfy.ops
from comfy.ldm.wan.model import WanModel_S2V
from comfy.audio_encoders.wav2vec2 import Wav2Vec2Model
ops = comfy.ops.disable_weight_init
with torch.device("meta"):
    s2v = WanModel_S2V(dim=128, ffn_dim=64, num_heads=1, num_layers=1, in_dim=16, out_dim=16, operations=ops)
    w2v = Wav2Vec2Model(embed_dim=1024, num_heads=16, num_layers=24, conv_norm=True, conv_bias=True, do_normalize=True,
                        do_stable_layer_norm=True, operations=ops)
print(json.dumps({name: {k: list(v.shape) for k, v in m.state_dict().items()} for name, m in (("s2v", s2v), ("wav2vec2", w2v))}))
"""


def comfy_module_shapes() -> dict[str, dict[str, list[int]]]:
    import json

    out = subprocess.run([sys.executable, "-c", _LIST_SHAPES, str(SHARED_COMFYUI)], capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_s2v(path: Path, shapes: dict[str, list[int]], seed: int = 0) -> Path:
    """A tiny random Wan2.2-S2V in ComfyUI's names: matrices and modulations small and random, norm
    scales one, biases zero."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if len(shape) == 1 and k.endswith("bias"):
            sd[k] = torch.zeros(shape)
        elif len(shape) == 1:
            sd[k] = torch.ones(shape)
        else:
            sd[k] = torch.randn(shape, generator=gen) * 0.02
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def write_wav2vec2_large(path: Path, shapes: dict[str, list[int]]) -> Path:
    """wav2vec2-large at full size (ComfyUI's fixed config), sparse: zeros, norm scales one, and the
    positional convolution's weight-norm direction random (a zero direction divides by zero)."""
    import torch

    specs = {k: ("F16", tuple(v)) for k, v in shapes.items()}
    data = {k: _ones("F16", v[0]) for k, v in shapes.items() if len(v) == 1 and k.endswith("weight")}
    g = "encoder.pos_conv_embed.conv.parametrizations.weight.original0"
    v = "encoder.pos_conv_embed.conv.parametrizations.weight.original1"
    data[g] = torch.ones(shapes[g], dtype=torch.float16).view(torch.uint8).numpy().tobytes()
    data[v] = (torch.randn(shapes[v], generator=torch.Generator().manual_seed(0)) * 0.02).half().view(torch.uint8).numpy().tobytes()
    return write_sparse_safetensors(path, specs, data)
