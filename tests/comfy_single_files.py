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


def _resnet_leaf(rest: str) -> str:
    for new, old in (("norm1.gamma", "residual.0.gamma"), ("conv1.", "residual.2."), ("norm2.gamma", "residual.3.gamma"),
                     ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut.")):
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest  # a resampler's resample.1 / time_conv keep their names


def wan_vae_to_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKLWan state dict (Wan 2.1's layout) in the original Wan names, as
    wan_2.1_vae.safetensors holds it; each rule undoes one of diffusers' convert_wan_vae_to_diffusers."""
    out = {}
    for key, t in sd.items():
        k = key
        for new, old in (("encoder.conv_in.", "encoder.conv1."), ("decoder.conv_in.", "decoder.conv1."),
                         ("encoder.norm_out.", "encoder.head.0."), ("decoder.norm_out.", "decoder.head.0."),
                         ("encoder.conv_out.", "encoder.head.2."), ("decoder.conv_out.", "decoder.head.2."),
                         ("post_quant_conv.", "conv2."), ("quant_conv.", "conv1.")):
            if k.startswith(new):
                k = old + k[len(new):]
                break
        if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", k):
            k = f"{m.group(1)}.middle.{2 * int(m.group(2))}.{_resnet_leaf(m.group(3))}"
        k = re.sub(r"(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.middle.1.", k)
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.(.*)", k):
            k = f"encoder.downsamples.{m.group(1)}.{_resnet_leaf(m.group(2))}"
        if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            k = f"decoder.upsamples.{4 * int(m.group(1)) + int(m.group(2))}.{_resnet_leaf(m.group(3))}"
        if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", k):
            k = f"decoder.upsamples.{4 * int(m.group(1)) + 3}.{m.group(2)}"
        out[k] = t
    return out


def sentencepiece_model(vocab_size: int = 300) -> bytes:
    """A real SentencePiece unigram model (UMT5's pad 0, eos 1, unk 2, no bos) trained on the tiny corpus."""
    import io

    import sentencepiece as spm

    from persona.tiny import CORPUS

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS.splitlines()), model_writer=buf, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    return buf.getvalue()


def build_comfyui_wan_alone(root: Path, seed: int = 0) -> dict[str, Path]:
    """A ComfyUI models folder holding all of a tiny Wan 2.1 as ComfyUI's own files, with no diffusers
    folder anywhere: the I2V and FLF2V transformers (original names), UMT5 with its SentencePiece
    tokenizer inside (`spiece_model`), CLIP vision (as clip_vision_h, with its projection) and the VAE
    (as wan_2.1_vae.safetensors, in Wan 2.1's block layout at a narrow width). The shapes follow the
    real models' rules that a file does not state (128-wide heads, so one head here; CLIP's 64-wide
    heads; gelu). root/reference is the same I2V weights as a diffusers folder with the published Wan
    scheduler and CLIP image processor."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, T5Tokenizer, UMT5Config, \
        UMT5EncoderModel

    models = root / "ComfyUI" / "models"
    for sub in ("diffusion_models", "vae", "text_encoders", "clip_vision"):
        (models / sub).mkdir(parents=True)
    spiece = sentencepiece_model()
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "spiece.model").write_bytes(spiece)
    tok = T5Tokenizer.from_pretrained(str(root / "tokenizer"), extra_ids=0)

    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                               eos_token_id=1, decoder_start_token_id=0))
    text_encoder.half().float()  # the file holds fp16, as umt5_xxl_fp16.safetensors does: the reference the same values
    clip_hidden, clip_image, patch = 16, 32, 4
    image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=clip_hidden, projection_dim=clip_hidden,
                                                     num_hidden_layers=2, num_attention_heads=1, image_size=clip_image,
                                                     intermediate_size=32, patch_size=patch, hidden_act="gelu"))
    vae = AutoencoderKLWan(base_dim=8, z_dim=16)  # Wan 2.1's layout (dim_mult 1,2,4,4; 2 blocks), narrow
    tokens_per_image = (clip_image // patch) ** 2 + 1

    def transformer(first_last: bool) -> WanTransformer3DModel:
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=24, in_channels=36, out_channels=16,
            text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32, image_dim=clip_hidden, added_kv_proj_dim=24,
            pos_embed_seq_len=2 * tokens_per_image if first_last else None)

    i2v, flf2v = transformer(False), transformer(True)
    torch.nn.init.normal_(flf2v.condition_embedder.image_embedder.pos_embed)  # zeros at init: a test could not tell
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    WanImageToVideoPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                            image_processor=CLIPImageProcessor(crop_size=clip_image, size={"shortest_edge": clip_image}),
                            image_encoder=image_encoder, transformer=i2v).save_pretrained(str(root / "reference"))
    paths = {"transformer": models / "diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors",
             "flf2v": root / "wan2.1_flf2v_720p_14B_fp16.safetensors",  # placed by the tests that want it
             "text_encoder": models / "text_encoders/umt5_xxl_fp16.safetensors",
             "image_encoder": models / "clip_vision/clip_vision_h.safetensors",
             "vae": models / "vae/wan_2.1_vae.safetensors", "spiece": root / "tokenizer/spiece.model",
             "models": models, "install": root / "ComfyUI", "reference": root / "reference"}
    save_file({k: v.contiguous() for k, v in wan_to_original(i2v.state_dict()).items()}, str(paths["transformer"]))
    save_file({k: v.contiguous() for k, v in wan_to_original(flf2v.state_dict()).items()}, str(paths["flf2v"]))
    umt5 = {k: v.half().contiguous() for k, v in text_encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file({**umt5, "spiece_model": torch.frombuffer(bytearray(spiece), dtype=torch.uint8)}, str(paths["text_encoder"]))
    clip = {k if k.startswith("vision_model.") else f"vision_model.{k}": v.contiguous()
            for k, v in image_encoder.state_dict().items()}
    save_file({**clip, "visual_projection.weight": torch.randn(clip_hidden, clip_hidden)}, str(paths["image_encoder"]))
    original = wan_vae_to_original(vae.state_dict())
    assert set(convert_wan_vae_to_diffusers(original)) == set(vae.state_dict()), "the VAE fixture's names do not round-trip"
    save_file({k: v.contiguous() for k, v in original.items()}, str(paths["vae"]))
    return paths
