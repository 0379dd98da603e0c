"""train-lora on the tiny FLUX.1 (same loading code as the real one), on CPU in fp32 with plain AdamW."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from persona.config import resolve_settings
from persona.errors import ConsentMissing, PersonaError
from persona.train import lora_data as data
from persona.train.lora import LoraSettings, check_vram, fitting_recipe, resolve, train_lora

# Tiny models run faster on one thread than on two fighting over a shared CPU.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_dataset(folder: Path, token: str) -> None:
    """Four crops of scikit-image's astronaut (square, landscape, portrait, 4:3); the last caption
    lacks the trigger token."""
    from PIL import Image
    from skimage import data as sk

    img = sk.astronaut()
    crops = [img, img[:256, :], img[:, 150:350], img[100:400, 50:450]]
    folder.mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(folder / f"{i:04d}.png")
        caption = f"{token}, an astronaut in an orange suit" if i < 3 else "an astronaut holding a helmet"
        (folder / f"{i:04d}.txt").write_text(caption + "\n")


@pytest.fixture
def lora_ws(make_workspace):
    ws = make_workspace()
    write_dataset(ws.root / "datasets" / "images", ws.token)
    ws.update("datasets", {"images": "datasets/images"})
    return ws


def tiny(**overrides) -> LoraSettings:
    return resolve_settings(LoraSettings, "lora", "tiny-cpu", overrides)


def lora_tensors(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_lora(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


# ---- data and settings (no models) ---------------------------------------------------------------
def test_buckets_cover_aspect_ratios():
    sizes = data.bucket_sizes(1024, 64)
    assert (1024, 1024) in sizes
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 1024 * 1024 and 0.5 <= w / h <= 2 for w, h in sizes)
    assert data.pick_bucket((1920, 1080), sizes)[0] > data.pick_bucket((1920, 1080), sizes)[1]
    assert data.pick_bucket((1080, 1920), sizes)[0] < data.pick_bucket((1080, 1920), sizes)[1]
    assert data.pick_bucket((500, 500), sizes) == (1024, 1024)


def test_dataset_checks(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    with pytest.raises(PersonaError, match="empty"):
        data.read_examples(folder, "TestPerson")
    write_dataset(folder, "TestPerson")
    examples, added = data.read_examples(folder, "TestPerson")
    assert len(examples) == 4 and added == 1
    assert all(e.caption.startswith("TestPerson") for e in examples)
    items = data.make_items(examples, [64, 96], 32, "vae")
    assert len(items) == 8 and {it.bucket for it in items} >= {(64, 64), (96, 96), (128, 64), (64, 128)}
    (folder / "0002.txt").unlink()
    with pytest.raises(PersonaError, match="0002.png") as e:
        data.read_examples(folder, "TestPerson")
    assert "persona ingest" in str(e.value)


def test_vram_check_names_a_recipe_that_fits():
    big = resolve_settings(LoraSettings, "lora", "flux-dev-24gb")
    with pytest.raises(PersonaError, match="--recipe flux-dev-12gb"):
        check_vram(big, "flux-dev-24gb", 11.7, "RTX 4070")
    with pytest.raises(PersonaError, match="no shipped recipe fits"):
        check_vram(big, "flux-dev-24gb", 8.0)
    with pytest.raises(PersonaError, match="CUDA GPU"):
        check_vram(big, "flux-dev-24gb", None)
    check_vram(big, "flux-dev-24gb", 23.6)  # a 24 GB card reports ~23.6 GiB
    check_vram(tiny(), "tiny-cpu", None)  # no vram_gb: runs anywhere
    assert fitting_recipe(79.2) == "flux-dev-80gb" and fitting_recipe(15.7) == "flux-dev-16gb"


def test_flags_override_recipes_and_are_validated():
    s, name = resolve("flux-dev-24gb", {"steps": 10, "rank": 8, "lr": 2e-4, "resolutions": [512, 1024]})
    assert (name, s.steps, s.rank, s.lr, s.resolutions) == ("flux-dev-24gb", 10, 8, 2e-4, [512, 1024])
    assert s.base_precision == "fp8"  # the rest still comes from the recipe
    with pytest.raises(PersonaError, match="resolutions"):
        resolve("flux-dev-24gb", {"resolutions": [500]})
    if not torch.cuda.is_available():
        with pytest.raises(PersonaError, match="tiny-cpu"):
            resolve(None)


# ---- training --------------------------------------------------------------------------------------
def test_cli_trains_a_lora_that_diffusers_loads(lora_ws, tiny_models):
    out = subprocess.run([sys.executable, "-m", "persona", "-w", str(lora_ws.root), "train-lora",
                          "--recipe", "tiny-cpu", "--steps", "4", "--json"],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert "1 of 4 captions lacked the trigger token" in out.stderr.replace("\n", " ")
    path = Path(summary["lora"])
    assert summary["steps"] == 4 and summary["images"] == 4 and summary["processes"] == 1
    assert summary["buckets"] == ["128x64", "64x128", "64x64", "96x96"] and summary["items"] == 8
    assert math.isfinite(summary["final_loss"])

    # diffusers' layout with one alpha per module, and the metadata
    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert all(k.startswith("transformer.") for k in keys)
    assert any(".single_transformer_blocks.0.proj_mlp.lora_A" in k for k in keys)
    assert (meta["persona.rank"], meta["persona.alpha"], meta["persona.steps"]) == ("4", "8", "4")
    assert meta["persona.trigger_token"] == lora_ws.token and len(meta["persona.dataset_hash"]) == 32
    assert meta["persona.base_model"] == str(tiny_models["flux"])

    # the pack
    from persona.workspace import Workspace

    pack = Workspace(lora_ws.root).pack
    assert pack.lora.path == f"lora/{path.name}" and pack.lora.rank == 4 and pack.lora.alpha == 8.0
    assert pack.lora.steps == 4 and pack.lora.backend == "native" and pack.lora.strength == 1.0

    # sample grids at steps 0, 3, 4: rows = 2 prompts x (with, without token), columns = 2 seeds
    from PIL import Image

    assert [Path(p).name for p in summary["samples"]] == ["step-000000.png", "step-000003.png", "step-000004.png"]
    assert Image.open(summary["samples"][-1]).size == (2 * 64, 4 * 64)
    rows = json.loads(Path(summary["samples"][-1]).with_suffix(".json").read_text())["rows"]
    assert lora_ws.token in rows[0] and lora_ws.token not in rows[1]

    # loaded as the render stage will: strength 0 is the base model exactly, strength 1 is not
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(tiny_models["flux"]))
    pipe.set_progress_bar_config(disable=True)

    def render():
        return pipe(f"a photo of {lora_ws.token}", height=64, width=64, num_inference_steps=2, max_sequence_length=32,
                    generator=torch.Generator().manual_seed(0), output_type="np").images

    before = render()
    pipe.load_lora_weights(str(path), adapter_name="persona")
    layer = pipe.transformer.single_transformer_blocks[0].proj_mlp
    assert float(layer.scaling["persona"]) == 2.0  # alpha 8 / rank 4, read from the .alpha keys
    pipe.set_adapters(["persona"], adapter_weights=[0.0])
    assert (render() == before).all()
    pipe.set_adapters(["persona"], adapter_weights=[1.0])
    assert abs(render() - before).max() > 1e-4

    # the same settings and data again: nothing to do
    again = train_lora(Workspace(lora_ws.root), tiny(steps=4), recipe="tiny-cpu")
    assert again["skipped"] and again["lora"] == summary["lora"]


KILL_AT_STEP_3 = textwrap.dedent("""
    import os, signal, sys
    from persona.config import resolve_settings
    from persona.train.lora import LoraSettings, train_lora
    from persona.workspace import Workspace

    def die(step, **_):
        if step == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    s = resolve_settings(LoraSettings, "lora", "tiny-cpu", {"checkpoint_every": 2, "sample_every": 0})
    train_lora(Workspace(sys.argv[1]), s, force=True, resume=False, on_step=die)
""")


def test_killed_or_disk_full_runs_resume_to_the_same_lora(lora_ws, monkeypatch):
    s = tiny(checkpoint_every=2, sample_every=0)
    baseline = train_lora(lora_ws, s, force=True, resume=False)
    expected = lora_tensors(baseline["lora"])
    ckpts = Path(baseline["run_dir"]) / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002", "step-000004"]

    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP_3, str(lora_ws.root)], capture_output=True, text=True,
                            env=ENV, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002"]
    resumed = train_lora(lora_ws, s, force=True)
    assert resumed["resumed_from"] == 2
    assert_same_lora(lora_tensors(resumed["lora"]), expected)

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "step-000004" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(PersonaError, match="step-000002 is intact") as e:
        train_lora(lora_ws, s, force=True, resume=False)
    assert "No space left" in str(e.value) and "free disk space" in str(e.value)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002"]  # nothing half-written left behind
    monkeypatch.setattr(torch, "save", real_save)
    resumed = train_lora(lora_ws, s, force=True, resume=True)
    assert resumed["resumed_from"] == 2
    assert_same_lora(lora_tensors(resumed["lora"]), expected)


@pytest.mark.slow
def test_two_processes_train_the_same_lora_as_one(lora_ws, tmp_path):
    """accelerate launch with 2 CPU processes (gloo), 1 sample each per step, equals 1 process with
    2 samples per step, and 1 sample with 2 accumulation steps."""
    recipe = tmp_path / "ddp.toml"
    base = (Path(__file__).parents[1] / "recipes" / "lora" / "tiny-cpu.toml").read_text()
    recipe.write_text(base.replace("sample_every = 3", "sample_every = 0") + "\n")
    import socket

    with socket.socket() as s:  # a free port: accelerate's default 29500 may be taken by another run
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", str(port),
                          "-m", "persona", "-w", str(lora_ws.root), "train-lora", "--recipe", str(recipe), "--json"],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)  # one summary: only the main process prints
    assert summary["processes"] == 2 and summary["samples_per_step"] == 2
    two = lora_tensors(summary["lora"])

    one = train_lora(lora_ws, tiny(sample_every=0, batch_size=2), force=True, resume=False)
    assert one["processes"] == 1 and one["samples_per_step"] == 2
    assert_same_lora(lora_tensors(one["lora"]), two, atol=1e-5)
    accumulated = train_lora(lora_ws, tiny(sample_every=0, gradient_accumulation=2), force=True, resume=False)
    assert_same_lora(lora_tensors(accumulated["lora"]), two, atol=1e-5)


@pytest.mark.parametrize("base, compute", [("fp8", "no"), ("bf16", "bf16")])
def test_reduced_precision_paths_run_on_cpu(lora_ws, base, compute):
    """The 24 GB recipe's fp8 storage (diffusers' layerwise casting) and the 80 GB recipe's bf16
    weights with bf16 autocast, here on CPU; the LoRA itself trains in fp32 and is saved in bf16."""
    s = tiny(base_precision=base, mixed_precision=compute, save_precision="bf16", steps=2, checkpoint_every=0)
    summary = train_lora(lora_ws, s, force=True)
    tensors = lora_tensors(summary["lora"])
    assert {v.dtype for k, v in tensors.items() if "lora_" in k} == {torch.bfloat16}
    assert all(torch.isfinite(v).all() for v in tensors.values())
    assert max(v.abs().max().item() for k, v in tensors.items() if "lora_B" in k) > 0  # B starts at zero
    assert [Path(p).name for p in summary["samples"]] == ["step-000000.png", "step-000002.png"]


def test_refusals(lora_ws, make_workspace, tmp_path):
    lora_ws.update("datasets", {"images": None})
    with pytest.raises(PersonaError, match="persona ingest"):
        train_lora(lora_ws, tiny())
    lora_ws.update("datasets", {"images": "datasets/images"})
    with pytest.raises(PersonaError, match="sd-scripts checkout"):
        train_lora(lora_ws, tiny(bucket_step=64, resolutions=[64, 128]), backend="kohya")
    if not torch.cuda.is_available():
        with pytest.raises(PersonaError, match="CUDA"):
            train_lora(lora_ws, tiny(base_precision="nf4", mixed_precision="bf16"))
    lora_ws.update("models", {"flux": str(tmp_path / "nowhere")})
    with pytest.raises(PersonaError, match="persona doctor"):
        train_lora(lora_ws, tiny())
    lora_ws.update("consent", None)
    with pytest.raises(ConsentMissing):
        train_lora(lora_ws, tiny())
