"""MuseTalk lip-sync speed: frames per second and peak memory.

On CPU it runs the tiny random-weight models (a plumbing figure, not a quality or GPU one). With
--full it builds MuseTalk's full-size networks with random weights: the UNet from the numbers of the
real musetalkV15/musetalk.json, sd-vae-ft-mse's AutoencoderKL and Whisper tiny, in fp16 on a GPU.
The target is real time (>= 25 fps) on a 12 GB card: the peak GPU memory line says whether it fits.

Prints, per run: face tracking fps (dlib, the work presenter clips with boxes skip), lip sync fps
(networks, paste-back and H.264 encoding: what `MuseTalk.sync` costs after tracking), the networks
alone (VAE encode x2, UNet, VAE decode on 256x256 crops), and peak memory.

    python benchmarks/lipsync.py                     # tiny, CPU
    python benchmarks/lipsync.py --full --height 1080 --seconds 10 --batch 16   # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from persona.progress import quiet_libraries  # noqa: E402

SHARED_FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "media" / "footage" / "latentsync_demo2.mp4"

# musetalkV15/musetalk.json as published in TMElyralab/MuseTalk (NOTES.md): an SD-1.5-shaped UNet with
# 8 input channels (masked target + reference latents) attending to Whisper-tiny's 384-d features.
MUSETALK_JSON = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}


def build_full(root: Path) -> dict[str, Path]:
    """Full-size MuseTalk networks with random weights, in the real on-disk layouts."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(0)
    folder = root / "musetalk" / "musetalkV15"
    folder.mkdir(parents=True)
    (folder / "musetalk.json").write_text(json.dumps(MUSETALK_JSON))
    unet = UNet2DConditionModel.from_config(MUSETALK_JSON)
    torch.save({k: v.half() for k, v in unet.state_dict().items()}, folder / "unet.pth")  # half the disk
    del unet
    AutoencoderKL(  # stabilityai/sd-vae-ft-mse's config.json
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=4, norm_num_groups=32, sample_size=256,
    ).save_pretrained(str(root / "sd-vae"))
    WhisperModel(WhisperConfig(  # openai/whisper-tiny's config.json (the encoder is what counts)
        vocab_size=51865, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
        encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
        max_source_positions=1500, max_target_positions=448,
    )).save_pretrained(str(root / "whisper-tiny"))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(str(root / "whisper-tiny"))
    return {"musetalk": root / "musetalk", "sd-vae": root / "sd-vae", "whisper-tiny": root / "whisper-tiny"}


def make_clip(root: Path, height: int, seconds: float, fps: float) -> Path:
    """A face clip at `height`: real footage when ../shared/media is here, else the demo footage."""
    from persona.media import iter_frames, write_video

    source = SHARED_FOOTAGE
    if not source.exists():
        from persona.demo import make_footage

        source = Path(make_footage(root / "demo")["files"]["lecture"])
    frames = []
    for _, frame in iter_frames(source):
        if len(frames) >= round(seconds * fps):
            break
        h, w = frame.shape[:2]
        size = (round(w * height / h / 2) * 2, height)
        frames.append(np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR)))
    while len(frames) < round(seconds * fps):  # a short source plays back and forth
        frames += frames[::-1][: round(seconds * fps) - len(frames)]
    return write_video(root / "clip.mp4", frames, fps, preset="ultrafast")


def peak_memory(device: torch.device) -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    if device.type == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated " \
               f"({torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved); peak RSS {rss:.2f} GiB"
    return f"peak RSS {rss:.2f} GiB (CPU)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size networks, random weights (needs a GPU to be quick)")
    parser.add_argument("--height", type=int, default=None, help="video height (default 1080 with --full, else 480)")
    parser.add_argument("--seconds", type=float, default=None, help="narration length (default 10 with --full, else 2)")
    parser.add_argument("--fps", type=float, default=25)
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 16 with --full, else 8)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    quiet_libraries()
    from persona import tiny
    from persona.inference.musetalk import FACE_SIZE, MuseTalk
    from persona.samples import speech_wav
    from persona.media import read_audio, write_audio

    height = args.height or (1080 if args.full else 480)
    seconds = args.seconds or (10.0 if args.full else 2.0)
    batch = args.batch or (16 if args.full else 8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        models = build_full(root / "models") if args.full else \
            tiny.build_all(root / "models", ["musetalk", "sd-vae", "whisper-tiny"])
        built = time.perf_counter() - t0
        clip = make_clip(root, height, seconds, args.fps)
        speech = np.resize(read_audio(speech_wav(), 16000), int(seconds * 16000))
        audio = write_audio(root / "narration.wav", speech, 16000)

        t0 = time.perf_counter()
        mt = MuseTalk(models["musetalk"], models["sd-vae"], models["whisper-tiny"], device=args.device,
                      batch_size=batch)
        loaded = time.perf_counter() - t0
        device = mt.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        print(f"{'full-size MuseTalk 1.5 (random weights)' if args.full else 'tiny MuseTalk (random weights)'} "
              f"on {device} in {str(mt.dtype).removeprefix('torch.')}, batch {batch}, torch threads "
              f"{torch.get_num_threads()}; models built in {built:.1f} s, loaded in {loaded:.1f} s")
        if device.type == "cpu":
            print("no GPU here: these are CPU figures for the tiny model; the >= 25 fps target on a 12 GB card "
                  "needs `--full` on a GPU")

        from persona.media import write_video

        t0, c0 = time.perf_counter(), time.process_time()
        job = mt.prepare(clip, audio)
        t_track, c_track = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        write_video(root / "synced.mp4", mt.render(job, scratch=root), job.fps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_sync, c_sync = time.perf_counter() - t0, time.process_time() - c0

        crops = np.random.default_rng(0).integers(0, 256, (batch, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
        windows = mt.audio_windows(mt.audio_features(job.samples), list(range(batch)), job.fps)
        mt.generate(crops, crops, windows)  # warm-up
        rounds = 5 if (args.full or device.type == "cuda") else 2
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            mt.generate(crops, crops, windows)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_net, c_net = time.perf_counter() - t0, time.process_time() - c0

        w, h = job.width, job.height
        print(f"clip {w}x{h} at {job.fps:g} fps, {job.frames} frames; faces {job.faces_found}, none {job.faces_missing}")
        # frames per CPU-second too: on a shared machine wall-clock figures mostly measure the neighbours
        print(f"face tracking (dlib): {job.source_frames / t_track:.1f} fps "
              f"({job.source_frames / c_track:.1f} per CPU-second)")
        print(f"lip sync (networks + paste-back + H.264): {job.frames / t_sync:.1f} fps "
              f"({job.frames / c_sync:.1f} per CPU-second)")
        print(f"networks alone (2 VAE encodes, UNet at t=0, VAE decode): {rounds * batch / t_net:.1f} fps "
              f"({rounds * batch / c_net:.1f} per CPU-second)")
        print(peak_memory(device))
        mt.close()


if __name__ == "__main__":
    main()
