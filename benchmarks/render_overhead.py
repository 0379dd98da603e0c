"""Render overhead on the tiny models: model loads per render, what a one-scene edit costs, and the
ComfyUI engine's overhead per scene.

Prints: model loads per render under the stage seam (must equal the number of distinct models the
render needs), and the wall time of re-rendering after editing one scene's narration as a fraction
of the full render. Then, against a real ComfyUI (../shared/comfyui started on CPU, or --comfyui-url),
per scene of that render at the 24 GB profile's sizes: the client's time outside the server's own
execution for the scene's keyframe job and each Wan chunk job (upload, check, queue, websocket
polling, history, download; graphs with the same traffic as FLUX and Wan, which a CPU cannot run at
full size), plus joining and re-encoding the chunks, against a GPU-sized scene (60 s per job).

    python benchmarks/render_overhead.py [--comfyui-url http://127.0.0.1:8188 | --no-comfyui]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # comfyui_server: starts ../shared/comfyui

from persona import tiny  # noqa: E402
from persona.inference.render import render  # noqa: E402
from persona.progress import quiet_libraries  # noqa: E402
from persona.workspace import Consent, Workspace  # noqa: E402

SCRIPT = {
    "title": "How computers see",
    "scenes": [
        {"narration": "Today we look at how computers see pictures. It starts with numbers.",
         "image_prompt": "the presenter in a lecture hall, medium shot", "motion_prompt": "slow push-in",
         "on_camera": True},
        {"narration": "Every image is a grid of numbers.", "image_prompt": "a pixel grid on a monitor",
         "motion_prompt": "slow pan", "on_camera": False},
        {"narration": "A network learns edges, then shapes, then whole objects.",
         "image_prompt": "the presenter at a whiteboard, half body shot", "motion_prompt": "static camera",
         "on_camera": True},
        {"narration": "That is all there is to it. Thanks for watching!",
         "image_prompt": "the presenter smiling, close-up", "motion_prompt": "gentle nod", "on_camera": True},
    ],
}


def comfyui_overhead(render_dir: Path, tmp: Path, url: str | None) -> None:
    """Per scene of a finished render: the ComfyUI engine's overhead for that scene's jobs."""
    import numpy as np

    from comfyui_overhead import GPU_SCENE_SECONDS, comfyui, image_job, run_job, video_job
    from persona.files import read_json
    from persona.inference.plan import chunk_lengths, frames_for
    from persona.inference.render import load_settings
    from persona.inference.video import fit_keyframe
    from persona.media import read_frames, write_video

    gpu = load_settings("24gb")
    v, (kw, kh) = gpu.video, gpu.keyframe_size()
    vw, vh = gpu.video_size()
    print(f"ComfyUI engine overhead per scene (24gb profile: keyframe {kw}x{kh}, video {vw}x{vh} at "
          f"{v.fps} fps, chunks of {v.chunk_frames} frames, anchor {v.anchor}):")
    print(f"{'scene':>5} {'jobs':>4} {'keyframe':>8} {'chunks':>7} {'re-encode':>9} {'overhead':>8} {'exec':>6} "
          f"{'of GPU scene':>12}")
    with comfyui(tmp, url) as (client, _, _):
        client.object_info()  # fetched once per render by the engine; not a scene's cost
        for scene in sorted((render_dir / "scenes").iterdir()):
            out = tmp / "out" / scene.name
            keyframe = run_job(client, image_job(scene / "keyframe.png", kw, kh), out / "keyframe.png", show=False)
            start = out / "video.keyframe.png"  # as the video stage uploads it: the keyframe at the video size
            fit_keyframe(scene / "keyframe.png", gpu.video_size()).save(start)
            frames = frames_for(read_json(scene / "narration.wav.json")["seconds"], v.fps)
            plan = chunk_lengths(frames, v.chunk_frames, v.anchor)
            chunks = [run_job(client, video_job(start, n, v.fps), out / f"chunk{j}.mp4", show=False)
                      for j, n in enumerate(plan)]
            t = time.perf_counter()  # what the video stage does with the chunks: join and encode once
            clips = [read_frames(out / f"chunk{j}.mp4")[0][0 if j == 0 else 1:] for j in range(len(plan))]
            write_video(out / "video.mp4", np.concatenate(clips)[:frames], v.fps, crf=gpu.assembly.crf)
            encode = time.perf_counter() - t
            jobs = [keyframe, *chunks]
            overhead = sum(r.overhead for r in jobs) + encode
            execution = sum(r.seconds["execution"] for r in jobs)
            print(f"{scene.name:>5} {len(jobs):>4} {keyframe.overhead:8.3f} {sum(r.overhead for r in chunks):7.3f} "
                  f"{encode:9.3f} {overhead:8.3f} {execution:6.2f} "
                  f"{100 * overhead / (GPU_SCENE_SECONDS * len(jobs)):11.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui-url", help="a running ComfyUI for the engine's overhead (default: start "
                        "../shared/comfyui on CPU when it is there)")
    parser.add_argument("--no-comfyui", action="store_true", help="skip the ComfyUI engine's overhead")
    args = parser.parse_args()
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = tiny.build_all(root / "models")
        consent = Consent(person="Bench", granted_by="Bench", date=dt.date.today(), scope="benchmark")
        ws = Workspace.create(root / "ws", "Bench Mark", consent=consent)
        # FILM is code: a user's own setting (here the environment), never a pack's [models]
        os.environ["PERSONA_FILM"] = str(models.pop("film"))
        ws.update("models", {k: str(v) for k, v in models.items() if k != "speaker-embedding"})
        tiny.fill_pack(ws, models)
        script = root / "script.json"
        script.write_text(json.dumps(SCRIPT))

        t0 = time.perf_counter()
        full = render(ws, None, script_file=script, name="bench", profile="demo")
        t_full = time.perf_counter() - t0
        distinct = len(full["model_loads"])
        loads = sum(full["model_loads"].values())

        edited = json.loads(script.read_text())
        edited["scenes"][2]["narration"] = "A network learns edges first, then shapes, then whole objects."
        (ws.root / "renders/bench/script.json").write_text(json.dumps(edited))
        t0 = time.perf_counter()
        again = render(ws, None, name="bench", profile="demo")
        t_edit = time.perf_counter() - t0

        print(f"scenes: {len(SCRIPT['scenes'])}")
        print(f"model loads per render: {loads} (distinct models: {distinct}) {full['model_loads']}")
        print(f"full render: {t_full:.1f} s")
        print(f"re-render after a one-scene edit: {t_edit:.1f} s = {t_edit / t_full:.0%} of a full render "
              f"(loads: {again['model_loads']}; redone: "
              f"{ {k: v['rendered'] for k, v in again['stages'].items() if v.get('rendered')} })")
        print("seconds per stage, full / after the edit: " + ", ".join(
            f"{k} {full['stages'][k]['seconds']:.1f}/{again['stages'][k]['seconds']:.1f}" for k in full["stages"]))

        if args.no_comfyui:
            return
        if args.comfyui_url is None:
            import comfyui_server

            if why := comfyui_server.unavailable():
                print(f"ComfyUI engine overhead: skipped ({why})")
                return
        comfyui_overhead(ws.root / "renders" / "bench", root / "comfy", args.comfyui_url)


if __name__ == "__main__":
    main()
