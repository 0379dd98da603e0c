"""Finishing: FILM interpolation, spandrel upscaling, re-timing, and the LatentSync adapter."""

import json
import os
import pickle
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from persona.errors import PersonaError
from persona.inference.finish import (Film, FinishSettings, Upscaler, factor_for, finish_scene, minterpolate,
                                      output_size, resize, retime)
from persona.inference.lipsync import LatentSync, LipsyncSettings
from persona.media import probe, read_frames, stream_durations, write_video


class FilmLike(torch.nn.Module):
    """FILM's TorchScript call signature; returns the blend at dt (a stand-in for the real network)."""

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        assert x0.shape[-1] % 64 == 0 and x0.shape[-2] % 64 == 0
        return x0 + (x1 - x0) * dt.view(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def film_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("film") / "film_net_fp32.pt"
    torch.jit.script(FilmLike()).save(str(path))
    return path


@pytest.fixture(scope="module")
def esrgan_files(tmp_path_factory):
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    folder = tmp_path_factory.mktemp("sr")
    state = {k: v.contiguous() for k, v in ESRGAN(num_filters=8, num_blocks=1, scale=4).state_dict().items()}
    save_file(state, str(folder / "4x.safetensors"))
    torch.save(state, folder / "4x.pth")
    return folder


def _frames(n, h=40, w=72):
    return [np.full((h, w, 3), 10 * i, np.uint8) for i in range(n)]


@pytest.mark.parametrize("factor", [2, 4])
def test_film_frame_count_and_midpoints(film_file, factor):
    film = Film(film_file, device="cpu")
    out = list(film.interpolate(_frames(6), factor))
    assert len(out) == (6 - 1) * factor + 1
    assert all(f.shape == (40, 72, 3) for f in out)
    values = [int(f[0, 0, 0]) for f in out]
    assert values[::factor] == [0, 10, 20, 30, 40, 50]  # originals kept in place
    assert values[factor // 2] == 5  # the midpoint, not padding garbage


def test_minterpolate_fallback_and_retime():
    frames = list(minterpolate(_frames(10, 48, 64), 16, 2))
    assert 16 <= len(frames) <= 20 and frames[0].shape == (48, 64, 3)
    assert len(list(retime(frames, 32, 32, 20))) == 20
    picked = [int(f[0, 0, 0]) for f in retime(_frames(8), 50, 32, 10)]  # 50 fps -> 32 fps by nearest frame
    assert picked == sorted(picked) and len(picked) == 10


def test_factor_and_sizes():
    assert factor_for(16, 32) == 2 and factor_for(25, 32) == 2 and factor_for(16, 60) == 4 and factor_for(50, 32) == 1
    assert output_size("16:9", 720) == (1280, 720) and output_size("9:16", 1080) == (1080, 1920)


@pytest.mark.parametrize("name", ["4x.safetensors", "4x.pth"])
def test_upscaler_4x_then_target_size(esrgan_files, name):
    sr = Upscaler(esrgan_files / name, tile=24, overlap=4, device="cpu")
    frame = (np.random.default_rng(0).random((40, 72, 3)) * 255).astype(np.uint8)
    big = sr(frame)
    assert big.shape == (160, 288, 3)
    assert resize(big, (1280, 720)).shape == (720, 1280, 3)
    whole = Upscaler(esrgan_files / name, tile=256, overlap=4, device="cpu")(frame)
    assert np.abs(big.astype(int) - whole.astype(int)).mean() < 8  # tiles blend into the same picture


def test_upscaler_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"weight": Evil()}))
    with pytest.raises(PersonaError, match="loaded safely"):
        Upscaler(bad, device="cpu")
    assert not (tmp_path / "pwned").exists()


def test_finish_scene_keeps_sync(film_file, esrgan_files, tmp_path):
    src = write_video(tmp_path / "video.mp4", _frames(17, 48, 80), 16)
    seconds = 17 / 16
    f = FinishSettings(fps=32, output_height=144)
    info = finish_scene(src, seconds, tmp_path / "out.mp4", "film", Film(film_file, "cpu"),
                        Upscaler(esrgan_files / "4x.safetensors", tile=32, overlap=4, device="cpu"), (256, 144), f)
    p = probe(tmp_path / "out.mp4")
    assert (p.width, p.height, p.fps) == (256, 144, 32.0) and info["frames"] == 34
    assert abs(stream_durations(tmp_path / "out.mp4")["video"] - seconds) < 1 / 32


# ---- LatentSync: the adapter's command line and file handling -------------------------------------
STAND_IN = textwrap.dedent('''
    """Stand-in for LatentSync's scripts/inference.py (tests only): the same arguments and the same
    working-directory habits (configs/ and checkpoints/ relative to cwd, a fixed ./temp); it
    re-times the input video to 25 fps instead of syncing lips, as LatentSync's output is 25 fps."""
    import argparse, json, os, sys
    import av
    p = argparse.ArgumentParser()
    for a in ["--unet_config_path", "--inference_ckpt_path", "--video_path", "--audio_path", "--video_out_path"]:
        p.add_argument(a, required=True)
    p.add_argument("--inference_steps", type=int)
    p.add_argument("--guidance_scale", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--temp_dir", default="temp")
    p.add_argument("--enable_deepcache", action="store_true")
    a = p.parse_args()
    if os.environ.get("FAIL_LATENTSYNC"):
        sys.exit("RuntimeError: Face not detected")
    assert os.path.exists(a.unet_config_path) and os.path.exists(a.inference_ckpt_path)
    assert " " not in a.video_path + a.audio_path + a.video_out_path
    os.makedirs("temp", exist_ok=True)
    json.dump(vars(a) | {"cwd": os.getcwd()}, open(os.environ["LATENTSYNC_LOG"], "w"))
    with av.open(a.video_path) as src, av.open(a.video_out_path, "w") as dst:
        s = dst.add_stream("libx264", rate=25)
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
        rate = float(src.streams.video[0].average_rate)
        n = round(len(frames) / rate * 25)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for k in range(n):
            frame = av.VideoFrame.from_ndarray(frames[min(int(k * rate / 25), len(frames) - 1)], format="rgb24")
            for pkt in s.encode(frame):
                dst.mux(pkt)
        for pkt in s.encode():
            dst.mux(pkt)
''')


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    root = tmp_path / "Latent Sync"  # a space in the path must not reach LatentSync's shell commands
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "__init__.py").write_text("")
    (root / "scripts" / "inference.py").write_text(STAND_IN)
    (root / "configs" / "unet").mkdir(parents=True)
    (root / "configs" / "unet" / "stage2_512.yaml").write_text("model: {}\n")
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "latentsync_unet.pt").write_bytes(b"")
    monkeypatch.setenv("PERSONA_LATENTSYNC_PYTHON", sys.executable)
    monkeypatch.setenv("LATENTSYNC_LOG", str(tmp_path / "call.json"))
    return root


def test_latentsync_command_line(checkout):
    ls = LatentSync(checkout, LipsyncSettings(steps=12, guidance=1.5))
    cmd = ls.command(seed=7)
    assert cmd[:3] == [sys.executable, "-m", "scripts.inference"]
    args = dict(zip(cmd[3::2], cmd[4::2]))
    assert args["--unet_config_path"] == "configs/unet/stage2_512.yaml"  # 1.6 found
    assert args["--inference_ckpt_path"] == "checkpoints/latentsync_unet.pt"
    assert args["--inference_steps"] == "12" and args["--guidance_scale"] == "1.5" and args["--seed"] == "7"
    assert cmd[-1] == "--enable_deepcache"
    (checkout / "configs" / "unet" / "stage2_512.yaml").unlink()
    (checkout / "configs" / "unet" / "stage2.yaml").write_text("model: {}\n")
    assert LatentSync(checkout, LipsyncSettings()).unet_config == "configs/unet/stage2.yaml"  # 1.5


def test_latentsync_runs_in_a_private_folder(checkout, tmp_path):
    video = write_video(tmp_path / "scene video.mp4", _frames(16, 48, 64), 16)
    from persona.media import write_audio

    audio = write_audio(tmp_path / "narration.wav", np.zeros(24000, np.float32), 24000)
    LatentSync(checkout, LipsyncSettings()).sync(video, audio, tmp_path / "synced.mp4", seed=1)
    call = json.loads((tmp_path / "call.json").read_text())
    assert Path(call["cwd"]) != checkout and not Path(call["cwd"]).exists()  # private, cleaned up
    assert not (checkout / "temp").exists()
    assert probe(tmp_path / "synced.mp4").fps == 25.0
    assert probe(tmp_path / "synced.mp4").duration == pytest.approx(1.0, abs=0.05)


def test_latentsync_failure_is_reported(checkout, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIL_LATENTSYNC", "1")
    video = write_video(tmp_path / "v.mp4", _frames(4, 48, 64), 16)
    from persona.media import write_audio

    audio = write_audio(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)
    with pytest.raises(PersonaError, match="Face not detected"):
        LatentSync(checkout, LipsyncSettings()).sync(video, audio, tmp_path / "synced.mp4", seed=1)
    assert not (tmp_path / "synced.mp4").exists()


SCRIPT = {"title": "t", "scenes": [
    {"narration": "Hello there.", "image_prompt": "the presenter, close-up", "motion_prompt": "slow push-in",
     "on_camera": True},
    {"narration": "A grid of numbers.", "image_prompt": "a pixel grid", "motion_prompt": "pan", "on_camera": False}]}


def test_render_with_lipsync_interpolation_and_upscaling(pack, checkout, tmp_path, own_config):
    """Lip sync before interpolation and upscaling; sound and picture stay within a frame of each other."""
    from persona.files import read_json
    from persona.inference.render import render

    own_config(models={"latentsync": checkout})  # a checkout is code: the user's own config names it
    script = tmp_path / "s.json"
    script.write_text(json.dumps(SCRIPT))
    s = render(pack, None, script_file=script, profile="demo",
               overrides={"finish": {"output_height": 144}, "lipsync": {"backend": "latentsync"}})
    rdir = Path(s["render"])
    record = read_json(rdir / "render.json")
    assert record["stages"]["lipsync"]["synced"] == ["01"] and record["stages"]["lipsync"]["rendered"] == ["01"]
    assert read_json(rdir / "scenes/01/finished.mp4.json")["source"] == "synced.mp4"
    assert read_json(rdir / "scenes/01/finished.mp4.json")["source_fps"] == 25.0
    assert read_json(rdir / "scenes/02/finished.mp4.json")["source"] == "video.mp4"
    assert s["model_loads"]["upscaler"] == 1 and s["model_loads"]["latentsync"] == 1
    final = probe(s["final"])
    assert (final.width, final.height, final.fps) == (256, 144, 32.0)
    d = stream_durations(s["final"])
    assert abs(d["video"] - d["audio"]) < 1 / 32
    for i in (1, 2):
        scene = read_json(rdir / f"scenes/{i:02d}/narration.wav.json")["seconds"]
        frames, _ = read_frames(rdir / f"scenes/{i:02d}/finished.mp4")
        assert abs(len(frames) / 32 - scene) < 1 / 32
