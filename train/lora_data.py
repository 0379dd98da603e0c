"""The LoRA's training data: captioned images from `persona ingest`, aspect-ratio buckets, and the
latents and text embeddings computed once and cached on disk.

The encoders (CLIP-L, T5-XXL) and the VAE are loaded only while something is missing from the
cache and released before the transformer is loaded, so T5-XXL never shares the GPU with it.
Cache files are named by the hash of everything they were made from (image bytes, bucket size,
caption, the encoder's files), so an unchanged dataset is never encoded twice and a changed image
or caption is re-encoded alone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from persona.device import free_memory
from persona.errors import PersonaError
from persona.files import atomic_path, hash_file, hash_json
from persona.media import IMAGE_EXTS
from persona.progress import track

if TYPE_CHECKING:
    from persona.train.flux_base import FluxBase


@dataclass(frozen=True)
class Example:
    image: Path
    caption: str
    image_hash: str
    size: tuple[int, int]  # width, height of the source image


@dataclass(frozen=True)
class Item:
    """One training example at one resolution, cropped to one bucket."""

    example: int
    bucket: tuple[int, int]  # width, height in pixels
    latent_key: str


def read_examples(folder: Path, token: str) -> tuple[list[Example], int]:
    """The image + caption pairs of an image dataset; returns (examples, captions that lacked the token).

    Captions without the trigger token get it prepended (in memory; ingest's files stay as they are).
    """
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise PersonaError("image dataset folder not found", file=folder,
                           fix="run `persona ingest` first, or set [datasets].images in persona.toml")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
    if not images:
        raise PersonaError("the image dataset is empty (no images)", file=folder,
                           fix="run `persona ingest` on footage where the person is on screen")
    captions = {p: _caption_path(p).read_text(encoding="utf-8") if _caption_path(p).exists() else "" for p in images}
    uncaptioned = [p.name for p in images if not captions[p].strip()]
    if uncaptioned:
        shown = ", ".join(uncaptioned[:3]) + (" ..." if len(uncaptioned) > 3 else "")
        raise PersonaError(f"{len(uncaptioned)} of {len(images)} images have no caption (.txt beside them): {shown}",
                           file=folder, fix="re-run `persona ingest`, or write a caption starting with the "
                                            f"trigger token ({token}) in a .txt of the same name")
    has_token = re.compile(rf"(?<![A-Za-z0-9]){re.escape(token)}(?![A-Za-z0-9])")
    examples, added = [], 0
    for p in images:
        caption = " ".join(captions[p].split())
        if not has_token.search(caption):
            caption, added = f"{token}, {caption}", added + 1
        try:
            with Image.open(p) as im:
                size = im.size
        except (UnidentifiedImageError, OSError) as e:
            raise PersonaError(f"cannot read this image ({e})", file=p,
                               fix="remove it or re-run `persona ingest`") from None
        examples.append(Example(p, caption, hash_file(p), size))
    return examples, added


def _caption_path(image: Path) -> Path:
    return image.with_suffix(".txt")


def dataset_hash(examples: list[Example]) -> str:
    return hash_json([(e.image.name, e.image_hash, e.caption) for e in examples])


# ---- aspect-ratio buckets ------------------------------------------------------------------------
def bucket_sizes(resolution: int, step: int) -> list[tuple[int, int]]:
    """(width, height) pairs, multiples of `step`, with area at most resolution² and aspect 1:2 to 2:1."""
    sizes = set()
    for w in range(step, 2 * resolution + 1, step):
        h = (resolution * resolution // w) // step * step
        if h >= step and 0.5 <= w / h <= 2.0:
            sizes.add((w, h))
    return sorted(sizes)


def pick_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (ties: the larger one)."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def make_items(examples: list[Example], resolutions: list[int], step: int, vae_id: str) -> list[Item]:
    """Every example once per training resolution (multi-resolution training), each in its bucket."""
    items = []
    for r in resolutions:
        buckets = bucket_sizes(r, step)
        for i, e in enumerate(examples):
            b = pick_bucket(e.size, buckets)
            items.append(Item(i, b, hash_json(["latent", e.image_hash, b, vae_id])))
    return items


def load_pixels(path: Path, bucket: tuple[int, int]) -> torch.Tensor:
    """The image scaled to cover the bucket, centre-cropped, as a (3, H, W) tensor in [-1, 1]."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = bucket
        scale = max(w / im.width, h / im.height)
        rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
        im = im.resize((rw, rh), Image.Resampling.LANCZOS)
        left, top = (rw - w) // 2, (rh - h) // 2
        im = im.crop((left, top, left + w, top + h))
        arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


# ---- the cache -----------------------------------------------------------------------------------
def text_key(caption: str, text_id: str, max_tokens: int) -> str:
    return hash_json(["text", caption, text_id, max_tokens])


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))


def load_cached(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class Cache:
    """`cache/lora/` in the workspace: latents/<key>.safetensors and text/<key>.safetensors."""

    def __init__(self, root: Path):
        self.root = root

    def latent(self, key: str) -> Path:
        return self.root / "latents" / f"{key}.safetensors"

    def text(self, key: str) -> Path:
        return self.root / "text" / f"{key}.safetensors"


def encode_texts(base: FluxBase, prompts: dict[str, str], cache: Cache, max_tokens: int, device: torch.device,
                 dtype: torch.dtype, batch: int = 8) -> None:
    """T5 + CLIP embeddings of every prompt not yet cached ({key: prompt}); the encoders are freed after."""
    missing = {k: p for k, p in prompts.items() if not cache.text(k).exists()}
    if not missing:
        return
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # persona shows its own progress
    pipe = base.load("text", dtype)
    pipe.text_encoder.to(device)
    pipe.text_encoder_2.to(device)
    keys = list(missing)
    try:
        with torch.no_grad():
            for start in track(range(0, len(keys), batch), "encoding captions"):
                chunk = keys[start:start + batch]
                embeds, pooled, _ = pipe.encode_prompt([missing[k] for k in chunk], prompt_2=None, device=device,
                                                       max_sequence_length=max_tokens)
                for i, k in enumerate(chunk):
                    _save(cache.text(k), {"prompt_embeds": embeds[i], "pooled_prompt_embeds": pooled[i]})
    finally:
        del pipe
        free_memory()


def encode_latents(base: FluxBase, examples: list[Example], items: list[Item], cache: Cache, device: torch.device,
                   dtype: torch.dtype) -> None:
    """VAE latents of every (image, bucket) not yet cached, scaled as the transformer sees them."""
    missing = {it.latent_key: it for it in items if not cache.latent(it.latent_key).exists()}
    if not missing:
        return
    vae = base.load("vae", dtype).to(device).eval()
    shift, scale = vae.config.shift_factor or 0.0, vae.config.scaling_factor
    try:
        with torch.no_grad():
            for key, it in track(list(missing.items()), "encoding images"):
                pixels = load_pixels(examples[it.example].image, it.bucket)[None].to(device, dtype)
                # The mean, not a sample: the cache stays reproducible (kohya also encodes once and
                # reuses one draw for the whole run).
                latent = vae.encode(pixels).latent_dist.mode()
                _save(cache.latent(key), {"latent": ((latent - shift) * scale)[0]})
    finally:
        del vae
        free_memory()
