"""The user's ComfyUI models folder as a source of single-file weights for the diffusers engine.

With `[models] comfyui = ".../ComfyUI/models"` (persona.toml, $PERSONA_COMFYUI or the user config),
FLUX's parts are taken from the files ComfyUI loads: the transformer from `diffusion_models/` (or
the legacy `unet/`), the VAE from `vae/`, CLIP-L and T5-XXL from `text_encoders/` (or the legacy
`clip/`). Their tokenizers are not in `models/`: they ship inside the ComfyUI install beside it
(`comfy/sd1_tokenizer`, `comfy/text_encoders/t5_tokenizer`), and are read from there as data.

Which file is which is decided by the tensors each file holds (their names and shapes, read from
the safetensors or GGUF header without loading the weights), never by trusting a name. When several
files fit one part, the one whose name is the usual one wins (flux1-dev, ae, clip_l, t5xxl), then the
first by name; the choice is said once, and `[models] flux = ".../flux1-dev-Q8_0.gguf"` picks the
transformer explicitly. Only .safetensors/.sft and .gguf files are read: pickled checkpoints never.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from persona.errors import PersonaError
from persona.models import Located, find, user_config_path
from persona.progress import warn

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".gguf")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # how some single files nest the transformer

Shapes = dict[str, tuple[int, ...]]


@lru_cache(maxsize=256)
def _header(path: Path, size: int, mtime: float) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if path.suffix.lower() == ".gguf":
        from gguf import GGUFReader  # memory-maps the file; tensor data is not read

        # GGUF stores dimensions innermost first; torch's order is the reverse
        return tuple((t.name, tuple(int(d) for d in reversed(t.shape))) for t in GGUFReader(path).tensors)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return tuple((k, tuple(f.get_slice(k).get_shape())) for k in f.keys())


def tensor_shapes(path: Path) -> Shapes:
    """Every tensor's name (a transformer's `model.diffusion_model.` prefix removed) and shape, from
    the file's header."""
    st = path.stat()
    try:
        header = _header(path, st.st_size, st.st_mtime)
    except ImportError:
        raise PersonaError("is a GGUF file, and reading GGUF needs the gguf package", file=path,
                           fix="pip install 'persona[gguf]'") from None
    except Exception as e:  # a truncated download, a file of another format: named, not a traceback
        raise PersonaError(f"cannot be read as {path.suffix[1:]} ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})",
                           file=path, fix="download it again, or move it out of the models folder") from None
    out: Shapes = {}
    for k, shape in header:
        for p in PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = shape
    return out


# --- what a file is, from its tensors ----------------------------------------------------------
def is_flux_transformer(s: Shapes) -> bool:
    """FLUX.1 text-to-image (dev, schnell, Krea, Kontext): BFL's double blocks, and as many input
    channels as output ones (Fill, Depth and Canny take extra conditioning channels)."""
    return ("double_blocks.0.img_attn.qkv.weight" in s and "img_in.weight" in s and "final_layer.linear.weight" in s
            and s["img_in.weight"][1] == s["final_layer.linear.weight"][0])


def is_image_vae(s: Shapes) -> bool:
    """An image autoencoder (2-D convolutions) without quant convs: FLUX's ae.safetensors, in BFL's or
    diffusers' key names. SD 1.x/XL VAEs have quant convs; Wan's VAE is 3-D."""
    conv = s.get("decoder.conv_in.weight")
    return conv is not None and len(conv) == 4 and "encoder.conv_in.weight" in s and "quant_conv.weight" not in s


def is_clip_l(s: Shapes) -> bool:
    return "text_model.encoder.layers.0.self_attn.q_proj.weight" in s and "text_model.embeddings.token_embedding.weight" in s


def is_t5(s: Shapes) -> bool:
    """A T5 v1.1 encoder (T5-XXL) in Hugging Face names; UMT5 (Wan's) has attention biases in every layer."""
    return ("encoder.block.0.layer.0.SelfAttention.q.weight" in s
            and "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in s
            and "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in s)


def is_wan_transformer(s: Shapes, first_last: bool) -> bool:
    """A Wan 2.1 image-to-video transformer in the original Wan names (ComfyUI's files): image
    cross-attention (k_img) in every block; the first-last-frame checkpoint adds position embeddings
    for its two CLIP images (img_emb.emb_pos)."""
    return ("patch_embedding.weight" in s and "blocks.0.cross_attn.k_img.weight" in s
            and ("img_emb.emb_pos" in s) == first_last)


def is_umt5(s: Shapes) -> bool:
    """UMT5-XXL (Wan's text encoder) in Hugging Face names: a relative attention bias in every layer."""
    return ("encoder.block.0.layer.0.SelfAttention.q.weight" in s
            and "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in s)


def is_wan_vae(s: Shapes) -> bool:
    """Wan 2.1's video autoencoder in the original Wan names (wan_2.1_vae.safetensors): 3-D causal
    convolutions in flat `downsamples`/`upsamples` lists."""
    conv = s.get("decoder.conv1.weight")
    return (conv is not None and len(conv) == 5 and "encoder.downsamples.0.residual.0.gamma" in s
            and "decoder.upsamples.0.residual.0.gamma" in s)


def wan_vae_layout_fits(s: Shapes) -> bool:
    """The block layout of every released Wan 2.1 VAE (4 levels of 2 residual blocks: 11 encoder and 15
    decoder entries), the only one diffusers' converter maps; any channel width fits."""
    return (count_indices(s, r"encoder\.downsamples\.(\d+)\.") == 11
            and count_indices(s, r"decoder\.upsamples\.(\d+)\.") == 15)


def is_clip_vision(s: Shapes) -> bool:
    return "vision_model.embeddings.patch_embedding.weight" in s and "vision_model.encoder.layers.0.self_attn.q_proj.weight" in s


def _t5_width(s: Shapes) -> int:
    return (s.get("shared.weight") or s.get("encoder.embed_tokens.weight") or (0, 0))[1]


@dataclass(frozen=True)
class Part:
    title: str
    folders: tuple[str, ...]
    matches: Callable[[Shapes], bool]
    prefer: str  # regex on the file name: the usual name wins when several files fit
    example: str
    gguf: bool = False  # diffusers quantises transformers from GGUF; the other parts load from safetensors


FLUX_PARTS = {
    "transformer": Part("FLUX transformer", ("diffusion_models", "unet"), is_flux_transformer, r"flux1?[-_.]?dev",
                        "flux1-dev.safetensors, or a GGUF such as flux1-dev-Q8_0.gguf", gguf=True),
    "vae": Part("FLUX VAE", ("vae",), is_image_vae, r"^ae\.|flux", "ae.safetensors"),
    "clip_l": Part("CLIP-L text encoder", ("text_encoders", "clip"), is_clip_l, r"clip_l", "clip_l.safetensors"),
    "t5": Part("T5-XXL text encoder", ("text_encoders", "clip"), is_t5, r"t5xxl|t5-v1_1-xxl", "t5xxl_fp16.safetensors"),
}
WAN_PARTS = {
    "wan-i2v": Part("Wan 2.1 image-to-video transformer", ("diffusion_models", "unet"),
                    lambda s: is_wan_transformer(s, first_last=False), r"i2v",
                    "wan2.1_i2v_480p_14B_fp16.safetensors, or a GGUF such as wan2.1-i2v-14b-480p-Q8_0.gguf", gguf=True),
    "wan-flf2v": Part("Wan 2.1 first-last-frame transformer", ("diffusion_models", "unet"),
                      lambda s: is_wan_transformer(s, first_last=True), r"flf2v",
                      "wan2.1_flf2v_720p_14B_fp16.safetensors", gguf=True),
    "text_encoder": Part("UMT5-XXL text encoder", ("text_encoders", "clip"), is_umt5, r"umt5",
                         "umt5_xxl_fp16.safetensors"),
    "image_encoder": Part("CLIP vision encoder", ("clip_vision",), is_clip_vision, r"clip_vision_h",
                          "clip_vision_h.safetensors"),
    "vae": Part("Wan 2.1 VAE", ("vae",), is_wan_vae, r"wan_?2\.1_vae", "wan_2.1_vae.safetensors"),
}
TOKENIZERS = {"clip_l": "comfy/sd1_tokenizer", "t5": "comfy/text_encoders/t5_tokenizer"}


@dataclass(frozen=True)
class ComfyModels:
    """A ComfyUI models folder and the install it sits in (where the tokenizers are)."""

    models: Path
    install: Path

    def tokenizer(self, part: str) -> Path:
        folder = self.install / TOKENIZERS[part]
        if not folder.is_dir():
            raise PersonaError(f"the {FLUX_PARTS[part].title}'s tokenizer is not at {folder} (tokenizers ship with "
                               "ComfyUI itself, not in models/)", file=self.models,
                               fix="set [models] comfyui to the models folder inside a ComfyUI install (.../ComfyUI/models)")
        return folder

    def pick(self, part: Part, fits_with: Callable[[Shapes], bool] | None = None,
             fits_what: str = "that fits the transformer") -> Path:
        """The file in the part's folders whose tensors are that part's, and fit `fits_with` (the
        widths the transformer takes); see the module's rule for several. A file that cannot be read
        (a partial download) is skipped, and named if nothing fits."""
        fits, ignored = [], []
        for name in part.folders:
            folder = self.models / name
            if not folder.is_dir():
                continue
            for f in sorted(p for p in folder.rglob("*") if p.is_file()):
                if f.suffix.lower() in WEIGHT_SUFFIXES and (part.gguf or f.suffix.lower() != ".gguf"):
                    try:
                        shapes = tensor_shapes(f)
                    except PersonaError:
                        ignored.append(f"{f.name} (unreadable)")
                        continue
                    if part.matches(shapes) and (fits_with is None or fits_with(shapes)):
                        fits.append(f)
                elif f.suffix.lower() in PICKLE_SUFFIXES:
                    ignored.append(f"{f.name} (pickle files are never loaded)")
        where = " or ".join(f"{n}/" for n in part.folders)
        if not fits:
            skipped = f"; skipped {', '.join(ignored)}" if ignored else ""
            kinds = "a .safetensors or .gguf file" if part.gguf else "a .safetensors file"
            widths = f" {fits_what}" if fits_with is not None else ""
            raise PersonaError(f"no {part.title}{widths} in {where} ({kinds}){skipped}", file=self.models,
                               fix=f"put {part.example} in {self.models / part.folders[0]}")
        fits.sort(key=lambda f: (re.search(part.prefer, f.name, re.IGNORECASE) is None, f.relative_to(self.models).as_posix()))
        if len(fits) > 1:
            override = ' (or set [models] flux = "/path/to/the/file" for the transformer)' if "FLUX transformer" in part.title else ""
            warn(f"{len(fits)} files in {where} fit the {part.title}: using {fits[0].name}; the others: "
                 f"{', '.join(f.name for f in fits[1:])}{override}", once=True)
        return fits[0]


def comfy_models(models: dict[str, str] | None = None) -> ComfyModels | None:
    """The configured ComfyUI models folder ([models] comfyui), or None when none is configured. The
    setting may name the models folder or the ComfyUI install around it."""
    found: Located | None = find("comfyui", models=models)
    if found is None or found.source == "hf-cache":
        return None
    if found.problems:
        raise PersonaError(f"[models] comfyui: {'; '.join(found.problems)} (from {found.source})", file=found.path,
                           fix=f"point it at your ComfyUI models folder (e.g. ~/ComfyUI/models) in {user_config_path()}")
    path = found.path
    if not path.is_dir():
        raise PersonaError("[models] comfyui must be a folder (ComfyUI's models/)", file=path,
                           fix="point it at your ComfyUI models folder, e.g. ~/ComfyUI/models")
    if (path / "models").is_dir() and (path / "comfy").is_dir():
        path = path / "models"
    return ComfyModels(path, path.parent)


@dataclass(frozen=True)
class FluxFiles:
    """FLUX's parts as single files from a ComfyUI models folder, and the tokenizers of its install."""

    transformer: Path
    vae: Path
    clip_l: Path
    t5: Path
    clip_tokenizer: Path
    t5_tokenizer: Path

    def identity(self) -> tuple[Path, ...]:
        """Everything the pipeline is made of, for cache keys (persona.models.model_identity each)."""
        return (self.transformer, self.vae, self.clip_l, self.t5, self.clip_tokenizer, self.t5_tokenizer)

    def describe(self) -> str:
        return ", ".join(p.name for p in (self.transformer, self.vae, self.clip_l, self.t5))


def flux_files(comfy: ComfyModels, transformer: Path | None = None) -> FluxFiles:
    """FLUX's single files in `comfy` (the transformer given explicitly, or picked)."""
    if transformer is not None and not is_flux_transformer(tensor_shapes(transformer)):
        raise PersonaError("is not a FLUX.1 text-to-image transformer (no BFL double_blocks, or extra input channels)",
                           file=transformer, fix="point [models] flux at flux1-dev.safetensors or a FLUX.1-dev GGUF")
    transformer = transformer or comfy.pick(FLUX_PARTS["transformer"])
    t = tensor_shapes(transformer)
    # the parts whose widths the transformer takes: CLIP-L's pooled output (not CLIP-G's), T5's states,
    # the VAE's latent channels (FLUX packs 2x2 latent pixels into one token)
    pooled, text, channels = t["vector_in.in_layer.weight"][1], t["txt_in.weight"][1], t["img_in.weight"][1]
    return FluxFiles(
        transformer=transformer,
        vae=comfy.pick(FLUX_PARTS["vae"], lambda s: 4 * s["decoder.conv_in.weight"][1] == channels),
        clip_l=comfy.pick(FLUX_PARTS["clip_l"], lambda s: s["text_model.embeddings.token_embedding.weight"][1] == pooled),
        t5=comfy.pick(FLUX_PARTS["t5"], lambda s: _t5_width(s) == text),
        clip_tokenizer=comfy.tokenizer("clip_l"),
        t5_tokenizer=comfy.tokenizer("t5"),
    )


def resolve_flux(models: dict[str, str] | None = None) -> Path | FluxFiles | None:
    """Where FLUX comes from: a diffusers folder, single files from the ComfyUI models folder, or None.

    A `flux` setting the user made (flag, persona.toml, environment, user config) wins: a folder is a
    diffusers layout, a file is a single-file transformer whose other parts come from [models]
    comfyui. Then the ComfyUI folder, when one is configured; then the Hugging Face cache (also when the
    ComfyUI folder lacks a part, which is said)."""
    found = find("flux", models=models)
    chosen = found is not None and found.source != "hf-cache" and not found.problems
    if chosen and found.path.is_dir():
        return found.path
    comfy = comfy_models(models)
    if chosen and found.path.is_file():
        if comfy is None:
            raise PersonaError("[models] flux names a single file; its VAE and text encoders come from a ComfyUI "
                               "models folder, and none is configured", file=found.path,
                               fix=f'set [models] comfyui = "/path/to/ComfyUI/models" in {user_config_path()}')
        return flux_files(comfy, found.path)
    if comfy is not None:
        try:
            return flux_files(comfy)
        except PersonaError as e:
            if found is None or found.problems:
                raise
            warn(f"{e}; drawing keyframes with the Hugging Face cache's FLUX instead", once=True)
    return found.path if found is not None and not found.problems else None


@dataclass(frozen=True)
class WanFiles:
    """Wan's parts that come from single files in a ComfyUI models folder, by pipeline component
    (transformer, text_encoder, image_encoder, vae). With `folder` (a diffusers Wan folder) the parts it
    lacks and every config come from there; without, all four are files and the configs are derived."""

    parts: dict[str, Path]
    folder: Path | None = None
    first_last: bool = False

    def identity(self) -> tuple[Path, ...]:
        return (*([self.folder] if self.folder else []), *(self.parts[k] for k in sorted(self.parts)))

    def describe(self) -> str:
        order = ("transformer", "text_encoder", "image_encoder", "vae")
        return ", ".join(self.parts[k].name for k in sorted(self.parts, key=order.index))


def count_indices(s: Shapes, pattern: str) -> int:
    """How many blocks a model has: the distinct indices `pattern`'s group matches in its tensor names."""
    return len({m.group(1) for k in s if (m := re.match(pattern, k))})


def wan_files(key: str, folder: Path, models: dict[str, str] | None = None) -> WanFiles | None:
    """Wan's parts (`key`: wan-i2v or wan-flf2v) in the ComfyUI models folder that fit the diffusers
    folder `folder` (the same widths and depths as its configs, which are used), or None when no
    ComfyUI folder is configured or it has none. A part it lacks comes from the folder, said once.

    The VAE stays the folder's: diffusers' Wan VAE converter assumes the full-size block layout."""
    comfy = comfy_models(models)
    if comfy is None:
        return None
    import json

    def config(name: str) -> dict:
        return json.loads((folder / name / "config.json").read_text())

    t, te, ie = config("transformer"), config("text_encoder"), config("image_encoder")
    fits = {
        # original Wan names: patch_embedding [dim, in_channels, *patch], text_embedding.0 [dim, text_dim],
        # img_emb.proj.1 [dim, image_dim]
        "transformer": lambda s: (list(s["patch_embedding.weight"][1:]) == [t["in_channels"], *t["patch_size"]]
                                  and s.get("text_embedding.0.weight", (0, 0))[1] == t["text_dim"]
                                  and s.get("img_emb.proj.1.weight", (0, 0))[1] == t["image_dim"]),
        "text_encoder": lambda s: (s.get("shared.weight") == (te["vocab_size"], te["d_model"])
                                   and count_indices(s, r"encoder\.block\.(\d+)\.") == te["num_layers"]),
        "image_encoder": lambda s: (s["vision_model.embeddings.patch_embedding.weight"][0] == ie["hidden_size"]
                                    and count_indices(s, r"vision_model\.encoder\.layers\.(\d+)\.") == ie["num_hidden_layers"]),
    }
    parts = {}
    for name, fit in fits.items():
        try:
            parts[name] = comfy.pick(WAN_PARTS[key if name == "transformer" else name], fit)
        except PersonaError as e:
            warn(f"{e}; using the {name.replace('_', ' ')} of {folder} instead", once=True)
    return WanFiles(parts, folder, first_last=key == "wan-flf2v") if parts else None


def wan_transformer_widths(s: Shapes) -> tuple[int, int | None, int]:
    """(text width, CLIP image width or None, latent channels) a Wan transformer file takes."""
    patch = s["patch_embedding.weight"][2:]
    channels = s["head.head.weight"][0] // (patch[0] * patch[1] * patch[2])
    return s["text_embedding.0.weight"][1], s.get("img_emb.proj.0.weight", (None,))[0], channels


def wan_files_alone(key: str, comfy: ComfyModels) -> WanFiles:
    """All of Wan (`key`: wan-i2v or wan-flf2v) from the ComfyUI models folder: the transformer, then the
    UMT5, CLIP vision and VAE files that fit its widths. UMT5 must hold its tokenizer (`spiece_model`,
    as ComfyUI's own umt5 files do), since no diffusers folder supplies one. Raises naming the part
    that is missing."""
    transformer = comfy.pick(WAN_PARTS[key])
    text, image, channels = wan_transformer_widths(tensor_shapes(transformer))
    return WanFiles({
        "transformer": transformer,
        "text_encoder": comfy.pick(WAN_PARTS["text_encoder"],
                                   lambda s: _t5_width(s) == text and "spiece_model" in s,
                                   "that fits the transformer and holds its tokenizer (spiece_model)"),
        "image_encoder": comfy.pick(WAN_PARTS["image_encoder"],
                                    lambda s: s["vision_model.embeddings.patch_embedding.weight"][0] == image),
        "vae": comfy.pick(WAN_PARTS["vae"], lambda s: s.get("conv2.weight", (0,))[0] == channels and wan_vae_layout_fits(s),
                          "that fits the transformer (Wan 2.1's layout)"),
    }, first_last=key == "wan-flf2v")


def resolve_wan(key: str, models: dict[str, str] | None = None) -> Path | WanFiles | None:
    """Where Wan (`key`) comes from, by resolve_flux's rule: a diffusers folder the user chose, whole;
    the Hugging Face cache's folder with the ComfyUI folder's parts that fit it; all four parts from
    the ComfyUI folder; or None when neither has it. Raises naming the missing part when the ComfyUI
    folder has this transformer but not the rest."""
    found = find(key, models=models)
    usable = found is not None and not found.problems
    if usable and found.source != "hf-cache":
        return found.path
    if usable:
        return wan_files(key, found.path, models) or found.path
    comfy = comfy_models(models)
    if comfy is None:
        return None
    try:
        comfy.pick(WAN_PARTS[key])
    except PersonaError:
        return None  # not this checkpoint: the caller says how to get it
    return wan_files_alone(key, comfy)
