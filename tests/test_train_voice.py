"""`persona train-voice` on the tiny DiT and tiny Vocos, offline: data checks, hyperparameter plan,
resume, checkpoint selection, export, and speech through `persona speak`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from persona.samples import SPEECH_TEXT, synthetic_voice_dataset
from persona.errors import PersonaError
from persona.files import read_json, write_json
from persona.inference.speech import speak
from persona.train.voice import VoiceSettings, plan_training, read_weights, train_voice
from persona.train.voice_data import read_voice_dataset, split_clips, unknown_characters

TINY = dict(updates=4, val_every=2, batch_frames=1500, val_clips=2, val_repeats=2, min_minutes=0.5,
            learning_rate=1e-3, num_workers=1)


@pytest.fixture(scope="session")
def voice_dataset(tmp_path_factory):
    return synthetic_voice_dataset(tmp_path_factory.mktemp("voice") / "voice")


@pytest.fixture
def voice_ws(make_workspace, voice_dataset):
    ws = make_workspace()
    shutil.copytree(voice_dataset, ws.root / "datasets" / "voice")
    ws.update("datasets", {"voice": "datasets/voice"})
    return ws


def _manifest(ws):
    return ws.root / "datasets" / "voice" / "manifest.json"


# ---- the plan ------------------------------------------------------------------------------------
def test_plan_scales_with_the_data_and_the_batch():
    s = VoiceSettings(batch_frames=6400)
    hour = plan_training(s, batches_per_epoch=60, train_seconds=3600, train_clips=500, val_clips=8, device="cuda")
    ten_hours = plan_training(s, 600, 36000, 5000, 8, "cuda")
    assert hour.total_updates == 50 * 60 and ten_hours.total_updates == s.max_updates  # epochs x batches, capped
    assert hour.warmup_updates == round(0.05 * hour.total_updates)  # a fraction, not F5's fixed 20,000
    assert hour.val_every == hour.total_updates // 20
    small = plan_training(VoiceSettings(batch_frames=3200), 60, 3600, 500, 8, "cuda")
    assert small.learning_rate == pytest.approx(1e-5) and hour.learning_rate == pytest.approx(1e-5 * 2**0.5, rel=1e-2)
    few = plan_training(s, 2, 120, 20, 2, "cuda")
    assert few.total_updates == s.min_updates
    explicit = plan_training(VoiceSettings(updates=10, learning_rate=3e-4, optimizer="adamw8bit"), 60, 3600, 500, 8, "cpu")
    assert (explicit.total_updates, explicit.warmup_updates, explicit.learning_rate) == (10, 1, 3e-4)
    assert (explicit.precision, explicit.optimizer) == ("fp32", "adamw")  # the CPU has no bf16 autocast or bnb


# ---- the data ------------------------------------------------------------------------------------
def test_reads_the_manifest_and_leaves_out_untranscribed_clips(voice_ws):
    entries = read_json(_manifest(voice_ws))
    entries[0]["text"] = None
    entries[1]["file"] = "wavs/missing.wav"
    write_json(_manifest(voice_ws), entries)
    data = read_voice_dataset(voice_ws.path("datasets/voice"))
    assert len(data.clips) == len(entries) - 2 and data.untranscribed == 1 and len(data.missing) == 1
    assert all(c.text == SPEECH_TEXT and 4 < c.seconds < 7 for c in data.clips)
    assert data.reference.name == "reference.wav" and data.reference_text == SPEECH_TEXT
    train, val = split_clips(data.clips, val_clips=8)
    assert len(val) == 1 and not {c.file for c in val} & {c.file for c in train}


def test_metadata_csv_when_there_is_no_manifest(voice_ws):
    _manifest(voice_ws).unlink()
    assert len(read_voice_dataset(voice_ws.path("datasets/voice")).clips) == 12


def test_refused_without_consent(voice_ws):
    voice_ws.update("consent", None)
    with pytest.raises(PersonaError, match="consent"):
        train_voice(voice_ws, VoiceSettings(**TINY))
    assert not (voice_ws.root / "runs").exists()


def test_no_transcripts_points_to_an_asr_model(voice_ws):
    write_json(_manifest(voice_ws), [dict(e, text=None) for e in read_json(_manifest(voice_ws))])
    with pytest.raises(PersonaError, match="none with a transcript.*ASR.*persona doctor"):
        train_voice(voice_ws, VoiceSettings(**TINY))


def test_too_little_audio_is_refused_and_under_an_hour_warned(voice_ws, capsys):
    with pytest.raises(PersonaError, match=r"only 1\.1 min .* at least 5 min"):
        train_voice(voice_ws, VoiceSettings(**{**TINY, "min_minutes": 5}))
    with pytest.raises(PersonaError, match="voice dataset"):
        voice_ws.update("datasets", {"voice": None})
        train_voice(voice_ws, VoiceSettings(**TINY))
    voice_ws.update("datasets", {"voice": "datasets/voice"})
    train_voice(voice_ws, VoiceSettings(**TINY), stop_at=1)
    assert "an hour or more" in capsys.readouterr().err


def test_characters_outside_the_vocab_are_reported(voice_ws, capsys):
    entries = read_json(_manifest(voice_ws))
    entries[2]["text"] = "It costs 5€ ☃ today."
    write_json(_manifest(voice_ws), entries)
    data = read_voice_dataset(voice_ws.path("datasets/voice"))
    from persona.models import f5_pretrained_vocab
    from persona.train.voice_data import read_vocab

    assert unknown_characters(data.clips, read_vocab(f5_pretrained_vocab())) == {"☃": 1}
    train_voice(voice_ws, VoiceSettings(**TINY), stop_at=1)
    err = capsys.readouterr().err
    assert "outside the F5-TTS vocab" in err and "☃" in err and err.index("☃") < err.index("plan:")


# ---- models and weights --------------------------------------------------------------------------
def test_missing_base_or_vocoder_points_to_doctor(voice_ws, tmp_path):
    voice_ws.update("models", {"vocos": str(tmp_path / "nowhere")})
    with pytest.raises(PersonaError, match="does not exist.*persona doctor"):
        train_voice(voice_ws, VoiceSettings(**TINY))
    with pytest.raises(PersonaError, match="does not exist.*persona doctor"):
        train_voice(voice_ws, VoiceSettings(**TINY), base=tmp_path / "no-f5")


def test_a_vocab_that_does_not_match_the_checkpoint_is_refused(voice_ws, tiny_models, tmp_path):
    base = shutil.copytree(tiny_models["f5-tts"], tmp_path / "f5")
    vocab = base / "F5TTS_v1_Base" / "vocab.txt"
    vocab.write_text("".join(vocab.read_text(encoding="utf-8").splitlines(keepends=True)[:100]), encoding="utf-8")
    with pytest.raises(PersonaError, match="has 100 tokens but the checkpoint was trained with 2545"):
        train_voice(voice_ws, VoiceSettings(**TINY), base=base)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_checkpoint_cannot_run_code(voice_ws, tmp_path):
    evil = tmp_path / "model_1250000.pt"
    marker = tmp_path / "ran.txt"
    torch.save({"ema_model_state_dict": _RunsCode(marker)}, evil)
    with pytest.raises(PersonaError, match="refused: not a plain weights file"):
        read_weights(evil)
    with pytest.raises(PersonaError, match="refused"):
        train_voice(voice_ws, VoiceSettings(**TINY), base=evil)
    assert not marker.exists()


# ---- the whole run -------------------------------------------------------------------------------
def test_train_resume_export_and_speak(voice_ws, voice_dataset, tiny_models, tmp_path):
    settings = VoiceSettings(**TINY)

    paused = train_voice(voice_ws, settings, stop_at=2)
    checkpoints = Path(paused["checkpoints"])
    assert checkpoints.parent == Path(paused["run_dir"]) and checkpoints.parent.parent == voice_ws.root / "runs" / "voice"
    assert (paused["update"], paused["finished"], paused["resumed_from"]) == (2, False, 0)
    assert sorted(p.name for p in checkpoints.glob("model_*.pt")) == ["model_2.pt"]
    assert voice_ws.pack.voice is None and "voice" not in paused
    (data,) = (voice_ws.root / "runs" / "voice").glob("data-*")
    assert read_json(data / "train" / "duration.json")["duration"] and (data / "val" / "raw.arrow").exists()

    done = train_voice(voice_ws, settings)
    assert (done["resumed_from"], done["update"], done["finished"]) == (2, 4, True)
    history = read_json(Path(done["run_dir"]) / "run.json")["history"]
    assert [h["update"] for h in history] == [0, 2, 4]
    best = min(history[1:], key=lambda h: h["val_loss"])
    assert done["best"] == best and done["baseline_val_loss"] == history[0]["val_loss"]
    with safe_open(str(checkpoints / "best.safetensors"), "pt") as f:
        assert int(f.metadata()["update"]) == best["update"]

    # the export: the best checkpoint's EMA weights under the keys f5's load_checkpoint(use_ema=True) reads
    voice = voice_ws.pack.voice
    model = voice_ws.path(voice.checkpoint)
    assert (model.read_bytes() == (checkpoints / "best.safetensors").read_bytes())
    exported = load_file(str(model))
    assert exported and all(k.startswith("ema_model.") for k in exported)
    base = load_file(str(tiny_models["f5-tts"] / "F5TTS_v1_Base" / "model_1250000.safetensors"))
    key = "ema_model.transformer.proj_out.weight"
    assert exported[key].shape == base[key].shape and not torch.equal(exported[key], base[key])
    assert voice_ws.path(voice.vocab).read_text() == (tiny_models["f5-tts"] / "F5TTS_v1_Base" / "vocab.txt").read_text()
    assert json.loads((model.parent / "model_config.json").read_text())["arch"]["dim"] == 64
    assert voice.reference_text == SPEECH_TEXT and voice_ws.path(voice.reference_audio).exists()

    # an uninterrupted run (validating every update, which must not change the weights) ends the same
    ws2_root = tmp_path / "ws2"
    from persona.workspace import Workspace

    ws2 = Workspace.create(ws2_root, "Other", consent=voice_ws.pack.consent)
    ws2.update("models", dict(voice_ws.pack.models), replace=True)
    shutil.copytree(voice_dataset, ws2_root / "datasets" / "voice")
    ws2.update("datasets", {"voice": "datasets/voice"})
    straight = train_voice(ws2, VoiceSettings(**{**TINY, "val_every": 1}))
    assert straight["resumed_from"] == 0
    a = torch.load(checkpoints / "model_4.pt", weights_only=True)["model_state_dict"]
    b = torch.load(Path(straight["checkpoints"]) / "model_4.pt", weights_only=True)["model_state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(list(Path(straight["checkpoints"]).glob("model_*.pt"))) == settings.keep_last

    # finished work is not redone; changed settings start over
    again = train_voice(voice_ws, settings)
    assert (again["resumed_from"], again["update"]) == (4, 4)
    changed = train_voice(voice_ws, VoiceSettings(**{**TINY, "learning_rate": 5e-4}), stop_at=1)
    assert (changed["resumed_from"], changed["update"]) == (0, 1)
    # ... in a folder of its own: the finished run's checkpoints are still there
    assert changed["run_dir"] != done["run_dir"] and (checkpoints / "model_4.pt").exists()

    # `persona speak` loads the export unchanged; more text, more speech
    short = speak(voice_ws, "Hi.", tmp_path / "short.wav", steps=2)
    long = speak(voice_ws, "This sentence is a good deal longer than the first one, so it lasts longer.",
                 tmp_path / "long.wav", steps=2)
    assert long["seconds"] > short["seconds"] > 0


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(voice_ws, capsys):
    settings = VoiceSettings(**{**TINY, "val_every": 1})
    checkpoints = Path(train_voice(voice_ws, settings, stop_at=3)["checkpoints"])
    assert sorted(p.name for p in checkpoints.glob("model_*.pt")) == ["model_2.pt", "model_3.pt"]
    (checkpoints / "model_3.pt").write_bytes(b"cut short")
    again = train_voice(voice_ws, settings, stop_at=3)
    assert (again["resumed_from"], again["update"]) == (2, 3)
    assert "model_3.pt cannot be read" in capsys.readouterr().err


def test_cli_json_and_one_line_errors(voice_ws):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "persona", "-w", str(voice_ws.root), "train-voice", *args],
                              capture_output=True, text=True, timeout=600)

    out = run("--updates", "2", "--val-every", "1", "--batch-frames", "1500", "--min-minutes", "0.5", "--pick", "loss",
              "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)  # nothing but the summary on stdout
    assert summary["finished"] and summary["voice"]["checkpoint"] == "voice/model.safetensors"
    assert summary["choice"]["pick"] == "loss" and "chose update" in out.stderr
    assert summary["plan"]["total_updates"] == 2 and summary["recipe"] is None
    refused = run("--min-minutes", "30")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "at least 30 min" in refused.stderr and "Traceback" not in refused.stderr
    bad_recipe = run("--recipe", "f5-1gb")
    assert bad_recipe.returncode == 1 and "f5-12gb, f5-24gb, f5-80gb" in bad_recipe.stderr
