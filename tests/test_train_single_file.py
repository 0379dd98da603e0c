"""train-lora from FLUX's single files in a ComfyUI models folder ([models] comfyui): the tiny FLUX
saved as ComfyUI holds it (tests/comfy_single_files.py), beside the same weights as a diffusers folder
(`reference`), trained the same way (see test_train_lora.py); CPU, fp32, plain AdamW."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from persona.errors import PersonaError
from persona.files import read_json, record_path
from persona.train.flux_base import FluxBase, flux_base
from persona.train.lora import train_lora
from test_single_file import _copy_tree, comfy, pytestmark  # noqa: F401  (the fixture, and its skip)
from test_train_lora import lora_ws, one_thread, tiny  # noqa: F401  (fixtures)

SETTINGS = {"steps": 3, "sample_every": 0, "checkpoint_every": 0}  # the last step's grid is still drawn


def _no_flux(ws) -> None:
    """The workspace as a ComfyUI user's: no diffusers FLUX anywhere ([models] flux unset)."""
    ws.update("models", {k: v for k, v in ws.pack.models.items() if k != "flux"}, replace=True)


def _trained(ws, **overrides) -> tuple[dict, dict[str, torch.Tensor], list[float], dict[str, str]]:
    summary = train_lora(ws, tiny(**SETTINGS, **overrides), force=True, resume=False)
    with safe_open(summary["lora"], "pt") as f:
        meta = f.metadata()
    return summary, load_file(summary["lora"]), read_json(record_path(summary["lora"]))["losses"], meta


@pytest.mark.parametrize("precision", ["fp32", "fp8"])
def test_training_on_comfyui_files_equals_training_on_the_same_weights_as_a_diffusers_folder(lora_ws, comfy,
                                                                                              own_config, precision):
    """The same seed, data and weights give the same losses, LoRA tensors and sample grid, to the bit:
    the single files are converted losslessly (the T5 file is fp16, and so are the reference's values),
    the LoRA is seeded right before it is added, and every cache is keyed by its source's files. With
    the 24 GB recipe's fp8 storage (layerwise casting) too: the memory settings apply alike."""
    lora_ws.update("models", {**lora_ws.pack.models, "flux": str(comfy["reference"])}, replace=True)
    folder, folder_lora, folder_losses, folder_meta = _trained(lora_ws, base_precision=precision)
    assert folder_meta["persona.base_model"] == str(comfy["reference"])

    _no_flux(lora_ws)
    own_config(models={"comfyui": comfy["models"]})
    single, single_lora, single_losses, single_meta = _trained(lora_ws, base_precision=precision)
    assert single_meta["persona.base_model"] == "flux1-dev.safetensors" and single["base"] == "flux1-dev.safetensors"
    assert single["run_dir"] != folder["run_dir"]  # another base, another run (and caches keyed by the files)
    assert len(single_losses) == 3 and single_losses == folder_losses
    assert single_lora.keys() == folder_lora.keys()  # the key names the render, diffusers and ComfyUI load
    assert all(k.startswith("transformer.") for k in single_lora)
    for k in folder_lora:
        assert torch.equal(single_lora[k], folder_lora[k]), k
    assert max(v.abs().max().item() for k, v in single_lora.items() if "lora_B" in k) > 0  # it did train
    grid = lambda s: Path(s["samples"][-1]).read_bytes()  # noqa: E731
    assert grid(single) == grid(folder)  # the sampler's VAE and scheduler came from the single files too

    from persona.workspace import Workspace

    assert Workspace(lora_ws.root).pack.lora.base == "flux1-dev.safetensors"
    again = train_lora(lora_ws, tiny(**SETTINGS, base_precision=precision))
    assert again["skipped"]  # the same files: up to date


def test_a_gguf_transformer_is_refused_before_any_work(lora_ws, comfy, tmp_path, own_config):
    c = _copy_tree(comfy, tmp_path)
    (c.models / "diffusion_models/flux1-dev.safetensors").unlink()
    shutil.copy(comfy["gguf"], c.models / "diffusion_models")
    _no_flux(lora_ws)
    own_config(models={"comfyui": c.models})
    with pytest.raises(PersonaError) as e:
        train_lora(lora_ws, tiny(**SETTINGS))
    line = str(e.value)
    assert "\n" not in line and "flux1-dev-Q8_0.gguf" in line and "GGUF" in line
    assert f"put the safetensors flux1-dev (flux1-dev.safetensors) in {c.models / 'diffusion_models'}" in line
    assert "set [models] flux" in line
    assert not (lora_ws.root / "cache").exists() and not (lora_ws.root / "runs").exists()

    # beside a safetensors transformer the GGUF (which the render's rule picks first) gives way, said once
    shutil.copy(comfy["transformer"], c.models / "diffusion_models")
    base = flux_base(lora_ws.pack.models)
    assert base.files.transformer == c.models / "diffusion_models/flux1-dev.safetensors"
    # unless the user named the GGUF
    own_config(models={"flux": c.models / "diffusion_models/flux1-dev-Q8_0.gguf"})
    with pytest.raises(PersonaError, match=r"flux1-dev-Q8_0.gguf.*GGUF"):
        flux_base(lora_ws.pack.models)


def test_a_folder_chosen_by_hand_wins_and_another_transformer_file_is_another_run(comfy, tmp_path, own_config,
                                                                                    tiny_models):
    c = _copy_tree(comfy, tmp_path)
    own_config(models={"comfyui": c.models})
    assert flux_base({"flux": str(tiny_models["flux"])}) == FluxBase(tiny_models["flux"], str(tiny_models["flux"]))
    single = flux_base(None)
    assert single.files is not None and single.name == "flux1-dev.safetensors"
    assert single.identity() == flux_base(None).identity()
    # a copy of the same install elsewhere is the same model; another transformer file is another
    elsewhere = _copy_tree(comfy, tmp_path / "elsewhere")
    own_config(models={"comfyui": elsewhere.models})
    assert flux_base(None).identity() == single.identity()
    sd = load_file(str(c.models / "diffusion_models/flux1-dev.safetensors"))
    sd["img_in.bias"] = sd["img_in.bias"] + 1
    other = c.models / "diffusion_models/flux1-dev-other.safetensors"
    save_file(sd, str(other))
    own_config(models={"comfyui": c.models, "flux": other})
    assert flux_base(None).files.transformer == other and flux_base(None).identity() != single.identity()
    # and the caches: the latents and text embeddings are keyed by the files they come from
    assert single.component_ids("vae") != FluxBase(tiny_models["flux"], "").component_ids("vae")


# ---- --backend kohya: sd-scripts is not run here (see test_kohya.py); what it is given is ------------
def test_kohya_is_given_the_comfyui_files(lora_ws, comfy, tmp_path, own_config):
    from persona.train import kohya
    from persona.train import lora_data as data
    from persona.train.lora import sample_rows

    c = _copy_tree(comfy, tmp_path)
    repo = tmp_path / "sd-scripts"
    repo.mkdir()
    (repo / "flux_train_network.py").write_text("")
    _no_flux(lora_ws)
    own_config(models={"comfyui": c.models, "sd-scripts": repo})
    s = tiny(bucket_step=64, resolutions=[64, 128])
    examples, _ = data.read_examples(lora_ws.path("datasets/images"), lora_ws.token)
    files = flux_base(lora_ws.pack.models).files
    job = kohya.prepare(lora_ws, s, files, examples, lora_ws.root / "runs/lora/test", None, sample_rows(s, lora_ws.token))
    flat = {k: v for section in tomllib.loads(job["args_toml"].read_text()).values() for k, v in section.items()}
    assert flat["pretrained_model_name_or_path"] == str(c.models / "diffusion_models/flux1-dev.safetensors")
    assert flat["ae"] == str(c.models / "vae/ae.safetensors")  # BFL's layout, which sd-scripts' load_ae reads
    assert flat["clip_l"] == str(c.models / "text_encoders/clip_l.safetensors")  # text_model.* as CLIPTextModel
    assert flat["t5xxl"] == str(c.models / "text_encoders/t5xxl_fp16.safetensors")

    # a scaled fp8 T5: sd-scripts would read the fp8 values without their scales, so it gets them multiplied out
    t5 = load_file(str(files.t5))
    scaled = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for k, w in t5.items():
        if w.ndim == 2 and k != "shared.weight":
            scale = w.float().abs().max() / 448
            scaled[k], scaled[k.removesuffix(".weight") + ".scale_weight"] = (w.float() / scale).to(torch.float8_e4m3fn), scale
        else:
            scaled[k] = w
    files.t5.unlink()
    save_file(scaled, str(c.models / "text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors"))
    files = flux_base(lora_ws.pack.models).files
    cache = tmp_path / "cache"
    given = Path(kohya.model_files(files, s, cache)["t5xxl"])
    assert given.parent == cache and kohya.model_files(files, s, cache)["t5xxl"] == str(given)  # made once
    unscaled = load_file(str(given))
    assert unscaled.keys() == t5.keys() and all(v.dtype == torch.float16 for v in unscaled.values())
    w, w8 = t5["encoder.block.1.layer.0.SelfAttention.q.weight"], unscaled["encoder.block.1.layer.0.SelfAttention.q.weight"]
    assert ((w8.float() - w.float()).abs() <= w.float().abs() / 16 + 1e-3).all()  # fp8's 3 mantissa bits

    # a VAE in diffusers' names would be skipped by sd-scripts' strict=False load: refused
    (c.models / "vae/ae.safetensors").unlink()
    shutil.copy(comfy["reference"] / "vae/diffusion_pytorch_model.safetensors", c.models / "vae/flux-vae.safetensors")
    with pytest.raises(PersonaError, match=r"BFL's ae.safetensors layout.*--backend native"):
        kohya.model_files(flux_base(lora_ws.pack.models).files, s, cache)


def _scaled_fp8(sd: dict[str, torch.Tensor], matrices: str) -> dict[str, torch.Tensor]:
    """ComfyUI's scaled fp8 layout: each matrix whose name contains `matrices` as float8 with its scale."""
    out = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for k, w in sd.items():
        if w.ndim == 2 and matrices in k:
            scale = w.float().abs().max() / 448
            out[k], out[k.removesuffix(".weight") + ".scale_weight"] = (w.float() / scale).to(torch.float8_e4m3fn), scale
        else:
            out[k] = w
    return out


def test_a_scaled_fp8_transformer_is_multiplied_out_not_read_as_its_raw_fp8_values(comfy, tmp_path, own_config):
    """e.g. Comfy-Org's flux1-krea-dev_fp8_scaled: diffusers' converter alone would keep the float8
    values (up to 448) and drop the scales, with no error."""
    c = _copy_tree(comfy, tmp_path)
    original = c.models / "diffusion_models/flux1-dev.safetensors"
    sd = load_file(str(original))
    save_file(_scaled_fp8({f"model.diffusion_model.{k}": v for k, v in sd.items()}, "blocks"),
              str(c.models / "diffusion_models/flux1-dev-fp8-scaled.safetensors"))
    original.unlink()
    own_config(models={"comfyui": c.models})
    base = flux_base(None)
    assert base.files.transformer.name == "flux1-dev-fp8-scaled.safetensors"
    w8 = base.load("transformer", torch.float32).single_transformer_blocks[0].proj_out.weight
    w = sd["single_blocks.0.linear2.weight"]
    assert not torch.equal(w8, w) and ((w8 - w).abs() <= w.abs() / 16 + 1e-6).all()


def test_a_kohya_run_on_comfyui_files_lands_in_the_pack(lora_ws, comfy, tmp_path, own_config):
    from test_kohya import KOHYA_BUCKETS, STAND_IN

    c = _copy_tree(comfy, tmp_path)
    repo = tmp_path / "sd-scripts"
    repo.mkdir()
    (repo / "flux_train_network.py").write_text(STAND_IN)
    _no_flux(lora_ws)
    own_config(models={"comfyui": c.models, "sd-scripts": repo})
    summary = train_lora(lora_ws, tiny(steps=3, **KOHYA_BUCKETS), backend="kohya")
    args = {k: v for section in tomllib.loads(Path(summary["args_toml"]).read_text()).values() for k, v in section.items()}
    assert args["pretrained_model_name_or_path"] == str(c.models / "diffusion_models/flux1-dev.safetensors")
    with safe_open(summary["lora"], "pt") as f:
        assert f.metadata()["persona.base_model"] == "flux1-dev.safetensors"

    shutil.copy(comfy["gguf"], c.models / "diffusion_models")  # the GGUF gives way to the safetensors file
    (c.models / "diffusion_models/flux1-dev.safetensors").unlink()
    with pytest.raises(PersonaError, match=r"flux1-dev-Q8_0.gguf.*GGUF"):
        train_lora(lora_ws, tiny(steps=3, **KOHYA_BUCKETS), backend="kohya", force=True)
