"""Speaker embeddings behind a small interface.

The default backend is Resemblyzer, whose wheel ships its encoder (a 3-layer LSTM over 40 mel
bands, 256-d embeddings of 1.6 s windows), so it needs no download. When the user has a
pyannote/WeSpeaker ResNet checkpoint (`[models] speaker-embedding`), `encoder_for` returns the
stronger `WeSpeaker` encoder instead.

Cosine similarities mean different things in different embedding spaces, so each encoder carries
its own scale: `floor` (below it two voices are unrelated, whatever the channel) and `same_voice`
(centroids of one voice's clusters, split by the room or the microphone, are at least this close).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

SAMPLE_RATE = 16000


class SpeakerEncoder(Protocol):
    name: str
    window: float  # seconds of audio behind each embedding
    floor: float  # below this similarity a voice is not the target's, however the channel differs
    same_voice: float  # cluster centroids at least this close are one voice

    def embed_windows(self, wav: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings (N, D) of the `window`-second windows starting at `starts` (seconds)
        in 16 kHz mono `wav`; windows running past the end are zero-padded."""
        ...


def _native_bf16() -> bool:
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block.

    The LSTM is thousands of small ops, each a parallel region whose threads meet at a barrier. When
    another process holds one of the cores (a render, the other ingest workers, a browser), the
    barrier waits for a descheduled thread: measured on 2 cores with one busy, 5 s of speech took
    7.6 s on two threads and 0.03 s on one, and 256 windows 3.9 s against 1.7 s. Idle, two threads
    gain little on ops this small."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Resemblyzer:
    window = 1.6
    # Measured on ../shared/media speech: different people score 0.33-0.65 in clean studio
    # recordings and up to 0.81 across meeting recordings; the same person scores 0.88-0.97 across
    # meetings and 0.62-0.71 through a changed channel (band limit, noise, level). A floor of 0.6
    # only rules out the clearly unrelated; the margin over the recording's runner-up decides.
    floor = 0.6
    # One voice split by reverberation: centroids 0.77-0.84; two people in one room: 0.63-0.87.
    same_voice = 0.8

    def __init__(self, device: str = "cpu", batch: int = 256, bf16: bool | None = None):
        import torch
        from resemblyzer import VoiceEncoder

        # torch >= 2.6 loads with weights_only=True by default, which Resemblyzer's plain
        # state-dict checkpoint satisfies.
        self.model = VoiceEncoder(device, verbose=False)
        self.batch = batch
        # The LSTM is nearly all of ingest's analysis time. On CPUs with native bfloat16 it runs
        # ~3x faster in bf16, and embeddings stay within cosine 0.997 of float32 ones.
        self.bf16 = _native_bf16() if bf16 is None else bf16
        self.dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.model.to(self.dtype)
        self.name = "resemblyzer-bf16" if self.bf16 else "resemblyzer"

    def embed_windows(self, wav: np.ndarray, starts: np.ndarray) -> np.ndarray:
        import torch
        from resemblyzer import audio, hparams

        n = hparams.partials_n_frames
        if len(starts) == 0:
            return np.zeros((0, hparams.model_embedding_size), np.float32)
        idx = np.clip(np.round(np.asarray(starts) * 100).astype(int), 0, None)
        mel = audio.wav_to_mel_spectrogram(self._normalise(np.asarray(wav, np.float32), idx, n))  # 10 ms frames
        mel = np.pad(mel, ((0, max(0, int(idx.max()) + n - len(mel))), (0, 0)))
        out = []
        with torch.inference_mode(), single_thread():
            for b in range(0, len(idx), self.batch):
                frames = np.stack([mel[i:i + n] for i in idx[b:b + self.batch]])
                batch = torch.from_numpy(frames).to(self.model.device, self.dtype)
                out.append(self.model(batch).float().cpu().numpy())
        return unit(np.concatenate(out)).astype(np.float32)


    @staticmethod
    def _normalise(wav: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
        """Raise the volume as Resemblyzer's preprocessing does (to -30 dBFS, never down), measured
        on the windowed speech only: the encoder was trained on utterances with silences trimmed,
        and its mel input is not logarithmic, so a recording's long silences must not set the gain."""
        from resemblyzer import hparams

        hop = len(wav) and SAMPLE_RATE // 100
        covered = np.zeros(len(wav) + 1, np.int32)
        np.add.at(covered, np.minimum(idx * hop, len(wav)), 1)
        np.add.at(covered, np.minimum((idx + n) * hop, len(wav)), -1)
        speech = wav[np.cumsum(covered)[:len(wav)] > 0]
        rms = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2))) if len(speech) else 0.0
        if rms <= 0:
            return wav
        gain_db = hparams.audio_norm_target_dBFS - 20 * np.log10(rms)
        return wav * np.float32(10 ** (gain_db / 20)) if gain_db > 0 else wav


class WeSpeaker:
    """A WeSpeaker ResNet (e.g. pyannote/wespeaker-voxceleb-resnet34-LM) built from its state dict.

    pyannote's own loader unpickles the whole Lightning checkpoint (weights_only=False); here the
    network is built from pyannote's `ResNet` class with sizes read off the tensors, and only the
    tensors are loaded (safetensors, or torch.load(weights_only=True)). The ResNet runs once over
    each stretch of speech and every window pools its own frames (WeSpeaker's mean+std statistics
    pooling), which costs one pass instead of one per overlapping window.
    """

    window = 2.0  # WeSpeaker trains on 2 s segments
    # WeSpeaker's scale (cosine after its own training loss): different people sit near 0-0.3,
    # one person across sessions 0.5-0.8 (VoxCeleb figures in WeSpeaker's and pyannote's docs).
    floor = 0.3
    same_voice = 0.6
    frame_shift = 0.01  # fbank frames
    centering = 3.0  # seconds of running mean removed from the fbank (pyannote's fbank_centering_span)
    chunk = 60.0  # seconds of audio per ResNet pass

    def __init__(self, path: str | Path, device: str = "cpu"):
        state, file = _resnet_state(Path(path))
        self.model, self.feat_dim, self.stride = _build_resnet(state)
        self.model.to(device).eval()
        self.device = device
        # The name keys cached analyses: another checkpoint (or a replaced file) must not reuse them.
        stat = file.stat()
        self.name = f"wespeaker:{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"

    def embed_windows(self, wav: np.ndarray, starts: np.ndarray) -> np.ndarray:
        import torch

        dim = self.model.embed_dim
        starts = np.asarray(starts, np.float64)
        if len(starts) == 0:
            return np.zeros((0, dim), np.float32)
        out = np.zeros((len(starts), dim), np.float32)
        order = np.argsort(starts)
        # Runs of windows that overlap or nearly touch share one ResNet pass, cut at chunk length.
        groups, current = [], [order[0]]
        for i in order[1:]:
            first = starts[current[0]]
            if starts[i] > starts[current[-1]] + self.window + 1.0 or starts[i] + self.window - first > self.chunk:
                groups.append(current)
                current = []
            current.append(i)
        groups.append(current)
        with torch.inference_mode():
            for g in groups:
                a = max(0.0, float(starts[g[0]]))
                b = float(starts[g[-1]]) + self.window
                out[g] = self._embed_span(wav, a, b, starts[g] - a)
        return unit(out).astype(np.float32)

    def _embed_span(self, wav: np.ndarray, a: float, b: float, offsets: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F
        import torchaudio.compliance.kaldi as kaldi

        seg = np.zeros(int(round((b - a) * SAMPLE_RATE)), np.float32)
        piece = wav[int(round(a * SAMPLE_RATE)):int(round(b * SAMPLE_RATE))]
        seg[:len(piece)] = piece
        x = torch.from_numpy(seg)[None] * (1 << 15)  # Kaldi's integer sample scale, as WeSpeaker trains
        fbank = kaldi.fbank(x, num_mel_bins=self.feat_dim, frame_length=25.0, frame_shift=10.0, dither=0.0,
                            window_type="hamming", sample_frequency=SAMPLE_RATE)
        span = int(self.centering / self.frame_shift) | 1
        mean = F.avg_pool1d(fbank.T[None], span, stride=1, padding=span // 2, count_include_pad=False)[0].T
        frames = self.model.forward_frames((fbank - mean[:len(fbank)])[None].to(self.device))
        feats = frames.flatten(1, 2)[0].double()  # (channels * freq, time)
        step = self.frame_shift * self.stride
        lo = np.clip(np.floor(offsets / step).astype(int), 0, feats.shape[1] - 1)
        hi = np.clip(np.ceil((offsets + self.window) / step).astype(int), lo + 2, feats.shape[1])
        lo = np.minimum(lo, hi - 2).clip(0)
        # Mean and unbiased standard deviation per window from running sums (pyannote's StatsPool).
        zero = torch.zeros(feats.shape[0], 1, dtype=feats.dtype, device=feats.device)
        s1 = torch.cat([zero, feats.cumsum(1)], 1)
        s2 = torch.cat([zero, (feats * feats).cumsum(1)], 1)
        lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
        n = (hi_t - lo_t).to(feats.dtype)
        total, squares = (s1[:, hi_t] - s1[:, lo_t]), (s2[:, hi_t] - s2[:, lo_t])
        mean_f = total / n
        std = ((squares - n * mean_f ** 2).clamp_min(0) / (n - 1)).sqrt()
        stats = torch.cat([mean_f, std], 0).T.float()
        return _segment_layers(self.model, stats).cpu().numpy()


def _segment_layers(model, stats):
    """The embedding layers after statistics pooling (pyannote's ResNet.forward_embedding)."""
    import torch.nn.functional as F

    embed = model.seg_1(stats)
    if model.two_emb_layer:
        return model.seg_2(model.seg_bn_1(F.relu(embed)))
    return embed


def _resnet_state(path: Path) -> tuple[dict, Path]:
    """The ResNet's tensors (keys as in pyannote's `ResNet`) from a pyannote repo folder or file
    (pytorch_model.bin), a WeSpeaker checkpoint (.pt) or a .safetensors file; and the file read."""
    import torch

    from persona.errors import PersonaError

    if path.is_dir():
        found = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()]
        if not found:
            raise PersonaError(f"{path} holds neither model.safetensors nor pytorch_model.bin", file=path,
                               fix="point [models].speaker-embedding at a pyannote/wespeaker-voxceleb-resnet34-LM download")
        path = found[0]
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            with torch.serialization.safe_globals(_pyannote_checkpoint_globals()):
                raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise PersonaError(f"{path} is not a speaker-embedding checkpoint persona can read safely ({type(e).__name__})",
                           file=path, fix="use pyannote/wespeaker-voxceleb-resnet34-LM's pytorch_model.bin, or its "
                           "tensors saved as .safetensors") from None
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else {}
    state = {k.removeprefix("resnet."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    state = {k: v for k, v in state.items() if not k.startswith("projection.")}  # WeSpeaker's training head
    if "conv1.weight" not in state or "seg_1.weight" not in state:
        raise PersonaError(f"{path} holds no WeSpeaker ResNet weights (conv1, seg_1)", file=path,
                           fix="use pyannote/wespeaker-voxceleb-resnet34-LM (`persona doctor` gives the command)")
    return state, path


def _pyannote_checkpoint_globals() -> list:
    """The plain data classes a pyannote checkpoint pickles beside its tensors (torch's version string,
    the task specifications), allowed by name so torch.load can stay weights_only=True; their
    constructors run no code."""
    from torch.torch_version import TorchVersion

    try:
        from pyannote.audio.core.task import Problem, Resolution, Specifications
    except ImportError:
        return [TorchVersion]
    return [TorchVersion, Specifications, Problem, Resolution]


def _build_resnet(state: dict):
    """pyannote's WeSpeaker `ResNet` with the channel width, blocks per stage, feature and embedding
    sizes read off the tensors (so ResNet34 and the tiny test model load through the same code)."""
    import re

    from pyannote.audio.models.embedding.wespeaker.resnet import BasicBlock, ResNet

    m_channels = state["conv1.weight"].shape[0]
    blocks = [1 + max(int(m.group(1)) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k)))
              for i in range(1, 5)]
    embed_dim, pooled = state["seg_1.weight"].shape
    feat_dim = pooled // 2 // m_channels  # stats_dim = feat_dim / 8 * m_channels * 8
    model = ResNet(BasicBlock, blocks, m_channels=m_channels, feat_dim=feat_dim, embed_dim=embed_dim,
                   two_emb_layer="seg_2.weight" in state)
    model.load_state_dict(state, strict=True)
    return model, feat_dim, 8  # three stride-2 stages: 8 fbank frames per output frame


@functools.cache
def default_encoder() -> SpeakerEncoder:
    return Resemblyzer()


@functools.cache
def _wespeaker(path: str) -> WeSpeaker:
    return WeSpeaker(path)


def encoder_for(models: dict[str, str] | None = None) -> SpeakerEncoder:
    """The speaker-embedding checkpoint when the user has one ([models], $PERSONA_SPEAKER_EMBEDDING or
    the Hugging Face cache), else Resemblyzer."""
    from persona.models import find

    found = find("speaker-embedding", models=models)
    if found is None:
        return default_encoder()
    if found.problems:
        from persona.errors import PersonaError

        raise PersonaError(f"speaker-embedding: {'; '.join(found.problems)} (from {found.source})",
                           fix="point it at a complete copy, or remove it to use the built-in Resemblyzer")
    return _wespeaker(str(found.path))


def unit(v: np.ndarray) -> np.ndarray:
    """Rows (or a vector) scaled to length 1."""
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(norm, 1e-9)
