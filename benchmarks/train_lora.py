"""Figures for `persona train-lora`: time to fill the latent/text cache, training steps per second,
checkpoint and sample-grid cost, peak GPU memory.

    python benchmarks/train_lora.py                      # tiny random FLUX.1 on CPU (plumbing cost)
    python benchmarks/train_lora.py --flux /models/FLUX.1-dev --recipe flux-dev-24gb --steps 50
    python benchmarks/train_lora.py --comfyui ~/ComfyUI/models --recipe flux-dev-24gb --steps 50

Prints one JSON object. The dataset is crops of scikit-image's astronaut portrait with captions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_workspace(root: Path, flux: Path | None, images: int):
    from PIL import Image
    from skimage import data as sk

    from persona.workspace import Consent, Workspace

    ws = Workspace.create(root / "ws", "Bench Person", consent=Consent(
        person="Bench Person", granted_by="benchmark", date=dt.date.today(), scope="benchmark"))
    if flux is not None:
        ws.update("models", {"flux": str(flux)})
    folder = ws.root / "datasets" / "images"
    folder.mkdir(parents=True)
    img = sk.astronaut()
    for i in range(images):
        top, left = (i * 37) % 200, (i * 53) % 200
        Image.fromarray(img[top:top + 312, left:left + 312 - (i % 3) * 60]).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(f"{ws.token}, an astronaut in an orange suit, photo {i}\n")
    ws.update("datasets", {"images": "datasets/images"})
    return ws


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flux", help="a diffusers FLUX.1 folder (default: build the tiny one)")
    ap.add_argument("--comfyui", help="a ComfyUI models folder: FLUX from its single files (instead of --flux)")
    ap.add_argument("--recipe", default="tiny-cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--images", type=int, default=8)
    args = ap.parse_args()

    import torch

    from persona import tiny
    from persona.config import resolve_settings
    from persona.progress import quiet_libraries
    from persona.train.lora import LoraSettings, train_lora

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.comfyui:
            os.environ["PERSONA_COMFYUI"] = args.comfyui
        flux = Path(args.flux) if args.flux else None if args.comfyui else tiny.build("flux", root / "models")
        ws = make_workspace(root, flux, args.images)
        quiet = {"steps": args.steps, "sample_every": 0, "checkpoint_every": 0}
        s = resolve_settings(LoraSettings, "lora", args.recipe, quiet)
        t0 = time.perf_counter()
        cold = train_lora(ws, s, recipe=args.recipe, force=True, resume=False)
        cold_total = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = train_lora(ws, s, recipe=args.recipe, force=True, resume=False)
        warm_total = time.perf_counter() - t0
        every = max(1, args.steps // 2)
        s2 = resolve_settings(LoraSettings, "lora", args.recipe, {**quiet, "checkpoint_every": every,
                                                                   "sample_every": every})
        t0 = time.perf_counter()
        train_lora(ws, s2, recipe=args.recipe, force=True, resume=False)
        extra_total = time.perf_counter() - t0
        print(json.dumps({
            "flux": str(flux) if flux else f"single files in {args.comfyui}", "recipe": args.recipe, "steps": args.steps, "images": args.images,
            "items": cold["items"], "buckets": cold["buckets"], "threads": torch.get_num_threads(),
            "cache_fill_s": round(cold_total - warm_total, 2),
            "train_steps_per_s": warm["steps_per_s"],
            "run_total_warm_cache_s": round(warm_total, 2),
            "one_checkpoint_and_three_sample_grids_s": round(extra_total - warm_total, 2),
            "peak_vram_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        }, indent=2))


if __name__ == "__main__":
    main()
