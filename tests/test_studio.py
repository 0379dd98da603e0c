"""`persona studio` in a real headless Chromium (Debian's `chromium`, driven by Playwright): the whole
lifecycle through the page on the tiny models and the demo footage, and bad input shown as one line
with nothing lost. One studio server and one workspace for the module; the tests run in order.

Screenshots go to $PERSONA_STUDIO_SHOTS (default: the module's tmp folder), for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from persona.files import read_json

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)
except ImportError:  # the browser tests skip; the others run
    expect = sync_playwright = None

JOB_TIMEOUT = 600_000  # ms: a job on two busy CPU cores
# The demo's ingest settings (its 360p faces are small), as recipe files typed into the page.
IMAGE_RECIPE = "count = 4\nmin_face = 96\nsample_every = 0.5\nresolution = 512\n"
VOICE_RECIPE = "drop_truncated = false\nmin_asr_logprob = -1e9\n"  # the tiny Whisper's transcripts are noise
PRESENTER_RECIPE = "min_face = 96\ncount = 1\nmax_seconds = 6.0\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_listening_beyond_this_machine_needs_a_password(tmp_path):
    for args in (["--listen"], ["--share"], ["--listen", "--auth", "nopassword"]):
        out = subprocess.run([sys.executable, "-m", "persona", "studio", *args, "--root", str(tmp_path)],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PERSONA_STUDIO_AUTH": ""})
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "--auth" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_models, demo_footage):
    """A studio server (`persona studio`, the real verb) on a free port, in a folder of its own."""
    import tomlkit

    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (`apt-get install chromium`; .ci/run does it)")
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")

    from persona.models import spec

    root = tmp_path_factory.mktemp("studio")
    shots = Path(os.environ.get("PERSONA_STUDIO_SHOTS") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    # Code-bearing tiny models (FILM) live in the user's own config, where persona honours them.
    config = root / "xdg" / "persona" / "config.toml"
    config.parent.mkdir(parents=True)
    doc = tomlkit.document()
    doc["models"] = {k: str(v) for k, v in tiny_models.items() if spec(k).runs_code}
    config.write_text(tomlkit.dumps(doc))
    recipes = {}
    for kind, text in (("images", IMAGE_RECIPE), ("voice", VOICE_RECIPE), ("presenter", PRESENTER_RECIPE)):
        recipes[kind] = root / f"ingest-{kind}.toml"
        recipes[kind].write_text(text)
    # The demo render profile, with the tests' quick finishing
    demo = (Path(__file__).resolve().parents[1] / "recipes" / "render" / "demo.toml").read_text()
    recipes["render"] = root / "render-test.toml"
    recipes["render"].write_text(demo.replace("output_height = 360", "output_height = 144\nupscale = \"lanczos\""))
    port = _free_port()
    env = {**os.environ, "XDG_CONFIG_HOME": str(root / "xdg"), "HF_HUB_OFFLINE": "1"}
    env.pop("PERSONA_TRUST_PACK", None)
    log = open(root / "studio.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "persona", "studio", "--port", str(port), "--root", str(root)],
                              cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"the studio did not start: {(root / 'studio.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield {"url": url, "root": root, "shots": shots, "recipes": recipes, "tiny_models": tiny_models,
           "footage": demo_footage}
    from persona import jobs

    for job in jobs.jobs(root / "astro") if (root / "astro").is_dir() else []:  # jobs outlive the studio
        if job["state"] == "running":
            jobs.stop(root / "astro", job["id"])
    server.terminate()
    server.wait(30)
    log.close()


@pytest.fixture(scope="module")
def page(studio):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(studio["url"])
        yield page
        browser.close()


def _fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id}").get_by_role("textbox").fill(text)


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _shot(page, studio, name: str) -> None:
    page.screenshot(path=str(studio["shots"] / f"{name}.png"), full_page=True)


def _wait_end(page, elem_id: str, what: str) -> str:
    """Wait for the job box to say the job ended; returns what it says."""
    box = page.locator(f"#{elem_id}")
    expect(box).to_contain_text(re.compile(rf"{what}\s+(done|failed|stopped)"), timeout=JOB_TIMEOUT)
    return box.inner_text()


def _start(page, button: str, box: str) -> None:
    """Click a job's start button and wait until its box shows the new job (not the last one)."""
    before = re.search(r"\(started [\d:]+\)", page.locator(f"#{box}").inner_text())
    page.locator(f"#{button}").click()
    expect(page.locator(f"#{box}")).to_contain_text("(started ")
    if before:
        expect(page.locator(f"#{box}")).not_to_contain_text(before.group(0))


def _wait_job(page, elem_id: str, what: str) -> None:
    """Wait for the job box to say done; a failed job fails the test with the page's line."""
    text = _wait_end(page, elem_id, what)
    assert re.search(rf"{what}\s+done", text), text


def _choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(page.locator(f"#{elem_id} input")).to_have_value(option)


def _ws(studio):
    from persona.workspace import Workspace

    return Workspace(studio["root"] / "astro")


def test_workspace_needs_consent_then_is_created(page, studio):
    _fill(page, "ws-name", "Demo Astronaut")
    _fill(page, "ws-folder", "astro")
    _fill(page, "ws-scope", "tests of the studio")
    page.locator("#ws-create").click()
    msg = page.locator("#ws-msg")
    expect(msg).to_contain_text("consent is required: who granted it and for what")
    assert len(msg.inner_text().strip().splitlines()) == 1
    assert not (studio["root"] / "astro").exists()  # nothing half-made
    assert page.locator("#ws-name").get_by_role("textbox").input_value() == "Demo Astronaut"  # nothing lost
    _fill(page, "ws-granted", "Demo Astronaut")
    page.locator("#ws-create").click()
    expect(msg).to_contain_text("created")
    ws = _ws(studio)
    assert ws.pack.consent.granted_by == "Demo Astronaut" and ws.pack.consent.scope == "tests of the studio"
    # The tiny models: a user would name real ones in persona.toml or their config (see `persona doctor`)
    from persona.models import spec

    ws.update("models", {k: str(v) for k, v in studio["tiny_models"].items()
                         if k != "speaker-embedding" and not spec(k).runs_code}, replace=True)
    expect(page.locator("#ws-status")).to_contain_text("consent of Demo Astronaut")
    page.locator("#ws-doctor").click()
    expect(page.locator("#ws-doctor-out")).to_contain_text("can:", timeout=60_000)
    _shot(page, studio, "workspace")


def test_upload_of_a_text_file_named_mp4_is_refused(page, studio, tmp_path):
    _tab(page, "Ingest")
    fake = tmp_path / "talk.mp4"
    fake.write_text("this is not a video\n")
    page.locator("#in-upload input[type=file]").set_input_files(str(fake))
    msg = page.locator("#in-msg")
    expect(msg).to_contain_text("talk.mp4: cannot be read as a video, audio file or image; it was not kept")
    assert len(msg.inner_text().strip().splitlines()) == 1
    assert not list(_ws(studio).root.rglob("talk.mp4"))
    expect(page.locator("#in-upload")).to_contain_text("Drop File Here")  # the upload box is emptied again
    page.wait_for_timeout(1000)


def test_ingest_review_and_a_second_job_refused(page, studio):
    files = studio["footage"]["files"]
    # one file uploaded (saved inside the workspace), one by path
    page.locator("#in-upload input[type=file]").set_input_files(files["lecture"])
    expect(page.locator("#in-msg")).to_contain_text("saved footage/uploads/lecture.mp4")
    uploaded = _ws(studio).path("footage/uploads/lecture.mp4")
    assert uploaded.exists()
    paths = page.locator("#in-paths").get_by_role("textbox")
    expect(paths).to_have_value(re.compile("lecture.mp4"))
    paths.fill(f"{uploaded}\n{files['interview']}")
    page.get_by_text("Recipes (a name or a .toml file)").click()
    _fill(page, "in-image-recipe", str(studio["recipes"]["images"]))
    _fill(page, "in-voice-recipe", str(studio["recipes"]["voice"]))
    _fill(page, "in-presenter-recipe", str(studio["recipes"]["presenter"]))
    page.locator("#in-start").click()
    expect(page.locator("#in-msg")).to_contain_text("started ingest")
    expect(page.locator("#in-job")).to_contain_text("running")
    # a second job while ingest runs: one line, and the first job goes on
    _tab(page, "Train")
    _fill(page, "lora-recipe", "tiny-cpu")
    page.locator("#lora-start").click()
    busy = page.locator("#lora-msg")
    expect(busy).to_contain_text(re.compile(r"busy: ingest \(pid \d+\) since .* — wait for it or stop it"))
    assert len(busy.inner_text().strip().splitlines()) == 1
    _tab(page, "Ingest")
    _wait_job(page, "in-job", "ingest")
    ws = _ws(studio)
    images = read_json(ws.path("datasets/images/manifest.json"))
    kept = page.locator("#in-kept .thumbnail-item")
    expect(kept).to_have_count(len(images), timeout=30_000)
    expect(page.locator("#in-clips")).to_contain_text("wavs/0001.wav")
    # the play buttons and the presenter clip load from the workspace through the studio
    for selector, kind in (("#in-clips audio", "audio/"), ("#in-presenter video", "video/")):
        src = page.locator(selector).first.get_attribute("src")
        status = page.evaluate("async src => { const r = await fetch(src); return [r.status, r.headers.get('content-type')] }", src)
        assert status[0] in (200, 206) and status[1].startswith(kind), (selector, status)  # 206: a range
    page.wait_for_timeout(1000)
    _shot(page, studio, "ingest")

    # drop one image by hand: the gallery and the dataset shrink, the reason is recorded
    kept.first.click()
    expect(page.locator("#in-chosen").get_by_role("textbox")).to_have_value("datasets/images/0001.png")
    page.locator("#in-drop").click()
    expect(page.locator("#in-msg")).to_contain_text("dropped datasets/images/0001.png")
    expect(kept).to_have_count(len(images) - 1)
    expect(page.locator("#in-dropped .thumbnail-item")).to_have_count(1)
    after = read_json(ws.path("datasets/images/manifest.json"))
    assert [e["file"] for e in after] == [e["file"] for e in images[1:]]
    dropped = read_json(ws.path("datasets/images/dropped.json"))
    assert dropped[0]["file"] == "0001.png" and dropped[0]["reason"] == "dropped by hand"
    assert not ws.path("datasets/images/0001.png").exists() and not ws.path("datasets/images/0001.txt").exists()
    lines = ws.path("datasets/images/metadata.jsonl").read_text().splitlines()
    assert [json.loads(x)["file_name"] for x in lines] == [e["file"] for e in after]

    # one voice clip: click its row, drop it; the table and metadata.csv say so
    page.locator("#in-clips .cell-wrap").filter(visible=True).get_by_text("datasets/voice/wavs/0002.wav").click()
    expect(page.locator("#in-chosen").get_by_role("textbox")).to_have_value("datasets/voice/wavs/0002.wav")
    page.locator("#in-drop").click()
    expect(page.locator("#in-msg")).to_contain_text("dropped datasets/voice/wavs/0002.wav")
    expect(page.locator("#in-clips")).to_contain_text("dropped by hand")
    assert "0002.wav" not in ws.path("datasets/voice/metadata.csv").read_text()
    assert read_json(ws.path("datasets/voice/dropped.json"))[0]["reason"] == "dropped by hand"


def test_train_lora_shows_loss_and_sample_grids(page, studio):
    _tab(page, "Train")
    _fill(page, "lora-recipe", "tiny-cpu")
    _start(page, "lora-start", "lora-job")
    expect(page.locator("#lora-msg")).to_contain_text("started train-lora")
    _wait_job(page, "lora-job", "train-lora")
    expect(page.locator("#lora-grids .thumbnail-item").first).to_be_visible(timeout=30_000)
    ws = _ws(studio)
    assert ws.pack.lora is not None
    # the pick and why (tiny random models draw no face: the last step, said so), its plot first in the gallery
    pick = read_json(next(ws.path("runs/lora").glob("*/likeness.json")))
    expect(page.locator("#lora-choice")).to_contain_text(f"chosen: step {pick['chosen_step']}")
    expect(page.locator("#lora-choice")).to_contain_text(pick["step_reason"][:40])
    record = read_json(ws.path(ws.pack.lora.path + ".json"))
    assert record["summary"]["images"] == len(read_json(ws.path("datasets/images/manifest.json")))  # without the dropped one
    page.wait_for_timeout(1000)
    _shot(page, studio, "train")


def test_speak(page, studio):
    _tab(page, "Speak")
    _fill(page, "sp-text", "Hello there.")
    page.locator("#sp-steps").get_by_role("spinbutton").fill("4")
    _start(page, "sp-start", "sp-job")
    _wait_job(page, "sp-job", "speak")
    expect(page.locator("#sp-info")).to_contain_text("zero-shot")
    expect(page.locator("#sp-audio audio, #sp-audio [data-testid='waveform-controls']").first).to_be_attached(timeout=30_000)
    _shot(page, studio, "speak")


def test_unreachable_llm_is_one_line(page, studio):
    _tab(page, "Render")
    _fill(page, "re-name", "first")
    _fill(page, "re-topic", "How a computer learns to see.")
    page.get_by_text("Settings", exact=True).click()
    _fill(page, "re-profile", str(studio["recipes"]["render"]))
    _choose(page, "re-llm", "openai")
    _fill(page, "re-llm-url", "http://127.0.0.1:9")
    _start(page, "re-script", "re-job")
    assert "failed" in _wait_end(page, "re-job", "script first")
    error = page.locator("#re-job .job-error").inner_text()
    assert error.startswith("error: cannot reach the LLM server at http://127.0.0.1:9"), error
    assert "Traceback" not in error and len(error.splitlines()) == 1, error
    assert not _ws(studio).path("renders/first/script.json").exists()  # nothing half-made
    assert _ws(studio).path("topics/first.txt").read_text().startswith("How a computer")  # the topic is kept


def test_script_edit_render_and_play(page, studio):
    _choose(page, "re-llm", "recipe default")
    _fill(page, "re-llm-url", "")
    _start(page, "re-script", "re-job")
    _wait_job(page, "re-job", "script first")
    ws = _ws(studio)
    script = read_json(ws.path("renders/first/script.json"))
    expect(page.locator("#re-scenes")).to_contain_text(script["scenes"][0]["narration"][:10], timeout=30_000)
    # Edit the table: a short first narration, every scene off camera (b-roll: no lip sync, quick on a CPU)
    cells = page.locator("#re-scenes .cell-wrap").filter(visible=True)  # the header's five, then each row's
    cells.nth(5).dblclick()
    page.keyboard.press("Control+A")
    page.keyboard.type("Hello there.")
    page.keyboard.press("Enter")
    for row in range(len(script["scenes"])):
        box = cells.nth(5 + 5 * row + 3).locator("input[type=checkbox]")
        if box.is_checked():
            box.click()
    _start(page, "re-start", "re-job")
    edited = read_json(ws.path("renders/first/script.json"))  # saved before the render starts
    assert edited["scenes"][0]["narration"] == "Hello there." and not any(sc["on_camera"] for sc in edited["scenes"])
    expect(page.locator("#re-job")).to_contain_text("render first running")
    page.reload()  # the job lives on in its own process, and the page finds it again
    _tab(page, "Render")
    expect(page.locator("#re-name").get_by_role("textbox")).to_have_value("first")
    expect(page.locator("#re-job")).to_contain_text(re.compile(r"render first\s+(running|done)"))
    _wait_job(page, "re-job", "render first")
    video = page.locator("#re-final video")
    expect(video).to_be_attached(timeout=30_000)
    ready = page.wait_for_function(
        "() => { const v = document.querySelector('#re-final video'); return v && v.readyState >= 1 && v.duration > 0 "
        "? {ready: v.readyState, duration: v.duration} : null }", timeout=60_000).json_value()
    assert ready["duration"] > 0.5
    expect(page.locator("#re-files")).to_contain_text("final.srt")
    expect(page.locator("#re-record")).to_contain_text('"completed": true')
    assert page.locator("#re-previews figure").count() == len(script["scenes"])
    page.wait_for_timeout(1000)
    _shot(page, studio, "render")


def test_redo_one_scene(page, studio):
    ws = _ws(studio)
    before = read_json(ws.path("renders/first/render.json"))
    expect(page.locator("#re-redo-scene input")).to_have_value("01")
    _start(page, "re-redo", "re-job")
    _wait_job(page, "re-job", "render first")
    after = read_json(ws.path("renders/first/render.json"))
    assert after["stages"]["narration"]["rendered"] == ["01"] and after["started"] != before["started"]
    expect(page.locator("#re-final video")).to_be_attached()
