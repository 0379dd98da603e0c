"""The ComfyUI engine against a real ComfyUI 0.8.0 server (../shared/comfyui, started on CPU): graphs
checked against its live /object_info, real graphs run end to end, and every failure a user can meet."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import comfyui_server
from persona.errors import PersonaError
from persona.inference import comfy_graphs as cg
from persona.inference.comfyui import ComfyUI, ComfyUISettings, Dispatcher, ServerGone, discover, merge_urls

pytestmark = pytest.mark.slow


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def upscaler(tmp_path_factory) -> Path:
    """persona's tiny random ESRGAN (spandrel layout): a real model ComfyUI loads from models/upscale_models."""
    from persona import tiny

    return tiny.build_upscaler(tmp_path_factory.mktemp("tiny-esrgan"))


def _start(base: Path, upscaler: Path) -> comfyui_server.Server:
    why = comfyui_server.unavailable()
    if why:
        pytest.skip(why)
    models = base / "models"
    # Every model file persona's graphs name, as empty files: /object_info lists them, so graphs can be checked.
    names: dict[str, list[str]] = {}
    for role in cg.ROLES.values():
        names.setdefault(role.folder, []).append(role.default)
    comfyui_server.place_placeholders(models, names)
    (models / "upscale_models").mkdir(parents=True, exist_ok=True)
    (models / "upscale_models" / upscaler.name).write_bytes(upscaler.read_bytes())
    return comfyui_server.start(base)


@pytest.fixture(scope="session")
def server(tmp_path_factory, upscaler):
    s = _start(tmp_path_factory.mktemp("comfyui"), upscaler)
    yield s
    s.stop()


@pytest.fixture
def client(server):
    c = ComfyUI(server.url, ComfyUISettings(job_timeout=300))
    yield c
    c.close()


@pytest.fixture(scope="module")
def second_server(tmp_path_factory, upscaler):
    """A second server: the dispatch test shares work with it, then the kill test kills it."""
    s = _start(tmp_path_factory.mktemp("comfyui-2"), upscaler)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def pack_lora(tmp_path_factory) -> Path:
    """The pack's LoRA as `persona train-lora` exports it (random, for the tiny FLUX)."""
    from persona import tiny

    root = tmp_path_factory.mktemp("tiny-flux")
    return tiny.random_lora(tiny.build("flux", root), root / "lora" / "pack.safetensors")


def _image(path: Path, size=(64, 48), color=(200, 30, 30)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def _scale_graph(image: Path, width: int, height: int) -> cg.Graph:
    g = cg.Graph(label="scale")
    loaded = g.node("LoadImage", image=cg.LocalFile(image))
    scaled = g.node("ImageScale", image=loaded, upscale_method="bilinear", width=width, height=height, crop="disabled")
    g.output("image", g.node("SaveImage", images=scaled, filename_prefix="persona/test"))
    return g


def _slow_graph(image: Path, upscaler: Path) -> cg.Graph:
    """Upscale with the tiny ESRGAN (reports progress), then a wide blur of the 4x image (seconds on CPU)."""
    g = cg.Graph(label="slow")
    loaded = g.node("LoadImage", image=cg.LocalFile(image))
    up = g.node("ImageUpscaleWithModel", upscale_model=g.node("UpscaleModelLoader", model_name=upscaler.name), image=loaded)
    blurred = g.node("ImageBlur", image=up, blur_radius=31, sigma=10.0)
    g.output("image", g.node("SaveImage", images=blurred, filename_prefix="persona/slow"))
    return g


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# -- urls -----------------------------------------------------------------------------------------
def test_urls_come_from_flags_then_environment_then_settings():
    env = {"PERSONA_COMFYUI_URL": "gpu1:8188, http://gpu2:8188/"}
    assert merge_urls(["http://a:1"], ["127.0.0.1:8188"], env) == ["http://127.0.0.1:8188"]
    assert merge_urls(["http://a:1"], [], env) == ["http://gpu1:8188", "http://gpu2:8188"]
    assert merge_urls(["a:1", "http://a:1/"], [], {}) == ["http://a:1"]
    with pytest.raises(PersonaError, match="not a ComfyUI address"):
        merge_urls([], ["ftp://x"], {})


# -- graphs against the live /object_info ----------------------------------------------------------
def _persona_graphs(tmp_path: Path, lora: Path) -> list[cg.Graph]:
    key = _image(tmp_path / "keyframe.png")
    wav = tmp_path / "narration.wav"
    _wav(wav, seconds=1.0)
    s = cg.Sampling(steps=4, cfg=1.0, seed=7)
    wan = cg.WanModels(unet=cg.ROLES["wan_i2v"].default)
    flf = cg.WanModels(unet=cg.ROLES["wan_flf2v"].default)
    return [
        cg.flux_keyframe(cg.FluxModels(), "MichaelPound in a kitchen", 1024, 576, s, 3.5, lora=lora, lora_strength=0.8),
        cg.flux_keyframe(cg.FluxModels(), "a whiteboard", 1024, 576, s, 3.5, lora=lora, lora_strength=0.0),
        cg.wan_video(wan, key, "a presenter talks", "blurry", 832, 480, 81, s),
        cg.wan_video(flf, key, "a presenter talks", "blurry", 832, 480, 81, s, last_image=key),
        cg.talking(cg.TalkingModels(), key, wav, "a presenter talks", "blurry", 832, 480, 60, s),
        cg.talking(cg.TalkingModels(), key, wav, "a presenter talks", "blurry", 832, 480, 400, s),  # Extend x5
        cg.talking(cg.TalkingModels(model="humo", unet=cg.ROLES["humo"].default, audio_encoder=cg.ROLES["whisper"].default),
                   key, wav, "a presenter talks", "blurry", 832, 480, 90, s),
    ]


def _wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.2 * np.sin(2 * np.pi * 220 * t), rate)
    return path


def test_every_graph_persona_builds_passes_the_live_object_info(client, tmp_path, pack_lora):
    graphs = _persona_graphs(tmp_path, pack_lora)
    for graph in graphs:
        ready, uploaded = client.prepare(graph)
        client.check(ready, uploaded)
        api = ready.to_api()
        assert all(isinstance(n["class_type"], str) for n in api.values())
    extends = [n for n in graphs[5].nodes.values() if n["class_type"] == "WanSoundImageToVideoExtend"]
    assert len(extends) == len(cg.talking_chunks(400)) - 1 >= 4


def test_pack_lora_is_uploaded_where_loraloader_reads_it_and_named_by_its_hash(client, server, pack_lora):
    from persona.files import hash_file

    name = client.upload_lora(pack_lora)
    assert hash_file(pack_lora)[:12] in name
    assert name in httpx.get(f"{server.url}/models/loras").json()
    stored = next(server.base.glob(f"output/loras/{name}"))
    assert stored.read_bytes() == pack_lora.read_bytes()
    # A fresh client uploads again; the server compares the bytes and keeps the one copy under that name.
    other = ComfyUI(server.url)
    assert other.upload_lora(pack_lora) == name
    other.close()


def test_a_missing_model_is_refused_before_queueing(client, server, tmp_path, pack_lora):
    before = len(httpx.get(f"{server.url}/history").json())
    graph = cg.flux_keyframe(cg.FluxModels(unet="flux1-schnell.safetensors"), "x", 512, 512,
                             cg.Sampling(steps=1, cfg=1.0, seed=0), 3.5)
    with pytest.raises(PersonaError) as e:
        client.run(graph, {"image": tmp_path / "k.png"})
    line = _one_line(e.value)
    assert "flux1-schnell.safetensors" in line and "models/diffusion_models/" in line
    assert len(httpx.get(f"{server.url}/history").json()) == before and not (tmp_path / "k.png").exists()


def test_a_missing_node_is_refused_with_how_to_get_it(client, tmp_path):
    g = cg.Graph(label="talking (infinitetalk)")
    g.output("video", g.node("WanInfiniteTalkToVideo", width=832))
    with pytest.raises(PersonaError) as e:
        client.check(g)
    assert "WanInfiniteTalkToVideo" in _one_line(e.value) and "update ComfyUI" in str(e.value)
    assert not cg.infinitetalk_available(client.object_info())


def test_a_wrong_enum_value_is_refused(client):
    g = _scale_graph(Path("x.png"), 8, 8).with_values({("2", "upscale_method"): "magic"})
    g.nodes["1"]["inputs"]["image"] = "persona/none.png"
    with pytest.raises(PersonaError, match="upscale_method"):
        client.check(g, {("1", "image")})


def test_an_unreachable_server_is_one_line():
    c = ComfyUI(f"http://127.0.0.1:{comfyui_server.free_port()}", ComfyUISettings(connect_timeout=2))
    with pytest.raises(ServerGone) as e:
        c.object_info()
    assert "cannot reach ComfyUI at http://127.0.0.1:" in _one_line(e.value)
    report = discover(c)
    assert report["reachable"] is False and "cannot reach" in report["error"]


# -- real runs --------------------------------------------------------------------------------------
def test_image_upload_scale_save_runs_end_to_end(client, tmp_path):
    out = tmp_path / "out" / "scaled.png"
    result = client.run(_scale_graph(_image(tmp_path / "in.png"), 32, 24), {"image": out})
    got = np.asarray(Image.open(out).convert("RGB"))
    assert got.shape == (24, 32, 3) and np.abs(got.astype(int) - (200, 30, 30)).max() <= 2
    assert result.seconds["total"] >= result.seconds["execution"] >= 0 and result.files["image"] == out


def test_a_tiny_model_from_models_folder_runs_and_reports_progress(client, tmp_path, upscaler):
    """The tiny ESRGAN is loaded by ComfyUI's own loader from models/upscale_models; its tiles move the bar."""
    events = []
    g = cg.Graph(label="upscale")
    up = g.node("ImageUpscaleWithModel", upscale_model=g.node("UpscaleModelLoader", model_name=upscaler.name),
                image=g.node("LoadImage", image=cg.LocalFile(_image(tmp_path / "in.png"))))
    g.output("image", g.node("SaveImage", images=up, filename_prefix="persona/up"))
    client.run(g, {"image": tmp_path / "up.png"}, events.append)
    assert Image.open(tmp_path / "up.png").size == (256, 192)
    assert events and events[-1].class_type == "ImageUpscaleWithModel" and events[-1].value == events[-1].max


def test_video_with_narration_audio_runs_end_to_end(client, tmp_path):
    """Image and audio uploads, CreateVideo and SaveVideo: the output half of the video and talking graphs."""
    import av

    g = cg.Graph(label="video")
    frames = g.node("RepeatImageBatch", image=g.node("LoadImage", image=cg.LocalFile(_image(tmp_path / "k.png"))), amount=16)
    audio = g.node("LoadAudio", audio=cg.LocalFile(_wav(tmp_path / "n.wav", seconds=1.0)))
    video = g.node("CreateVideo", images=frames, fps=16.0, audio=audio)
    g.output("video", g.node("SaveVideo", video=video, filename_prefix="persona/v", format="mp4", codec="h264"))
    out = client.run(g, {"video": tmp_path / "v.mp4"}).files["video"]
    with av.open(str(out)) as f:
        assert f.streams.video[0].codec_context.name == "h264" and len(f.streams.audio) == 1
        assert sum(1 for _ in f.decode(video=0)) == 16


def test_a_node_error_mid_graph_names_the_node_and_its_message(client, tmp_path):
    g = cg.Graph(label="keyframe")
    vae = g.node("VAELoader", vae_name=cg.ROLES["flux_vae"].default)  # an empty placeholder file: it fails to load
    image = g.node("VAEDecode", samples=g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1), vae=vae)
    g.output("image", g.node("SaveImage", images=image, filename_prefix="persona/bad"))
    with pytest.raises(PersonaError) as e:
        client.run(g, {"image": tmp_path / "bad.png"})
    line = _one_line(e.value)
    assert f"node {vae.id} (VAELoader)" in line and "failed" in line and not (tmp_path / "bad.png").exists()


def test_an_output_missing_from_history_is_one_line(client, tmp_path):
    g = _scale_graph(_image(tmp_path / "in.png"), 8, 8)
    g.output("extra", cg.Node("2", "ImageScale"))  # a node with no files in /history
    with pytest.raises(PersonaError) as e:
        client.run(g, {"image": tmp_path / "a.png", "extra": tmp_path / "b.png"})
    assert "/history has no output of node 2 (ImageScale)" in _one_line(e.value)


def test_ctrl_c_interrupts_the_server_and_is_reraised(client, server, tmp_path, upscaler):
    seen = []

    def press_ctrl_c(event):
        seen.append(event.prompt_id)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.run(_slow_graph(_image(tmp_path / "in.png", (128, 128), (10, 200, 30)), upscaler), {"image": tmp_path / "s.png"}, press_ctrl_c)
    deadline = time.monotonic() + 300  # the blur finishes first: a node is interrupted between nodes
    while (entry := httpx.get(f"{server.url}/history/{seen[0]}").json().get(seen[0])) is None:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds and not entry["outputs"]


@pytest.fixture(scope="session")
def comfy_flux(server, tmp_path_factory) -> tuple[dict[str, str], Path]:
    """The smallest FLUX, CLIP-L and VAE ComfyUI loads, in the server's models/ (see
    comfyui_server.build_comfy_flux for why they cannot be smaller), and a LoRA in the pack's format."""
    lora = tmp_path_factory.mktemp("pack") / "lora" / "likeness.safetensors"
    return comfyui_server.build_comfy_flux(server.models, lora), lora


def test_flux_keyframe_with_the_pack_lora_runs_end_to_end(client, server, comfy_flux, tmp_path):
    names, lora = comfy_flux
    client.object_info(refresh=True)

    def keyframe(strength: float) -> cg.Graph:
        g = cg.flux_keyframe(cg.FluxModels(unet=names["unet"], clip_l=names["clip"], t5=names["clip"], vae=names["vae"]),
                             "MichaelPound explains convolutions in a kitchen", 64, 64,
                             cg.Sampling(steps=2, cfg=1.0, seed=3), 3.5, lora=lora, lora_strength=strength)
        # The one substitution: T5-XXL cannot be made small for ComfyUI, so this FLUX reads CLIP-L's output.
        clip = next(nid for nid, n in g.nodes.items() if n["class_type"] == "DualCLIPLoader")
        g.nodes[clip] = {"class_type": "CLIPLoader", "inputs": {"clip_name": names["clip"], "type": "stable_diffusion"}}
        return g

    events = []
    with_lora = np.asarray(Image.open(client.run(keyframe(1.0), {"image": tmp_path / "with.png"}, events.append)
                                      .files["image"]).convert("RGB")).astype(float)
    base = np.asarray(Image.open(client.run(keyframe(0.0), {"image": tmp_path / "base.png"}).files["image"])
                      .convert("RGB")).astype(float)
    assert with_lora.shape == (64, 64, 3) and with_lora.std() > 1  # a picture, not a NaN-black frame
    assert np.abs(with_lora - base).mean() > 0.1  # ComfyUI applied the pack's LoRA
    sampler = [e for e in events if e.class_type == "KSampler"]
    assert sampler and sampler[-1].value == sampler[-1].max == 2
    assert "lora key not loaded" not in (server.base / "server.log").read_text(errors="replace")


# -- several servers, and one that dies --------------------------------------------------------------
def test_jobs_go_to_whichever_server_is_free(server, second_server, tmp_path, upscaler):
    clients = [ComfyUI(server.url), ComfyUI(second_server.url)]
    used = []
    for (i, _), (url, result) in Dispatcher(clients).run(
            [(i, _image(tmp_path / f"in{i}.png", (64, 64), (40 * i, 90, 90))) for i in range(4)],
            lambda c, job: (c.url, c.run(_slow_graph(job[1], upscaler), {"image": tmp_path / f"o{job[0]}.png"}))):
        used.append(url)
        assert result.files["image"].exists()
    assert sorted(set(used)) == sorted([server.url, second_server.url]) and len(used) == 4


def test_server_killed_mid_graph_is_one_line_and_the_job_moves_to_a_free_server(server, second_server, tmp_path, upscaler):
    image = _image(tmp_path / "in.png", (128, 128), (30, 30, 220))  # new to both servers: no cached result
    dying = ComfyUI(second_server.url, ComfyUISettings(connect_timeout=2))

    def kill_when_running() -> None:
        while not httpx.get(f"{second_server.url}/queue").json()["queue_running"]:
            time.sleep(0.1)
        time.sleep(0.2)
        second_server.kill()

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    with pytest.raises(ServerGone) as e:
        dying.run(_slow_graph(image, upscaler), {"image": tmp_path / "lost.png"})
    line = _one_line(e.value)
    assert "went away while running the slow graph" in line and "run the same command" in line
    assert not (tmp_path / "lost.png").exists()

    # With two servers, one of them gone: every job still comes back (from the live one).
    alive = ComfyUI(server.url)
    jobs = [(i, _image(tmp_path / f"j{i}.png", (32 + i, 32))) for i in range(3)]
    done = dict(Dispatcher([dying, alive]).run(
        jobs, lambda c, job: (c.url, c.run(_scale_graph(job[1], 16, 16), {"image": tmp_path / f"o{job[0]}.png"}))))
    assert sorted(i for i, _ in done) == [0, 1, 2] and {url for url, _ in done.values()} == {server.url}
    assert all((tmp_path / f"o{i}.png").exists() for i in range(3))


def test_a_node_error_on_one_server_stops_the_dispatch_after_the_running_jobs(server, tmp_path):
    c = ComfyUI(server.url)
    bad = cg.Graph(label="keyframe")
    bad.output("image", bad.node("SaveImage", images=bad.node(
        "VAEDecode", samples=bad.node("EmptySD3LatentImage", width=64, height=64, batch_size=1),
        vae=bad.node("VAELoader", vae_name=cg.ROLES["flux_vae"].default)), filename_prefix="persona/bad"))
    good = _scale_graph(_image(tmp_path / "in.png"), 8, 8)
    finished = []
    with pytest.raises(PersonaError, match="VAELoader"):
        for job, _ in Dispatcher([c]).run(["good", "bad", "never"], lambda cl, j: cl.run(
                good if j != "bad" else bad, {"image": tmp_path / f"{j}.png"})):
            finished.append(job)
    assert finished == ["good"] and (tmp_path / "good.png").exists() and not (tmp_path / "never.png").exists()


# -- discovery ---------------------------------------------------------------------------------------
def test_discovery_lists_each_stage_models_and_what_the_server_has(client, server):
    report = discover(client, {"flux": "flux1-dev-fp8.safetensors"})
    assert report["reachable"] and report["version"] == "0.8.0"
    keyframe = report["stages"]["keyframes"][0]
    flux = next(m for m in keyframe["models"] if m["role"] == "flux")
    assert not flux["found"] and "models/diffusion_models/" in flux["fix"] and not keyframe["ready"]
    s2v = next(m for m in report["stages"]["talking"] if m["mode"] == "s2v")
    assert s2v["ready"]  # the placeholders carry the default names
    infinitetalk = next(m for m in report["stages"]["talking"] if m["mode"] == "infinitetalk")
    assert infinitetalk["missing_nodes"] == ["WanInfiniteTalkToVideo"] and not infinitetalk["ready"]


def test_doctor_reports_what_a_comfyui_server_lacks(server):
    import json

    from click.testing import CliRunner

    from persona.cli import cli

    out = CliRunner().invoke(cli, ["doctor", "--json", "--comfyui-url", server.url])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)["comfyui"][0]
    assert report["url"] == server.url and "talking" in report["stages"]
    humo = next(m for m in report["stages"]["talking"] if m["mode"] == "humo")
    assert humo["ready"] and all(m["found"] for m in humo["models"])
    # the verdict says, per render stage, which engine runs it: here the server has every model file
    can = json.loads(out.stdout)["verdict"]["can"]
    assert any(c.startswith("render: keyframes on ") and f"ComfyUI at {server.url} (keyframe)" in c for c in can), can
    assert f"render: talking on ComfyUI at {server.url} (s2v, humo)" in can

    # one model file less: the verdict names what the server lacks
    vae = server.models / "vae" / cg.ROLES["wan_vae"].default
    vae.rename(vae.with_suffix(".moved"))
    try:
        out = CliRunner().invoke(cli, ["doctor", "--json", "--comfyui-url", server.url])
    finally:
        vae.with_suffix(".moved").rename(vae)
    verdict = json.loads(out.stdout)["verdict"]
    if not json.loads(out.stdout)["system"]["gpu"]["available"]:
        video = next(c for c in verdict["cannot"] if c.startswith("render: video"))
        assert f"ComfyUI at {server.url} lacks models/vae/{cg.ROLES['wan_vae'].default}" in video


# -- persona render --engine comfyui -------------------------------------------------------------
B_ROLL = {"title": "t", "scenes": [{"narration": "A grid of numbers.", "image_prompt": "a pixel grid",
                                    "motion_prompt": "pan", "on_camera": False}]}
FAST = {"finish": {"upscale": "lanczos", "output_height": 144}}


def _script(tmp_path: Path, script: dict) -> Path:
    import json

    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    return path


def test_render_sends_its_keyframes_to_the_server_and_keeps_finished_work(server, pack, tmp_path):
    """The render's own FLUX graph passes the live /object_info and is queued; the server's placeholder
    FLUX files are empty, so it fails loading them: one line naming the node, the narration kept."""
    from persona.files import read_json
    from persona.inference.render import render

    overrides = {**FAST, "engine": "comfyui", "comfyui": {"urls": [server.url], "job_timeout": 300}}
    with pytest.raises(PersonaError) as e:
        render(pack, None, script_file=_script(tmp_path, B_ROLL), profile="demo", overrides=overrides, name="comfy")
    line = _one_line(e.value)
    assert "(UNETLoader)" in line or "(DualCLIPLoader)" in line or "(VAELoader)" in line, line
    rdir = pack.root / "renders" / "comfy"
    assert (rdir / "scenes/01/narration.wav").exists() and not (rdir / "scenes/01/keyframe.png").exists()
    assert set(read_json(rdir / "render.json")["stages"]) == {"script", "narration"}
    gone = {**overrides, "comfyui": {"urls": ["http://127.0.0.1:9"], "connect_timeout": 2}}
    with pytest.raises(PersonaError, match="127.0.0.1:9") as e:  # an unreachable server: one line, work kept
        render(pack, None, name="comfy", profile="demo", overrides=gone)
    _one_line(e.value)
    assert read_json(rdir / "scenes/01/narration.wav.json")["key"]


def test_talking_scenes_go_to_the_audio_driven_model_on_the_server(server, pack, tmp_path):
    """A talking scene's graph (Wan2.2-S2V, extended for its length) built by the stage and queued on the
    real server: it is accepted and runs until the empty placeholder weights fail to load."""
    import numpy as np

    from persona.inference.comfy_stages import TalkingStage
    from persona.inference.plan import RenderDir, SceneDir
    from persona.inference.render import load_settings
    from persona.inference.script import Scene
    from persona.inference.stage import RenderJob, run_stage
    from persona.files import mark_fresh
    from persona.media import write_audio
    from persona.progress import meter

    settings = load_settings("demo", {"engine": "comfyui", "comfyui": {"urls": [server.url], "job_timeout": 300}})
    scene = SceneDir(0, Scene(narration="Hello there.", image_prompt="the presenter", motion_prompt="talks",
                              on_camera=True, presenter="talking"), tmp_path / "scenes" / "01")
    scene.folder.mkdir(parents=True)
    _image(scene.path("keyframe.png"), (128, 64))
    mark_fresh(scene.path("keyframe.png"), "k")
    write_audio(scene.path("narration.wav"), np.zeros(24000 * 7, np.float32), 24000)  # 7 s: S2V is extended
    mark_fresh(scene.path("narration.wav"), "n", seconds=7.0)
    job = RenderJob(pack, settings, RenderDir(tmp_path, [scene]))
    stage = TalkingStage(job, [scene])
    assert stage.models.unet == cg.ROLES["wan_s2v"].default and stage.work(job, scene) > settings.video.steps
    with pytest.raises(PersonaError) as e, meter("talking", None) as m:
        run_stage(job, stage, m)
    assert "(UNETLoader)" in _one_line(e.value) or "Loader)" in str(e.value)
    assert not scene.path("video.mp4").exists()


def test_the_keyframe_record_names_the_server_files(server, pack, tmp_path):
    from persona.inference.comfy_stages import ComfyKeyframeStage
    from persona.inference.plan import RenderDir
    from persona.inference.render import load_settings
    from persona.inference.stage import RenderJob

    settings = load_settings("demo", {"engine": "comfyui", "comfyui": {"urls": [server.url]}})
    job = RenderJob(pack, settings, RenderDir(tmp_path, []))
    stage = ComfyKeyframeStage(job, [])
    try:
        assert stage.summary(job)["flux"] == ", ".join(cg.ROLES[r].default for r in ComfyKeyframeStage.ROLES)
    finally:
        stage.servers.close()


def test_a_talking_scene_needs_the_comfyui_engine(pack, tmp_path):
    from persona.inference.render import render

    talking = {"title": "t", "scenes": [{"narration": "Hello there.", "image_prompt": "the presenter",
                                         "motion_prompt": "talks", "on_camera": True, "presenter": "talking"}]}
    with pytest.raises(PersonaError, match="needs the ComfyUI engine") as e:
        render(pack, None, script_file=_script(tmp_path, talking), profile="demo", overrides=FAST)
    assert "--engine comfyui" in _one_line(e.value)
