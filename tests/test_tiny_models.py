"""Every tiny family loads through the same code path real weights take, offline, with the right shapes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from persona import tiny
from persona.samples import SPEECH_TEXT, speech_wav
from persona.media import read_audio


def test_registry_and_kit_cover_the_same_families(tiny_models):
    from persona.models import REGISTRY

    repo_or_file = {k for k, m in REGISTRY.items() if m.kind in ("repo", "file")}
    assert repo_or_file == set(tiny.FAMILIES) == set(tiny_models)


def test_rebuild_is_reused(tiny_models, tmp_path):
    marker = tiny_models["vocos"] / ".tiny-complete"
    before = marker.stat().st_mtime_ns
    assert tiny.build("vocos", tiny_models["vocos"].parent) == tiny_models["vocos"]
    assert marker.stat().st_mtime_ns == before


def test_flux(tiny_models):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_models["flux"])
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of TestPerson in a kitchen", height=64, width=48, num_inference_steps=2,
                 guidance_scale=3.5, generator=torch.Generator().manual_seed(0), max_sequence_length=32,
                 output_type="np").images
    assert image.shape == (1, 64, 48, 3)
    assert pipe.transformer.config.guidance_embeds  # laid out like FLUX.1-dev (guidance-distilled)


@pytest.mark.parametrize("family", ["wan-i2v", "wan-flf2v"])
def test_wan(tiny_models, family):
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(tiny_models[family])
    pipe.set_progress_bar_config(disable=True)
    first = Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype("uint8"))
    extra = {"last_image": first} if family == "wan-flf2v" else {}
    video = pipe(image=first, prompt="a person talking", negative_prompt="blurry", height=48, width=64,
                 num_frames=9, num_inference_steps=2, max_sequence_length=16,
                 generator=torch.Generator().manual_seed(0), output_type="np", **extra).frames
    assert video.shape == (1, 9, 48, 64, 3)


def test_f5_tts_and_vocos(tiny_models):
    from f5_tts.infer.utils_infer import infer_process, load_model, load_vocoder
    from f5_tts.model import DiT

    folder = tiny_models["f5-tts"] / "F5TTS_v1_Base"
    arch = json.loads((folder / "model_config.json").read_text())["arch"]
    model = load_model(DiT, arch, str(folder / "model_1250000.safetensors"), vocab_file=str(folder / "vocab.txt"),
                       device="cpu")
    vocoder = load_vocoder("vocos", is_local=True, local_path=str(tiny_models["vocos"]), device="cpu")
    lengths = []
    for text in ["Short one.", "A much longer sentence that should take noticeably more time to say out loud."]:
        wav, sr, _ = infer_process(str(speech_wav()), SPEECH_TEXT, text, model, vocoder, device="cpu", nfe_step=2)
        assert sr == 24000 and wav.ndim == 1
        lengths.append(len(wav))
    assert lengths[1] > lengths[0]


def test_florence2(tiny_models):
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_models["florence2"])
    model = Florence2ForConditionalGeneration.from_pretrained(tiny_models["florence2"])
    image = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8"))
    inputs = processor(images=image, text="<DETAILED_CAPTION>", return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=4, num_beams=1, do_sample=False)
    text = processor.batch_decode(out, skip_special_tokens=False)[0]
    parsed = processor.post_process_generation(text, task="<DETAILED_CAPTION>", image_size=image.size)
    # the task's text is what was generated, special tokens stripped: the processor and model agree
    generated = processor.batch_decode(out, skip_special_tokens=True)[0].strip()
    assert generated and parsed == {"<DETAILED_CAPTION>": generated}


def test_whisper_and_alignment(tiny_models):
    import whisperx
    from faster_whisper import WhisperModel

    audio = read_audio(speech_wav(), 16000)
    asr = WhisperModel(str(tiny_models["whisper"]), device="cpu", compute_type="float32")
    segments, info = asr.transcribe(audio, language="en", beam_size=1, without_timestamps=True,
                                    condition_on_previous_text=False, max_new_tokens=20)
    segments = list(segments)
    assert segments and segments[0].text.strip()
    model, meta = whisperx.load_align_model("en", "cpu", model_name=str(tiny_models["align-en"]))
    assert meta["type"] == "huggingface" and "e" in meta["dictionary"]
    with torch.no_grad():
        emissions = model(torch.from_numpy(audio[None, :16000])).logits
    assert emissions.shape[-1] == len(meta["dictionary"])


def test_llm(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["llm"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llm"])
    inputs = tok.apply_chat_template([{"role": "user", "content": "a topic"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5


def test_film_and_upscaler(tiny_models):
    from spandrel import ImageModelDescriptor, ModelLoader

    film = torch.jit.load(str(tiny_models["film"]))
    x0, x1 = torch.zeros(1, 3, 16, 24), torch.ones(1, 3, 16, 24)
    mid = film(x0, x1, x0.new_full((1, 1), 0.5))
    assert mid.shape == x0.shape and 0.4 < float(mid.mean()) < 0.6
    sr = ModelLoader().load_from_file(str(tiny_models["upscaler"]))
    assert isinstance(sr, ImageModelDescriptor) and sr.scale == 4
    assert sr(x0).shape == (1, 3, 64, 96)
