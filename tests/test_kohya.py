"""--backend kohya: the files and the command line persona gives sd-scripts (CI has no checkout, so
sd-scripts itself is not run here), and the reading of its progress."""

from __future__ import annotations

import shutil
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from persona.config import resolve_settings
from persona.errors import PersonaError
from persona.train import kohya
from persona.train import lora_data as data
from persona.train.lora import LoraSettings, sample_rows
from test_train_lora import write_dataset


@pytest.fixture
def kohya_ws(make_workspace, tiny_models, tmp_path, own_config):
    """A workspace with an image dataset, a folder standing for the sd-scripts checkout, and a FLUX.1
    folder that also has BFL's single files (empty here: nothing loads them in this test)."""
    ws = make_workspace()
    write_dataset(ws.root / "datasets" / "images", ws.token)
    ws.update("datasets", {"images": "datasets/images"})
    repo = tmp_path / "sd-scripts"
    repo.mkdir()
    (repo / "flux_train_network.py").write_text("")
    flux = tmp_path / "flux"
    shutil.copytree(tiny_models["flux"], flux)
    (flux / "ae.safetensors").write_bytes(b"")
    (flux / "flux1-dev.safetensors").write_bytes(b"")
    ws.update("models", {"flux": str(flux)})
    own_config(models={"sd-scripts": repo})  # a checkout is code: the user's own config names it
    return ws


def sd_scripts(ws) -> Path:
    return ws.root.parent / "sd-scripts"  # the kohya_ws fixture's stand-in checkout


KOHYA_BUCKETS = {"bucket_step": 64, "resolutions": [64, 128]}  # tiny-cpu's 32-pixel buckets are native-only


def prepared(ws, recipe: str, resume=None, **overrides):
    s = resolve_settings(LoraSettings, "lora", recipe, overrides)
    examples, _ = data.read_examples(ws.path("datasets/images"), ws.token)
    run = ws.root / "runs" / "lora" / "test"
    job = kohya.prepare(ws, s, Path(ws.pack.models["flux"]), examples, run, resume, sample_rows(s, ws.token))
    return s, job, tomllib.loads(job["dataset_toml"].read_text()), tomllib.loads(job["args_toml"].read_text())


def test_dataset_and_arguments_follow_the_recipe(kohya_ws):
    s, job, dataset, args = prepared(kohya_ws, "flux-dev-24gb", steps=800)
    flux = Path(kohya_ws.pack.models["flux"])

    # one kohya dataset per resolution, all reading the same images with persona's captions
    assert [d["resolution"] for d in dataset["datasets"]] == [512, 768, 1024]
    assert dataset["general"]["caption_extension"] == ".txt" and dataset["general"]["enable_bucket"] is True
    image_dir = Path(dataset["datasets"][0]["subsets"][0]["image_dir"])
    assert sorted(p.name for p in image_dir.glob("*.png")) == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert (image_dir / "0000.png").resolve() == (kohya_ws.root / "datasets" / "images" / "0000.png").resolve()
    captions = [p.read_text() for p in sorted(image_dir.glob("*.txt"))]
    assert all(c.startswith(kohya_ws.token) for c in captions)  # the token added where ingest's caption lacked it

    flat = {k: v for section in args.values() for k, v in section.items()}
    assert flat["pretrained_model_name_or_path"] == str(flux / "flux1-dev.safetensors")
    assert flat["ae"] == str(flux / "ae.safetensors")
    assert flat["clip_l"] == str(flux / "text_encoder" / "model.safetensors")
    assert flat["t5xxl"] == str(flux / "text_encoder_2" / "model.safetensors")
    assert flat["network_module"] == "networks.lora_flux"
    assert (flat["network_dim"], flat["network_alpha"], flat["learning_rate"]) == (16, 16.0, 1e-4)
    assert flat["max_train_steps"] == 800 and flat["timestep_sampling"] == "shift"
    assert flat["discrete_flow_shift"] == 3.1582 and flat["model_prediction_type"] == "raw"
    assert flat["guidance_scale"] == 1.0 and flat["fp8_base"] is True and flat["optimizer_type"] == "AdamW8bit"
    assert flat["cache_latents_to_disk"] and flat["cache_text_encoder_outputs_to_disk"]
    assert flat["network_train_unet_only"]
    assert flat["mixed_precision"] == "bf16" and flat["gradient_checkpointing"] is True
    assert flat["save_every_n_steps"] == 250 and flat["save_state"] is True and "resume" not in flat
    assert flat["dataset_config"] == str(job["dataset_toml"]) and flat["output_dir"] == str(job["out_dir"])
    assert "blocks_to_swap" not in flat

    # sample prompts: every row (prompt with / without the token) for every seed, in kohya's syntax
    lines = Path(flat["sample_prompts"]).read_text().splitlines()
    assert len(lines) == len(s.sample_prompts) * 2 * len(s.sample_seeds)
    assert lines[0].endswith("--w 1024 --h 1024 --d 1 --s 20 --g 3.5") and kohya_ws.token in lines[0]

    # accelerate launch, as an argument list, run in the checkout
    cmd = job["cmd"]
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[-3:] == ["flux_train_network.py", "--config_file", str(job["args_toml"])]
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16"
    assert job["repo"] == Path(sd_scripts(kohya_ws))


def test_small_recipes_swap_blocks_and_adafactor_gets_kohya_args(kohya_ws):
    _, _, _, args = prepared(kohya_ws, "flux-dev-12gb", optimizer="adafactor")
    flat = {k: v for section in args.values() for k, v in section.items()}
    assert flat["blocks_to_swap"] == 16 and flat["fp8_base"] is True  # kohya has no NF4
    assert flat["optimizer_type"] == "Adafactor"
    assert {"relative_step=False", "scale_parameter=False", "warmup_init=False"} <= set(flat["optimizer_args"])
    _, _, _, args = prepared(kohya_ws, "flux-dev-80gb", kohya_args={"network_args": ["single_dim=8"]})
    flat = {k: v for section in args.values() for k, v in section.items()}
    assert flat["fp8_base"] is False and flat["network_args"] == ["single_dim=8"]


def test_resume_picks_the_latest_saved_state(kohya_ws):
    out = kohya_ws.root / "runs" / "lora" / "test" / "kohya" / "output"
    for step in (250, 500):
        (out / f"persona-lora-step{step:08d}-state").mkdir(parents=True)
    _, job, _, args = prepared(kohya_ws, "flux-dev-24gb")
    assert args["saving"]["resume"] == str(out / "persona-lora-step00000500-state")
    _, _, _, args = prepared(kohya_ws, "flux-dev-24gb", resume=False)
    assert "resume" not in args["saving"]
    shutil.rmtree(out)
    with pytest.raises(PersonaError, match="nothing to resume"):
        prepared(kohya_ws, "flux-dev-24gb", resume=True)


def test_missing_bfl_files_say_how_to_get_them(kohya_ws):
    flux = Path(kohya_ws.pack.models["flux"])
    (flux / "ae.safetensors").unlink()
    with pytest.raises(PersonaError, match="hf download black-forest-labs/FLUX.1-dev ae.safetensors"):
        prepared(kohya_ws, "flux-dev-24gb")


def test_sharded_t5_is_joined_once(tmp_path):
    a, b = {"shared.weight": torch.randn(4, 2)}, {"encoder.final_layer_norm.weight": torch.ones(2)}
    save_file(a, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(b, str(tmp_path / "model-00002-of-00002.safetensors"))
    joined = kohya.join_shards(sorted(tmp_path.glob("model-*.safetensors")), tmp_path / "cache" / "t5.safetensors")
    tensors = load_file(str(joined))
    assert tensors.keys() == {"shared.weight", "encoder.final_layer_norm.weight"}
    assert torch.equal(tensors["shared.weight"], a["shared.weight"])


KOHYA_LIKE = textwrap.dedent("""
    # the progress bar as sd-scripts' train_network.py draws it
    import sys, time
    from tqdm import tqdm
    print("INFO loading model")
    bar = tqdm(range(5), smoothing=0, desc="steps")
    for i in range(5):
        time.sleep(0.01)
        bar.update(1)
        bar.set_postfix(avr_loss=0.5 - i * 0.05)
    bar.close()
    print("INFO saved")
""")


def test_progress_is_read_from_the_stream():
    lines, progress = [], []

    def on_line(line):
        lines.append(line)
        if (p := kohya.parse_progress(line)) is not None:
            progress.append(p)

    rc = kohya.stream([sys.executable, "-c", KOHYA_LIKE], Path.cwd(), on_line)
    assert rc == 0
    assert progress[-1]["done"] == progress[-1]["total"] == 5
    assert progress[-1]["loss"] == pytest.approx(0.3) and progress[-1]["steps_per_s"] > 0
    assert "INFO loading model" in lines and "INFO saved" in lines
    assert kohya.parse_progress("steps:  40%|████      | 4/10 [00:08<00:12, 2.01s/it, avr_loss=0.412]") == {
        "done": 4, "total": 10, "steps_per_s": pytest.approx(1 / 2.01), "loss": 0.412}
    assert kohya.parse_progress("epoch 1/10") is None


# A stand-in for sd-scripts' flux_train_network.py (CI has no checkout): it reads the arguments
# TOML persona wrote, draws kohya's progress bar and writes a LoRA with kohya's key names, or fails
# the way a real run can. What is checked is persona's side: launching, streaming, errors, the pack.
STAND_IN = textwrap.dedent("""
    import sys, tomllib
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm
    args = {k: v for section in tomllib.loads(Path(sys.argv[2]).read_text()).values() for k, v in section.items()}
    if args.get("fail"):
        print("torch.OutOfMemoryError: CUDA out of memory", file=sys.stderr)
        sys.exit(1)
    bar = tqdm(range(args["max_train_steps"]), desc="steps")
    for i in range(args["max_train_steps"]):
        bar.update(1)
        bar.set_postfix(avr_loss=0.4)
    bar.close()
    out = Path(args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    key = "lora_unet_double_blocks_0_img_attn_qkv"
    save_file({f"{key}.lora_down.weight": torch.zeros(4, 8), f"{key}.lora_up.weight": torch.zeros(8, 4),
               f"{key}.alpha": torch.tensor(4.0)}, str(out / (args["output_name"] + ".safetensors")),
              metadata={"ss_network_dim": "4"})
""")


def test_a_kohya_run_lands_in_the_pack(kohya_ws):
    from safetensors import safe_open

    from persona.train.lora import train_lora
    from persona.workspace import Workspace

    Path(sd_scripts(kohya_ws), "flux_train_network.py").write_text(STAND_IN)
    s = resolve_settings(LoraSettings, "lora", "tiny-cpu", {"steps": 3, "kohya_args": {"fail": True}, **KOHYA_BUCKETS})
    with pytest.raises(PersonaError, match="sd-scripts failed \\(exit 1\\): torch.OutOfMemoryError") as e:
        train_lora(kohya_ws, s, backend="kohya")
    assert e.value.file.name == "last-output.txt" and "CUDA out of memory" in e.value.file.read_text()

    s = resolve_settings(LoraSettings, "lora", "tiny-cpu", {"steps": 3, **KOHYA_BUCKETS})
    summary = train_lora(kohya_ws, s, backend="kohya")
    assert summary["backend"] == "kohya" and summary["final_loss"] == pytest.approx(0.4)
    with safe_open(summary["lora"], "pt") as f:
        meta = f.metadata()
        assert "lora_unet_double_blocks_0_img_attn_qkv.alpha" in f.keys()
    assert meta["ss_network_dim"] == "4" and meta["persona.backend"] == "kohya" and meta["persona.steps"] == "3"
    pack = Workspace(kohya_ws.root).pack
    assert pack.lora.backend == "kohya" and pack.lora.path == f"lora/{Path(summary['lora']).name}"


def test_a_packs_sd_scripts_python_runs_nothing(kohya_ws, tmp_path, monkeypatch):
    from persona.models import CodeRefused, user_config_path
    from persona.train.lora import train_lora

    monkeypatch.delenv("PERSONA_SD_SCRIPTS_PYTHON", raising=False)
    user_config_path().unlink()  # nothing of the user's own: only the pack names a checkout
    repo = kohya_ws.root / "sd-scripts"
    (repo / "venv" / "bin").mkdir(parents=True)
    (repo / "flux_train_network.py").write_text("")
    marker = tmp_path / "python-ran"
    python = repo / "venv" / "bin" / "python"
    python.write_text(f"#!/bin/sh\necho ran > '{marker}'\nexit 1\n")
    python.chmod(0o755)
    kohya_ws.update("models", {"sd-scripts": "sd-scripts"})
    s = resolve_settings(LoraSettings, "lora", "tiny-cpu", {"steps": 3, **KOHYA_BUCKETS})
    with pytest.raises(CodeRefused, match="sd-scripts = '.*sd-scripts' is a checkout whose Python persona would run"):
        train_lora(kohya_ws, s, backend="kohya")
    assert not marker.exists()
    monkeypatch.setenv("PERSONA_TRUST_PACK", "1")  # --trust-pack
    with pytest.raises(PersonaError, match="sd-scripts failed"):
        train_lora(kohya_ws, s, backend="kohya")
    assert marker.exists()


def test_bucket_step_must_suit_kohya(kohya_ws):
    from persona.train.lora import train_lora

    s = resolve_settings(LoraSettings, "lora", "tiny-cpu", {"steps": 3, "bucket_step": 32})
    with pytest.raises(PersonaError, match="bucket_step 32 is not a multiple of 64") as e:
        train_lora(kohya_ws, s, backend="kohya")
    assert "--backend native" in str(e.value)
    assert not (kohya_ws.root / "cache" / "lora").exists() and not (kohya_ws.root / "runs").exists()  # nothing done
