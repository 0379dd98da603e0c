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


# --- drops outlast a new selection; the likeness references leave them out ---------------------
def test_dropped_images_stay_out_of_a_new_selection_and_can_come_back(demo_footage, make_workspace):
    from pathlib import Path

    from persona.data.images import ImageSettings, ingest_images
    from persona.faces import hamming

    ws = make_workspace("Demo Astronaut", models=False)
    videos = [Path(demo_footage["files"]["lecture"]), Path(demo_footage["files"]["interview"])]
    settings = dict(min_face=96, sample_every=0.5, max_upscale=4.0)
    ingest_images(ws, videos, [], ImageSettings(count=4, **settings))
    root = ws.path("datasets/images")
    before = read_json(root / "manifest.json")
    face = read_json(root / "reference_face.json")
    assert set(face["files"]) == {e["file"] for e in before} and face["faces"] == len(before)
    gone = before[0]
    drop(ws, f"datasets/images/{gone['file']}")
    face = read_json(root / "reference_face.json")
    assert gone["file"] not in face["files"] and face["faces"] == len(before) - 1

    # another selection (a larger count): the dropped moment is left out, the drop is still on record
    summary = ingest_images(ws, videos, [], ImageSettings(count=5, **settings))
    assert not summary["reused_selection"] and summary["rejected"]["dropped by hand"] >= 1
    after = read_json(root / "manifest.json")
    assert all(hamming(e["phash"], [gone["phash"]])[0] > ImageSettings().dedupe_bits for e in after)
    [record] = listing(ws, "images")["dropped"]
    assert record["phash"] == gone["phash"] and record["path"] == f"datasets/images-review/dropped/{gone['file']}"

    back = keep(ws, record["path"])  # the path `persona dataset list` shows
    kept = read_json(root / "manifest.json")
    assert back["file"] in {f"datasets/images/{e['file']}" for e in kept}
    entry = next(e for e in kept if f"datasets/images/{e['file']}" == back["file"])
    assert entry["phash"] == gone["phash"] and (ws.root / back["file"]).with_suffix(".txt").exists()
    assert Path(back["file"]).name in read_json(root / "reference_face.json")["files"]
    assert len(read_examples(root, ws.token)[0]) == len(kept)


def test_two_drops_of_one_name_keep_their_files_apart(datasets):
    """A new selection numbers its images from 0001 again: a dropped 0002.png and the new 0002.png, both
    dropped, are two files in the review folder, and each comes back under a free name."""
    ws = datasets
    root = ws.path("datasets/images")
    old = (root / "0002.png").read_bytes()
    drop(ws, "images/0002.png")
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(root / "0002.png")  # as a new selection writes it
    (root / "0002.txt").write_text(f"{ws.token}, a new picture\n")
    write_json(root / "manifest.json", [*read_json(root / "manifest.json"),
                                        {"file": "0002.png", "caption": f"{ws.token}, a new picture", "size": [64, 64],
                                         "framing": "close-up"}])
    new = (root / "0002.png").read_bytes()
    drop(ws, "images/0002.png")
    paths = [d["path"] for d in listing(ws, "images")["dropped"]]
    assert len(set(paths)) == 2 and [(ws.root / p).read_bytes() for p in paths] == [old, new]
    back = [keep(ws, p)["file"] for p in paths]
    assert back == ["datasets/images/0002.png", "datasets/images/0004.png"]
    assert [(ws.root / b).read_bytes() for b in back] == [old, new]
    assert (ws.root / back[1]).with_suffix(".txt").read_text().strip() == f"{ws.token}, a new picture"
    assert not listing(ws, "images")["dropped"] and len(read_examples(root, ws.token)[0]) == 4


def test_a_dropped_voice_clip_stays_out_of_the_next_ingest(make_workspace, tmp_path):
    from test_ingest_voice import montage

    from persona.data.voice import VoiceIngestSettings, ingest_voice

    src, _ = montage(tmp_path, "talk.wav", ["town", "en", "town", "main"])
    ws = make_workspace(models=False)
    ingest_voice(ws, [src], VoiceIngestSettings())
    root = ws.path("datasets/voice")
    first = read_json(root / "manifest.json")
    assert len(first) >= 2 and read_json(root / "reference_voice.json")["clips"] == len(first)
    gone = first[0]
    drop(ws, f"datasets/voice/{gone['file']}")
    assert read_json(root / "reference_voice.json")["clips"] == len(first) - 1

    ingest_voice(ws, [src], VoiceIngestSettings())  # a voice ingest writes the dataset anew
    again = read_json(root / "manifest.json")
    assert again and all(e["end"] <= gone["start"] or gone["end"] <= e["start"] for e in again)
    assert read_json(root / "reference_voice.json")["clips"] == len(again)
    report = read_json(root / "report.json")
    assert any(r["reason"] == "dropped_by_hand" for c in report["rejected"] for r in c["reasons"])
    [record] = listing(ws, "voice")["dropped"]
    back = keep(ws, record["path"])
    assert len(read_json(root / "manifest.json")) == len(again) + 1 and (ws.root / back["file"]).exists()
    assert read_json(root / "reference_voice.json")["clips"] == len(again) + 1
