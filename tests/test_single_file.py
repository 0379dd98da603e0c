"""The diffusers engine draws keyframes from the single files in a ComfyUI models folder
([models] comfyui): tiny FLUX parts saved as ComfyUI holds them (BFL names, a GGUF, ae.safetensors,
clip_l / t5xxl files), with the tokenizers of the real ComfyUI 0.8.0 in ../shared/comfyui."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import comfyui_server
from persona.comfy_files import ComfyModels, comfy_models, flux_files, resolve_flux
from persona.errors import PersonaError
from persona.files import read_json

SCRIPT = Path(__file__).parent / "data" / "three_scenes.json"

pytestmark = pytest.mark.skipif(not (comfyui_server.SHARED_COMFYUI / "comfy" / "sd1_tokenizer").is_dir(),
                                reason=f"ComfyUI's tokenizers not found under {comfyui_server.SHARED_COMFYUI} "
                                       "(../shared/comfyui is absent on this machine)")


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, tiny_models) -> dict[str, Path]:
    from comfy_single_files import build_comfyui_flux

    return build_comfyui_flux(tmp_path_factory.mktemp("comfy-single"), tiny_models["flux"])


def _copy_tree(comfy: dict[str, Path], dest: Path) -> ComfyModels:
    """A ComfyUI install of its own (a test may add or remove files), the comfy/ link kept."""
    install = dest / "ComfyUI"
    shutil.copytree(comfy["install"], install, symlinks=True)
    return ComfyModels(install / "models", install)


def _draw(pipe, seed: int = 0) -> np.ndarray:
    import torch

    return pipe("the presenter at a whiteboard", width=32, height=32, num_inference_steps=2, guidance_scale=3.5,
                max_sequence_length=32, generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]


def test_parts_are_told_apart_by_their_tensors_not_their_names(comfy, tmp_path):
    c = _copy_tree(comfy, tmp_path)
    # misleading names: a LoRA named like a transformer, a pickle named like the VAE
    lora = c.models / "diffusion_models" / "flux1-dev-lora.safetensors"
    import torch
    from safetensors.torch import load_file, save_file

    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32)}, str(lora))
    (c.models / "vae" / "ae.ckpt").write_bytes(b"not read")
    (c.models / "diffusion_models" / "flux1-dev-.safetensors").write_bytes(b"\x10\x00")  # a partial download
    # a CLIP of another width (as CLIP-G beside CLIP-L), first by name: the transformer's pooled width rules it out
    wide = load_file(str(c.models / "text_encoders/clip_l.safetensors"))
    save_file({k: torch.zeros(*v.shape[:-1], 2 * v.shape[-1]) if v.ndim and v.shape[-1] == 32 else v
               for k, v in wide.items()}, str(c.models / "text_encoders/clip_l-wide.safetensors"))
    files = flux_files(c)
    assert files.transformer.name == "flux1-dev.safetensors" and files.vae.name == "ae.safetensors"
    assert (files.clip_l.name, files.t5.name) == ("clip_l.safetensors", "t5xxl_fp16.safetensors")
    assert files.clip_tokenizer == c.install / "comfy/sd1_tokenizer"


def test_a_missing_part_names_the_folder_and_the_file_expected(comfy, tmp_path):
    c = _copy_tree(comfy, tmp_path)
    (c.models / "vae" / "ae.safetensors").rename(c.models / "vae" / "ae.ckpt")
    with pytest.raises(PersonaError) as e:
        flux_files(c)
    line = str(e.value)
    assert "\n" not in line and "no FLUX VAE that fits the transformer in vae/" in line and "ae.ckpt" in line and "pickle" in line
    assert str(c.models / "vae") in line and "ae.safetensors" in line


def test_a_models_folder_outside_an_install_says_where_the_tokenizers_are(comfy, tmp_path, own_config):
    models = tmp_path / "just-models"
    shutil.copytree(comfy["models"], models)
    own_config(models={"comfyui": models})
    c = comfy_models()
    assert c == ComfyModels(models, tmp_path)
    with pytest.raises(PersonaError, match=r"tokenizer is not at .*comfy/sd1_tokenizer.*inside a ComfyUI install"):
        flux_files(c)


def test_the_install_folder_is_accepted_as_well_as_its_models_folder(comfy, own_config):
    own_config(models={"comfyui": comfy["install"]})
    assert comfy_models() == ComfyModels(comfy["models"], comfy["install"])


def test_single_files_draw_exactly_what_the_same_weights_draw_in_diffusers_layout(comfy):
    from diffusers import FluxPipeline

    from persona.inference.memory import load_pipeline
    from persona.inference.plan import Memory
    from persona.inference.single_file import load_flux_single_files

    single = load_flux_single_files(flux_files(ComfyModels(comfy["models"], comfy["install"])), Memory())
    reference = load_pipeline(FluxPipeline, comfy["reference"], Memory())
    np.testing.assert_array_equal(_draw(single), _draw(reference))


def test_a_gguf_transformer_stays_quantised_and_draws_nearly_the_same(comfy):
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from persona.inference.plan import Memory
    from persona.inference.single_file import load_flux_single_files

    c = ComfyModels(comfy["models"], comfy["install"])
    pipe = load_flux_single_files(flux_files(c, comfy["gguf"]), Memory())
    weight = pipe.transformer.single_transformer_blocks[0].attn.to_q.weight
    assert isinstance(weight, GGUFParameter) and weight.quant_type.name == "Q8_0"
    exact = load_flux_single_files(flux_files(c), Memory())
    a, b = _draw(pipe), _draw(exact)
    assert not np.array_equal(a, b) and np.abs(a - b).mean() < 0.01  # 8-bit weights: close, not equal


def test_render_draws_keyframes_from_the_comfyui_folder_and_keys_them_by_its_files(pack, comfy, tmp_path, own_config):
    from persona.inference.render import render

    pack.update("models", {k: v for k, v in pack.pack.models.items() if k != "flux"}, replace=True)
    c = _copy_tree(comfy, tmp_path)
    own_config(models={"comfyui": c.models})
    shutil.copy(comfy["gguf"], c.models / "diffusion_models")  # two transformers: the rule picks one, said once
    assert resolve_flux(pack.pack.models).transformer.name == "flux1-dev-Q8_0.gguf"

    def run():
        return render(pack, None, script_file=SCRIPT, profile="demo", until="keyframes", name="single")

    first = run()
    record = read_json(Path(first["render"]) / "render.json")["stages"]["keyframes"]
    assert record["flux"].startswith("flux1-dev-Q8_0.gguf, ae.safetensors") and record["rendered"]
    assert all((Path(first["render"]) / f"scenes/{n:02d}/keyframe.png").exists() for n in (1, 2, 3))
    assert not read_json(Path(run()["render"]) / "render.json")["stages"]["keyframes"]["rendered"]  # all fresh

    # [models] flux naming a file picks that transformer; another model is another cache key
    own_config(models={"flux": c.models / "diffusion_models" / "flux1-dev.safetensors"})
    again = read_json(Path(run()["render"]) / "render.json")["stages"]["keyframes"]
    assert again["flux"].startswith("flux1-dev.safetensors") and len(again["rendered"]) == 3


def test_without_flux_or_a_comfyui_folder_the_error_names_both_ways(pack):
    from persona.inference.render import render

    pack.update("models", {k: v for k, v in pack.pack.models.items() if k != "flux"}, replace=True)
    with pytest.raises(PersonaError, match=r"FLUX.1-dev.*not found.*hf download.*\[models\] comfyui"):
        render(pack, None, script_file=SCRIPT, profile="demo", until="keyframes", name="none")


def test_doctor_finds_flux_in_the_comfyui_folder_and_says_which_engine_draws_keyframes(comfy, own_config):
    from persona import doctor

    own_config(models={"comfyui": comfy["models"]})
    report = doctor.diagnose(None, [{"url": "http://127.0.0.1:9", "reachable": False, "error": "unreachable"}])
    flux, folder = (next(m for m in report["models"] if m["key"] == k) for k in ("flux", "comfyui"))
    files = "flux1-dev.safetensors, ae.safetensors, clip_l.safetensors, t5xxl_fp16.safetensors"
    assert flux["single_files"] == {"found": True, "files": files, "folder": str(comfy["models"])} and folder["found"]
    # train-lora and keyframes both take these files: FLUX is found, from the ComfyUI folder
    assert flux["found"] and flux["path"] == f"{comfy['models']}: {files}" and flux["source"] == "[models] comfyui"
    assert folder["path"] == str(comfy["models"])
    lines = report["verdict"]["can"] + report["verdict"]["cannot"]
    keyframes = next(c for c in lines if c.startswith("render: keyframes"))
    assert "flux" not in keyframes.split("unreachable")[0].replace("render: keyframes", "")  # FLUX is not missing
    assert "ComfyUI at http://127.0.0.1:9 is unreachable" in keyframes
    if not report["system"]["gpu"]["available"]:
        assert keyframes.startswith("render: keyframes: this machine needs a GPU with >= 12 GB;")
    talking = next(c for c in lines if c.startswith("render: talking"))
    assert "diffusers has no audio-driven video model" in talking


def test_doctor_shows_why_the_comfyui_folder_cannot_give_flux(comfy, tmp_path, own_config):
    from persona import doctor

    c = _copy_tree(comfy, tmp_path)
    (c.models / "text_encoders" / "t5xxl_fp16.safetensors").unlink()
    own_config(models={"comfyui": c.models})
    flux = next(m for m in doctor.diagnose()["models"] if m["key"] == "flux")
    assert not flux["found"] and "no T5-XXL text encoder that fits the transformer in text_encoders/ or clip/" in flux["single_files"]["problem"]


def test_where_flux_comes_from(comfy, tmp_path, own_config, monkeypatch, tiny_models, capsys):
    """A flux folder the user set > the ComfyUI folder > the Hugging Face cache, which also stands in
    (said once) when the ComfyUI folder lacks a part."""
    import huggingface_hub.constants as hf

    from test_models import _fake_hf_snapshot

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = _fake_hf_snapshot(tmp_path / "hub", "black-forest-labs/FLUX.1-dev",
                               ["model_index.json", "transformer/config.json", "vae/config.json"])
    assert resolve_flux() == cached
    single = comfy["models"] / "diffusion_models/flux1-dev.safetensors"
    with pytest.raises(PersonaError, match=r"names a single file.*\[models\] comfyui ="):
        resolve_flux({"flux": str(single)})  # a transformer alone: where would its VAE come from?
    c = _copy_tree(comfy, tmp_path)
    own_config(models={"comfyui": c.models})
    assert resolve_flux().transformer == c.models / "diffusion_models/flux1-dev.safetensors"
    assert resolve_flux({"flux": str(tiny_models["flux"])}) == tiny_models["flux"]  # a pack's diffusers folder
    (c.models / "vae/ae.safetensors").unlink()
    capsys.readouterr()
    assert resolve_flux() == cached
    assert "no FLUX VAE" in capsys.readouterr().err.replace("\n", " ")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(PersonaError, match="no FLUX VAE"):
        resolve_flux()


def test_a_scaled_fp8_t5_is_multiplied_out(comfy, tmp_path):
    """ComfyUI's t5xxl_fp8_e4m3fn_scaled layout: float8 weights, each with its scale_weight."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import T5EncoderModel, T5TokenizerFast

    from persona.comfy_files import tensor_shapes
    from persona.single_file import transformers_model, t5_config

    c = _copy_tree(comfy, tmp_path)
    fp16 = c.models / "text_encoders/t5xxl_fp16.safetensors"
    scaled = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for k, w in load_file(str(fp16)).items():
        if w.ndim == 2 and k != "shared.weight":
            scale = w.float().abs().max() / 448
            scaled[k], scaled[k.removesuffix(".weight") + ".scale_weight"] = (w.float() / scale).to(torch.float8_e4m3fn), scale
        else:
            scaled[k] = w
    fp16.unlink()
    save_file(scaled, str(c.models / "text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors"))
    files = flux_files(c)
    assert files.t5.name == "t5xxl_fp8_e4m3fn_scaled.safetensors"

    tokenizer = T5TokenizerFast.from_pretrained(str(files.t5_tokenizer))
    ids = tokenizer("the presenter at a whiteboard", return_tensors="pt").input_ids

    def encode(file: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        model = transformers_model(T5EncoderModel, file, t5_config(tensor_shapes(file), tokenizer), tmp_path, name,
                                    torch.float32)
        with torch.no_grad():
            return model(ids).last_hidden_state, model.encoder.block[1].layer[0].SelfAttention.q.weight

    (exact, w), (approx, w8) = encode(comfy["t5"], "fp16"), encode(files.t5, "scaled")
    # float8 keeps 3 mantissa bits: each weight within 1/16 of itself, the encoding in the same direction
    assert not torch.equal(w, w8) and ((w8 - w).abs() <= w.abs() / 16 + 1e-6).all()
    assert torch.nn.functional.cosine_similarity(exact.flatten(), approx.flatten(), dim=0) > 0.99


# --- Wan 2.1 image-to-video: the transformer from ComfyUI's diffusion_models/ ---------------------
@pytest.fixture(scope="module")
def comfy_wan(tmp_path_factory, tiny_models) -> dict[str, Path]:
    from comfy_single_files import build_comfyui_wan

    return build_comfyui_wan(tmp_path_factory.mktemp("comfy-wan"), tiny_models["wan-i2v"])


def _animate(pipe) -> np.ndarray:
    import torch
    from PIL import Image

    image = Image.fromarray(np.full((32, 32, 3), (200, 120, 40), np.uint8))
    return pipe(image=image, prompt="the presenter waves", height=32, width=32, num_frames=5, num_inference_steps=2,
                guidance_scale=1.0, max_sequence_length=16, output_type="np",
                generator=torch.Generator("cpu").manual_seed(0)).frames[0]


def test_a_wan_single_file_animates_exactly_what_the_diffusers_folder_does(comfy_wan, tiny_models):
    from diffusers import WanImageToVideoPipeline
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from persona.inference.memory import load_pipeline
    from persona.inference.plan import Memory
    from persona.comfy_files import WanFiles
    from persona.inference.single_file import load_wan_single_files

    folder = tiny_models["wan-i2v"]
    parts = {k: comfy_wan[k] for k in ("transformer", "text_encoder", "image_encoder")}
    single = load_wan_single_files(WanFiles(parts, folder), Memory())
    reference = _animate(load_pipeline(WanImageToVideoPipeline, folder, Memory()))
    np.testing.assert_array_equal(_animate(single), reference)
    gguf = load_wan_single_files(WanFiles({"transformer": comfy_wan["gguf"]}, folder), Memory())
    weight = gguf.transformer.blocks[0].ffn.net[2].weight  # [24, 32]: 32-value rows are Q8_0 in the file
    assert isinstance(weight, GGUFParameter) and weight.quant_type.name == "Q8_0"
    near = _animate(gguf)
    assert not np.array_equal(near, reference) and np.abs(near - reference).mean() < 0.01  # 8-bit: close, not equal


def test_the_video_stage_takes_the_comfyui_transformer_and_keys_scenes_by_it(pack, comfy_wan, tiny_models, tmp_path,
                                                                             own_config, monkeypatch, capsys):
    """Wan from the Hugging Face cache plus [models] comfyui: the transformer is ComfyUI's file (another
    file is another cache key); a [models] wan-i2v folder set by hand keeps its own transformer."""
    import huggingface_hub.constants as hf
    import torch

    from persona.files import mark_fresh
    from persona.inference.plan import RenderDir, Scene, SceneDir
    from persona.inference.render import load_settings
    from persona.inference.stage import RenderJob
    from persona.inference.video import VideoStage

    snap = tmp_path / "hub/models--Wan-AI--Wan2.1-I2V-14B-480P-Diffusers/snapshots/0123456789abcdef"
    shutil.copytree(tiny_models["wan-i2v"], snap, symlinks=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs/main").write_text("0123456789abcdef")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    pack.update("models", {k: v for k, v in pack.pack.models.items() if not k.startswith("wan")}, replace=True)
    settings = load_settings("demo", {"video": {"anchor": "restart"}})
    scene = SceneDir(0, Scene(narration="Hi.", image_prompt="the presenter", motion_prompt="waves", on_camera=True),
                     tmp_path / "scenes/01")
    scene.folder.mkdir(parents=True)
    mark_fresh(scene.path("keyframe.png"), "k")
    mark_fresh(scene.path("narration.wav"), "n", frames=17)
    job = RenderJob(pack, settings, RenderDir(tmp_path, [scene]))

    cached = VideoStage(job, [scene])
    assert cached.files is None and cached.path == snap  # no ComfyUI folder: the cache's own Wan
    c = _copy_tree(comfy_wan, tmp_path)
    own_config(models={"comfyui": c.models})
    stage = VideoStage(job, [scene])
    transformer = c.models / "diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors"
    assert stage.files.parts == {"transformer": transformer, "text_encoder": c.models / "text_encoders/umt5_xxl_fp16.safetensors",
                                 "image_encoder": c.models / "clip_vision/clip_vision_h.safetensors"}
    assert stage.key(job, scene) != cached.key(job, scene)
    assert stage.summary(job)["single_files"]["transformer"] == str(transformer)
    pipe = stage.load(job)
    from safetensors.torch import load_file

    original = load_file(str(transformer))
    assert torch.equal(pipe.transformer.blocks[1].attn2.add_k_proj.weight,
                       original["model.diffusion_model.blocks.1.cross_attn.k_img.weight"])
    umt5 = load_file(str(stage.files.parts["text_encoder"]))
    assert torch.equal(pipe.text_encoder.encoder.embed_tokens.weight, umt5["shared.weight"])
    clip = load_file(str(stage.files.parts["image_encoder"]))
    assert torch.equal(pipe.image_encoder.state_dict()["encoder.layers.1.mlp.fc2.weight"],
                       clip["vision_model.encoder.layers.1.mlp.fc2.weight"])

    shutil.copy(comfy_wan["gguf"], c.models / "diffusion_models")
    transformer.unlink()
    other = VideoStage(job, [scene])
    assert other.files.parts["transformer"].suffix == ".gguf" and other.key(job, scene) != stage.key(job, scene)

    (c.models / "diffusion_models" / other.files.parts["transformer"].name).unlink()  # said once, the cache's own
    capsys.readouterr()
    assert "transformer" not in VideoStage(job, [scene]).files.parts
    assert "no Wan 2.1 image-to-video transformer" in capsys.readouterr().err.replace("\n", " ")

    shutil.copy(comfy_wan["gguf"], c.models / "diffusion_models")
    pack.update("models", {**pack.pack.models, "wan-i2v": str(tiny_models["wan-i2v"])}, replace=True)
    assert VideoStage(job, [scene]).files is None  # a folder chosen by hand is used whole


# --- Wan 2.1 from ComfyUI's files alone: no diffusers folder, no Hugging Face cache ----------------
@pytest.fixture(scope="module")
def comfy_wan_alone(tmp_path_factory) -> dict[str, Path]:
    from comfy_single_files import build_comfyui_wan_alone

    return build_comfyui_wan_alone(tmp_path_factory.mktemp("comfy-wan-alone"))


def test_wan_from_comfyui_files_alone_animates_exactly_what_its_diffusers_folder_does(comfy_wan_alone, tmp_path):
    """Every config derived from the files' shapes, the tokenizer from the UMT5 file's own SentencePiece
    model, the published scheduler and image processor: the same frames as the same weights in
    diffusers layout (whose rope table is shorter: the derived 1024-long one changes nothing)."""
    import sentencepiece as spm
    from diffusers import WanImageToVideoPipeline

    from persona.comfy_files import wan_files_alone
    from persona.inference.memory import load_pipeline
    from persona.inference.plan import Memory
    from persona.inference.single_file import load_wan_single_files

    c = _copy_tree(comfy_wan_alone, tmp_path)
    files = wan_files_alone("wan-i2v", c)
    assert files.folder is None and {k: p.name for k, p in files.parts.items()} == {
        "transformer": "wan2.1_i2v_480p_14B_fp16.safetensors", "text_encoder": "umt5_xxl_fp16.safetensors",
        "image_encoder": "clip_vision_h.safetensors", "vae": "wan_2.1_vae.safetensors"}
    pipe = load_wan_single_files(files, Memory())
    reference = load_pipeline(WanImageToVideoPipeline, comfy_wan_alone["reference"], Memory())
    np.testing.assert_array_equal(_animate(pipe), _animate(reference))
    assert pipe.scheduler.config.flow_shift == 3.0 and pipe.transformer.config.rope_max_seq_len == 1024
    text = "The presenter waves, then points at the whiteboard: 42 ideas."
    comfyui_ids = spm.SentencePieceProcessor(model_file=str(comfy_wan_alone["spiece"]), add_eos=True).encode(text)
    assert pipe.tokenizer(text).input_ids == comfyui_ids  # ComfyUI tokenizes with the same model, the same way

    shutil.copy(comfy_wan_alone["flf2v"], c.models / "diffusion_models")
    flf = wan_files_alone("wan-flf2v", c)
    assert flf.first_last and flf.parts["transformer"].name.startswith("wan2.1_flf2v")
    assert flf.parts["vae"] == files.parts["vae"]
    flf_pipe = load_wan_single_files(flf, Memory())
    assert flf_pipe.scheduler.config.flow_shift == 16.0 and flf_pipe.transformer.config.pos_embed_seq_len == 2 * 65
    import torch
    from safetensors.torch import load_file

    # diffusers' converter leaves FLF2V's image position embedding out; it is loaded all the same
    emb_pos = load_file(str(comfy_wan_alone["flf2v"]))["model.diffusion_model.img_emb.emb_pos"]
    assert torch.equal(flf_pipe.transformer.condition_embedder.image_embedder.pos_embed, emb_pos)


def test_wan_files_alone_name_the_missing_or_unfit_part(comfy_wan_alone, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from persona.comfy_files import wan_files_alone

    c = _copy_tree(comfy_wan_alone, tmp_path)
    umt5 = c.models / "text_encoders/umt5_xxl_fp16.safetensors"
    save_file({k: v for k, v in load_file(str(umt5)).items() if k != "spiece_model"}, str(umt5))
    with pytest.raises(PersonaError) as e:
        wan_files_alone("wan-i2v", c)
    assert "no UMT5-XXL text encoder that fits the transformer and holds its tokenizer (spiece_model)" in str(e.value)

    c = _copy_tree(comfy_wan_alone, tmp_path / "b")
    vae = c.models / "vae/wan_2.1_vae.safetensors"
    save_file({k: v for k, v in load_file(str(vae)).items() if not k.startswith("decoder.upsamples.14.")}, str(vae))
    (c.models / "vae/wan_2.2_vae.safetensors").write_bytes(b"\x10\x00")  # a partial download
    with pytest.raises(PersonaError) as e:
        wan_files_alone("wan-i2v", c)
    line = str(e.value)
    assert "\n" not in line and "no Wan 2.1 VAE that fits the transformer (Wan 2.1's layout) in vae/" in line
    assert "wan_2.2_vae.safetensors (unreadable)" in line and "put wan_2.1_vae.safetensors in" in line
    assert torch  # imported for the state dicts' tensors


def test_the_video_stage_runs_wan_from_the_comfyui_folder_alone(pack, comfy_wan_alone, tmp_path, own_config,
                                                                monkeypatch, capsys):
    """No Wan folder anywhere: the stage takes all of Wan from [models] comfyui, keys scenes by every
    file, falls back from first-last to restart without an FLF2V file, and animates a chunk."""
    import huggingface_hub.constants as hf

    from persona.files import mark_fresh
    from persona.inference.plan import RenderDir, Scene, SceneDir
    from persona.inference.render import load_settings
    from persona.inference.stage import RenderJob
    from persona.inference.video import VideoStage

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    pack.update("models", {k: v for k, v in pack.pack.models.items() if not k.startswith("wan")}, replace=True)
    settings = load_settings("demo", {"video": {"anchor": "first-last", "steps": 2, "chunk_frames": 5}})
    scene = SceneDir(0, Scene(narration="Hi.", image_prompt="the presenter", motion_prompt="waves", on_camera=True),
                     tmp_path / "scenes/01")
    scene.folder.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), (200, 120, 40), np.uint8)).save(scene.path("keyframe.png"))
    mark_fresh(scene.path("keyframe.png"), "k")
    mark_fresh(scene.path("narration.wav"), "n", frames=5)
    job = RenderJob(pack, settings, RenderDir(tmp_path, [scene]))
    with pytest.raises(PersonaError, match="wan-flf2v"):
        VideoStage(job, [scene])  # nothing anywhere: the fetch command, as before

    c = _copy_tree(comfy_wan_alone, tmp_path)
    own_config(models={"comfyui": c.models})
    capsys.readouterr()
    stage = VideoStage(job, [scene])
    assert stage.anchor == "restart" and "first-last anchoring needs the Wan FLF2V" in capsys.readouterr().err
    assert stage.path is None and stage.files.folder is None and set(stage.files.parts) == {
        "transformer", "text_encoder", "image_encoder", "vae"}
    assert stage.summary(job)["single_files"]["vae"] == str(c.models / "vae/wan_2.1_vae.safetensors")
    key = stage.key(job, scene)

    shutil.copy(comfy_wan_alone["flf2v"], c.models / "diffusion_models")
    first_last = VideoStage(job, [scene])
    assert first_last.anchor == "first-last" and first_last.model == "wan-flf2v" and first_last.key(job, scene) != key
    from persona.inference.memory import Lazy

    model = Lazy(lambda: first_last.load(job), first_last.model_id, {})
    frames = first_last.make(job, scene, model, lambda n=1: None)["frames"]
    from persona.media import read_frames

    clip, _ = read_frames(scene.path("video.mp4"))
    assert frames == 5 and clip.shape[0] == 5


def test_doctor_lists_the_wan_files_of_the_comfyui_folder_or_what_they_lack(comfy_wan_alone, tmp_path, own_config,
                                                                            monkeypatch):
    import huggingface_hub.constants as hf

    from persona import doctor

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    c = _copy_tree(comfy_wan_alone, tmp_path)
    own_config(models={"comfyui": c.models})
    report = doctor.diagnose()
    i2v, folder = (next(m for m in report["models"] if m["key"] == k) for k in ("wan-i2v", "comfyui"))
    files = "wan2.1_i2v_480p_14B_fp16.safetensors, umt5_xxl_fp16.safetensors, clip_vision_h.safetensors, " \
            "wan_2.1_vae.safetensors"
    assert i2v["single_files"] == {"found": True, "files": files, "folder": str(c.models)}
    assert i2v["found"] and i2v["path"] == f"{c.models}: {files}" and i2v["source"] == "[models] comfyui"
    assert folder["path"] == str(c.models)  # FLUX is not there: nothing more to say beside it
    flf = next(m for m in report["models"] if m["key"] == "wan-flf2v")
    assert not flf["found"] and "no Wan 2.1 first-last-frame transformer in diffusion_models/ or unet/" in flf["problems"][0]
    video = next(c for c in report["verdict"]["can"] + report["verdict"]["cannot"] if c.startswith("render: video"))
    assert "wan-i2v" not in video  # not missing: the ComfyUI folder has it

    (c.models / "vae/wan_2.1_vae.safetensors").unlink()
    i2v = next(m for m in doctor.diagnose()["models"] if m["key"] == "wan-i2v")
    assert not i2v["found"] and not i2v["single_files"]["found"]
    assert any(p.startswith("[models] comfyui:") and "no Wan 2.1 VAE that fits the transformer" in p for p in i2v["problems"])


def test_a_scaled_fp8_wan_transformer_is_multiplied_out(comfy_wan_alone, tmp_path):
    """Comfy-Org's wan2.1_i2v_480p_14B_fp8_scaled layout: float8 weights, each with its scale_weight;
    read as raw float8 they would be up to 448 times too large."""
    import torch
    from safetensors.torch import load_file, save_file

    from persona.comfy_files import wan_files_alone
    from persona.inference.plan import Memory
    from persona.inference.single_file import load_wan_single_files

    c = _copy_tree(comfy_wan_alone, tmp_path)
    fp16 = c.models / "diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors"
    original = load_file(str(fp16))
    scaled = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for k, w in original.items():
        if w.ndim == 2 and k.endswith(".weight"):
            scale = w.float().abs().max() / 448
            scaled[k], scaled[k.removesuffix(".weight") + ".scale_weight"] = (w.float() / scale).to(torch.float8_e4m3fn), scale
        else:
            scaled[k] = w
    fp16.unlink()
    save_file(scaled, str(c.models / "diffusion_models/wan2.1_i2v_480p_14B_fp8_scaled.safetensors"))
    files = wan_files_alone("wan-i2v", c)
    assert files.parts["transformer"].name == "wan2.1_i2v_480p_14B_fp8_scaled.safetensors"
    pipe = load_wan_single_files(files, Memory())
    w = original["model.diffusion_model.blocks.0.ffn.0.weight"]
    loaded = pipe.transformer.blocks[0].ffn.net[0].proj.weight.detach()
    # float8 keeps 3 mantissa bits: each weight within 1/16 of itself, far from the raw float8 values
    assert ((loaded - w).abs() <= w.abs() / 16 + 1e-6).all() and loaded.abs().max() < 1
