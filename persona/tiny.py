"""Tiny random-weight versions of every model family persona loads, built offline.

Each builder writes its model in the on-disk layout the real weights have (a diffusers pipeline
folder, a transformers folder, F5-TTS's checkpoint + vocab, a CTranslate2 Whisper folder, ...),
so the code that loads real weights loads these too. Tokenizers are trained here with the
`tokenizers` library on a small built-in corpus; nothing touches the network.

The demo and the tests use them; they are useless for anything but checking shapes and plumbing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

# A few hundred words in the register the toolkit deals with: image prompts, captions, narration.
CORPUS = """
a photo of a person standing in a kitchen, wearing a black sweater, soft window light, looking at the camera
a woman in a grey coat sitting outdoors, trees in the background, natural light, close-up portrait
a man with a beard explains how neural networks learn, standing in front of a whiteboard with diagrams
a young man in a white t-shirt sitting on a sofa in a living room, talking to the camera, warm lamp light
the image shows a man with short hair and glasses in a lecture hall, half body shot, smiling
a diagram of a convolutional network drawn on a blackboard, chalk lines, classroom, wide shot
an astronaut in an orange suit holding a helmet, american flag in the background, studio portrait
some call me nature, others call me mother nature. the quick brown fox jumps over the lazy dog.
today we look at how computers see images. each picture is a grid of numbers, and a network learns
to find edges, then shapes, then whole objects. if you think that one of these networks might have
thousands of parameters, it actually has millions. let us see why that matters for training.
camera slowly pushes in, the person gestures with both hands, gentle head movement, subtle smile
cinematic lighting, shallow depth of field, 35mm film, high detail, sharp focus, realistic skin texture
city street at night with neon signs, rain on the pavement, reflections, people walking with umbrellas
a laptop on a wooden desk with code on the screen, coffee mug, morning sunlight through the window
0 1 2 3 4 5 6 7 8 9 , . ! ? ; : ' " ( ) - the of and to in is it that was for on are with as his they be at
"""

WHISPER_SPECIALS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
]


# ---------------------------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------------------------
def _bpe(vocab_size: int, special: list[str], suffix: str | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE on CORPUS; returns (vocab, merges) as transformers' BPE classes take them."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    suffix_kw = {"end_of_word_suffix": suffix} if suffix else {}
    tok = Tokenizer(models.BPE(**suffix_kw))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        **suffix_kw,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    vocab = dict(model["vocab"])
    if suffix:
        # CLIP-style BPE needs every single byte also as a word end ("a</w>").
        for ch in pre_tokenizers.ByteLevel.alphabet():
            vocab.setdefault(ch + suffix, len(vocab))
    return vocab, merges


def _unigram(vocab_size: int, special: list[str]) -> list[tuple[str, float]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    return [(piece, score) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]


def clip_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab, merges = _bpe(600, ["<|startoftext|>", "<|endoftext|>"], suffix="</w>")
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def t5_tokenizer(max_length: int = 512, extra_ids: int = 8):
    from transformers import T5Tokenizer

    pieces = _unigram(400, ["<pad>", "</s>", "<unk>"])
    pieces += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(extra_ids))]
    return T5Tokenizer(vocab=pieces, extra_ids=extra_ids, model_max_length=max_length)


def _save_tokenizer(tokenizer, folder: Path) -> None:
    tokenizer.save_pretrained(str(folder))


# ---------------------------------------------------------------------------------------------
# FLUX.1 (diffusers layout, as black-forest-labs/FLUX.1-dev)
# ---------------------------------------------------------------------------------------------
def build_flux(out: Path, seed: int = 0) -> Path:
    """A FluxPipeline folder: transformer, VAE (2 levels: 8 px per latent pair), CLIP-L and T5 stand-ins."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok = clip_tokenizer()
    tok2 = t5_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=32, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(vocab_size=len(tok2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, pad_token_id=tok2.pad_token_id, eos_token_id=tok2.eos_token_id,
                 decoder_start_token_id=tok2.pad_token_id)
    )
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                  base_image_seq_len=16, max_image_seq_len=1024),
        vae=vae, text_encoder=text_encoder, tokenizer=tok, text_encoder_2=text_encoder_2, tokenizer_2=tok2,
        transformer=transformer,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


# ---------------------------------------------------------------------------------------------
# Wan 2.1 image-to-video (diffusers layout, as Wan-AI/Wan2.1-I2V-14B-480P-Diffusers)
# ---------------------------------------------------------------------------------------------
def build_wan_i2v(out: Path, seed: int = 0, first_last_frame: bool = False) -> Path:
    """A WanImageToVideoPipeline folder; with first_last_frame, laid out as the FLF2V checkpoint
    (its transformer takes position embeddings for two CLIP image embeddings)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tok = t5_tokenizer(max_length=512)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    )
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    clip_hidden, clip_image = 16, 32
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(hidden_size=clip_hidden, projection_dim=clip_hidden, num_hidden_layers=2, num_attention_heads=2,
                         image_size=clip_image, intermediate_size=32, patch_size=4)
    )
    image_processor = CLIPImageProcessor(crop_size=clip_image, size={"shortest_edge": clip_image})
    tokens_per_image = (clip_image // 4) ** 2 + 1
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, image_dim=clip_hidden, added_kv_proj_dim=24,
        pos_embed_seq_len=2 * tokens_per_image if first_last_frame else None,
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=tok, text_encoder=text_encoder, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        image_processor=image_processor, image_encoder=image_encoder, transformer=transformer,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def build_wan_flf2v(out: Path) -> Path:
    return build_wan_i2v(out, first_last_frame=True)


# ---------------------------------------------------------------------------------------------
# F5-TTS (as SWivid/F5-TTS: F5TTS_v1_Base/model_1250000.safetensors + vocab.txt) and Vocos
# ---------------------------------------------------------------------------------------------
F5_TINY_ARCH = dict(dim=64, depth=2, heads=2, dim_head=32, ff_mult=2, text_dim=32, text_mask_padding=True,
                    qk_norm=None, conv_layers=1, pe_attn_head=None)


def build_f5_tts(out: Path, seed: int = 0) -> Path:
    """A tiny DiT checkpoint laid out like the real one, EMA keys and all, with the shipped vocab.

    The real checkpoint's architecture is F5TTS_v1_Base; this one is smaller, so its architecture
    is written beside it as `model_config.json`, which persona's loader reads when present.
    """
    from f5_tts.model import CFM, DiT
    from f5_tts.model.utils import get_tokenizer
    from safetensors.torch import save_file

    from persona.models import f5_pretrained_vocab

    torch.manual_seed(seed)
    folder = out / "F5TTS_v1_Base"
    folder.mkdir(parents=True)
    shutil.copy(f5_pretrained_vocab(), folder / "vocab.txt")
    vocab_char_map, vocab_size = get_tokenizer(str(folder / "vocab.txt"), "custom")
    model = CFM(
        transformer=DiT(**F5_TINY_ARCH, text_num_embeds=vocab_size, mel_dim=100),
        mel_spec_kwargs=dict(n_fft=1024, hop_length=256, win_length=1024, n_mel_channels=100,
                             target_sample_rate=24000, mel_spec_type="vocos"),
        vocab_char_map=vocab_char_map,
    )
    state = {f"ema_model.{k}": v.contiguous() for k, v in model.state_dict().items()
             if not k.startswith("mel_spec.")}
    save_file(state, str(folder / "model_1250000.safetensors"))
    (folder / "model_config.json").write_text(json.dumps({"backbone": "DiT", "arch": F5_TINY_ARCH}, indent=2))
    return out


def build_vocos(out: Path, seed: int = 0) -> Path:
    """A tiny Vocos in charactr/vocos-mel-24khz's layout (config.yaml + pytorch_model.bin)."""
    import yaml
    from vocos import Vocos

    torch.manual_seed(seed)
    config = {
        "feature_extractor": {"class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
                              "init_args": {"sample_rate": 24000, "n_fft": 1024, "hop_length": 256, "n_mels": 100,
                                            "padding": "center"}},
        "backbone": {"class_path": "vocos.models.VocosBackbone",
                     "init_args": {"input_channels": 100, "dim": 32, "intermediate_dim": 64, "num_layers": 1}},
        "head": {"class_path": "vocos.heads.ISTFTHead",
                 "init_args": {"dim": 32, "n_fft": 1024, "hop_length": 256, "padding": "same"}},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    model = Vocos.from_hparams(str(out / "config.yaml"))
    # pytorch_model.bin is the real repo's format; it holds tensors only and loads with weights_only=True.
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    return out


# ---------------------------------------------------------------------------------------------
# Florence-2 (transformers-native layout, as florence-community/Florence-2-base)
# ---------------------------------------------------------------------------------------------
def build_florence2(out: Path, seed: int = 0) -> Path:
    from transformers import (BartTokenizer, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor)

    torch.manual_seed(seed)
    vocab, merges = _bpe(700, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"})
    tok.add_tokens([f"<loc_{i}>" for i in range(1000)])
    # 32 px input, total vision stride 8 -> 4x4 patches + 1 pooled token
    image_processor = CLIPImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32},
                                         do_center_crop=False, image_seq_length=17)
    loc8 = "".join(r"<loc_(\d+)>" for _ in range(8))
    processor = Florence2Processor(
        image_processor=image_processor, tokenizer=tok,
        post_processor_config={
            "pure_text": {}, "bboxes": {}, "polygons": {}, "description_with_bboxes": {},
            "description_with_polygons": {}, "description_with_bboxes_or_polygons": {},
            "phrase_grounding": {"banned_grounding_tokens": []},
            "ocr": {"pattern": r"(.+?)" + loc8, "area_threshold": 0.0},
        },
    )
    config = Florence2Config(
        text_config=dict(model_type="bart", vocab_size=len(tok), max_position_embeddings=256, encoder_layers=1,
                         decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                         decoder_attention_heads=2, d_model=32, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         decoder_start_token_id=tok.eos_token_id, forced_bos_token_id=tok.bos_token_id),
        vision_config=dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                           patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[1, 2], num_groups=[1, 2],
                           window_size=4, projection_dim=32, drop_path_rate=0.0),
        image_token_id=tok.image_token_id,
    )
    Florence2ForConditionalGeneration(config).save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


# ---------------------------------------------------------------------------------------------
# Whisper for faster-whisper (CTranslate2 layout, as Systran/faster-whisper-*) and the
# wav2vec2 CTC model whisperx aligns words with (as facebook/wav2vec2-base-960h)
# ---------------------------------------------------------------------------------------------
def build_whisper(out: Path, seed: int = 0) -> Path:
    """An English-only Whisper, converted to CTranslate2 like the faster-whisper checkpoints.

    faster-whisper assumes text tokens come before <|endoftext|> and timestamp tokens right after
    <|notimestamps|>, so the specials are appended after the BPE vocabulary in Whisper's order.
    """
    import ctranslate2
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS.splitlines(), trainers.BpeTrainer(
        vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens(WHISPER_SPECIALS)
    n_text = tok.get_vocab_size()
    hf_dir = out.with_name(out.name + ".hf")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(str(hf_dir))
    eot, sot = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|startoftranscript|>")
    config = WhisperConfig(
        vocab_size=n_text + 1501, num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=448, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        decoder_start_token_id=sot, suppress_tokens=[], begin_suppress_tokens=[eot],
    )
    model = WhisperForConditionalGeneration(config)
    # Random weights emit only special and timestamp tokens. Zeroing their (tied) output rows
    # makes some text token score higher at every step, so this tiny model always "says" words
    # (until the caller's max_new_tokens) and transcription paths carry text.
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight[eot:] = 0.0
    model.save_pretrained(str(hf_dir))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(str(hf_dir))
    out.rmdir() if out.exists() and not any(out.iterdir()) else None
    ctranslate2.converters.TransformersConverter(
        str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"]
    ).convert(str(out), force=True)
    shutil.rmtree(hf_dir)
    return out


def build_align_en(out: Path, seed: int = 0) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    chars = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("ETAONIHSRDLUMWCFGYPBVK'XJQZ")
    (out / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(out / "vocab.json"), word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(str(out))
    config = Wav2Vec2Config(
        vocab_size=len(chars), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        conv_dim=(16, 16, 16, 16, 16, 16, 16), conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0, ctc_loss_reduction="mean",
    )
    Wav2Vec2ForCTC(config).save_pretrained(str(out))
    return out


# ---------------------------------------------------------------------------------------------
# a small causal LM with a chat template (Qwen2 layout, as Qwen/Qwen2.5-*-Instruct)
# ---------------------------------------------------------------------------------------------
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_llm(out: Path, seed: int = 0) -> Path:
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    torch.manual_seed(seed)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS.splitlines(), trainers.BpeTrainer(
        vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(str(out))
    config = Qwen2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None,
    )
    Qwen2ForCausalLM(config).save_pretrained(str(out))
    return out


# ---------------------------------------------------------------------------------------------
# FILM (TorchScript, as film_net_fp32.pt) and an ESRGAN upscaler spandrel recognises
# ---------------------------------------------------------------------------------------------
class _TinyFilm(torch.nn.Module):
    """FILM's TorchScript call signature: (x0, x1, dt) with frames (1, 3, H, W) in [0, 1] -> a frame.

    Like the common port it ignores dt and returns a midpoint (a blend plus a small learned residual).
    """

    def __init__(self) -> None:
        super().__init__()
        self.residual = torch.nn.Conv2d(6, 3, 3, padding=1)
        torch.nn.init.normal_(self.residual.weight, std=1e-3)
        torch.nn.init.zeros_(self.residual.bias)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        mid = 0.5 * (x0 + x1)
        return (mid + self.residual(torch.cat([x0, x1], dim=1))).clamp(0.0, 1.0)


def build_film(out: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.script(_TinyFilm()).save(str(out / "film_net_fp32.pt"))
    return out / "film_net_fp32.pt"


def build_upscaler(out: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in ESRGAN(num_filters=8, num_blocks=1, scale=4).state_dict().items()}
    save_file(state, str(out / "4x-tiny-esrgan.safetensors"))
    return out / "4x-tiny-esrgan.safetensors"


def build_speaker_embedding(out: Path, seed: int = 0) -> Path:
    """A WeSpeaker ResNet of pyannote's class (BasicBlock, TSTP pooling, 80 fbank bins) with 4 base
    channels and one block per stage, saved as pyannote/wespeaker-voxceleb-resnet34-LM saves its
    pytorch_model.bin (pyannote's convert.py: state_dict under `resnet.`, the task specifications)."""
    from pyannote.audio import __version__ as pyannote_version
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding.wespeaker.resnet import BasicBlock, ResNet

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    resnet = ResNet(BasicBlock, [1, 1, 1, 1], m_channels=4, feat_dim=80, embed_dim=32, two_emb_layer=False)
    for m in resnet.modules():  # random BatchNorm statistics, so the tiny model is not an identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    checkpoint = {
        "state_dict": {f"resnet.{k}": v for k, v in resnet.state_dict().items()},
        "pyannote.audio": {
            "versions": {"torch": torch.__version__, "pyannote.audio": pyannote_version},
            "architecture": {"module": "pyannote.audio.models.embedding.wespeaker", "class": "WeSpeakerResNet34"},
            "specifications": Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0),
        },
        "pytorch-lightning_version": "2.5.0",
    }
    torch.save(checkpoint, out / "pytorch_model.bin")
    return out


# ---------------------------------------------------------------------------------------------
# MuseTalk 1.5 (as TMElyralab/MuseTalk musetalkV15/), its VAE (as stabilityai/sd-vae-ft-mse) and
# Whisper tiny in transformers' layout (as openai/whisper-tiny)
# ---------------------------------------------------------------------------------------------
MUSETALK_TINY_DIM = 32  # the tiny Whisper's feature size = the tiny UNet's cross-attention size


def build_musetalk(out: Path, seed: int = 0) -> Path:
    """musetalkV15/musetalk.json (a UNet2DConditionModel config: 8 channels in, 4 out, attending to
    Whisper features) and unet.pth, a plain state dict as upstream publishes it."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    folder = out / "musetalkV15"
    folder.mkdir(parents=True)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        # attention only at the lower resolution: self-attention over all 32x32 latent pixels would
        # dominate the tiny model's CPU time
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2, cross_attention_dim=MUSETALK_TINY_DIM, norm_num_groups=8,
    )
    (folder / "musetalk.json").write_text(json.dumps(dict(unet.config), indent=2, default=list))
    torch.save(unet.state_dict(), folder / "unet.pth")
    return out


def build_sd_vae(out: Path, seed: int = 0) -> Path:
    """An AutoencoderKL with the real one's 8x downsampling (3 down blocks) and scaling factor."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=256, scaling_factor=0.18215,
    ).save_pretrained(str(out), safe_serialization=True)
    return out


def build_whisper_tiny(out: Path, seed: int = 0) -> Path:
    """A WhisperModel and its feature extractor (80 mel bins, 30 s windows, as whisper-tiny). MuseTalk
    only runs the encoder, so no tokenizer is written."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=MUSETALK_TINY_DIM, encoder_layers=2, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=1,
        decoder_start_token_id=2, suppress_tokens=[], begin_suppress_tokens=[],
    )
    WhisperModel(config).save_pretrained(str(out))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(str(out))
    return out


# ---------------------------------------------------------------------------------------------
# a tiny persona pack (what train-voice and train-lora would export), for tests and benchmarks
# ---------------------------------------------------------------------------------------------
def random_lora(flux: Path, out: Path, rank: int = 4, seed: int = 0) -> Path:
    """A random LoRA for the tiny Flux transformer, saved in diffusers' format."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel.from_pretrained(flux, subfolder="transformer")
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(str(out.parent), transformer_lora_layers=get_peft_model_state_dict(transformer),
                                   weight_name=out.name)
    return out


def fill_pack(ws, models: dict[str, Path]) -> None:
    """Give a workspace a [voice] (the tiny F5 checkpoint with the f5-tts example reference clip)
    and a [lora] (random), laid out as `persona train-voice` and `persona train-lora` export them."""
    from persona.samples import SPEECH_TEXT, speech_wav

    voice = ws.root / "voice"
    voice.mkdir(exist_ok=True)
    src = Path(models["f5-tts"]) / "F5TTS_v1_Base"
    shutil.copy(src / "model_1250000.safetensors", voice / "model.safetensors")
    shutil.copy(src / "vocab.txt", voice / "vocab.txt")
    shutil.copy(src / "model_config.json", voice / "model_config.json")
    shutil.copy(speech_wav(), voice / "ref.wav")
    ws.update("voice", {"checkpoint": "voice/model.safetensors", "vocab": "voice/vocab.txt",
                        "reference_audio": "voice/ref.wav", "reference_text": SPEECH_TEXT})
    random_lora(Path(models["flux"]), ws.root / "lora" / "tiny.safetensors")
    ws.update("lora", {"path": "lora/tiny.safetensors", "strength": 1.0})


# ---------------------------------------------------------------------------------------------
# all families
# ---------------------------------------------------------------------------------------------
FAMILIES: dict[str, Callable[[Path], Path]] = {
    "flux": build_flux,
    "wan-i2v": build_wan_i2v,
    "wan-flf2v": build_wan_flf2v,
    "f5-tts": build_f5_tts,
    "vocos": build_vocos,
    "florence2": build_florence2,
    "whisper": build_whisper,
    "align-en": build_align_en,
    "llm": build_llm,
    "film": build_film,
    "upscaler": build_upscaler,
    "musetalk": build_musetalk,
    "sd-vae": build_sd_vae,
    "whisper-tiny": build_whisper_tiny,
    "speaker-embedding": build_speaker_embedding,
}


def build(family: str, root: str | Path, force: bool = False) -> Path:
    """Build one tiny family under root/<family>, reusing a complete earlier build.

    Returns what `[models]` should point at: the folder, or the file for single-file models.
    """
    if family not in FAMILIES:
        raise KeyError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")
    out = Path(root) / family
    done = out / ".tiny-complete"
    if done.exists() and not force:
        return out / json.loads(done.read_text())["path"]
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    result = Path(FAMILIES[family](tmp))
    rel = result.relative_to(tmp).as_posix() if result != tmp else "."
    (tmp / ".tiny-complete").write_text(json.dumps({"path": rel, "note": "random weights: tests and demo only"}))
    tmp.rename(out)
    return out / rel


def build_all(root: str | Path, families: list[str] | None = None) -> dict[str, Path]:
    """Build the given families (all by default); returns {family: path for [models]}."""
    return {f: build(f, root) for f in (families or list(FAMILIES))}
