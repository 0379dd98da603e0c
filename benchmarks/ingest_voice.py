"""Seconds of audio the voice side of `persona ingest` processes per wall-clock second, for
everything except transcription (decoding, VAD, speaker windows and clusters, target decision,
clip cutting, quality filters, writing the dataset). Target: >= 50x real time on 2 CPU cores.

    python benchmarks/ingest_voice.py [--minutes 10] [--threads 2]

The input is a long recording of several real voices, made from the AMI meeting excerpts in
../shared/media/speech when present, else from the recordings shipped in the f5-tts wheel, with
an enrollment clip of one voice. It runs on a fresh workspace (nothing cached), then once more
to show what the cache saves. Then it times the optional speaker encoder (a WeSpeaker ResNet34,
`[models] speaker-embedding`) on the speech analysis of the first minutes: random weights of the
real architecture and size, which cost what the real ones do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PERSONA_SHARED_MEDIA", REPO.parent / "shared" / "media")) / "speech"


def make_input(folder: Path, minutes: float) -> tuple[Path, Path, str]:
    from persona.media import read_audio, write_audio

    sr = 24000
    if (SHARED / "ami").is_dir():
        parts = [read_audio(p, sr) for p in sorted((SHARED / "ami").glob("trn*.wav"))]
        enroll = read_audio(SHARED / "ami" / "trn06.wav", sr, 13.6, 21.7)
        origin = "AMI meeting excerpts (../shared/media/speech/ami), repeated"
    else:
        ex = Path(str(files("f5_tts").joinpath("infer/examples")))
        names = ["multi/town.flac", "multi/main.flac", "multi/country.flac", "basic/basic_ref_en.wav"]
        parts = [np.concatenate([read_audio(ex / n, sr), np.zeros(sr // 2, np.float32)]) for n in names]
        enroll = read_audio(ex / "multi/main.flac", sr)
        origin = "f5-tts wheel recordings (4 voices), repeated"
    track, n = [], 0
    while n < minutes * 60 * sr:
        for p in parts:
            track.append(p)
            n += len(p)
    audio = np.concatenate(track)[: int(minutes * 60 * sr)]
    src = write_audio(folder / "long.wav", audio, sr)
    return src, write_audio(folder / "enroll.wav", enroll, sr), origin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wespeaker-minutes", type=float, default=4.5,
                    help="minutes analysed with each encoder for the comparison (4.5: each AMI excerpt once; 0: skip)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from persona.speakers import default_encoder
    from persona.data.voice import VoiceIngestSettings, ingest_voice
    from persona.progress import quiet_libraries
    from persona.workspace import Consent, Workspace

    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        tmp = Path(tmp)
        src, enroll, origin = make_input(tmp, args.minutes)
        seconds = args.minutes * 60
        ws = Workspace.create(tmp / "ws", "Bench Person", consent=Consent(
            person="Bench Person", granted_by="benchmark", date=dt.date.today(), scope="benchmark"))
        settings = VoiceIngestSettings(transcribe=False)
        t0 = time.perf_counter()
        encoder = default_encoder()
        # Startup (imports of librosa, scikit-learn, scipy.signal, onnxruntime; model loads) is
        # paid once per process: a short warm-up run in a separate workspace takes it out of the rate.
        warmup = Workspace.create(tmp / "warmup", "Bench Person", consent=ws.pack.consent)
        ingest_voice(warmup, [enroll], settings, enroll=[enroll])
        load = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        summary = ingest_voice(ws, [src], settings, enroll=[enroll])
        cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        ingest_voice(ws, [src], settings, enroll=[enroll])
        warm = time.perf_counter() - t0
        optional = optional_encoder(src, args.wespeaker_minutes) if args.wespeaker_minutes > 0 else None
    print(f"input: {seconds / 60:.1f} min of {origin}; {args.threads} torch threads; "
          f"{os.cpu_count()} CPUs visible")
    print(f"kept {summary['clips']} clips, {summary['seconds']:.0f} s")
    print(f"speaker encoder: {encoder.name}")
    print(f"startup (imports, models, warm-up): {load:.1f} s, once per process")
    print(f"first run (no cache):     {cold:.1f} s  -> {seconds / cold:.0f}x real time "
          f"({cold_cpu:.1f} CPU-seconds over all threads; the CPU may be shared: compare with `uptime`)")
    print(f"second run (cached):      {warm:.1f} s  -> {seconds / warm:.0f}x real time")
    if optional:
        print(optional)
    sys.stdout.flush()


def optional_encoder(src: Path, minutes: float) -> str:
    """Speech analysis (VAD, windows, embeddings, clusters) of the first minutes with the default
    encoder and with a full-size WeSpeaker ResNet34, on the same audio."""
    from pyannote.audio.models.embedding.wespeaker.resnet import ResNet34
    from safetensors.torch import save_file

    from persona.data import diarize
    from persona.media import read_audio
    from persona.speakers import WeSpeaker, default_encoder

    with tempfile.TemporaryDirectory(prefix="persona-bench-wespeaker-") as tmp:
        state = ResNet34(80, 256, two_emb_layer=False).state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, f"{tmp}/model.safetensors")
        wespeaker = WeSpeaker(f"{tmp}/model.safetensors")
    wav = read_audio(src, 16000, 0.0, minutes * 60)
    lines = []
    for label, encoder in (("default encoder", default_encoder()),
                           (f"optional encoder (WeSpeaker ResNet34, {sum(v.numel() for v in state.values()) / 1e6:.1f} M "
                            "parameters, random weights of the real size)", wespeaker)):
        diarize.analyse(wav[:16000 * 5], encoder, 0.5, 0.3)  # warm-up
        t0 = time.perf_counter()
        an = diarize.analyse(wav, encoder, 0.5, 0.3)
        took = time.perf_counter() - t0
        lines.append(f"{label}, speech analysis of {minutes:g} min ({len(an.starts)} windows): {took:.1f} s -> "
                     f"{minutes * 60 / took:.1f}x real time")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
