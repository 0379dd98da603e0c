import json
import subprocess
import sys
from pathlib import Path

import pytest

from persona import models
from persona.cli import cli

VERBS = sorted(cli.commands)


def run(*args, cwd=None, stdin=None):
    """The installed console script, as a user runs it (stdin is not a terminal here)."""
    return subprocess.run([sys.executable, "-m", "persona", *args], capture_output=True, text=True, cwd=cwd,
                          input=stdin, timeout=600)


def test_help_lists_verbs():
    out = run("--help")
    assert out.returncode == 0
    for verb in ["init", "doctor", "ingest", "train-lora", "train-voice", "speak", "render", "demo"]:
        assert verb in out.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_with_examples_and_json(verb):
    out = run(verb, "--help")
    assert out.returncode == 0, out.stderr
    assert "Example" in out.stdout and f"persona {verb}" in out.stdout.replace("persona -w", "persona")
    assert "--json" in out.stdout


def test_init_with_flags(tmp_path):
    out = run("init", "Michael Pound", "--granted-by", "Michael Pound", "--scope", "explainer videos",
              "--consent-date", "2025-05-01", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["token"] == "MichaelPound"
    assert summary["consent"]["date"] == "2025-05-01"
    assert (tmp_path / "michael-pound" / "persona.toml").exists()
    again = run("init", "Michael Pound", "--granted-by", "x", "--scope", "y", cwd=tmp_path)
    assert again.returncode == 1 and again.stderr.startswith("error: ") and "Traceback" not in again.stderr


def test_init_without_consent_flags_is_refused_when_not_interactive(tmp_path):
    out = run("init", "Ada Lovelace", cwd=tmp_path, stdin="")
    assert out.returncode == 1
    assert "--granted-by" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = run("init", "Ada Lovelace", "--no-consent", cwd=tmp_path)
    assert out.returncode == 0 and "no consent" in out.stderr


def test_broken_manifest_is_one_line(tmp_path):
    assert run("init", "Ada Lovelace", "--no-consent", cwd=tmp_path).returncode == 0
    manifest = tmp_path / "ada-lovelace" / "persona.toml"
    manifest.write_text(manifest.read_text() + '\n[consent]\nperson = "Ada"\n')
    out = run("doctor", cwd=tmp_path / "ada-lovelace")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "granted_by" in lines[0] and "persona.toml" in lines[0]
    debug = run("--debug", "doctor", cwd=tmp_path / "ada-lovelace")
    assert "Traceback" in debug.stderr


def test_doctor_on_a_bare_machine(tmp_path):
    out = run("doctor", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    keys = {m["key"] for m in report["models"]}
    assert {"flux", "wan-i2v", "f5-tts", "vocos", "florence2", "whisper", "align-en", "llm", "film", "upscaler"} <= keys
    for m in report["models"]:  # a missing model comes with the exact command that fetches it
        assert m["found"] == (m["fetch"] is None) and (m["path"] is not None or not m["found"]), m
        if not m["found"]:
            assert m["fetch"] == models.REGISTRY[m["key"]].fetch_command()
    assert all(b["found"] for b in report["bundled"])
    verdict = report["verdict"]
    assert verdict["can"][:2] == ["init", "demo (tiny random-weight models, CPU)"]
    assert any(c.startswith("ingest: select face frames") for c in verdict["can"])
    assert not set(verdict["can"]) & set(verdict["cannot"])
    if not report["system"]["gpu"]["available"]:
        assert {c.split(":")[0] for c in verdict["cannot"] if "needs a GPU" in c} >= {"train-lora", "train-voice"}
    human = run("doctor", cwd=tmp_path)
    assert human.returncode == 0 and "hf download" in human.stderr


def test_workspace_flag(tmp_path):
    run("init", "Ada Lovelace", "--no-consent", cwd=tmp_path)
    out = run("-w", str(tmp_path / "ada-lovelace"), "doctor", "--json")
    assert json.loads(out.stdout)["system"]["workspace"] == str((tmp_path / "ada-lovelace").resolve())
    out = run("-w", str(tmp_path / "nowhere"), "doctor")
    assert out.returncode == 1 and "persona init" in out.stderr


@pytest.mark.slow
def test_demo_keeps_a_workspace(tmp_path):
    out = run("demo", "--keep", str(tmp_path / "d"), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["kept"] and list(summary["steps"]) == ["tiny models", "footage", "init", "doctor", "ingest",
                                                          "first video", "train-lora", "train-voice", "speak",
                                                          "render"]
    assert summary["ingest"]["images"] >= 1 and summary["ingest"]["voice_clips"] >= 1
    assert 0 < summary["speak_seconds"][0] < summary["speak_seconds"][1]
    first, video = summary["first-video"], summary["render"]
    assert first["zero_shot"] == ["voice", "likeness"] and first["seconds"] > 0  # before any training
    assert video["zero_shot"] == [] and video["fps"] >= 30 and min(video["size"]) >= 360 and video["seconds"] > 0
    from persona.workspace import Workspace

    ws = Workspace(tmp_path / "d" / "workspace")
    assert ws.pack.consent is not None and ws.pack.models["flux"].endswith("flux")
    assert ws.pack.lora is not None and ws.path(ws.pack.lora.path) == Path(summary["lora"])
    assert summary["doctor_missing"] == ["speaker-embedding", "latentsync", "comfyui", "sd-scripts"]  # optional or checkouts
