"""The ComfyUI engine's client overhead: per job, time outside the server's own execution.

For each job it prints what the client spent uploading inputs, checking the graph against
/object_info, queueing, waiting on the websocket beyond the server's execution, and downloading the
outputs (the engine re-encodes nothing: SaveVideo writes the H.264 MP4 persona keeps), next to the
server's execution time (the timestamps of its execution_start/execution_success messages). The
target is <= 2 % of a GPU-sized scene; as CPU jobs here execute in well under a second, the overhead
is also shown against a 60 s scene (one Wan chunk on a 24 GB card takes minutes, so this is generous).

    python benchmarks/comfyui_overhead.py                      # starts ../shared/comfyui on CPU
    python benchmarks/comfyui_overhead.py --flux                # + FLUX keyframe with a LoRA (minutes on CPU)
    python benchmarks/comfyui_overhead.py --url http://127.0.0.1:8188 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

GPU_SCENE_SECONDS = 60.0


def image_job(image: Path, width: int, height: int, label: str = "keyframe-sized image") -> tuple:
    """A graph with a keyframe's traffic: one image up, one image of (width, height) down."""
    from persona.inference import comfy_graphs as cg

    g = cg.Graph(label=label)
    scaled = g.node("ImageScale", image=g.node("LoadImage", image=cg.LocalFile(image)), upscale_method="bilinear",
                    width=width, height=height, crop="center")
    g.output("image", g.node("SaveImage", images=scaled, filename_prefix="persona/bench"))
    return g, "image", ".png"


def video_job(image: Path, frames: int, fps: float, audio: Path | None = None, label: str | None = None) -> tuple:
    """A graph with a video chunk's traffic: the start image up (and the narration, for talking video),
    an H.264 MP4 of `frames` frames at the image's size down."""
    from persona.inference import comfy_graphs as cg

    g = cg.Graph(label=label or f"{frames}-frame video" + (" with narration" if audio else ""))
    batch = g.node("RepeatImageBatch", image=g.node("LoadImage", image=cg.LocalFile(image)), amount=frames)
    extra = {"audio": g.node("LoadAudio", audio=cg.LocalFile(audio))} if audio else {}
    clip = g.node("CreateVideo", images=batch, fps=float(fps), **extra)
    g.output("video", g.node("SaveVideo", video=clip, filename_prefix="persona/bench", format="mp4", codec="h264"))
    return g, "video", ".mp4"


def jobs(tmp: Path, upscaler_name: str | None, run: int, flux: tuple[dict[str, str], Path] | None = None) -> dict[str, tuple]:
    """The graphs, on inputs new to the server each run (ComfyUI would otherwise answer from its cache)."""
    import soundfile as sf

    from persona.inference import comfy_graphs as cg

    key = tmp / f"keyframe{run}.png"
    Image.fromarray((np.random.default_rng(run).random((480, 832, 3)) * 255).astype(np.uint8)).save(key)
    wav = tmp / f"narration{run}.wav"
    sf.write(wav, 0.2 * np.sin(2 * np.pi * (220 + run) * np.arange(16000 * 5) / 16000), 16000)
    out = {"keyframe": image_job(key, 1024, 576), "video": video_job(key, 81, 16.0, wav)}
    if upscaler_name:
        up = cg.Graph(label="tiny ESRGAN upscale")
        image = up.node("ImageUpscaleWithModel", upscale_model=up.node("UpscaleModelLoader", model_name=upscaler_name),
                        image=up.node("LoadImage", image=cg.LocalFile(key)))
        up.output("image", up.node("SaveImage", images=image, filename_prefix="persona/bench"))
        out["upscale"] = (up, "image", ".png")
    if flux is not None:
        names, lora = flux
        g = cg.flux_keyframe(cg.FluxModels(unet=names["unet"], clip_l=names["clip"], t5=names["clip"], vae=names["vae"]),
                             f"MichaelPound in a kitchen, take {run}", 256, 256, cg.Sampling(steps=4, cfg=1.0, seed=run),
                             3.5, lora=lora, lora_strength=1.0)
        clip = next(nid for nid, n in g.nodes.items() if n["class_type"] == "DualCLIPLoader")
        g.nodes[clip] = {"class_type": "CLIPLoader", "inputs": {"clip_name": names["clip"], "type": "stable_diffusion"}}
        out["flux"] = (g, "image", ".png")
    return out


@contextlib.contextmanager
def comfyui(tmp: Path, url: str | None = None, upscaler: bool = False, flux: bool = False) -> Iterator[tuple]:
    """(client, upscaler file name or None, (FLUX file names, LoRA) or None): a client of the server at
    `url`, or of ../shared/comfyui started on CPU here (stopped after)."""
    from persona.inference.comfyui import ComfyUI

    server, up, flux_files = None, None, None
    if url is None:
        import comfyui_server

        from persona import tiny

        why = comfyui_server.unavailable()
        if why:
            raise RuntimeError(why)
        if upscaler:
            up = tiny.build_upscaler(tmp / "base" / "models" / "upscale_models").name
        if flux:
            lora = tmp / "pack" / "likeness.safetensors"
            flux_files = comfyui_server.build_comfy_flux(tmp / "base" / "models", lora), lora
        server = comfyui_server.start(tmp / "base")
    client = ComfyUI(url or server.url)
    try:
        yield client, up, flux_files
    finally:
        client.close()
        if server is not None:
            server.stop()


HEADER = (f"{'job':30} {'run':>3} {'upload':>6} {'check':>6} {'connect':>7} {'queue':>6} {'wait':>6} "
          f"{'history':>7} {'download':>8} {'total':>6} {'exec':>6} {'overhead':>8} {'of 60 s':>7}")


def run_job(client: Any, job: tuple, dest: Path, run: int = 1, show: bool = True) -> Any:
    """Run one (graph, output, suffix) job through the engine's client; print its row of seconds."""
    graph, output, _ = job
    r = client.run(graph, {output: dest})
    s = r.seconds
    if show:
        print(f"{graph.label:30} {run:>3} {s['upload']:6.3f} {s['check']:6.3f} {s['connect']:7.3f} "
              f"{s['queue']:6.3f} {s['wait']:6.3f} {s['history']:7.3f} {s['download']:8.3f} "
              f"{s['total']:6.3f} {s['execution']:6.3f} {r.overhead:8.3f} {100 * r.overhead / GPU_SCENE_SECONDS:6.2f}%")
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running ComfyUI (default: start ../shared/comfyui on CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flux", action="store_true", help="also the FLUX keyframe graph with a LoRA, on the smallest "
                        "FLUX ComfyUI loads (builds 1.4 GB of random weights; needs the server started here)")
    args = parser.parse_args()
    if args.url is None:
        import comfyui_server

        if why := comfyui_server.unavailable():
            sys.exit(why)
    with tempfile.TemporaryDirectory(prefix="persona-comfy-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        with comfyui(tmp, args.url, upscaler=args.url is None, flux=args.flux) as (client, upscaler, flux):
            print(HEADER)
            for i in range(args.repeats):
                for name, job in jobs(tmp, upscaler, i, flux).items():
                    run_job(client, job, tmp / "out" / f"{name}{i}{job[2]}", i + 1)


if __name__ == "__main__":
    main()
