"""Tiny FLUX parts saved as a ComfyUI models folder holds them: the transformer in BFL's key names
(as flux1-dev.safetensors, and as a GGUF), the VAE in BFL/LDM names (as ae.safetensors), CLIP-L and
T5 in Hugging Face names (as clip_l.safetensors, t5xxl_fp16.safetensors).

The reverse of diffusers' converters (diffusers/loaders/single_file_utils.py) is written here for
the fixture only: persona never writes these layouts, it reads them with diffusers' own converters.
The text encoders' vocabularies are the real ones of ComfyUI's tokenizers (read from ../shared/comfyui),
so the encoders are tiny in width only.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from comfyui_server import SHARED_COMFYUI


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def flux_to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers FluxTransformer2DModel state dict in BFL's single-file names."""
    sd = dict(sd)
    out: dict[str, torch.Tensor] = {}
    rename = {"time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
              "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
              "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
              "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
              "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
              "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
              "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear"}
    double = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin", "ff.net.0.proj": "img_mlp.0",
              "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
              "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj"}
    norms = {"attn.norm_q.weight": "img_attn.norm.query_norm.scale", "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
             "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
             "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale"}
    for kind in ("weight", "bias"):
        for old, new in rename.items():
            if f"{old}.{kind}" in sd:
                out[f"{new}.{kind}"] = sd.pop(f"{old}.{kind}")
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(sd.pop(f"norm_out.linear.{kind}"))
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    for i in blocks:
        p, q = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for kind in ("weight", "bias"):
            for old, new in double.items():
                out[f"{q}{new}.{kind}"] = sd.pop(f"{p}{old}.{kind}")
            out[f"{q}img_attn.qkv.{kind}"] = torch.cat([sd.pop(f"{p}attn.to_{x}.{kind}") for x in "qkv"])
            out[f"{q}txt_attn.qkv.{kind}"] = torch.cat([sd.pop(f"{p}attn.add_{x}_proj.{kind}") for x in "qkv"])
        for old, new in norms.items():
            out[q + new] = sd.pop(p + old)
    singles = sorted({int(m.group(1)) for k in sd if (m := re.match(r"single_transformer_blocks\.(\d+)\.", k))})
    for i in singles:
        p, q = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{q}modulation.lin.{kind}"] = sd.pop(f"{p}norm.linear.{kind}")
            out[f"{q}linear1.{kind}"] = torch.cat([sd.pop(f"{p}attn.to_{x}.{kind}") for x in "qkv"]
                                                  + [sd.pop(f"{p}proj_mlp.{kind}")])
            out[f"{q}linear2.{kind}"] = sd.pop(f"{p}proj_out.{kind}")
        out[f"{q}norm.query_norm.scale"] = sd.pop(f"{p}attn.norm_q.weight")
        out[f"{q}norm.key_norm.scale"] = sd.pop(f"{p}attn.norm_k.weight")
    assert not sd, f"unmapped FLUX keys: {sorted(sd)}"
    return out


def vae_to_ldm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in BFL/LDM names (ae.safetensors)."""
    levels = len({m.group(1) for k in sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))})
    out = {}
    for key, t in sd.items():
        k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m.group(1)) + 1}", k)
        if "mid_block.attentions.0." in k:
            k = k.replace("mid_block.attentions.0.", "mid.attn_1.").replace("group_norm", "norm")
            k = re.sub(r"to_([qkv])\.", r"\1.", k).replace("to_out.0.", "proj_out.")
            if t.ndim == 2:  # LDM's attention is 1x1 convolutions
                t = t[:, :, None, None]
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.", k)
        k = re.sub(r"decoder\.up\.(\d+)\.resnets\.", r"decoder.up.\1.block.", k)
        k = k.replace("upsamplers.0.", "upsample.")
        out[k] = t
    return out


def write_gguf(sd: dict[str, torch.Tensor], path: Path, arch: str = "flux") -> Path:
    """BFL tensors as a GGUF (as city96's FLUX GGUFs): matrices whose rows split into 32-value blocks in
    Q8_0, the rest in F16."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=arch)
    for name, t in sd.items():
        a = t.float().numpy()
        if a.ndim == 2 and a.shape[1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, a.astype("float16"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def build_comfyui_flux(root: Path, flux: Path, seed: int = 0) -> dict[str, Path]:
    """A ComfyUI install at root/ComfyUI: models/ with tiny FLUX single files (the transformer of the
    tiny diffusers FLUX at `flux`, so LoRAs made for it apply), and comfy/ linked to ../shared/comfyui's,
    where the tokenizers are. Also writes root/reference, the same weights as a diffusers folder.
    Returns the paths by role."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    install = root / "ComfyUI"
    models = install / "models"
    for sub in ("diffusion_models", "vae", "text_encoders", "loras"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    (install / "comfy").symlink_to(SHARED_COMFYUI / "comfy", target_is_directory=True)
    tok = CLIPTokenizer.from_pretrained(str(install / "comfy/sd1_tokenizer"), model_max_length=77)
    tok2 = T5TokenizerFast.from_pretrained(str(install / "comfy/text_encoders/t5_tokenizer"))

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel.from_pretrained(str(flux / "transformer"))
    width = transformer.config.pooled_projection_dim
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=1, max_position_embeddings=77, projection_dim=width,
                                        hidden_act="quick_gelu", bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=transformer.config.joint_attention_dim, d_kv=8, d_ff=37,
                                 num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                 feed_forward_proj="gated-gelu", pad_token_id=tok2.pad_token_id,
                                 eos_token_id=tok2.eos_token_id, decoder_start_token_id=tok2.pad_token_id))
    t5.half().float()  # the file holds fp16, as t5xxl_fp16.safetensors does: the reference gets the same values
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 32, 64), layers_per_block=1,
                        latent_channels=transformer.config.in_channels // 4, norm_num_groups=32, sample_size=64,
                        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                max_shift=1.15, num_train_timesteps=1000, shift=3.0,
                                                use_dynamic_shifting=True)
    FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=t5, tokenizer_2=tok2,
                 transformer=transformer).save_pretrained(str(root / "reference"), safe_serialization=True)

    bfl = flux_to_bfl(transformer.state_dict())
    paths = {"transformer": models / "diffusion_models/flux1-dev.safetensors",
             "gguf": root / "flux1-dev-Q8_0.gguf",  # placed by the tests that want it
             "vae": models / "vae/ae.safetensors", "clip_l": models / "text_encoders/clip_l.safetensors",
             "t5": models / "text_encoders/t5xxl_fp16.safetensors", "models": models, "install": install,
             "reference": root / "reference"}
    save_file({k: v.contiguous() for k, v in bfl.items()}, str(paths["transformer"]))
    write_gguf(bfl, paths["gguf"])
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae.state_dict()).items()}, str(paths["vae"]))
    # ComfyUI's CLIP-L files carry the projection too; T5 files hold the encoder and the shared embedding
    # (transformers 5 names CLIPTextModel's tensors without the text_model. prefix the files have)
    clip_sd = {**{k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in clip.state_dict().items()},
               "text_projection.weight": torch.eye(width)}
    save_file({k: v.contiguous() for k, v in clip_sd.items()}, str(paths["clip_l"]))
    save_file({k: v.half().contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(paths["t5"]))
    return paths


# diffusers' WanTransformer3DModel names -> the original Wan names (ComfyUI's files), in the order
# they apply; each undoes one rename of diffusers' convert_wan_transformer_to_diffusers
WAN_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
    ("attn1", "self_attn"), ("attn2", "cross_attn"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."), (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), ("proj_out", "head.head"),
    ("norm2", "norm__swap"), ("norm3", "norm2"), ("norm__swap", "norm3"),  # Wan's norm3 is diffusers' norm2
]


def wan_to_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers WanTransformer3DModel state dict in the original Wan names, as ComfyUI's
    wan2.1_i2v_*.safetensors hold them (with their model.diffusion_model. prefix)."""
    out = {}
    for key, t in sd.items():
        new = key
        for old, original in WAN_ORIGINAL:
            new = new.replace(old, original)
        if new == "scale_shift_table":
            new = "head.modulation"
        new = new.replace(".scale_shift_table", ".modulation")
        out[f"model.diffusion_model.{new}"] = t
    return out


def build_comfyui_wan(root: Path, wan: Path) -> dict[str, Path]:
    """A ComfyUI models folder with the parts of the tiny diffusers Wan at `wan` as single files: the
    transformer in the original Wan names (as wan2.1_i2v_480p_14B_fp16.safetensors, and as a GGUF
    placed by the tests that want it), UMT5 in Hugging Face names with the tokenizer inside as
    `spiece_model` bytes (as ComfyUI's umt5_xxl_fp16.safetensors), CLIP vision with its vision_model.
    prefix (as clip_vision_h.safetensors)."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionModel, UMT5EncoderModel

    models = root / "ComfyUI" / "models"
    for sub in ("diffusion_models", "vae", "text_encoders", "clip_vision"):
        (models / sub).mkdir(parents=True)
    (root / "ComfyUI" / "comfy").symlink_to(SHARED_COMFYUI / "comfy", target_is_directory=True)
    original = wan_to_original(WanTransformer3DModel.from_pretrained(str(wan / "transformer")).state_dict())
    paths = {"transformer": models / "diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors",
             "text_encoder": models / "text_encoders/umt5_xxl_fp16.safetensors",
             "image_encoder": models / "clip_vision/clip_vision_h.safetensors",
             "gguf": root / "wan2.1-i2v-14b-480p-Q8_0.gguf", "models": models, "install": root / "ComfyUI"}
    save_file({k: v.contiguous() for k, v in original.items()}, str(paths["transformer"]))
    write_gguf({k.removeprefix("model.diffusion_model."): v for k, v in original.items()}, paths["gguf"], arch="wan")
    umt5 = UMT5EncoderModel.from_pretrained(str(wan / "text_encoder")).state_dict()
    save_file({**{k: v.contiguous() for k, v in umt5.items() if k != "encoder.embed_tokens.weight"},
               "spiece_model": torch.frombuffer(bytearray(b"sentencepiece model bytes"), dtype=torch.uint8)},
              str(paths["text_encoder"]))
    clip = CLIPVisionModel.from_pretrained(str(wan / "image_encoder")).state_dict()
    save_file({k if k.startswith("vision_model.") else f"vision_model.{k}": v.contiguous() for k, v in clip.items()},
              str(paths["image_encoder"]))
    return paths
