"""`persona status`: the pack at a glance, from a fresh workspace to a rendered video, and never a
crash on partial or old files."""

import json
import subprocess
import sys
from pathlib import Path

from test_first_video import FAST, ingested  # noqa: F401  (the module-scoped fixture: a workspace after ingest)

from persona.files import read_json, record_path
from persona.status import pack_status


def run(*args):
    return subprocess.run([sys.executable, "-m", "persona", *args], capture_output=True, text=True, timeout=600)


def test_a_fresh_workspace_says_to_ingest(make_workspace):
    ws = make_workspace(models=False)
    s = pack_status(ws)
    assert s["consent"] == {"person": "Test Person", "granted_by": "Test Person", "date": "2025-05-01",
                            "scope": "tests", "reference": None}
    assert s["datasets"] == {"images": None, "voice": None, "presenter": None}
    assert s["lora"] is None and s["voice"] is None and s["render"] is None
    assert s["next"] == [{"what": "no datasets yet", "command": "persona ingest FOOTAGE"}]
    out = run("-w", str(ws.root), "status", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(json.dumps(s))
    readable = run("-w", str(ws.root), "status")
    assert readable.returncode == 0 and readable.stdout == ""  # people read stderr; stdout is for --json
    assert "granted by Test Person on 2025-05-01 for tests" in readable.stderr
    assert "persona ingest FOOTAGE" in readable.stderr


def test_no_consent_comes_first(make_workspace):
    s = pack_status(make_workspace(consent=False, models=False))
    assert s["consent"] is None and "[consent]" in s["next"][0]["command"]


def test_partial_old_and_broken_files_are_shown_as_unknown(make_workspace):
    ws = make_workspace(models=False)
    root = ws.root
    for name in ("images", "voice", "presenter"):
        (root / "datasets" / name).mkdir(parents=True)
    (root / "datasets/images/manifest.json").write_text('[{"file": "0001.png"}, ')  # cut short by a kill
    (root / "datasets/images/report.json").write_text(json.dumps({"rejected": ["not", "a", "dict"], "requested": "8"}))
    (root / "datasets/voice/manifest.json").write_text(json.dumps({"not": "a list"}))
    (root / "datasets/voice/report.json").write_text(json.dumps({"totals": 3}))
    (root / "datasets/presenter/manifest.json").write_text(json.dumps(
        ["old entry", {"file": "0001.mp4", "start": "x", "end": 4}, {"file": "0002.mp4", "start": 1.0, "end": 3.5}]))
    ws.update("datasets", {"images": "datasets/images", "voice": "datasets/voice", "presenter": "datasets/presenter"})
    ws.update("lora", {"path": "lora/gone.safetensors", "strength": 0.8})
    (root / "lora").mkdir()
    (root / "lora/gone.safetensors.json").write_text(json.dumps({"key": "k", "summary": {"run_dir": "/etc"}}))
    ws.update("voice", {"checkpoint": "voice/model.safetensors", "vocab": "voice/vocab.txt",
                        "reference_audio": "voice/ref.wav", "reference_text": "hello"})
    (root / "voice").mkdir()
    (root / "voice/training.json").write_text(json.dumps({"best": [1, 2], "history": "none", "choice": None}))
    render = root / "renders/old"
    render.mkdir(parents=True)
    (render / "render.json").write_text(json.dumps({"completed": True, "likeness": {
        "worst": "scene 1", "scenes": [{"speaker_similarity": "high"}, 3, {"speaker_similarity": 0.71, "no_face": 2,
                                                                             "source": "footage"}]}}))
    s = pack_status(ws)
    json.dumps(s)  # JSON-able whatever the files held
    d = s["datasets"]
    assert d["images"]["kept"] == 0 and d["images"]["rejected"] == 0 and d["images"]["requested"] is None
    assert not d["images"]["reference_face"]
    assert d["voice"]["clips"] == 0 and d["voice"]["rejected"] is None and not d["voice"]["reference_voice"]
    assert d["presenter"]["clips"] == 2 and d["presenter"]["seconds"] == 2.5 and d["presenter"]["missing"] == 2
    assert s["lora"]["exists"] is False and s["lora"]["strength"] == 0.8
    assert s["lora"]["run"] is None  # a run folder outside runs/lora is never followed
    assert s["voice"]["exists"] is False and s["voice"]["update"] is None and s["voice"]["val_loss"] is None
    lk = s["render"]["likeness"]
    assert lk["worst"] is None and lk["scenes"] == 2 and lk["lowest_speaker_similarity"] == 0.71
    assert lk["no_face_frames"] == 2 and lk["plot"] is None
    todo = [n["command"] for n in s["next"]]
    assert todo[:2] == ["persona ingest FOOTAGE --images-only", "persona ingest FOOTAGE --voice-only"]
    assert "persona train-lora" in todo and "persona train-voice" in todo
    out = run("-w", str(root), "status")
    assert out.returncode == 0 and "(MISSING)" in out.stderr, out.stderr


def test_after_a_tiny_pipeline(ingested, tmp_path):  # noqa: F811
    from persona.inference.render import render
    from persona.train.lora import resolve, train_lora
    from persona.train.voice import VoiceSettings, train_voice

    ws, script = ingested
    s = pack_status(ws)
    images = read_json(ws.path(ws.pack.datasets.images) / "manifest.json")
    clips = read_json(ws.path(ws.pack.datasets.voice) / "manifest.json")
    presenter = read_json(ws.path(ws.pack.datasets.presenter) / "manifest.json")
    d = s["datasets"]
    assert d["images"]["kept"] == len(images) >= 1 and d["images"]["reference_face"]
    assert d["images"]["rejected"] == sum(read_json(ws.path(ws.pack.datasets.images) / "report.json")["rejected"].values())
    assert d["voice"]["clips"] == len(clips) >= 2 and d["voice"]["reference_voice"]
    assert abs(d["voice"]["minutes"] - sum(c["duration"] for c in clips) / 60) < 0.01
    assert d["presenter"]["clips"] == len(presenter) and d["presenter"]["seconds"] > 0
    assert [n["command"] for n in s["next"]] == ["persona train-lora", "persona train-voice", "persona render topic.txt"]

    settings, recipe = resolve("tiny-cpu")
    lora = train_lora(ws, settings, recipe=recipe)
    voice = train_voice(ws, VoiceSettings(updates=4, val_every=2, batch_frames=1500, val_clips=1, val_repeats=1,
                                          min_minutes=0.1, num_workers=0, learning_rate=1e-3, likeness_steps=4))
    render(ws, None, script_file=script, profile="demo", overrides=FAST, name="status")
    s = pack_status(ws)
    assert s["next"] == []
    lo = s["lora"]
    assert lo["exists"] and lo["steps"] == settings.steps and lo["images"] == len(images)
    assert lo["run"] == ws.relative(lora["run_dir"])
    assert lo["final_loss"] == read_json(record_path(ws.path(lo["path"])))["summary"]["final_loss"]
    v, choice = s["voice"], voice["choice"]  # picked by likeness: ingest stored the reference voice
    assert v["exists"] and (v["update"], v["weights"], v["pick"]) == (choice["update"], choice["weights"], "likeness")
    assert v["val_loss"] == choice["val_loss"] and -1 <= v["speaker_similarity"] <= 1 and v["wer"] >= 0
    assert v["baseline_val_loss"] == voice["baseline_val_loss"] and v["validations"] == 2
    assert v["plot"] == ws.relative(voice["likeness_plot"]) and v["reason"] == choice["reason"]
    r = s["render"]
    record = read_json(ws.root / "renders/status/render.json")
    assert r["name"] == "status" and r["completed"] and r["final"] == "renders/status/final.mp4"
    assert r["likeness"]["summary"] == record["likeness"]["summary"]
    assert r["likeness"]["plot"] == "renders/status/likeness.png"
    assert r["likeness"]["lowest_speaker_similarity"] == min(
        sc["speaker_similarity"] for sc in record["likeness"]["scenes"] if "speaker_similarity" in sc)
    assert -1 <= r["likeness"]["lowest_speaker_similarity"] <= 1
    out = run("-w", str(ws.root), "status", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == json.loads(json.dumps(s))
    readable = run("-w", str(ws.root), "status")
    assert "The pack is complete." in readable.stderr and "renders/status/likeness.png" in readable.stderr
    assert f"update {v['update']} ({v['weights']} weights)" in readable.stderr and "speaker similarity" in readable.stderr


def test_the_lora_pick_is_read_from_its_run(make_workspace):
    """runs/lora/<run>/likeness.json as train-lora --pick likeness writes it (its freshness record names the run)."""
    ws = make_workspace(models=False)
    folder = ws.root / "runs/lora/0123abcd"
    folder.mkdir(parents=True)
    (folder / "likeness.png").write_bytes(b"png")
    (folder / "likeness.json").write_text(json.dumps({
        "pick": "likeness", "match_distance": 0.55, "chosen_step": 400, "best_step": 600, "fallback": False,
        "step_reason": "step 400: identity distance 0.412 (8/8 faces), leak 0%", "strength": 1.1,
        "strength_reason": "strength 1.1: identity distance 0.401, leak 0% (swept 0.8, 1, 1.1, 1.2)",
        "steps": [{"step": 200, "identity": 0.52, "leak": 0.0}, {"step": 400, "identity": 0.412, "leak": 0.125},
                  {"step": 600, "identity": 0.40, "leak": 0.25}], "sweep": []}))
    (ws.root / "lora").mkdir()
    (ws.root / "lora/x.safetensors").write_bytes(b"weights")
    (ws.root / "lora/x.safetensors.json").write_text(json.dumps({"key": "k", "summary": {
        "run_dir": str(folder), "images": 12, "final_loss": 0.31}}))
    ws.update("lora", {"path": "lora/x.safetensors", "strength": 1.1, "steps": 600})
    lo = pack_status(ws)["lora"]
    assert (lo["exists"], lo["run"], lo["images"], lo["final_loss"]) == (True, "runs/lora/0123abcd", 12, 0.31)
    lk = lo["likeness"]
    assert (lk["pick"], lk["step"], lk["strength"], lk["identity_distance"], lk["leak"]) == ("likeness", 400, 1.1, 0.412, 0.125)
    assert lk["scored_steps"] == 3 and lk["plot"] == "runs/lora/0123abcd/likeness.png"
    assert lk["reason"].startswith("step 400: identity distance 0.412") and "strength 1.1" in lk["reason"]
    out = run("-w", str(ws.root), "status")
    assert out.returncode == 0 and "chosen step 400, identity distance 0.412" in out.stderr
