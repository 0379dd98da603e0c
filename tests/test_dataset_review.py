"""`persona dataset drop|keep`: one image or voice clip out of its dataset by hand, and back, with every
file the trainers read kept consistent; and the background jobs the studio runs verbs as."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from persona import jobs
from persona.data.review import drop, keep, listing
from persona.errors import PersonaError
from persona.files import read_json, write_json
from persona.samples import synthetic_voice_dataset
from persona.train.lora_data import read_examples
from persona.train.voice_data import read_voice_dataset


@pytest.fixture
def datasets(make_workspace):
    """A workspace with an image dataset (in ingest's layout) and a voice dataset."""
    ws = make_workspace(models=False)
    root = ws.path("datasets/images")
    root.mkdir(parents=True)
    manifest = []
    for i in range(1, 4):
        name = f"{i:04d}.png"
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(root / name)
        caption = f"{ws.token}, picture {i}"
        (root / name).with_suffix(".txt").write_text(caption + "\n")
        manifest.append({"file": name, "caption": caption, "size": [64, 64], "framing": "close-up"})
    write_json(root / "manifest.json", manifest)
    synthetic_voice_dataset(ws.path("datasets/voice"), clips=3)
    ws.update("datasets", {"images": "datasets/images", "voice": "datasets/voice"})
    return ws


def _cli(ws, *args):
    return subprocess.run([sys.executable, "-m", "persona", "-w", str(ws.root), "dataset", *args, "--json"],
                          capture_output=True, text=True)


def test_drop_and_keep_an_image(datasets):
    ws = datasets
    out = _cli(ws, "drop", "images/0002.png")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["dropped"][0] == {"kind": "images", "file": "datasets/images/0002.png",
                                                   "reason": "dropped by hand", "kept": 2, "dropped": 1}
    root = ws.path("datasets/images")
    assert [e["file"] for e in read_json(root / "manifest.json")] == ["0001.png", "0003.png"]
    entry = read_json(root / "dropped.json")[0]
    assert entry["file"] == "0002.png" and entry["reason"] == "dropped by hand" and entry["caption"].endswith("picture 2")
    assert not (root / "0002.png").exists() and not (root / "0002.txt").exists()
    assert ws.path("datasets/images-review/dropped/0002.png").exists()
    assert [json.loads(x)["file_name"] for x in (root / "metadata.jsonl").read_text().splitlines()] == ["0001.png", "0003.png"]
    assert ws.path("datasets/images-review/contact_sheet.png").exists()
    examples, _ = read_examples(root, ws.token)  # what train-lora reads
    assert [e.image.name for e in examples] == ["0001.png", "0003.png"]

    again = _cli(ws, "drop", "datasets/images/0002.png")  # one line, the way back in it
    assert again.returncode == 1 and "was already dropped" in again.stderr and "dataset keep" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    r = keep(ws, "datasets/images/0002.png")
    assert r["kept"] == 3 and r["dropped"] == 0
    assert [e["file"] for e in read_json(root / "manifest.json")] == ["0001.png", "0002.png", "0003.png"]
    assert (root / "0002.txt").read_text().strip().endswith("picture 2") and read_json(root / "dropped.json") == []
    assert "reason" not in read_json(root / "manifest.json")[1]


def test_drop_a_voice_clip(datasets):
    ws = datasets
    r = drop(ws, ws.path("datasets/voice/wavs/0001.wav"))
    assert r == {"kind": "voice", "file": "datasets/voice/wavs/0001.wav", "reason": "dropped by hand", "kept": 2,
                 "dropped": 1}
    folder = ws.path("datasets/voice")
    rows = (folder / "metadata.csv").read_text().splitlines()
    assert rows[0] == "audio_file|text" and len(rows) == 3 and not any("0001.wav" in x for x in rows)
    data = read_voice_dataset(folder)  # what train-voice reads
    assert sorted(c.file.name for c in data.clips) == ["0002.wav", "0003.wav"]
    listed = listing(ws, "voice")
    assert [e["path"] for e in listed["dropped"]] == ["datasets/voice-review/dropped/wavs/0001.wav"]


def test_drop_refusals(datasets):
    ws = datasets
    with pytest.raises(PersonaError, match="not a file of the image or voice dataset"):
        drop(ws, "persona.toml")
    with pytest.raises(PersonaError, match="not in the dataset's manifest"):
        drop(ws, "images/0009.png")
    drop(ws, "images/0001.png")
    drop(ws, "images/0002.png")
    with pytest.raises(PersonaError, match="last one left"):
        drop(ws, "images/0003.png")
    with pytest.raises(PersonaError, match="was not dropped"):
        keep(ws, "images/0003.png")


def _wait(root, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    while (job := jobs.read(root, job_id))["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def test_a_job_runs_the_verb_and_keeps_its_error(datasets, tmp_path):
    ws = datasets
    job = jobs.start(ws.root, ["dataset", "drop", "images/0001.png"], "drop")
    with pytest.raises(PersonaError, match=r"busy: drop \(pid \d+\)"):  # one job at a time
        jobs.start(ws.root, ["dataset", "drop", "images/0002.png"])
    done = _wait(ws.root, job["id"])
    assert done["state"] == "done" and done["rc"] == 0 and done["summary"]["dropped"][0]["kept"] == 2
    bad = _wait(ws.root, jobs.start(ws.root, ["dataset", "drop", "images/0001.png"])["id"])
    assert bad["state"] == "failed" and bad["rc"] == 1
    assert bad["message"] == ("error: datasets/images/0001.png: was already dropped — `persona dataset keep "
                              "datasets/images/0001.png` puts it back")
    assert [j["id"] for j in jobs.jobs(ws.root)] == [bad["id"], job["id"]]


def test_stop_is_ctrl_c_and_the_job_says_so(make_workspace):
    ws = make_workspace(models=False)
    job = jobs.start(ws.root, ["demo"], "demo")  # minutes of work: stopped long before it ends
    deadline = time.monotonic() + 60
    while not jobs.read(ws.root, job["id"]).get("pid"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(3)  # inside the verb by now
    jobs.stop(ws.root, job["id"])
    final = _wait(ws.root, job["id"], timeout=60)
    assert final["state"] == "stopped" and final["rc"] == jobs.INTERRUPTED, final
    assert final["message"] == "demo stopped: finished work is kept; start it again to resume"
