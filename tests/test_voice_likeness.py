"""train-voice picks its checkpoint by how much it sounds like the person: the pure picking rule on
planted scores, and a tiny run that scores, records, plots, resumes identically and exports the pick."""

import json
import random
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from persona.files import read_json
from persona.samples import synthetic_voice_dataset
from persona.train.voice import VoiceSettings, plan_training, train_voice
from persona.train.voice_likeness import (
    TIE,
    candidates,
    held_out_lines,
    pick_voice,
    word_error_rate,
    word_errors,
)
from persona.train.voice_data import Clip

TINY = dict(updates=4, val_every=2, batch_frames=1500, val_clips=2, val_repeats=1, min_minutes=0.5,
            learning_rate=1e-3, num_workers=0, likeness_clips=2, likeness_steps=4, likeness_every=1)


def cand(update, weights, sim, wer=None, loss=1.0):
    return {"update": update, "weights": weights, "val_loss": loss, "speaker_similarity": sim, "wer": wer}


def test_scoring_stays_within_its_share_of_a_run():
    # GPU-sized plans on the 24 GB recipe's batch (6400 frames): half an hour of speech is 1300 updates,
    # validated every 65; ten hours, 26350 updates validated every 1317.
    s = VoiceSettings(batch_frames=6400)
    half_hour = plan_training(s, 26, 1800, 250, 8, "cuda")
    ten_hours = plan_training(s, 527, 36000, 5000, 8, "cuda")
    assert (half_hour.val_every, ten_hours.val_every) == (65, 1317)
    assert half_hour.likeness_every == 5 and ten_hours.likeness_every == 1
    # what the interval keeps: scoring work per validation over training work between two scorings
    per_validation = 2.5 * s.likeness_clips * 2 * s.likeness_steps * 2 * 14 * 93.75
    assert per_validation / (half_hour.likeness_every * half_hour.val_every * 3 * 6400) <= 0.04
    assert plan_training(s.model_copy(update={"likeness_every": 2}), 26, 1800, 250, 8, "cuda").likeness_every == 2
    assert plan_training(s.model_copy(update={"likeness_clips": 0}), 26, 1800, 250, 8, "cuda").likeness_every == 1
    # a tiny CPU run scores only the base and the end unless told otherwise
    assert plan_training(VoiceSettings(**{**TINY, "likeness_every": None}), 4, 60, 10, 2, "cpu").likeness_every > 2


# ---- the rule -----------------------------------------------------------------------------------
def test_word_error_rate():
    assert word_errors(["a", "b", "c"], ["a", "x", "c", "d"]) == 2  # one substitution, one insertion
    assert word_error_rate(["Hello, world!"], ["hello world"]) == 0.0  # case and punctuation do not count
    assert word_error_rate(["one two three four", "five"], ["one three four", "six"]) == 2 / 5
    assert word_error_rate(["it's fine"], [""]) == 1.0


def test_best_similarity_wins_even_raw():
    c = [cand(2, "ema", 0.70), cand(2, "raw", 0.78), cand(4, "ema", 0.74), cand(4, "raw", 0.73)]
    choice = pick_voice(c)
    assert (choice["update"], choice["weights"], choice["pick"]) == (2, "raw", "likeness")
    assert "speaker similarity 0.780" in choice["reason"] and "best of 4" in choice["reason"]


def test_word_error_rate_weighs_in():
    c = [cand(2, "ema", 0.82, wer=0.40), cand(4, "ema", 0.80, wer=0.05), cand(4, "raw", 0.79, wer=0.0)]
    assert pick_voice(c, wer_weight=0.5)["update"] == 4  # 0.82 - 0.20 < 0.80 - 0.025
    assert pick_voice(c, wer_weight=0.0)["update"] == 2  # similarity alone
    # WER breaks a tie in similarity
    tie = [cand(2, "ema", 0.8000, wer=0.3, loss=0.5), cand(4, "ema", 0.8002, wer=0.1, loss=0.9)]
    assert pick_voice(tie, wer_weight=0.0)["update"] == 4
    # WER counts only when every candidate has one (Whisper was there for all of them)
    partial = [cand(2, "ema", 0.82, wer=0.9), cand(4, "ema", 0.80, wer=None)]
    assert pick_voice(partial)["update"] == 2 and "word error rate" not in pick_voice(partial)["reason"]


def test_loss_breaks_ties_then_ema_before_raw():
    c = [cand(2, "ema", 0.8001, loss=1.2), cand(4, "ema", 0.8004, loss=1.1), cand(6, "raw", 0.7, loss=0.1)]
    choice = pick_voice(c)
    assert choice["update"] == 4 and "loss decided" in choice["reason"]
    same = [cand(2, "raw", 0.8, loss=1.0), cand(2, "ema", 0.8, loss=1.0)]
    assert pick_voice(same)["weights"] == "ema"
    assert abs(0.8004 - 0.8001) < TIE


def test_pick_loss_and_fallback_without_scores():
    c = [cand(2, "ema", 0.9, loss=1.3), cand(2, "raw", 0.95, loss=0.2), cand(4, "ema", 0.5, loss=1.1)]
    loss = pick_voice(c, pick="loss")
    assert (loss["update"], loss["weights"], loss["pick"]) == (4, "ema", "loss")  # only EMA weights, as before
    assert "--pick loss" in loss["reason"]
    unscored = [cand(2, "ema", None, loss=1.3), cand(4, "ema", None, loss=1.1)]
    fallback = pick_voice(unscored)
    assert (fallback["update"], fallback["pick"], fallback["fallback"]) == (4, "loss", True)
    assert pick_voice([]) is None


def test_candidates_leave_the_base_out():
    history = [{"update": 0, "val_loss": 2.0, "likeness": {"ema": {"speaker_similarity": 0.9, "wer": 0.0}}},
               {"update": 2, "val_loss": 1.5, "raw_val_loss": 1.6,
                "likeness": {"ema": {"speaker_similarity": 0.5, "wer": 0.2}, "raw": {"speaker_similarity": 0.6, "wer": 0.1}}},
               {"update": 4, "val_loss": 1.4}]  # validated before scoring existed
    assert candidates(history) == [cand(2, "ema", 0.5, 0.2, 1.5), cand(2, "raw", 0.6, 0.1, 1.6),
                                   cand(4, "ema", None, None, 1.4)]


def test_the_pick_so_far_is_the_pick_at_the_end():
    """The trainer keeps only the weights of the best pick so far: that is only right if a later
    validation can never make an earlier, unkept candidate the winner."""
    rng = random.Random(3)
    for _ in range(200):
        cands, kept = [], None
        for update in range(1, 9):
            for w in ("ema", "raw"):
                cands.append(cand(update, w, round(rng.uniform(0.79, 0.81), 4), round(rng.uniform(0, 0.02), 3),
                                  round(rng.uniform(1, 1.01), 3)))
            choice = pick_voice(cands)
            if choice["update"] == update:
                kept = (choice["update"], choice["weights"])
        final = pick_voice(cands)
        assert (final["update"], final["weights"]) == kept


def test_held_out_lines():
    clips = [Clip(Path(f"{i}.wav"), t, s) for i, (t, s) in enumerate([("B line.", 2.0), ("A line.", 1.5),
                                                                       (" ", 1.0), ("...", 1.0)])]
    assert [(line.text, line.seconds) for line in held_out_lines(clips, 5)] == [("A line.", 1.5), ("B line.", 2.0)]
    assert len(held_out_lines(clips, 1)) == 1


# ---- a tiny run ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def voice_dataset(tmp_path_factory):
    """The synthetic voice dataset with the reference voice ingest stores (Resemblyzer)."""
    from persona.likeness import write_reference_voice

    folder = synthetic_voice_dataset(tmp_path_factory.mktemp("voice") / "voice", clips=24)
    write_reference_voice(folder / "reference_voice.json", sorted((folder / "wavs").glob("*.wav")))
    return folder


def _workspace(make_workspace, voice_dataset, name):
    ws = make_workspace(name)
    shutil.copytree(voice_dataset, ws.root / "datasets" / "voice")
    ws.update("datasets", {"voice": "datasets/voice"})
    return ws


def test_a_tiny_run_scores_picks_and_exports(make_workspace, voice_dataset, capsys, tmp_path):
    from persona.status import pack_status

    ws = _workspace(make_workspace, voice_dataset, "Voice One")
    paused = train_voice(ws, VoiceSettings(**TINY), stop_at=2)
    picked = Path(paused["checkpoints"]) / "picked.safetensors"
    kept = picked.read_bytes()  # update 2 is the only trained candidate so far: it is kept
    picked.unlink()  # as if killed between model_2.pt and picked.safetensors
    again = train_voice(ws, VoiceSettings(**TINY), stop_at=2)
    assert again["resumed_from"] == 2 and picked.read_bytes() == kept  # rebuilt from model_2.pt on resume
    done = train_voice(ws, VoiceSettings(**TINY))
    assert (done["resumed_from"], done["finished"]) == (2, True)
    err = capsys.readouterr().err
    assert "likeness: 2 held-out line(s)" in err and "word error rate (Whisper)" in err and "chose update" in err

    run = Path(done["run_dir"])
    history = read_json(run / "run.json")["history"]
    assert [h["update"] for h in history] == [0, 2, 4]
    assert set(history[0]["likeness"]) == {"ema"} and all(set(h["likeness"]) == {"ema", "raw"} for h in history[1:])
    for h in history:
        for s in h["likeness"].values():
            assert -1 <= s["speaker_similarity"] <= 1 and len(s["clips"]) == 2
            assert s["wer"] is not None and s["wer"] >= 0  # the tiny Whisper is in [models]
            assert all(-1 <= c["similarity"] <= 1 and isinstance(c["heard"], str) for c in s["clips"])
    assert all(h["raw_val_loss"] > 0 for h in history[1:])

    choice = done["choice"]
    assert choice == {**pick_voice(candidates(history)), "source": "picked.safetensors"}
    record = read_json(run / "likeness.json")
    assert record["choice"]["update"] == choice["update"] and len(record["candidates"]) == 4
    assert record["judge"]["steps"] == TINY["likeness_steps"] and record["judge"]["asr"]
    assert record["baseline"] == history[0]["likeness"]["ema"]
    assert (run / "likeness.png").stat().st_size > 0 and done["likeness_plot"] == str(run / "likeness.png")

    # the export is the picked weight set, under the keys every reader of [voice] expects
    model = ws.path(ws.pack.voice.checkpoint)
    assert picked == run / "checkpoints" / "picked.safetensors" and model.read_bytes() == picked.read_bytes()
    with safe_open(str(picked), "pt") as f:
        assert json.loads(f.metadata()["picked"]) == {"update": choice["update"], "weights": choice["weights"]}
        assert all(k.startswith("ema_model.") for k in f.keys())
    from persona.inference.speech import speak

    assert speak(ws, "Hi there.", tmp_path / "hi.wav", steps=2)["seconds"] > 0  # the speaker loads the pick as is
    training = read_json(model.parent / "training.json")
    assert training["choice"] == choice and training["run_dir"] == ws.relative(run)

    # persona status shows the pick and its scores
    v = pack_status(ws)["voice"]
    assert (v["update"], v["weights"], v["pick"]) == (choice["update"], choice["weights"], "likeness")
    assert v["speaker_similarity"] == round(choice["speaker_similarity"], 4) and v["wer"] == round(choice["wer"], 4)
    assert v["plot"] == ws.relative(run / "likeness.png") and v["reason"] == choice["reason"]

    # an uninterrupted run hears the same takes and picks the same weights
    ws2 = _workspace(make_workspace, voice_dataset, "Voice Two")
    straight = train_voice(ws2, VoiceSettings(**TINY))
    history2 = read_json(Path(straight["run_dir"]) / "run.json")["history"]
    assert [h["likeness"] for h in history2] == [h["likeness"] for h in history]
    assert straight["choice"] == choice
    assert ws2.path(ws2.pack.voice.checkpoint).read_bytes() == model.read_bytes()

    # --pick loss: nothing retrained, today's export (the lowest-loss EMA weights)
    by_loss = train_voice(ws, VoiceSettings(**{**TINY, "pick": "loss"}))
    assert by_loss["resumed_from"] == 4 and by_loss["choice"]["pick"] == "loss"
    assert model.read_bytes() == (run / "checkpoints" / "best.safetensors").read_bytes()
    assert by_loss["choice"]["update"] == done["best"]["update"]
    assert paused["update"] == 2


def test_without_a_reference_voice_the_loss_picks(make_workspace, voice_dataset, capsys):
    ws = _workspace(make_workspace, voice_dataset, "Voice Three")
    (ws.root / "datasets/voice/reference_voice.json").unlink()
    done = train_voice(ws, VoiceSettings(**TINY))
    assert "picked by validation loss" in capsys.readouterr().err
    assert done["choice"]["pick"] == "loss" and done["choice"]["fallback"]
    assert "likeness" not in read_json(Path(done["run_dir"]) / "run.json")["history"][1]
    model = ws.path(ws.pack.voice.checkpoint)
    assert model.read_bytes() == (Path(done["run_dir"]) / "checkpoints" / "best.safetensors").read_bytes()
    assert json.loads((model.parent / "training.json").read_text())["choice"]["pick"] == "loss"
