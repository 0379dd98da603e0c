"""FLUX and Wan from single files in the user's ComfyUI models folder, for diffusers and transformers.

diffusers' `from_single_file` loads the transformer (safetensors, or GGUF through
`GGUFQuantizationConfig`) and the VAE; CLIP-L and T5 files hold Hugging Face names, so transformers
loads them. Nothing is downloaded: each model's config is derived from the shapes of its tensors and
written to a temporary folder that `from_single_file(config=...)` and `from_pretrained` read. What
the file cannot say is FLUX.1's own constant (rope axes, 32 norm groups, the VAE's scaling, CLIP's
64-wide heads, the scheduler), taken from FLUX.1-dev's published configs.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from collections.abc import Callable, Collection
from typing import Any

from persona.comfy_files import FluxFiles, Shapes, WanFiles, count_indices, tensor_shapes, wan_transformer_widths
from persona.errors import PersonaError

# FLUX.1-dev's and FLUX.1-schnell's scheduler_config.json (schnell: no guidance embedding, no shift)
FLUX_DEV_SCHEDULER = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                      "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}
FLUX_SCHNELL_SCHEDULER = {**FLUX_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}
FULL_WIDTH = 3072  # the width diffusers' FLUX converter assumes when it splits single blocks


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """FLUX.1's rope axes (16, 56, 56) for its 128-wide heads: the two spatial axes take 7/16 of a head
    each (rounded down to even), the index axis the rest. Not stored in the file."""
    spatial = 2 * (head_dim * 7 // 32)
    return head_dim - 2 * spatial, spatial, spatial


def flux_transformer_config(s: Shapes) -> dict[str, Any]:
    hidden, in_channels = s["img_in.weight"]
    head_dim = s["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    return {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": in_channels,
            "num_layers": count_indices(s, r"double_blocks\.(\d+)\."), "num_single_layers": count_indices(s, r"single_blocks\.(\d+)\."),
            "attention_head_dim": head_dim, "num_attention_heads": hidden // head_dim,
            "joint_attention_dim": s["txt_in.weight"][1], "pooled_projection_dim": s["vector_in.in_layer.weight"][1],
            "guidance_embeds": "guidance_in.in_layer.weight" in s, "axes_dims_rope": list(rope_axes(head_dim))}


def vae_config(s: Shapes) -> dict[str, Any]:
    """AutoencoderKL settings of an image VAE in BFL/LDM names (encoder.down.N.block.M) or diffusers'."""
    ldm = "encoder.down.0.block.0.conv1.weight" in s
    level, block = ("encoder.down.{}.block.{}", r"encoder\.down\.0\.block\.(\d+)\.") if ldm else \
        ("encoder.down_blocks.{}.resnets.{}", r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
    levels = count_indices(s, r"encoder\.down\.(\d+)\.") if ldm else count_indices(s, r"encoder\.down_blocks\.(\d+)\.")
    return {"_class_name": "AutoencoderKL", "in_channels": s["encoder.conv_in.weight"][1],
            "out_channels": s["decoder.conv_out.weight"][0], "down_block_types": ["DownEncoderBlock2D"] * levels,
            "up_block_types": ["UpDecoderBlock2D"] * levels,
            "block_out_channels": [s[level.format(i, 0) + ".conv2.weight"][0] for i in range(levels)],
            "layers_per_block": count_indices(s, block), "latent_channels": s["decoder.conv_in.weight"][1],
            "norm_num_groups": 32, "act_fn": "silu", "sample_size": 1024, "scaling_factor": 0.3611,
            "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False, "force_upcast": True}


def clip_config(s: Shapes, tokenizer: Any) -> dict[str, Any]:
    vocab, hidden = s["text_model.embeddings.token_embedding.weight"]
    return {"model_type": "clip_text_model", "architectures": ["CLIPTextModel"], "vocab_size": vocab,
            "hidden_size": hidden, "intermediate_size": s["text_model.encoder.layers.0.mlp.fc1.weight"][0],
            "num_hidden_layers": count_indices(s, r"text_model\.encoder\.layers\.(\d+)\."),
            "num_attention_heads": max(1, hidden // 64), "hidden_act": "quick_gelu",
            "max_position_embeddings": s["text_model.embeddings.position_embedding.weight"][0],
            "projection_dim": s.get("text_projection.weight", (hidden,))[0], "layer_norm_eps": 1e-5,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def t5_config(s: Shapes, tokenizer: Any) -> dict[str, Any]:
    vocab, d_model = s["shared.weight"] if "shared.weight" in s else s["encoder.embed_tokens.weight"]
    buckets, heads = s["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in s
    wi = "wi_0" if gated else "wi"
    return {"model_type": "t5", "architectures": ["T5EncoderModel"], "vocab_size": vocab, "d_model": d_model,
            "d_kv": s["encoder.block.0.layer.0.SelfAttention.q.weight"][0] // heads,
            "d_ff": s[f"encoder.block.0.layer.1.DenseReluDense.{wi}.weight"][0],
            "num_layers": count_indices(s, r"encoder\.block\.(\d+)\."), "num_heads": heads,
            "relative_attention_num_buckets": buckets, "feed_forward_proj": "gated-gelu" if gated else "relu",
            "is_encoder_decoder": False, "use_cache": False, "tie_word_embeddings": False,
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
            "decoder_start_token_id": tokenizer.pad_token_id}


def _config_dir(root: Path, name: str, config: dict[str, Any]) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def transformers_model(cls: Any, file: Path, config: dict[str, Any], root: Path, name: str, dtype: Any) -> Any:
    """A transformers model from a single safetensors file in Hugging Face names: the file is linked
    beside its derived config, and from_pretrained reads both (no copy of the weights). ComfyUI's
    scaled fp8 files are dequantised first."""
    if is_scaled_fp8(tensor_shapes(file)):
        return _scaled_fp8_model(cls, file, config, dtype)
    folder = _config_dir(root, name, config)
    (folder / "model.safetensors").symlink_to(file.resolve())
    return cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True)


def is_scaled_fp8(s: Shapes) -> bool:
    """ComfyUI's scaled fp8 layout: float8 weights that mean nothing without their scales."""
    return "scaled_fp8" in s or any(k.endswith((".scale_weight", ".weight_scale")) for k in s)


def dequantized(file: Path, dtype: Any) -> dict[str, Any]:
    """The tensors of a scaled fp8 file multiplied out into `dtype` (each weight times its
    `scale_weight` / `weight_scale`, computed in float32), the scales and markers dropped."""
    import torch
    from safetensors.torch import load_file

    sd = load_file(str(file))
    out = {}
    for key, tensor in sd.items():
        if key == "scaled_fp8" or key.endswith((".scale_weight", ".weight_scale", ".scale_input", ".input_scale",
                                                 ".comfy_quant")):
            continue
        layer = key.removesuffix(".weight")
        scale = sd.get(f"{layer}.scale_weight", sd.get(f"{layer}.weight_scale")) if key.endswith(".weight") else None
        value = tensor.to(torch.float32) * scale.to(torch.float32) if scale is not None else tensor.to(torch.float32)
        out[key] = value.to(dtype)
    return out


def _scaled_fp8_model(cls: Any, file: Path, config: dict[str, Any], dtype: Any) -> Any:
    """A model from ComfyUI's scaled fp8 layout (e.g. t5xxl_fp8_e4m3fn_scaled.safetensors): each
    linear weight is float8 times its `scale_weight` (newer files: `weight_scale`), which only
    ComfyUI's own layers apply; here the weights are multiplied out into `dtype`."""
    import torch

    out = dequantized(file, torch.float32)
    with torch.device("meta"):
        model = cls(cls.config_class(**{k: v for k, v in config.items() if k != "model_type"}))
    model.load_state_dict(out, strict=False, assign=True)
    model.tie_weights()  # T5's encoder.embed_tokens is its shared embedding
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise PersonaError(f"lacks tensors the model needs ({', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''})",
                           file=file, fix="download the file again, or use the fp16 version of this text encoder")
    return model.to(dtype).eval()


def _split_single_blocks(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Split each single block's fused linear1 into q, k, v and the MLP in diffusers' names.

    diffusers' converter splits it at FLUX.1's full width (3072), which fails for any other width;
    this splits at the file's own width, and leaves the converter zero-element stand-ins whose pieces
    are then replaced."""
    import torch

    inner = checkpoint["img_in.weight"].shape[0]
    done: dict[str, Any] = {}
    for key in [k for k in checkpoint if re.fullmatch(r"single_blocks\.\d+\.linear1\.(weight|bias)", k)]:
        i, kind = key.split(".")[1], key.rsplit(".", 1)[1]
        tensor = checkpoint.pop(key)
        q, k, v, mlp = torch.split(tensor, (inner, inner, inner, tensor.shape[0] - 3 * inner), dim=0)
        prefix = f"single_transformer_blocks.{i}."
        done.update({f"{prefix}attn.to_q.{kind}": q, f"{prefix}attn.to_k.{kind}": k, f"{prefix}attn.to_v.{kind}": v,
                     f"{prefix}proj_mlp.{kind}": mlp})
        checkpoint[key] = torch.empty(3 * FULL_WIDTH + 4 * FULL_WIDTH, 0)
    return done


def load_flux_transformer(file: Path, folder: Path, dtype: Any, quantization_config: Any = None) -> Any:
    """FluxTransformer2DModel from BFL's single file (safetensors, or GGUF kept quantised);
    `quantization_config` (e.g. bitsandbytes NF4, for training) applies to a safetensors file."""
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers, \
        load_single_file_checkpoint

    shapes = tensor_shapes(file)
    gguf = file.suffix.lower() == ".gguf"
    # load_single_file_checkpoint reads .safetensors with safetensors and .gguf with gguf-py (never pickle:
    # comfy_files only offers those suffixes); diffusers' converter would take a scaled fp8 file's
    # float8 values without their scales, so those are multiplied out first
    if is_scaled_fp8(shapes):
        import torch

        checkpoint = dequantized(file, dtype or torch.float32)
    else:
        checkpoint = load_single_file_checkpoint(str(file), local_files_only=True)
    for prefix in ("model.diffusion_model.", "diffusion_model."):
        checkpoint = {k.removeprefix(prefix): v for k, v in checkpoint.items()}
    split = _split_single_blocks(checkpoint)
    converted = convert_flux_transformer_checkpoint_to_diffusers(checkpoint)
    converted.update(split)
    config = _config_dir(folder, "transformer", flux_transformer_config(shapes))
    device = None
    if quantization_config is not None and not gguf:
        from diffusers.quantizers import DiffusersAutoQuantizer

        # from_pretrained creates quantised weights where the quantizer places them (bitsandbytes: on
        # the current GPU); from_single_file does not ask it, so the same place is passed here
        placed = DiffusersAutoQuantizer.from_config(quantization_config).update_device_map(None)
        device = placed.get("") if placed else None
    return FluxTransformer2DModel.from_single_file(
        converted, config=str(config), local_files_only=True, dtype=dtype, device=device,
        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype) if gguf else quantization_config)


FLUX_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")


def flux_components(files: FluxFiles, dtype: Any, only: Collection[str] = FLUX_COMPONENTS,
                    quantization_config: Any = None) -> dict[str, Any]:
    """FluxPipeline's components (by its argument names) made of the single files in `files`; `only`
    loads just those (training caches text with the encoders alone, then trains the transformer,
    quantised by `quantization_config` when given)."""
    import diffusers.utils.logging
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    diffusers.utils.logging.disable_progress_bar()
    out: dict[str, Any] = {}
    tokenizer = tokenizer_2 = None  # read only for the text parts (training draws samples with the VAE alone)
    if {"text_encoder", "tokenizer"} & set(only):
        clip_shapes = tensor_shapes(files.clip_l)
        # ComfyUI's tokenizer config says 8192; CLIP reads as many tokens as it has positions (77)
        tokenizer = CLIPTokenizer.from_pretrained(
            str(files.clip_tokenizer), model_max_length=clip_shapes["text_model.embeddings.position_embedding.weight"][0])
    if {"text_encoder_2", "tokenizer_2"} & set(only):
        tokenizer_2 = T5TokenizerFast.from_pretrained(str(files.t5_tokenizer))
    with tempfile.TemporaryDirectory(prefix="persona-flux-config-") as tmp:
        root = Path(tmp)
        if "transformer" in only:
            out["transformer"] = load_flux_transformer(files.transformer, root, dtype, quantization_config)
        if "vae" in only:
            out["vae"] = AutoencoderKL.from_single_file(
                str(files.vae), local_files_only=True, dtype=dtype,
                config=str(_config_dir(root, "vae", vae_config(tensor_shapes(files.vae)))))
        if "text_encoder" in only:
            out["text_encoder"] = transformers_model(CLIPTextModel, files.clip_l, clip_config(clip_shapes, tokenizer),
                                                      root, "clip_l", dtype)
        if "text_encoder_2" in only:
            out["text_encoder_2"] = transformers_model(T5EncoderModel, files.t5,
                                                        t5_config(tensor_shapes(files.t5), tokenizer_2), root, "t5", dtype)
    if "scheduler" in only:
        guidance = "guidance_in.in_layer.weight" in tensor_shapes(files.transformer)
        out["scheduler"] = FlowMatchEulerDiscreteScheduler(**(FLUX_DEV_SCHEDULER if guidance else FLUX_SCHNELL_SCHEDULER))
    out.update({k: v for k, v in (("tokenizer", tokenizer), ("tokenizer_2", tokenizer_2)) if k in only})
    return out


# --- Wan 2.1 -----------------------------------------------------------------------------------
# What a Wan file cannot say, from the published diffusers Wan 2.1 repositories and diffusers'
# convert_wan_to_diffusers.py: UniPC on flow sigmas, shifted by 3 (16 for first-last-frame); heads of
# 128 channels; rope tables 1024 long (longer tables leave the first 1024 positions unchanged).
WAN_HEAD_DIM = 128
WAN_ROPE_LENGTH = 1024


def wan_scheduler_config(first_last: bool) -> dict[str, Any]:
    return {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "num_train_timesteps": 1000,
            "flow_shift": 16.0 if first_last else 3.0}


def wan_transformer_config(s: Shapes) -> dict[str, Any]:
    """WanTransformer3DModel settings of a transformer in the original Wan names."""
    dim, in_channels, *patch = s["patch_embedding.weight"]
    text, image, out_channels = wan_transformer_widths(s)
    heads = max(1, dim // WAN_HEAD_DIM)  # a model narrower than one head (a test's) is one head wide
    return {"_class_name": "WanTransformer3DModel", "patch_size": patch, "num_attention_heads": heads,
            "attention_head_dim": dim // heads, "in_channels": in_channels, "out_channels": out_channels,
            "text_dim": text, "freq_dim": s["time_embedding.0.weight"][1],
            "ffn_dim": s["blocks.0.ffn.0.weight"][0], "num_layers": count_indices(s, r"blocks\.(\d+)\."),
            "cross_attn_norm": "blocks.0.norm3.weight" in s, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
            "image_dim": image,
            "added_kv_proj_dim": s["blocks.0.cross_attn.k_img.weight"][1] if "blocks.0.cross_attn.k_img.weight" in s else None,
            "rope_max_seq_len": WAN_ROPE_LENGTH,
            "pos_embed_seq_len": s["img_emb.emb_pos"][1] if "img_emb.emb_pos" in s else None}


def wan_vae_config(s: Shapes) -> dict[str, Any]:
    """AutoencoderKLWan settings of Wan 2.1's VAE in the original names (the layout comfy_files checked;
    its latent statistics are diffusers' defaults, which are Wan 2.1's)."""
    return {"_class_name": "AutoencoderKLWan", "base_dim": s["encoder.conv1.weight"][0], "z_dim": s["conv2.weight"][0],
            "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [False, True, True],
            "dropout": 0.0}


def clip_vision_config(s: Shapes) -> dict[str, Any]:
    """CLIPVisionModel settings of a CLIP vision file (ComfyUI's clip_vision_h: OpenCLIP ViT-H/14). Its
    heads are not in the file: CLIP's ViT-L, ViT-H and ViT-bigG have 16, narrower ones 64-wide heads."""
    hidden, _, patch, _ = s["vision_model.embeddings.patch_embedding.weight"]
    side = round((s["vision_model.embeddings.position_embedding.weight"][0] - 1) ** 0.5)
    return {"model_type": "clip_vision_model", "architectures": ["CLIPVisionModel"], "hidden_size": hidden,
            "intermediate_size": s["vision_model.encoder.layers.0.mlp.fc1.weight"][0],
            "num_hidden_layers": count_indices(s, r"vision_model\.encoder\.layers\.(\d+)\."),
            "num_attention_heads": 16 if hidden >= 1024 else max(1, hidden // 64), "patch_size": patch,
            "image_size": side * patch, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
            "projection_dim": s.get("visual_projection.weight", (hidden,))[0]}


def umt5_tokenizer(file: Path, root: Path) -> Any:
    """UMT5's tokenizer from the `spiece_model` bytes ComfyUI keeps inside its umt5 files (ComfyUI
    tokenizes with exactly this SentencePiece model; transformers converts it)."""
    from safetensors import safe_open
    from transformers import T5Tokenizer

    with safe_open(str(file), framework="pt") as f:
        data = f.get_tensor("spiece_model").numpy().tobytes()
    folder = root / "umt5-tokenizer"
    folder.mkdir()
    (folder / "spiece.model").write_bytes(data)
    return T5Tokenizer.from_pretrained(str(folder), extra_ids=0)


def load_wan_transformer(file: Path, config: Path, dtype: Any) -> Any:
    """WanTransformer3DModel from ComfyUI's single file in the original Wan names (safetensors, or GGUF
    kept quantised), with the config in the folder `config` (a diffusers folder's transformer/, or one
    derived from the file). diffusers' converter renames the keys and strips `model.diffusion_model.`,
    but not first-last-frame's image position embedding (diffusers 0.42 leaves it unloaded), which is
    renamed here. .safetensors and .gguf are read without pickle."""
    from diffusers import GGUFQuantizationConfig, WanTransformer3DModel
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    gguf = file.suffix.lower() == ".gguf"
    # ComfyUI's scaled fp8 files (wan2.1_i2v_480p_14B_fp8_scaled) mean nothing without their scales
    loaded = dequantized(file, dtype) if not gguf and is_scaled_fp8(tensor_shapes(file)) else \
        load_single_file_checkpoint(str(file), local_files_only=True)
    checkpoint = {k.removeprefix("model.diffusion_model."): v for k, v in loaded.items()}
    if "img_emb.emb_pos" in checkpoint:
        checkpoint["condition_embedder.image_embedder.pos_embed"] = checkpoint.pop("img_emb.emb_pos")
    return WanTransformer3DModel.from_single_file(
        checkpoint, config=str(config), local_files_only=True, dtype=dtype,
        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype) if gguf else None)


def wan_components(files: WanFiles, dtype: Any) -> dict[str, Any]:
    """WanImageToVideoPipeline's components made of the single files in `files`. With a diffusers
    folder, each takes that folder's config (comfy_files checked that the widths fit) and the rest is
    the folder's; without, every config is derived and the tokenizer, image processor and scheduler
    are made too, so the pipeline is whole."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="persona-wan-config-") as tmp:
        root = Path(tmp)

        def config(name: str, derive: Callable[[Shapes], dict[str, Any]]) -> dict[str, Any]:
            if files.folder is not None:
                return json.loads((files.folder / name / "config.json").read_text())
            return derive(tensor_shapes(files.parts[name]))

        if "transformer" in files.parts:
            folder = files.folder / "transformer" if files.folder else \
                _config_dir(root, "transformer", config("transformer", wan_transformer_config))
            out["transformer"] = load_wan_transformer(files.parts["transformer"], folder, dtype)
        if files.folder is None:
            out["tokenizer"] = umt5_tokenizer(files.parts["text_encoder"], root)
        if "text_encoder" in files.parts:
            te = config("text_encoder", lambda s: {**t5_config(s, out["tokenizer"]), "model_type": "umt5",
                                                   "architectures": ["UMT5EncoderModel"]})
            out["text_encoder"] = transformers_model(UMT5EncoderModel, files.parts["text_encoder"], te, root,
                                                     "text_encoder", dtype)
        if "image_encoder" in files.parts:
            ie = config("image_encoder", clip_vision_config)
            out["image_encoder"] = transformers_model(CLIPVisionModel, files.parts["image_encoder"], ie, root,
                                                      "image_encoder", dtype)
        if "vae" in files.parts:
            vae = _config_dir(root, "vae", config("vae", wan_vae_config))
            out["vae"] = AutoencoderKLWan.from_single_file(str(files.parts["vae"]), config=str(vae),
                                                           local_files_only=True, dtype=dtype)
    if files.folder is None:
        size = out["image_encoder"].config.image_size
        out["image_processor"] = CLIPImageProcessor(crop_size=size, size={"shortest_edge": size})
        out["scheduler"] = UniPCMultistepScheduler(**wan_scheduler_config(files.first_last))
    return out
