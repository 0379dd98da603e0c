"""A pack cannot run code: a stranger's persona.toml naming a TorchScript FILM file, a Vocos config
that names `os.system`, or a checkout whose Python writes a marker runs nothing; the same files
named by the user's own configuration (or with --trust-pack) are honoured."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from persona import models
from persona.errors import PersonaError


class MarkerFilm(torch.nn.Module):
    """A FILM-shaped TorchScript program that also writes a file when run (torch.save is scriptable)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        torch.save(dt, self.marker)
        return x0 + (x1 - x0) * dt


def hostile_film(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "film-ran"
    torch.jit.script(MarkerFilm(str(marker))).save(str(folder / "film_net_fp32.pt"))
    return folder / "film_net_fp32.pt", marker


def hostile_checkout(folder: Path, required: str, python: str = ".venv") -> tuple[Path, Path]:
    """A checkout whose interpreter is a script that leaves a marker."""
    marker = folder / "python-ran"
    (folder / required).parent.mkdir(parents=True, exist_ok=True)
    (folder / required).write_text("")
    py = folder / python / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(f"#!/bin/sh\necho ran > '{marker}'\nexit 1\n")
    py.chmod(0o755)
    return folder, marker


def use_film(ws) -> None:
    """What the finish stage does with [models] film: pick it, load it, interpolate."""
    from persona.inference.finish import Film, _pick

    method, path = _pick(ws, "film", "auto", "film", "minterpolate", "interpolating with minterpolate")
    if path is not None:
        frames = [np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8)]
        list(Film(path, "cpu").interpolate(iter(frames), 2))


def test_a_packs_torchscript_runs_nothing(make_workspace, monkeypatch, own_config):
    ws = make_workspace(models=False)
    film, marker = hostile_film(ws.root / "models")
    ws.update("models", {"film": "models/film_net_fp32.pt"})
    with pytest.raises(models.CodeRefused) as e:
        use_film(ws)
    assert not marker.exists()
    line = str(e.value)
    assert "\n" not in line and "TorchScript" in line and "--trust-pack" in line and "PERSONA_FILM" in line
    # the user's own configuration names the same file: honoured (and the program does run)
    own_config(models={"film": film})
    assert models.locate_entry("film", models=ws.pack.models).source == "user config"
    use_film(ws)
    assert marker.exists()
    marker.unlink()
    # trusting packs in the user config honours the pack's entry
    models.user_config_path().write_text("trust_pack = true\n")
    assert models.locate_entry("film", models=ws.pack.models).source == "[models]"
    use_film(ws)
    assert marker.exists()


def hostile_vocos(folder: Path, marker: Path) -> Path:
    """The tiny Vocos, but its config names os.system with a command that leaves a marker."""
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["feature_extractor"] = {"class_path": "os.system", "init_args": {"command": f"echo ran > '{marker}'"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_a_vocos_config_naming_os_system_runs_nothing(pack, tiny_models, tmp_path):
    import shutil

    from persona.inference.speech import Voice, VoiceFiles, load_vocos

    marker = tmp_path / "vocos-ran"
    folder = hostile_vocos(Path(shutil.copytree(tiny_models["vocos"], pack.root / "models" / "vocos")), marker)
    pack.update("models", {"vocos": "models/vocos"})
    with pytest.raises(PersonaError, match="refused: feature_extractor must be vocos.feature_extractors"):
        Voice(VoiceFiles.from_workspace(pack), "cpu")
    assert not marker.exists()
    # vocos' own loader (what f5-tts's load_vocoder calls) would have run it
    from vocos import Vocos

    try:
        Vocos.from_hparams(str(folder / "config.yaml"))
    except Exception:  # whatever comes after the command ran
        pass
    assert marker.exists()
    # the honest config from the same pack is data: persona builds it and it vocodes
    vocoder = load_vocos(tiny_models["vocos"])
    mel = torch.zeros(1, 100, 8)
    assert vocoder.decode(mel).shape[-1] == 8 * 256


def test_a_packs_latentsync_python_runs_nothing(pack, tmp_path, monkeypatch, own_config):
    from persona.inference.lipsync import LipsyncSettings, lipsyncer
    from persona.media import write_audio, write_video

    monkeypatch.delenv("PERSONA_LATENTSYNC_PYTHON", raising=False)
    checkout, marker = hostile_checkout(pack.root / "LatentSync", "scripts/inference.py")
    (checkout / "configs" / "unet").mkdir(parents=True)
    (checkout / "configs" / "unet" / "stage2.yaml").write_text("model: {}\n")
    (checkout / "checkpoints").mkdir()
    (checkout / "checkpoints" / "latentsync_unet.pt").write_bytes(b"")
    pack.update("models", {"latentsync": "LatentSync"})
    video = write_video(tmp_path / "v.mp4", (np.zeros((48, 64, 3), np.uint8) for _ in range(4)), 16)
    audio = write_audio(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)
    latentsync = LipsyncSettings(backend="latentsync")
    with pytest.raises(models.CodeRefused, match="checkout whose Python persona would run"):
        lipsyncer(pack, latentsync)
    assert not marker.exists()
    monkeypatch.setenv(models.TRUST_ENV, "1")  # what --trust-pack sets
    with pytest.raises(PersonaError, match="LatentSync failed"):
        backend, _ = lipsyncer(pack, latentsync)
        backend.open().sync(video, audio, tmp_path / "synced.mp4", seed=1)
    assert marker.exists()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "persona", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def test_trust_pack_flag_and_doctor(make_workspace):
    ws = make_workspace(models=False)
    hostile_film(ws.root / "models")
    ws.update("models", {"film": "models/film_net_fp32.pt"})
    plain = json.loads(run_cli("doctor", "--json", cwd=ws.root).stdout)
    film = next(m for m in plain["models"] if m["key"] == "film")
    assert not film["found"] and "refused" in film["problems"][0]
    trusted = json.loads(run_cli("--trust-pack", "doctor", "--json", cwd=ws.root).stdout)
    film = next(m for m in trusted["models"] if m["key"] == "film")
    assert film["found"] and film["source"] == "[models]"
    assert film["path"] == str(ws.root / "models" / "film_net_fp32.pt")


def test_user_config_is_checked(own_config):
    path = own_config(models={"flux": "flux-folder"})
    assert models.user_config().models["flux"] == str(path.parent / "flux-folder")  # relative to the config
    path.write_text("[models]\nnope = 'x'\n")
    with pytest.raises(PersonaError, match="unknown keys: nope"):
        models.user_config()
    path.write_text("trust_pack = 'yes'\n")
    with pytest.raises(PersonaError, match="trust_pack"):
        models.user_config()


def test_pickled_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    import collections
    import pickle

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"weights": collections.Counter()}))
    with pytest.raises(PersonaError) as e:
        models.load_weights(path)
    line = str(e.value)
    assert line.startswith(f"{path}: refused: not a plain weights file") and "\n" not in line
    assert "weights_only" not in line and "trusted source" not in line


def test_every_torch_load_refuses_without_unsafe_advice(tmp_path):
    import collections
    import pickle

    from persona.train.voice_trainer import read_weights

    path = tmp_path / "voice.pt"
    path.write_bytes(pickle.dumps({"ema_model_state_dict": collections.OrderedDict(x=collections.Counter())}))
    with pytest.raises(PersonaError) as e:
        read_weights(path)
    assert "refused: not a plain weights file" in str(e.value) and "weights_only" not in str(e.value)
