"""benchmarks/gpu_check.py --tiny: the GPU check's own code, run on the CPU with the tiny models, so
that the prepared GPU run does not rot between the times a GPU is at hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_tiny_table_has_every_stage_and_profile(tmp_path):
    out = tmp_path / "table.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--models", str(tmp_path / "models"),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    g = load_script()
    expected = ([(f"lora@{z}", r) for r in g.LORA_RECIPES for z in g.LORA_SIZES]
                + [("voice", r) for r in g.VOICE_RECIPES] + [("keyframe", p) for p in g.RENDER_PROFILES]
                + [("wan-chunk", p) for p in g.RENDER_PROFILES] + [("musetalk", "-"), ("upscaler-720p", "-")])
    assert [(r["stage"], r["profile"]) for r in rows] == expected
    for r in rows:
        assert r["fits"] == "yes" and not r["error"], r
        assert r["value"] > 0 and r["unit"] and r["peak_ram_gb"] > 0.1, r
        assert r["peak_vram_gb"] is None  # the CPU has no VRAM to report
    # the printed table is the JSON's rows, one line each under a header
    lines = done.stdout.splitlines()
    assert lines[0].startswith("gpu_check ") and "CPU (--tiny)" in lines[0]
    assert sum(line.startswith(("lora@", "voice", "keyframe", "wan-chunk", "musetalk", "upscaler")) for line in lines) == len(rows)


def test_a_failing_row_is_a_row_not_a_crash(tmp_path):
    g = load_script()
    ctx = g.Ctx(tiny=True, root=tmp_path, device=torch.device("cpu"))

    def too_big():
        torch.empty(1 << 62, dtype=torch.uint8)  # a real allocation failure, as an OOM under a cap is

    row = g.measure(ctx, "lora@512", "flux-dev-12gb", too_big)
    assert row.fits == "no" and row.value is None and "RuntimeError" in row.error
    assert row.peak_ram_gb > 0
    assert "no" in g.table([row]).splitlines()[1]
    # a model that cannot be built is a row too, and its stage never runs
    ran = []
    row = g.measure(ctx, "keyframe", "12gb", lambda: ran.append(1), family="no-such-family")
    assert row.fits == "no" and row.error.startswith("building no-such-family: KeyError") and not ran


@pytest.mark.parametrize("profile,cap", [("12gb", 12.0), ("flux-dev-24gb", 24.0), ("f5-80gb", 80.0), ("-", None), ("cpu", None)])
def test_profile_caps(profile, cap):
    assert load_script().cap_gb(profile) == cap


def test_ram_peak_sees_an_allocation():
    g = load_script()
    with g.RamPeak(every=0.01) as ram:
        before = ram.peak
        block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
        import time

        time.sleep(0.1)
        del block
    assert ram.peak - before > 48 << 20


def test_random_weights_materialise_from_meta_with_buffers_kept():
    """The full-size builder, on a small FLUX transformer: every parameter real and in the asked dtype,
    buffers (computed at construction) intact, and the model runs."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    g = load_script()
    net = g.random_weights(lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
        torch.device("cpu"), torch.bfloat16)
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in net.parameters())
    assert all(p.std() > 0 for p in net.parameters() if p.numel() > 1)
    out = net(hidden_states=torch.randn(1, 16, 16, dtype=torch.bfloat16), timestep=torch.tensor([0.5]),
              guidance=torch.tensor([1.0]), pooled_projections=torch.randn(1, 32, dtype=torch.bfloat16),
              encoder_hidden_states=torch.randn(1, 8, 32, dtype=torch.bfloat16), txt_ids=torch.zeros(8, 3),
              img_ids=torch.zeros(16, 3), return_dict=False)[0]
    assert out.shape == (1, 16, 16) and torch.isfinite(out.float()).all()
    clip = g.random_weights(lambda: CLIPTextModel(CLIPTextConfig(
        vocab_size=99, eos_token_id=2, bos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
        max_position_embeddings=77)), torch.device("cpu"), torch.float32)
    assert torch.equal(clip.embeddings.position_ids, torch.arange(77)[None])  # a buffer, not garbage


@pytest.mark.parametrize("tiny_model", [True, False])
def test_voice_architectures_build(tiny_model):
    """F5TTS_v1_Base's settings (and the tiny ones) with the recipe's recomputation, on the meta device."""
    from f5_tts.model import DiT

    g = load_script()
    with torch.device("meta"):
        net = DiT(**g.voice_arch(tiny_model, True), text_num_embeds=2545, mel_dim=100)
    params = sum(p.numel() for p in net.parameters())
    assert (params < 5e6) if tiny_model else (300e6 < params < 400e6)  # F5TTS_v1_Base: 337 M
